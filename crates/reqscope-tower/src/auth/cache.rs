//! Verified tokens, remembered for a short time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::verify::Verified;

/// Bounded map from a token (the whole string) to its verified claims.
pub(crate) struct VerifiedCache {
    entries: Mutex<HashMap<Box<str>, (Verified, Instant)>>,
    capacity: usize,
    ttl: Duration,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        VerifiedCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1), ttl }
    }

    /// The same limits, no entries.
    pub(crate) fn emptied(&self) -> Self {
        Self::new(self.capacity, self.ttl)
    }

    /// The verified claims of `token` if it was verified less than `ttl` ago and is still
    /// within `exp` and `nbf`.
    pub(crate) fn get(&self, token: &str, leeway_secs: u64) -> Option<Verified> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (verified, at) = entries.get(token)?;
        let now = unix_now();
        let fresh = at.elapsed() < self.ttl
            && now <= verified.exp.saturating_add(leeway_secs)
            && verified.nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway_secs));
        fresh.then(|| verified.clone())
    }

    pub(crate) fn insert(&self, token: &str, verified: Verified) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            // Make room: drop what is stale, and everything if that was not enough. Bounded
            // memory matters more here than keeping hits.
            let ttl = self.ttl;
            let now = unix_now();
            entries.retain(|_, (v, at)| at.elapsed() < ttl && now <= v.exp);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(token.into(), (verified, Instant::now()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::{Claims, Verified};
    use std::sync::Arc;

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

    #[test]
    fn hits_until_expiry_or_ttl() {
        let cache = VerifiedCache::new(10, Duration::from_millis(50));
        cache.insert("t1", verified(unix_now() + 600));
        cache.insert("t2", verified(unix_now() - 100));
        assert!(cache.get("t1", 30).is_some());
        assert!(cache.get("t2", 30).is_none(), "expired beyond the leeway");
        assert!(cache.get("t3", 30).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("t1", 30).is_none(), "older than the ttl");
    }

    #[test]
    fn memory_stays_bounded() {
        let cache = VerifiedCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), verified(unix_now() + 600));
            assert!(cache.len() <= 100);
        }
    }
}
