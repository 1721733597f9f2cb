//! The in-process store: sharded maps of arrival times, bounded in size.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::quota::{Decision, Quota};

const SHARDS: usize = 64;
const UNIT: Duration = Duration::from_nanos(1);

/// Keys and their theoretical arrival times (ns since the store's start), in shards so that
/// concurrent requests rarely wait on one lock, and each lock is held for one map operation.
///
/// Memory is bounded: an entry whose arrival time has passed means "full budget" — the same
/// as no entry — so it can go. Each shard drops such idle entries at most once per window,
/// and, when it holds its share of `max_keys`, before adding a key; if it is still full, the
/// entry closest to idle is dropped (that key starts again with a full budget).
#[derive(Debug)]
pub(crate) struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    start: Instant,
    shard_capacity: usize,
}

#[derive(Debug, Default)]
struct Shard {
    arrivals: HashMap<Box<str>, u64>,
    next_sweep: u64,
}

impl MemoryStore {
    pub(crate) fn new(max_keys: usize) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            // SipHash with a random key: keys come from clients, so no crafted collisions.
            hasher: RandomState::new(),
            start: Instant::now(),
            shard_capacity: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    pub(crate) fn check(&self, key: &str, quota: &Quota) -> Decision {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let interval = quota.interval_in(UNIT);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (decision, next) = Decision::gcra(shard.arrivals.get(key).copied(), now, interval, quota.burst(), UNIT);
        if let Some(next) = next {
            match shard.arrivals.get_mut(key) {
                Some(arrival) => *arrival = next,
                None => {
                    shard.make_room(now, self.shard_capacity, quota.window());
                    shard.arrivals.insert(key.into(), next);
                }
            }
        }
        decision
    }

    /// Keys held now (idle ones included until swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().arrivals.len()).sum()
    }
}

impl Shard {
    fn make_room(&mut self, now: u64, capacity: usize, window: Duration) {
        if now >= self.next_sweep || self.arrivals.len() >= capacity {
            self.arrivals.retain(|_, arrival| *arrival > now);
            self.next_sweep = now.saturating_add(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
        }
        if self.arrivals.len() >= capacity
            && let Some(oldest) = self.arrivals.iter().min_by_key(|(_, arrival)| **arrival).map(|(key, _)| key.clone())
        {
            self.arrivals.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budgets_are_exact_and_refill_with_time() {
        let store = MemoryStore::new(1000);
        let quota = Quota::per_minute(6).unwrap().with_burst(3).unwrap();
        let remaining: Vec<u64> = (0..3).map(|_| store.check("ann", &quota).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = store.check("ann", &quota);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert!(store.check("bob", &quota).allowed, "another key has its own budget");

        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!store.check("ann", &quota).allowed, "not a nanosecond early");
        tokio::time::advance(Duration::from_millis(1)).await;
        let refilled = store.check("ann", &quota);
        assert!(refilled.allowed);
        assert_eq!(refilled.remaining, 0);

        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(store.check("ann", &quota).remaining, 2, "a full burst after a full refill");
    }

    #[tokio::test(start_paused = true)]
    async fn many_distinct_keys_stay_within_the_bound() {
        let store = MemoryStore::new(1_000);
        let quota = Quota::per_second(10).unwrap();
        for n in 0..100_000 {
            assert!(store.check(&format!("client-{n}"), &quota).allowed);
        }
        assert!(store.len() <= 1_000 + SHARDS, "{} keys kept", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_go_without_memory_pressure() {
        let store = MemoryStore::new(1_000_000);
        let quota = Quota::per_second(10).unwrap();
        for n in 0..10_000 {
            store.check(&format!("early-{n}"), &quota);
        }
        assert_eq!(store.len(), 10_000);
        // Two windows later they are all idle: the next insert into each shard sweeps it.
        // 2,048 new keys reach every one of the 64 shards (all but surely: 64 × (63/64)^2048).
        tokio::time::advance(Duration::from_secs(2)).await;
        for n in 0..2_048 {
            store.check(&format!("late-{n}"), &quota);
        }
        assert_eq!(store.len(), 2_048, "only the late keys are left");
    }
}
