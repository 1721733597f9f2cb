//! The rate-limit layer over real sockets: exact budgets, refill, headers, 429 JSON, the
//! context on the log lines, trusted proxies, Redis shared across servers, Redis outages.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqscope::rate_limit::{Quota, RateLimitLayer, RedisStore};
use reqscope::{ClientIpHeader, RequestContextLayer, TrustedProxies};
use serde_json::Value;

use crate::support::{Reply, TEST_SECRET, access_lines_of, claims, fetch, hs256, lines_of, serve};

async fn handler() -> &'static str {
    tracing::info!("handled");
    "ok"
}

/// `/limited` behind an optional auth layer (so that users and anonymous clients both come
/// through) and `limit` inside it.
fn limited_app(limit: RateLimitLayer, context: RequestContextLayer) -> Router {
    Router::new()
        .route("/limited", get(handler).route_layer(limit).route_layer(crate::app::auth_layer(TEST_SECRET).optional()))
        .layer(context)
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", hs256(TEST_SECRET, &claims(user)))
}

async fn as_user(addr: SocketAddr, user: &str, id: &str) -> Reply {
    fetch(addr, "/limited", &[("authorization", bearer(user).as_bytes()), ("x-request-id", id.as_bytes())]).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header: {reply:?}"))
}

#[tokio::test]
async fn exact_budgets_per_user_with_headers_429_json_and_the_context_on_every_line() {
    let limit = RateLimitLayer::new(Quota::per_hour(3).unwrap());
    let addr = serve(limited_app(limit, RequestContextLayer::new())).await;

    for (n, (remaining, reset)) in [(2, 1200), (1, 2400), (0, 3600)].into_iter().enumerate() {
        let reply = as_user(addr, "ann", &format!("rl-ann-{n}")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(header(&reply, "ratelimit-policy"), r#""default";q=3;w=3600"#);
        assert_eq!(header(&reply, "ratelimit"), format!(r#""default";r={remaining};t={reset}"#));
    }
    let refused = as_user(addr, "ann", "rl-ann-3").await;
    assert_eq!(refused.status, 429);
    assert_eq!(header(&refused, "retry-after"), "1200", "one interval, rounded up");
    assert_eq!(header(&refused, "ratelimit"), r#""default";r=0;t=3600"#);
    assert_eq!(header(&refused, "ratelimit-policy"), r#""default";q=3;w=3600"#);
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(
        refused.json(),
        serde_json::json!({"error": "rate_limited", "message": "too many requests; retry in 1200 s", "request_id": "rl-ann-3"})
    );

    // Another user, and an anonymous client (by ip), have budgets of their own.
    let bob = as_user(addr, "bob", "rl-bob-0").await;
    assert_eq!((bob.status.as_u16(), header(&bob, "ratelimit")), (200, r#""default";r=2;t=1200"#));
    let anonymous = fetch(addr, "/limited", &[]).await;
    assert_eq!((anonymous.status.as_u16(), header(&anonymous, "ratelimit")), (200, r#""default";r=2;t=1200"#));

    // The handler's line and the access line both carry the budget of their request.
    access_lines_of("rl-ann-1").await;
    let lines = lines_of("rl-ann-1");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!((line["rate_limit_remaining"].as_u64(), line["rate_limit_reset"].as_u64()), (Some(1), Some(2400)));
        assert_eq!(line["user_id"], "ann");
    }
    access_lines_of("rl-ann-3").await;
    let refused_lines = lines_of("rl-ann-3");
    assert!(refused_lines.iter().all(|l| l["rate_limit_remaining"] == 0), "{refused_lines:?}");
    assert!(refused_lines.iter().any(|l| l["message"] == "rate limited" && l["retry_after"] == 1200));
    assert!(refused_lines.iter().all(|l| l["message"] != "handled"), "the handler never ran");
    assert!(refused_lines.iter().all(|l| l["level"] != "ERROR" && l["level"] != "WARN"));
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_with_time_to_the_nanosecond() {
    // 2 per 10 s: one request back every 5 s. Tokio's clock is paused, so time moves only here.
    let limit = RateLimitLayer::new(Quota::new(2, Duration::from_secs(10)).unwrap());
    let addr = serve(limited_app(limit, RequestContextLayer::new())).await;
    assert_eq!(as_user(addr, "cat", "refill-0").await.status, 200);
    assert_eq!(as_user(addr, "cat", "refill-1").await.status, 200);
    let refused = as_user(addr, "cat", "refill-2").await;
    assert_eq!((refused.status.as_u16(), header(&refused, "retry-after")), (429, "5"));

    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(as_user(addr, "cat", "refill-3").await.status, 429, "a millisecond early");
    tokio::time::advance(Duration::from_millis(1)).await;
    let back = as_user(addr, "cat", "refill-4").await;
    assert_eq!((back.status.as_u16(), header(&back, "ratelimit")), (200, r#""default";r=0;t=10"#));
    tokio::time::advance(Duration::from_secs(10)).await;
    let full = as_user(addr, "cat", "refill-5").await;
    assert_eq!(header(&full, "ratelimit"), r#""default";r=1;t=5"#, "a full burst again");
}

#[tokio::test]
async fn anonymous_clients_are_told_apart_by_forwarded_ip_only_behind_a_trusted_proxy() {
    let quota = Quota::per_hour(1).unwrap();
    let trusted = RequestContextLayer::new()
        .trusted_proxies(TrustedProxies::parse(["127.0.0.1/32"]).unwrap(), ClientIpHeader::XForwardedFor);
    let behind_proxy = serve(limited_app(RateLimitLayer::new(quota), trusted)).await;
    let first = fetch(behind_proxy, "/limited", &[("x-forwarded-for", b"203.0.113.7")]).await;
    let second = fetch(behind_proxy, "/limited", &[("x-forwarded-for", b"203.0.113.8")]).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200), "two clients, two budgets");
    let again = fetch(behind_proxy, "/limited", &[("x-forwarded-for", b"203.0.113.7")]).await;
    assert_eq!(again.status, 429);

    // Without a trusted proxy the header is the client's own word: ignored, one budget.
    let direct = serve(limited_app(RateLimitLayer::new(quota), RequestContextLayer::new())).await;
    assert_eq!(fetch(direct, "/limited", &[("x-forwarded-for", b"203.0.113.7")]).await.status, 200);
    assert_eq!(fetch(direct, "/limited", &[("x-forwarded-for", b"198.51.100.1")]).await.status, 429);
}

#[tokio::test]
async fn ipv6_clients_share_a_budget_per_64_unless_configured() {
    let quota = Quota::per_hour(1).unwrap();
    let context = || {
        RequestContextLayer::new()
            .trusted_proxies(TrustedProxies::parse(["127.0.0.1/32"]).unwrap(), ClientIpHeader::XForwardedFor)
    };
    let from = |ip: &'static str| [("x-forwarded-for", ip.as_bytes())];
    let addr = serve(limited_app(RateLimitLayer::new(quota), context())).await;
    assert_eq!(fetch(addr, "/limited", &from("2001:db8:1:2::a")).await.status, 200);
    assert_eq!(fetch(addr, "/limited", &from("2001:db8:1:2:ffff::b")).await.status, 429, "same /64, same budget");
    assert_eq!(fetch(addr, "/limited", &from("2001:db8:1:3::a")).await.status, 200, "another /64");

    let addr = serve(limited_app(RateLimitLayer::new(quota).ipv6_prefix(128), context())).await;
    assert_eq!(fetch(addr, "/limited", &from("2001:db8:1:2::a")).await.status, 200);
    assert_eq!(fetch(addr, "/limited", &from("2001:db8:1:2::b")).await.status, 200, "per address at /128");
}

#[tokio::test]
async fn an_outer_per_ip_limit_counts_refused_tokens() {
    let per_ip = RateLimitLayer::new(Quota::per_hour(2).unwrap()).per_client_ip();
    let app = Router::new()
        .route("/limited", get(handler).route_layer(crate::app::auth_layer(TEST_SECRET)))
        .layer(per_ip)
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let forged = [("authorization", b"Bearer not.a.token".as_slice())];
    assert_eq!(fetch(addr, "/limited", &forged).await.status, 401);
    assert_eq!(fetch(addr, "/limited", &forged).await.status, 401);
    assert_eq!(fetch(addr, "/limited", &forged).await.status, 429, "bad tokens spend the ip's budget");
    let good = bearer("ann");
    assert_eq!(fetch(addr, "/limited", &[("authorization", good.as_bytes())]).await.status, 429, "a user too");
}

#[tokio::test]
async fn per_client_ip_keys_even_known_users_by_their_ip() {
    // Inside the auth layer the user is known; `per_client_ip` still counts by address.
    let per_ip = RateLimitLayer::new(Quota::per_hour(1).unwrap()).per_client_ip();
    let addr = serve(limited_app(per_ip, RequestContextLayer::new())).await;
    assert_eq!(as_user(addr, "ann", "rl-perip-1").await.status, 200);
    assert_eq!(as_user(addr, "bob", "rl-perip-2").await.status, 429, "one address, one budget");
    // The default keys by user: two users from one address get two budgets.
    let per_user =
        serve(limited_app(RateLimitLayer::new(Quota::per_hour(1).unwrap()), RequestContextLayer::new())).await;
    assert_eq!(as_user(per_user, "ann", "rl-peruser-1").await.status, 200);
    assert_eq!(as_user(per_user, "bob", "rl-peruser-2").await.status, 200);
}

#[tokio::test]
async fn requests_without_a_client_ip_share_one_budget_and_say_so_once() {
    let app = limited_app(RateLimitLayer::new(Quota::per_hour(100).unwrap()), RequestContextLayer::new());
    // Served without connect info: the stack never learns the peer address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    crate::support::logs();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let first = fetch(addr, "/limited", &[("x-request-id", b"rl-noip-1")]).await;
    let second = fetch(addr, "/limited", &[("x-request-id", b"rl-noip-2")]).await;
    assert_eq!(header(&first, "ratelimit"), r#""default";r=99;t=36"#);
    assert_eq!(header(&second, "ratelimit"), r#""default";r=98;t=72"#, "one shared budget");
    assert_eq!(access_lines_of("rl-noip-2").await.len(), 1);
    let warned = |id: &str| {
        lines_of(id).iter().filter(|l| l["level"] == "WARN" && l["target"] == "reqscope::rate_limit").count()
    };
    assert_eq!(warned("rl-noip-1"), 1, "the first request says why: {:?}", lines_of("rl-noip-1"));
    assert_eq!(warned("rl-noip-2"), 0, "once per layer");
}

#[tokio::test]
async fn a_custom_key_function_and_its_unlimited_answer() {
    // Keyed by org: two users of one org share the budget; requests without a user are not limited.
    let limit = RateLimitLayer::new(Quota::per_hour(1).unwrap())
        .key_fn(|ctx| ctx.patch().org_id.as_deref().map(|org| format!("org:{org}")));
    let addr = serve(limited_app(limit, RequestContextLayer::new())).await;
    assert_eq!(as_user(addr, "ann", "org-0").await.status, 200);
    assert_eq!(as_user(addr, "bob", "org-1").await.status, 429, "same org, same budget");
    let anonymous = fetch(addr, "/limited", &[]).await;
    assert_eq!(anonymous.status, 200);
    assert!(anonymous.headers.get("ratelimit").is_none(), "not limited, so no budget to report");
}

#[tokio::test]
async fn the_example_limits_users_routes_by_user() {
    let limit = crate::rate_limit::layer(2, None).unwrap();
    let pool = crate::support::example_app_with_pool().await.1;
    let addr =
        serve(crate::app::app(crate::app::auth_layer(TEST_SECRET), limit, pool, crate::support::unused_next_hop()))
            .await;
    let me = |id: &'static str| async move {
        fetch(addr, "/users/me", &[("authorization", bearer("1").as_bytes()), ("x-request-id", id.as_bytes())]).await
    };
    assert_eq!(me("ex-rl-0").await.status, 200);
    assert_eq!(me("ex-rl-1").await.status, 200);
    assert_eq!(me("ex-rl-2").await.status, 429);
    // Another user still gets through; so does /health, which is not limited.
    let other = fetch(addr, "/users/me", &[("authorization", bearer("2").as_bytes())]).await;
    assert_eq!(other.status, 200);
    let health = fetch(addr, "/health", &[]).await;
    assert!(health.headers.get("ratelimit").is_none());
    // The query line of a limited request carries the budget too.
    access_lines_of("ex-rl-1").await;
    let query = lines_of("ex-rl-1").into_iter().find(|l| l["target"] == "sqlx::query").expect("a query line");
    assert_eq!(query["rate_limit_remaining"], 0);
}

/// The Redis URL for tests, or `None` (with the reason printed) when `TEST_REDIS_URL` is
/// unset. With `CI=true` an unreachable Redis is a failure, not a skip.
async fn redis_url() -> Option<String> {
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("skipped: TEST_REDIS_URL is not set (Redis tests run in CI, see .ci/run)");
        return None;
    };
    let reachable = match redis_authority(&url) {
        Some(authority) => tokio::net::TcpStream::connect(authority).await.map_err(|e| e.to_string()),
        None => Err(format!("cannot read host:port from {url:?}")),
    };
    match reachable {
        Ok(_) => Some(url),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but Redis at TEST_REDIS_URL is unreachable: {error}")
        }
        Err(error) => {
            eprintln!("skipped: Redis at TEST_REDIS_URL is unreachable: {error}");
            None
        }
    }
}

/// `host:port` of a `redis://[user:pass@]host[:port][/db]` URL.
fn redis_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:6379") })
}

/// A key prefix no other test run uses.
fn fresh_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("reqscope-test:{}:{}:{n}:", std::process::id(), crate::support::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_share_one_budget_exactly() {
    let Some(url) = redis_url().await else { return };
    let prefix = fresh_prefix();
    let quota = Quota::per_hour(5).unwrap();
    let server = |prefix: String| {
        let store = RedisStore::open(&url).unwrap().prefix(prefix);
        limited_app(RateLimitLayer::redis(quota, store), RequestContextLayer::new())
    };
    let a = serve(server(prefix.clone())).await;
    let b = serve(server(prefix)).await;
    let mut remaining = Vec::new();
    for n in 0..5 {
        let reply = as_user(if n % 2 == 0 { a } else { b }, "dan", &format!("redis-shared-{n}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        remaining.push(header(&reply, "ratelimit").to_owned());
    }
    let r: Vec<&str> = remaining.iter().map(|h| h.split(';').nth(1).unwrap()).collect();
    assert_eq!(r, ["r=4", "r=3", "r=2", "r=1", "r=0"], "one budget across both servers");
    for (n, server) in [a, b].into_iter().enumerate() {
        let refused = as_user(server, "dan", &format!("redis-shared-refused-{n}")).await;
        assert_eq!(refused.status, 429);
        assert_eq!(header(&refused, "retry-after"), "720");
    }
    assert_eq!(as_user(a, "eve", "redis-shared-eve").await.status, 200, "another user, another budget");
    access_lines_of("redis-shared-3").await;
    assert_eq!(lines_of("redis-shared-3")[0]["rate_limit_remaining"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_fails_open_or_closed_and_comes_back() {
    let Some(url) = redis_url().await else { return };
    let target = tokio::net::lookup_host(redis_authority(&url).unwrap()).await.unwrap().next().unwrap();
    let proxy = crate::support::CuttableProxy::start(target).await;
    let via_proxy = format!("redis://{}/", proxy.addr);
    let quota = Quota::per_hour(100).unwrap();
    let open_limit = RateLimitLayer::redis(quota, RedisStore::open(&via_proxy).unwrap().prefix(fresh_prefix()));
    let closed_limit =
        RateLimitLayer::redis(quota, RedisStore::open(&via_proxy).unwrap().prefix(fresh_prefix())).fail_closed();
    let open = serve(limited_app(open_limit.clone(), RequestContextLayer::new())).await;
    let closed = serve(limited_app(closed_limit.clone(), RequestContextLayer::new())).await;
    assert_eq!(header(&as_user(open, "fay", "redis-up-0").await, "ratelimit"), r#""default";r=99;t=36"#);
    assert_eq!(as_user(closed, "fay", "redis-up-1").await.status, 200);

    proxy.cut();
    let through = as_user(open, "fay", "redis-down-open").await;
    assert_eq!(through.status, 200, "fail-open: the request goes on");
    assert!(through.headers.get("ratelimit").is_none(), "no budget to report");
    assert_eq!(header(&through, "ratelimit-policy"), r#""default";q=100;w=3600"#);
    access_lines_of("redis-down-open").await;
    let warns: Vec<Value> = lines_of("redis-down-open").into_iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert_eq!(warns[0]["user_id"], "fay", "the WARN is stamped");
    assert!(open_limit.store_failures() >= 1);

    let refused = as_user(closed, "fay", "redis-down-closed").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "unavailable");
    assert_eq!(refused.json()["request_id"], "redis-down-closed");
    assert!(closed_limit.store_failures() >= 1);

    // Back without a restart: the budget is where it was.
    proxy.restore();
    let mut back = None;
    for attempt in 0..100 {
        let reply = as_user(open, "fay", &format!("redis-back-{attempt}")).await;
        if reply.headers.get("ratelimit").is_some() {
            back = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = back.expect("the limiter uses Redis again within 5 s");
    assert!(header(&back, "ratelimit").starts_with(r#""default";r=9"#), "{}", header(&back, "ratelimit"));
    let mut closed_back = false;
    for _ in 0..100 {
        if as_user(closed, "fay", "redis-back-closed").await.status == 200 {
            closed_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_back, "fail-closed recovers too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_with_redis_leases_share_the_budget_within_the_bound() {
    let Some(url) = redis_url().await else { return };
    let prefix = fresh_prefix();
    // 10 per hour (one back every 360 s), 5 cells per lease.
    let quota = Quota::per_hour(10).unwrap();
    let store = |prefix: &str| RedisStore::open(&url).unwrap().prefix(prefix).local_lease(5);
    let (store_a, store_b) = (store(&prefix), store(&prefix));
    let a = serve(limited_app(RateLimitLayer::redis(quota, store_a.clone()), RequestContextLayer::new())).await;
    let b = serve(limited_app(RateLimitLayer::redis(quota, store_b.clone()), RequestContextLayer::new())).await;
    let r = |reply: &Reply| header(reply, "ratelimit").split(';').nth(1).unwrap().to_owned();

    // `a` takes 5 cells and spends one: 4 in its lease + 5 left in Redis.
    let first = as_user(a, "ivy", "lease-a-0").await;
    assert_eq!((first.status.as_u16(), r(&first)), (200, "r=9".to_owned()));
    // `b` takes the other 5; the 4 `a` holds are not its to spend.
    let mut from_b = Vec::new();
    for n in 0..6 {
        let reply = as_user(b, "ivy", &format!("lease-b-{n}")).await;
        from_b.push((reply.status.as_u16(), r(&reply)));
    }
    let expected: Vec<(u16, String)> =
        [(200, "r=4"), (200, "r=3"), (200, "r=2"), (200, "r=1"), (200, "r=0"), (429, "r=0")]
            .into_iter()
            .map(|(status, r)| (status, r.to_owned()))
            .collect();
    assert_eq!(from_b, expected);
    // `a` spends its lease in process, then is refused: 10 in all, the exact budget.
    for n in 1..5 {
        assert_eq!(as_user(a, "ivy", &format!("lease-a-{n}")).await.status, 200);
    }
    let refused = as_user(a, "ivy", "lease-a-5").await;
    assert_eq!(refused.status, 429);
    assert_eq!(header(&refused, "retry-after"), "360");
    assert_eq!(store_a.stats().script_calls, 2, "one lease, one refusal: {:?}", store_a.stats());
    assert_eq!(store_a.stats().local, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leases_stay_within_the_documented_overshoot_as_the_budget_refills() {
    let Some(url) = redis_url().await else { return };
    let prefix = fresh_prefix();
    // 40 per second with a burst of 2, 4 cells per lease, leases that expire within the run:
    // the budget refills and is re-leased many times while two servers spend it.
    let (rate, burst, cells, instances) = (40.0, 2.0, 4.0, 2.0);
    let quota = Quota::per_second(40).unwrap().with_burst(2).unwrap();
    let store = || {
        RedisStore::open(&url).unwrap().prefix(prefix.clone()).local_lease(4).lease_lifetime(Duration::from_millis(100))
    };
    let (store_a, store_b) = (store(), store());
    let a = serve(limited_app(RateLimitLayer::redis(quota, store_a.clone()), RequestContextLayer::new())).await;
    let b = serve(limited_app(RateLimitLayer::redis(quota, store_b.clone()), RequestContextLayer::new())).await;

    // Each answer with the instant its request was sent; the run lasts 1.5 s of sending.
    let start = std::time::Instant::now();
    let mut answers = Vec::new();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let sent = start.elapsed().as_secs_f64();
        let reply = as_user(if n % 2 == 0 { a } else { b }, "kim", &format!("refill-{n}")).await;
        assert!(matches!(reply.status.as_u16(), 200 | 429), "{reply:?}");
        answers.push((sent, reply.status.as_u16() == 200));
        n += 1;
    }
    let end = start.elapsed().as_secs_f64();
    let allowed_from = |t: f64| answers.iter().filter(|&&(sent, ok)| ok && sent >= t).count() as f64;
    let refused = answers.iter().filter(|(_, ok)| !ok).count();
    assert!(refused > 0, "the quota was reached, or the run proves nothing: {} requests", answers.len());

    // Every allowed request spent a cell Redis counted within the run: never more than the
    // exact budget over it.
    let exact = |from: f64| burst + rate * (end - from) + 1.0;
    assert!(allowed_from(0.0) <= exact(0.0), "{} allowed, exact bound {}", allowed_from(0.0), exact(0.0));
    // Over any later interval, at most the exact budget plus `cells − 1` per instance (cells
    // leased before the interval and spent in it).
    for from in [0.25, 0.5, 0.75, 1.0, 1.25] {
        let bound = exact(from) + instances * (cells - 1.0);
        assert!(allowed_from(from) <= bound, "from {from} s: {} allowed, bound {bound}", allowed_from(from));
    }
    // And not a limiter that refuses everything: the burst and most of the refill got through
    // (at most `cells − 1` per instance lost with each lease that ran out unspent).
    assert!(
        allowed_from(0.0) >= burst + rate * end / 4.0,
        "{} allowed of {} requests",
        allowed_from(0.0),
        answers.len()
    );
    let stats = (store_a.stats(), store_b.stats());
    assert!(stats.0.local + stats.1.local > 0, "leases were spent in process: {stats:?}");
}
