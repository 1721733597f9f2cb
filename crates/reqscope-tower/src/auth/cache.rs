//! Verified tokens, remembered for a short time.
//!
//! A sharded concurrent cache (`quick_cache`, S3-FIFO eviction): a hit takes one shard's read
//! lock, never a lock shared by every request, and a full cache evicts the entries least
//! worth keeping one at a time, so a token in use survives a flood of one-off tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quick_cache::UnitWeighter;
use quick_cache::sync::{Cache, DefaultLifecycle};

use super::keys::KeySet;
use super::verify::{Verified, unix_now};

/// One verified token: its claims, when it was verified, and by which key of which key set.
pub(crate) struct Entry {
    pub(crate) verified: Verified,
    at: Instant,
    /// The generation of the key set that verified it, and the verifying key's fingerprint:
    /// a later set without that key must not honour it.
    generation: u64,
    key: Arc<str>,
}

/// Bounded map from a token (the whole string) to its verified claims.
///
/// Hashed with foldhash, seeded per cache: a token is a few hundred bytes hashed on every
/// request, where SipHash costs several times more. Only tokens whose signature verified are
/// ever stored, so nobody without the signing key can fill a shard with colliding entries.
pub(crate) struct VerifiedCache {
    entries: Cache<Box<str>, Arc<Entry>, UnitWeighter, foldhash::fast::RandomState>,
    capacity: usize,
    ttl: Duration,
    /// The key-set generation whose removed keys were last purged.
    purged_for: AtomicU64,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let entries = Cache::with(
            capacity,
            capacity as u64,
            UnitWeighter,
            foldhash::fast::RandomState::default(),
            DefaultLifecycle::default(),
        );
        VerifiedCache { entries, capacity, ttl, purged_for: AtomicU64::new(0) }
    }

    /// The same limits, no entries.
    pub(crate) fn emptied(&self) -> Self {
        Self::new(self.capacity, self.ttl)
    }

    /// The verified claims of `token` if it was verified less than `ttl` ago, is still within
    /// `exp` and `nbf`, and the key that verified it is still in `keys`.
    /// The entry itself, not a copy of its claims: a hit clones one `Arc`, and only what the
    /// request keeps is cloned out of it.
    pub(crate) fn get(&self, token: &str, leeway_secs: u64, keys: &KeySet) -> Option<Arc<Entry>> {
        let entry = self.entries.get(token)?;
        let now = unix_now();
        let fresh = entry.at.elapsed() < self.ttl
            && now <= entry.verified.exp.saturating_add(leeway_secs)
            && entry.verified.nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway_secs));
        // Checked per entry as well as by `forget_removed_keys`: a verification that ran
        // against the old set may be inserted after the purge.
        let key_kept = entry.generation == keys.generation || keys.holds(&entry.key);
        if !key_kept {
            self.entries.remove(token);
        }
        (fresh && key_kept).then_some(entry)
    }

    /// Remembers that `key` of the set of `generation` verified `token`.
    pub(crate) fn insert(&self, token: &str, verified: Verified, generation: u64, key: &Arc<str>) {
        let entry = Entry { verified, at: Instant::now(), generation, key: Arc::clone(key) };
        self.entries.insert(token.into(), Arc::new(entry));
    }

    /// Once per new key-set generation: forgets every token verified by a key that the set no
    /// longer has (a rotated-out or revoked key), so none of them passes again.
    pub(crate) fn forget_removed_keys(&self, keys: &KeySet) {
        // A load first: every request passes here, and a plain read keeps the line shared.
        if self.purged_for.load(Ordering::Acquire) == keys.generation
            || self.purged_for.swap(keys.generation, Ordering::AcqRel) == keys.generation
        {
            return;
        }
        self.entries.retain(|_, entry| entry.generation == keys.generation || keys.holds(&entry.key));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::{Claims, Verified};

    fn verified(exp: u64) -> Verified {
        Verified {
            claims: Claims::for_tests(),
            user_id: Some(Arc::from("1")),
            org_id: None,
            roles: Arc::from(Vec::new()),
            exp,
            nbf: None,
        }
    }

    fn key(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn hits_until_expiry_or_ttl() {
        let keys = KeySet::for_tests(0, &["k"]);
        let cache = VerifiedCache::new(10, Duration::from_millis(50));
        cache.insert("t1", verified(unix_now() + 600), 0, &key("k"));
        cache.insert("t2", verified(unix_now() - 100), 0, &key("k"));
        assert!(cache.get("t1", 30, &keys).is_some());
        assert!(cache.get("t2", 30, &keys).is_none(), "expired beyond the leeway");
        assert!(cache.get("t3", 30, &keys).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("t1", 30, &keys).is_none(), "older than the ttl");
    }

    #[test]
    fn memory_stays_bounded() {
        let keys = KeySet::for_tests(0, &["k"]);
        let cache = VerifiedCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), verified(unix_now() + 600), 0, &key("k"));
            assert!(cache.len() <= 100, "{} entries", cache.len());
        }
        assert!(cache.get("token-9999", 30, &keys).is_some(), "the newest token is kept");
    }

    #[test]
    fn a_full_cache_keeps_the_token_in_use() {
        let keys = KeySet::for_tests(0, &["k"]);
        let cache = VerifiedCache::new(100, Duration::from_secs(60));
        cache.insert("hot", verified(unix_now() + 600), 0, &key("k"));
        for i in 0..10_000 {
            // A client sends its token on every request while one-off tokens flood in.
            assert!(cache.get("hot", 30, &keys).is_some(), "the hot token was dropped after {i} inserts");
            cache.insert(&format!("one-off-{i}"), verified(unix_now() + 600), 0, &key("k"));
        }
        assert!(cache.len() > 50, "overflow evicts a few entries, not all: {}", cache.len());
    }

    #[test]
    fn tokens_of_a_removed_key_are_forgotten() {
        let cache = VerifiedCache::new(100, Duration::from_secs(60));
        cache.insert("by-a", verified(unix_now() + 600), 1, &key("a"));
        cache.insert("by-b", verified(unix_now() + 600), 1, &key("b"));
        let rotated = KeySet::for_tests(2, &["b", "c"]);
        cache.forget_removed_keys(&rotated);
        assert_eq!(cache.len(), 1);
        assert!(cache.get("by-a", 30, &rotated).is_none());
        assert!(cache.get("by-b", 30, &rotated).is_some(), "a key still in the set keeps its tokens");
        // Verified against the old set, inserted after the purge: still refused.
        cache.insert("late-a", verified(unix_now() + 600), 1, &key("a"));
        assert!(cache.get("late-a", 30, &rotated).is_none());
    }
}
