//! Against a real Redis (`TEST_REDIS_URL`: skipped with the reason printed when it is unset,
//! failed when `CI=true` and it is unreachable). The layer over HTTP: `tests/e2e/rate_limits.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// The Redis URL for tests, or `None` (with the reason printed) when `TEST_REDIS_URL` is
/// unset. With `CI=true` an unreachable Redis is a failure, not a skip.
fn redis_url() -> Option<String> {
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("skipped: TEST_REDIS_URL is not set (Redis tests run in CI, see .ci/run)");
        return None;
    };
    let authority = url.strip_prefix("redis://").and_then(|rest| rest.split('/').next()).map(|authority| {
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:6379") }
    });
    let reachable = match authority {
        Some(authority) => std::net::TcpStream::connect(authority).map(drop).map_err(|e| e.to_string()),
        None => Err(format!("cannot read host:port from {url:?}")),
    };
    match reachable {
        Ok(()) => Some(url),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but Redis at TEST_REDIS_URL is unreachable: {error}")
        }
        Err(error) => {
            eprintln!("skipped: Redis at TEST_REDIS_URL is unreachable: {error}");
            None
        }
    }
}

/// A key prefix no other test (or run) uses.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("reqscope-unit:{}:{nanos}:{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::open(url).unwrap().prefix(prefix)
}

/// `checks` checks of `key`, all started before any is answered.
async fn concurrent(store: &RedisStore, key: &str, quota: Quota, checks: usize) -> Vec<Decision> {
    let tasks: Vec<_> = (0..checks)
        .map(|_| {
            let (store, key) = (store.clone(), key.to_owned());
            tokio::spawn(async move { store.check(key, &quota).await })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.unwrap().unwrap());
    }
    decisions
}

/// The `remaining` of the allowed decisions, sorted.
fn allowed_remaining(decisions: &[Decision]) -> Vec<u64> {
    let mut remaining: Vec<u64> = decisions.iter().filter(|d| d.allowed).map(|d| d.remaining).collect();
    remaining.sort_unstable();
    remaining
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_are_batched_and_exact() {
    let Some(url) = redis_url() else { return };
    let store = store(&url, &fresh_prefix());
    let quota = Quota::per_hour(100).unwrap();
    let decisions = concurrent(&store, "ann", quota, 500).await;
    // Exactly the budget, and each `remaining` once: what 500 one-by-one checks would say.
    assert_eq!(allowed_remaining(&decisions), (0..100).collect::<Vec<u64>>());
    // And each its own reset: one interval (36 s) per cell taken, its own included.
    for allowed in decisions.iter().filter(|d| d.allowed) {
        let expected = Duration::from_secs(36 * (100 - allowed.remaining));
        assert!(allowed.reset <= expected && allowed.reset + Duration::from_secs(1) > expected, "{allowed:?}");
    }
    for refused in decisions.iter().filter(|d| !d.allowed) {
        assert_eq!(refused.remaining, 0);
        assert!(refused.retry_after > Duration::from_secs(35), "{refused:?}");
    }
    let stats = store.stats();
    assert_eq!(stats.checks, 500);
    assert!(stats.script_calls >= 4, "at most 128 per call: {stats:?}");
    assert!(stats.script_calls <= 125, "batched: {stats:?}");
    assert_eq!((stats.local, stats.queue_full), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_keys_in_batches_keep_their_own_budgets() {
    let Some(url) = redis_url() else { return };
    let store = store(&url, &fresh_prefix()).max_batch(16);
    let quota = Quota::per_hour(100).unwrap().with_burst(20).unwrap();
    let tasks: Vec<_> = (0..300)
        .map(|n| {
            let (store, key) = (store.clone(), format!("key-{}", n % 5));
            tokio::spawn(async move { (n % 5, store.check(key, &quota).await.unwrap()) })
        })
        .collect();
    let mut per_key: Vec<Vec<Decision>> = vec![Vec::new(); 5];
    for task in tasks {
        let (key, decision) = task.await.unwrap();
        per_key[key].push(decision);
    }
    for decisions in &per_key {
        assert_eq!(allowed_remaining(decisions), (0..20).collect::<Vec<u64>>());
    }
    let stats = store.stats();
    assert!(stats.script_calls >= 300 / 16 && stats.script_calls < 300, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_checks_keep_the_single_check_answers() {
    let Some(url) = redis_url() else { return };
    let store = store(&url, &fresh_prefix());
    let quota = Quota::per_hour(3).unwrap();
    for remaining in [2, 1, 0] {
        let decision = store.check("bob".to_owned(), &quota).await.unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.remaining, remaining);
        let reset = Duration::from_secs(1200 * (3 - remaining));
        assert!(decision.reset <= reset && decision.reset > reset - Duration::from_secs(1), "{decision:?}");
    }
    let refused = store.check("bob".to_owned(), &quota).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.retry_after <= Duration::from_secs(1200) && refused.retry_after > Duration::from_secs(1199));
    assert_eq!(store.stats().script_calls, 4, "one call each when they come one at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_is_loaded_again_after_script_flush() {
    let Some(url) = redis_url() else { return };
    let store = store(&url, &fresh_prefix());
    let quota = Quota::per_hour(10).unwrap();
    assert_eq!(store.check("cat".to_owned(), &quota).await.unwrap().remaining, 9);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let after = store.check("cat".to_owned(), &quota).await.unwrap();
    assert!(after.allowed);
    assert_eq!(after.remaining, 8, "the budget went on where it was");
    // NOSCRIPT, then SCRIPT LOAD and the call again (unless another test's store, on the same
    // Redis, loaded it first).
    let stats = store.stats();
    assert_eq!(stats.script_calls, 2, "{stats:?}");
    assert!(stats.script_loads <= 2, "{stats:?}");
    let loaded: Vec<bool> =
        redis::cmd("SCRIPT").arg("EXISTS").arg(store.script_hash()).query_async(&mut admin).await.unwrap();
    assert_eq!(loaded, [true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_each_check_at_most_the_timeout() {
    // A listener that never accepts: the kernel completes the handshake, nothing answers.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", stalled.local_addr().unwrap());
    let timeout = Duration::from_millis(150);
    let store = RedisStore::open(&url).unwrap().timeout(timeout).max_queue(4);
    let quota = Quota::per_hour(10).unwrap();
    let started = Instant::now();
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.check("dan".to_owned(), &quota).await })
    };
    // Once the task is stuck on that call, the queue fills: 4 wait, the rest are refused.
    while store.stats().script_calls == 0 && started.elapsed() < timeout {
        tokio::task::yield_now().await;
    }
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { (store.check("dan".to_owned(), &quota).await, Instant::now()) })
        })
        .collect();
    assert!(matches!(first.await.unwrap(), Err(RedisStoreError::Timeout(t)) if t == timeout));
    let (mut timed_out, mut full) = (0, 0);
    for task in waiting {
        let (result, at) = task.await.unwrap();
        match result {
            Err(RedisStoreError::Timeout(_)) => timed_out += 1,
            Err(RedisStoreError::QueueFull(4)) => full += 1,
            other => panic!("{other:?}"),
        }
        assert!(at - started < timeout * 2 + Duration::from_millis(200), "{:?}", at - started);
    }
    if store.stats().script_calls == 1 {
        assert_eq!((timed_out, full), (4, 6), "{:?}", store.stats());
    }
    assert_eq!(store.stats().queue_full, full);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let timeout = Duration::from_millis(150);
    let store = RedisStore::open(&format!("redis://{port}/")).unwrap().timeout(timeout);
    let quota = Quota::per_hour(10).unwrap();
    let started = Instant::now();
    let results: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.check("eve".to_owned(), &quota).await })
        })
        .collect();
    for task in results {
        assert!(task.await.unwrap().is_err());
    }
    assert!(started.elapsed() < timeout + Duration::from_millis(200), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leasing_instances_stay_within_the_bound() {
    let Some(url) = redis_url() else { return };
    let quota = Quota::per_hour(100).unwrap();
    let prefix = fresh_prefix();
    let a = store(&url, &prefix).local_lease(10);
    let b = store(&url, &prefix).local_lease(10);
    let check = |store: &RedisStore| {
        let store = store.clone();
        async move { store.check("fay".to_owned(), &quota).await.unwrap() }
    };

    // `a` takes 10 cells and spends one; `b` gets the other 90, then is refused.
    let first = check(&a).await;
    assert!(first.allowed);
    assert_eq!(first.remaining, 99, "9 in the lease + 90 left in Redis");
    let mut b_allowed = 0;
    loop {
        let decision = check(&b).await;
        if !decision.allowed {
            assert!(decision.retry_after > Duration::from_secs(30), "{decision:?}");
            break;
        }
        b_allowed += 1;
    }
    assert_eq!(b_allowed, 90, "held idle by `a`: not `b`'s");
    // `a` still has its 9, and no more.
    let mut a_allowed = 1;
    while check(&a).await.allowed {
        a_allowed += 1;
    }
    assert_eq!(a_allowed + b_allowed, 100, "exactly the budget");
    assert_eq!(a_allowed, 10);
    let (a_stats, b_stats) = (a.stats(), b.stats());
    assert_eq!(a_stats.script_calls, 2, "one lease, one refusal: {a_stats:?}");
    assert_eq!(b_stats.script_calls, 10, "nine leases, one refusal: {b_stats:?}");
    // The refusal is remembered: the next checks do not ask Redis.
    assert!(!check(&b).await.allowed);
    assert_eq!(b.stats().script_calls, 10);
    assert_eq!(b.stats().local, b.stats().checks - 10);

    // Concurrently: never more than the budget, never less than the budget minus what each
    // instance may hold idle (9 each).
    let prefix = fresh_prefix();
    let (a, b) = (store(&url, &prefix).local_lease(10), store(&url, &prefix).local_lease(10));
    let (from_a, from_b) = tokio::join!(concurrent(&a, "gus", quota, 300), concurrent(&b, "gus", quota, 300));
    let allowed = from_a.iter().chain(&from_b).filter(|d| d.allowed).count();
    assert!((100 - 2 * 9..=100).contains(&allowed), "{allowed} allowed");
    assert!(a.stats().script_calls + b.stats().script_calls < 600 / 5, "{:?} {:?}", a.stats(), b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_loses_at_most_its_unspent_cells() {
    let Some(url) = redis_url() else { return };
    let quota = Quota::per_hour(100).unwrap();
    let prefix = fresh_prefix();
    let lifetime = Duration::from_millis(100);
    let a = store(&url, &prefix).local_lease(10).lease_lifetime(lifetime);
    let b = store(&url, &prefix).local_lease(10).lease_lifetime(lifetime);
    assert!(a.check("hal".to_owned(), &quota).await.unwrap().allowed);
    // The lease was taken when its script call was sent: before this.
    let taken = Instant::now();
    let mut b_allowed = 0;
    while b.check("hal".to_owned(), &quota).await.unwrap().allowed {
        b_allowed += 1;
    }
    assert_eq!(b_allowed, 90);
    // Past the lease's end, `a` asks Redis again.
    tokio::time::sleep_until(taken + lifetime).await;
    let calls = a.stats().script_calls;
    let after = a.check("hal".to_owned(), &quota).await.unwrap();
    assert!(!after.allowed, "the 9 unspent cells are gone: {after:?}");
    assert_eq!(a.stats().script_calls, calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_n_cells_is_one_script_call_per_n_checks() {
    let Some(url) = redis_url() else { return };
    // The quota of the benchmark: never reached.
    let quota = Quota::per_second(u32::MAX).unwrap();
    let store = store(&url, &fresh_prefix()).local_lease(16);
    for _ in 0..1000 {
        assert!(store.check("ivy".to_owned(), &quota).await.unwrap().allowed);
    }
    let stats = store.stats();
    assert_eq!((stats.checks, stats.script_calls, stats.local), (1000, 1000_u64.div_ceil(16), 1000 - 63), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_ends_with_the_last_clone() {
    // No Redis needed: the check fails fast on a closed port, the task has been spawned.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = RedisStore::open(&format!("redis://{port}/")).unwrap().timeout(Duration::from_millis(50));
    let clone = store.clone();
    assert!(store.check("joe".to_owned(), &Quota::per_hour(1).unwrap()).await.is_err());
    let stats = Arc::clone(&store.shared.stats);
    assert_eq!(Arc::strong_count(&stats), 3, "the store, this test and the task");
    drop(store);
    drop(clone);
    let started = Instant::now();
    while Arc::strong_count(&stats) > 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the task is still running");
        tokio::task::yield_now().await;
    }
}
