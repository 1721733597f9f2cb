//! Which access lines are written: successful requests to skipped routes write none, a sample
//! rate keeps the requests their id picks — the same ones in every process —, failures and
//! slow requests are always written, and kept lines say `sample_rate`.
//!
//! Every absence is checked once the server has dropped the request's response body, after
//! which its access line, if it has one, is written (see [`Dropped`]); for the example binary,
//! once the process has ended and its stdout is read to the end.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use reqscope::RequestContextLayer;
use reqscope::access_sampling::{AccessDecision, AccessRequest, AccessSampler, SampleRate};
use reqscope_example_proto::GetUserRequest;
use reqscope_example_proto::users_client::UsersClient;
use serde_json::Value;

use crate::example_binary::{failed_start, start_example, stop, until_stdout_ends, watch_lines};
use crate::support::{fetch, lines_of, serve, wait_until};

/// The access lines of `id` written so far.
fn access_of(id: &str) -> Vec<Value> {
    lines_of(id).into_iter().filter(|l| l["target"] == "reqscope::access").collect()
}

/// The ids of the requests whose response body the server has dropped.
///
/// The access line is written at the latest when the body of the request context layer is
/// dropped, and that body is inside the one this records: once an id is here, its access line
/// is written or never will be.
#[derive(Clone, Default)]
struct Dropped(Arc<Mutex<HashSet<String>>>);

impl Dropped {
    /// `app` with every response body recorded when dropped, under its `x-request-id`.
    fn around(&self, app: Router) -> Router {
        let dropped = self.clone();
        app.layer(axum::middleware::map_response(move |response: Response| {
            let dropped = dropped.clone();
            async move {
                let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                response.map(|inner| Body::new(Recorded { inner, _on_drop: OnDrop { id, dropped } }))
            }
        }))
    }

    /// Waits until the body of `id` has been dropped.
    async fn wait(&self, id: &str) {
        wait_until(&format!("the server to be done with {id}"), || self.0.lock().unwrap().contains(id)).await;
    }
}

/// A body that records its request id when dropped, after the body it wraps (fields drop in
/// declaration order).
struct Recorded {
    inner: Body,
    _on_drop: OnDrop,
}

struct OnDrop {
    id: String,
    dropped: Dropped,
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.dropped.0.lock().unwrap().insert(std::mem::take(&mut self.id));
    }
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The example app, its access lines chosen as the server would with these values of
/// `ACCESS_LOG_SKIP`, `ACCESS_LOG_SAMPLE` and `SLOW_REQUEST_MS`, calling `next_hop` for `/chain`.
async fn example_app(skip: &str, sample: &str, slow_ms: &str, next_hop: Option<SocketAddr>) -> (Router, sqlx::AnyPool) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = format!("sqlite:file:reqscope-sampling-{}-{n}?mode=memory&cache=shared", std::process::id());
    let pool = crate::db::connect(&url, Duration::from_millis(100)).await.expect("open the test database");
    let next_hop = match next_hop {
        Some(addr) => crate::chain::Chain::new(&format!("http://{addr}")).unwrap(),
        None => crate::support::unused_next_hop(),
    };
    let access_log = crate::access_log::sampler(skip, sample, slow_ms).expect("valid settings");
    let app = crate::app::app_with_context_layer(
        crate::app::auth_layer(crate::support::TEST_SECRET),
        crate::support::default_limit(),
        pool.clone(),
        next_hop,
        reqscope::RequestContextLayer::new().access_sampling(access_log),
    );
    (app.layer(axum::Extension(crate::jobs::Jobs::embedded())), pool)
}

/// A next hop for `/chain` that answers after `delay`.
async fn slow_next_hop(delay: Duration) -> SocketAddr {
    let app = Router::new().route(
        "/chain",
        get(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(serde_json::json!({ "hops": 0 }))
        }),
    );
    serve(app).await
}

/// Whether a request with `id` is kept at `rate`, computed here from the documented hash
/// (64-bit FNV-1a, MurmurHash3's finalizer, the top 53 bits), as another service would.
fn kept_at(rate: f64, id: &str) -> bool {
    let mut hash: u64 = 0xcbf29ce484222325;
    for &byte in id.as_bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    hash = (hash ^ (hash >> 33)).wrapping_mul(0xff51afd7ed558ccd);
    hash = (hash ^ (hash >> 33)).wrapping_mul(0xc4ceb9fe1a85ec53);
    hash ^= hash >> 33;
    ((hash >> 11) as f64 / (1u64 << 53) as f64) < rate
}

#[tokio::test]
async fn a_skipped_route_writes_no_access_line_when_it_succeeds_and_one_when_it_does_not() {
    let dropped = Dropped::default();
    let (app, pool) = example_app(
        crate::access_log::DEFAULT_SKIP,
        crate::access_log::DEFAULT_SAMPLE,
        crate::access_log::DEFAULT_SLOW_MS,
        None,
    )
    .await;
    let addr = serve(dropped.around(app)).await;

    for (id, path) in [("samp-skip-health", "/health"), ("samp-skip-ready", "/ready")] {
        let reply = fetch(addr, path, &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        dropped.wait(id).await;
        assert!(access_of(id).is_empty(), "{path} succeeded: no access line by default: {:?}", access_of(id));
    }
    // The same server writes the access line of a route it does not skip.
    fetch(addr, "/users/1", &[("x-request-id", b"samp-skip-user")]).await;
    dropped.wait("samp-skip-user").await;
    assert_eq!(access_of("samp-skip-user").len(), 1);

    pool.close().await;
    let reply = fetch(addr, "/ready", &[("x-request-id", b"samp-skip-ready-down")]).await;
    assert_eq!(reply.status, 503);
    dropped.wait("samp-skip-ready-down").await;
    let access = access_of("samp-skip-ready-down");
    assert_eq!(access.len(), 1, "a failing probe is written: {access:?}");
    assert_eq!(access[0]["level"], "ERROR");
    assert_eq!(access[0]["status"], 503);
    assert!(access[0].get("sample_rate").is_none(), "{}", access[0]);
}

#[tokio::test]
async fn a_client_error_on_a_skipped_route_is_written() {
    let dropped = Dropped::default();
    let (app, _pool) = example_app("/users/{id}", "1.0", "1000", None).await;
    let addr = serve(dropped.around(app)).await;
    let cases = [("samp-4xx-found", "/users/1", 200, 0), ("samp-4xx-missing", "/users/987654", 404, 1)];
    for (id, path, status, lines) in cases {
        let reply = fetch(addr, path, &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, status, "{path}");
        dropped.wait(id).await;
        let access = access_of(id);
        assert_eq!(access.len(), lines, "{path}: {access:?}");
    }
    let access = access_of("samp-4xx-missing").remove(0);
    assert_eq!(access["level"], "INFO", "a 404 is no failure, but it did not succeed: {access}");
    assert_eq!(access["route"], "/users/{id}");
    // Its other lines are untouched: the handler ran and logged as always.
    assert!(
        lines_of("samp-4xx-found").iter().any(|l| l["target"] == "sqlx::query"),
        "{:?}",
        lines_of("samp-4xx-found")
    );
}

#[tokio::test]
async fn the_sample_rate_keeps_the_requests_their_id_picks_and_says_so_on_their_lines() {
    let dropped = Dropped::default();
    // Not 0.5, which only the hash's top bit decides: this rate needs the bits below it too.
    let (app, _pool) = example_app("", "0.3", "1000", None).await;
    let addr = serve(dropped.around(app)).await;
    let ids: Vec<String> = (0..40).map(|i| format!("samp-rate-{i}")).collect();
    let replies = futures_util::future::join_all(
        ids.iter().map(|id| async move { fetch(addr, "/fanout", &[("x-request-id", id.as_bytes())]).await }),
    )
    .await;
    assert!(replies.iter().all(|reply| reply.status == 200));

    let rate = SampleRate::new(0.3).unwrap();
    let mut kept = BTreeSet::new();
    for id in &ids {
        dropped.wait(id).await;
        let lines = lines_of(id);
        assert_eq!(lines.iter().filter(|l| l["task"].is_u64()).count(), 4, "handled: {lines:?}");
        let access = access_of(id);
        assert!(access.len() <= 1, "{access:?}");
        if let Some(line) = access.first() {
            assert_eq!(line["sample_rate"], 0.3, "a kept line says at which rate: {line}");
            assert_eq!(line["level"], "INFO");
            kept.insert(id.clone());
        }
    }
    let expected: BTreeSet<String> = ids.iter().filter(|id| kept_at(0.3, id)).cloned().collect();
    assert_eq!(kept, expected, "kept exactly the ids the hash picks");
    assert!(ids.iter().all(|id| rate.keeps(id) == kept_at(0.3, id)), "the library computes the documented hash");
    assert!(!kept.is_empty() && kept.len() < ids.len(), "some kept, some not: {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_written_at_a_sample_rate_of_zero() {
    let dropped = Dropped::default();
    let (app, _pool) = example_app("", "0", "1000", None).await;
    let addr = serve(dropped.around(app)).await;
    let cases = [
        ("samp-zero-ok", "/users/1", 200, None),
        ("samp-zero-boom", "/boom", 500, Some("ERROR")),
        ("samp-zero-missing", "/nowhere", 404, Some("INFO")),
        ("samp-zero-bad-id", "/users/abc", 400, Some("INFO")),
    ];
    for (id, path, status, level) in cases {
        let reply = fetch(addr, path, &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, status, "{path}");
        dropped.wait(id).await;
        let access = access_of(id);
        assert_eq!(access.len(), usize::from(level.is_some()), "{path}: {access:?}");
        if let Some(level) = level {
            assert_eq!(access[0]["level"], level, "{path}");
            assert!(access[0].get("sample_rate").is_none(), "{path}: written for failing, not sampled");
        }
    }

    // gRPC: `NOT_FOUND` is no server failure (INFO), but it is not `OK` either.
    let mut users = UsersClient::connect(format!("http://{addr}")).await.unwrap();
    for (id, user, code) in [("samp-zero-grpc-ok", 1, None), ("samp-zero-grpc-missing", 987_654, Some(5))] {
        let mut request = tonic::Request::new(GetUserRequest { id: user });
        request.metadata_mut().insert("x-request-id", id.parse().unwrap());
        let result = users.get_user(request).await;
        assert_eq!(result.as_ref().err().map(|status| status.code() as i32), code, "{result:?}");
        dropped.wait(id).await;
        let access = access_of(id);
        assert_eq!(access.len(), usize::from(code.is_some()), "{id}: {access:?}");
        if let Some(code) = code {
            assert_eq!(access[0]["grpc_status"], code);
            assert_eq!(access[0]["level"], "INFO");
        }
    }
}

#[tokio::test]
async fn a_raised_request_is_written_at_a_sample_rate_of_zero() {
    let dropped = Dropped::default();
    let (app, _pool) = example_app("", "0", "1000", None).await;
    let addr = serve(dropped.around(app)).await;
    let mut claims = crate::support::claims("1");
    claims["roles"] = serde_json::json!(["log-debug"]);
    let bearer = format!("Bearer {}", crate::support::hs256(crate::support::TEST_SECRET, &claims));
    for (id, level) in [("samp-raised", Some("debug")), ("samp-not-raised", None)] {
        let mut headers: Vec<(&str, &[u8])> =
            vec![("x-request-id", id.as_bytes()), ("authorization", bearer.as_bytes())];
        if let Some(level) = level {
            headers.push(("x-log-level", level.as_bytes()));
        }
        assert_eq!(fetch(addr, "/users/me", &headers).await.status, 200);
        dropped.wait(id).await;
        let access = access_of(id);
        assert_eq!(access.len(), usize::from(level.is_some()), "{id}: {access:?}");
    }
}

#[tokio::test]
async fn slow_requests_are_written_whatever_the_routes_and_the_rate_say() {
    let next = slow_next_hop(Duration::from_millis(300)).await;
    let dropped = Dropped::default();
    let (app, _pool) = example_app("/chain", "0", "200", Some(next)).await;
    let addr = serve(dropped.around(app)).await;

    // hops=0 answers at once; hops=1 waits for the next hop's 300 ms.
    for (id, hops) in [("samp-slow-fast", 0), ("samp-slow-slow", 1)] {
        let reply = fetch(addr, &format!("/chain?hops={hops}"), &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        dropped.wait(id).await;
    }
    assert!(access_of("samp-slow-fast").is_empty(), "{:?}", access_of("samp-slow-fast"));
    let access = access_of("samp-slow-slow");
    assert_eq!(access.len(), 1, "{access:?}");
    assert!(access[0]["duration_ms"].as_f64().unwrap() >= 200.0, "{}", access[0]);
    assert!(access[0].get("sample_rate").is_none(), "{}", access[0]);
}

#[tokio::test]
async fn a_sampler_of_ones_own_and_an_always_log_predicate_decide_over_http() {
    /// Stands in for any later layer that patches the context, as auth does.
    async fn user_from_header(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
        if let Some(user) = request.headers().get("x-user").and_then(|v| v.to_str().ok()) {
            reqscope::RequestContext::with(|ctx| ctx.set_user_id(user));
        }
        next.run(request).await
    }
    let routes = || {
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/quiet", get(|| async { "shh" }))
            .layer(axum::middleware::from_fn(user_from_header))
    };
    let dropped = Dropped::default();
    // Nothing kept, except what a user under watch asks.
    let watched = AccessSampler::new()
        .sample_rate(SampleRate::NONE)
        .always_log_when(|ctx| ctx.user_id().as_deref() == Some("watched"));
    let watching = serve(dropped.around(routes().layer(RequestContextLayer::new().access_sampling(watched)))).await;
    // A closure: everything but `/quiet`, which is written with a rate of its own.
    let own = |request: &AccessRequest<'_>| match request.ctx().path() {
        Some("/quiet") if request.ctx().id().as_str().ends_with("-kept") => {
            AccessDecision::Sampled(SampleRate::new(0.01).unwrap())
        }
        Some("/quiet") => AccessDecision::Skip,
        _ => AccessDecision::Log,
    };
    let owning = serve(dropped.around(routes().layer(RequestContextLayer::new().access_sampling(own)))).await;

    let cases: [(SocketAddr, &str, &str, Option<&str>, bool); 5] = [
        (watching, "samp-own-anon", "/ok", None, false),
        (watching, "samp-own-watched", "/ok", Some("watched"), true),
        (owning, "samp-own-ok", "/ok", None, true),
        (owning, "samp-own-quiet", "/quiet", None, false),
        (owning, "samp-own-quiet-kept", "/quiet", None, true),
    ];
    for (addr, id, path, user, written) in cases {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        if let Some(user) = user {
            headers.push(("x-user", user.as_bytes()));
        }
        assert_eq!(fetch(addr, path, &headers).await.status, 200);
        dropped.wait(id).await;
        assert_eq!(access_of(id).len(), usize::from(written), "{id}: {:?}", access_of(id));
    }
    assert_eq!(access_of("samp-own-watched")[0]["user_id"], "watched");
    assert!(access_of("samp-own-watched")[0].get("sample_rate").is_none());
    assert_eq!(access_of("samp-own-quiet-kept")[0]["sample_rate"], 0.01);
}

#[tokio::test]
async fn a_custom_field_named_sample_rate_cannot_pass_for_the_sampling() {
    let dropped = Dropped::default();
    let quarter = SampleRate::new(0.25).unwrap();
    let app = Router::new()
        .route(
            "/x",
            get(|| async {
                reqscope::RequestContext::with(|ctx| ctx.set_field("sample_rate", 1.0));
                "x"
            }),
        )
        .layer(
            RequestContextLayer::new().access_sampling(move |_: &AccessRequest<'_>| AccessDecision::Sampled(quarter)),
        );
    let addr = serve(dropped.around(app)).await;
    fetch(addr, "/x", &[("x-request-id", b"samp-field-1")]).await;
    dropped.wait("samp-field-1").await;
    let access = access_of("samp-field-1").remove(0);
    assert_eq!(access["sample_rate"], 0.25, "{access}");
    assert_eq!(access["fields.sample_rate"], 1.0, "the custom field is renamed: {access}");
}

/// Ids that two example processes each received, and whether each wrote their access lines.
fn written_ids(lines: &[Value], prefix: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l["target"] == "reqscope::access")
        .filter_map(|l| l["request_id"].as_str().filter(|id| id.starts_with(prefix)).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_example_processes_and_a_chain_through_them_keep_the_same_request_ids() {
    let (second, second_out, second_addr) = start_example(&[("ACCESS_LOG_SAMPLE", "0.5")]);
    let downstream = format!("http://{second_addr}");
    let (first, first_out, first_addr) =
        start_example(&[("ACCESS_LOG_SAMPLE", "0.5"), ("DOWNSTREAM_URL", downstream.as_str())]);
    let (first_lines, first_reader) = watch_lines(first_out);
    let (second_lines, second_reader) = watch_lines(second_out);

    // The same forwarded ids to each process, the same ids through a chain, and failures.
    let direct: Vec<String> = (0..40).map(|i| format!("samp-bin-{i}")).collect();
    let chained: Vec<String> = (0..30).map(|i| format!("samp-chain-{i}")).collect();
    let failing: Vec<String> = (0..10).map(|i| format!("samp-bin-fail-{i}")).collect();
    for id in &direct {
        for addr in [first_addr, second_addr] {
            assert_eq!(fetch(addr, "/fanout", &[("x-request-id", id.as_bytes())]).await.status, 200);
        }
    }
    for id in &chained {
        let reply = fetch(first_addr, "/chain?hops=1", &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for id in &failing {
        for addr in [first_addr, second_addr] {
            assert_eq!(fetch(addr, "/nowhere", &[("x-request-id", id.as_bytes())]).await.status, 404);
        }
    }
    // Once stopped and read to the end, every line either process will ever write is here.
    stop(first).await;
    stop(second).await;
    until_stdout_ends(first_reader).await;
    until_stdout_ends(second_reader).await;
    let first_lines = first_lines.lock().unwrap().clone();
    let second_lines = second_lines.lock().unwrap().clone();

    for lines in [&first_lines, &second_lines] {
        for id in &direct {
            let handled = lines.iter().filter(|l| l["request_id"] == id.as_str() && l["task"].is_u64()).count();
            assert_eq!(handled, 4, "{id} was handled");
        }
    }
    let expected = |ids: &[String]| -> BTreeSet<String> { ids.iter().filter(|id| kept_at(0.5, id)).cloned().collect() };
    let kept =
        written_ids(&first_lines, "samp-bin-").into_iter().filter(|id| !id.contains("fail")).collect::<BTreeSet<_>>();
    let kept_second =
        written_ids(&second_lines, "samp-bin-").into_iter().filter(|id| !id.contains("fail")).collect::<BTreeSet<_>>();
    assert_eq!(kept, kept_second, "both processes keep the same ids");
    assert_eq!(kept, expected(&direct), "the ids the documented hash picks");
    assert!(!kept.is_empty() && kept.len() < direct.len(), "{kept:?}");

    let chain_first = written_ids(&first_lines, "samp-chain-");
    let chain_second = written_ids(&second_lines, "samp-chain-");
    assert_eq!(chain_first, chain_second, "a chain is logged whole or not at all");
    assert_eq!(chain_first, expected(&chained));
    assert!(!chain_first.is_empty() && chain_first.len() < chained.len(), "{chain_first:?}");

    for lines in [&first_lines, &second_lines] {
        let written: BTreeSet<String> = written_ids(lines, "samp-bin-fail-");
        assert_eq!(written.len(), failing.len(), "every failure is written: {written:?}");
        for line in lines.iter().filter(|l| l["target"] == "reqscope::access") {
            let id = line["request_id"].as_str().unwrap_or("");
            if id.starts_with("samp-bin-fail-") {
                assert!(line.get("sample_rate").is_none(), "{line}");
            } else if id.starts_with("samp-") {
                assert_eq!(line["sample_rate"], 0.5, "{line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_reads_its_skipped_routes_and_slow_threshold_from_the_environment() {
    let next = slow_next_hop(Duration::from_millis(300)).await;
    let downstream = format!("http://{next}");
    let (child, stdout, addr) = start_example(&[
        ("ACCESS_LOG_SKIP", " /chain , /users/{id} "),
        ("SLOW_REQUEST_MS", "200"),
        ("DOWNSTREAM_URL", downstream.as_str()),
    ]);
    let (lines, reader) = watch_lines(stdout);
    let cases = [
        ("samp-env-user", "/users/1", 200),
        ("samp-env-missing", "/users/987654", 404),
        ("samp-env-fast", "/chain?hops=0", 200),
        ("samp-env-slow", "/chain?hops=1", 200),
        // No longer in the list: written.
        ("samp-env-health", "/health", 200),
    ];
    for (id, path, status) in cases {
        let reply = fetch(addr, path, &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
    }
    stop(child).await;
    until_stdout_ends(reader).await;
    let written = written_ids(&lines.lock().unwrap(), "samp-env-");
    let expected: BTreeSet<String> =
        ["samp-env-missing", "samp-env-slow", "samp-env-health"].into_iter().map(str::to_owned).collect();
    assert_eq!(written, expected);
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l["request_id"] == "samp-env-user" && l["target"] == "sqlx::query"), "handled");
}

#[test]
fn bad_access_log_settings_stop_the_start_with_a_one_line_error_naming_the_variable() {
    let cases = [
        ("ACCESS_LOG_SAMPLE", "1.5", "ACCESS_LOG_SAMPLE must be a number from 0.0 to 1.0"),
        ("ACCESS_LOG_SAMPLE", "half", "ACCESS_LOG_SAMPLE must be a number from 0.0 to 1.0"),
        ("ACCESS_LOG_SAMPLE", "NaN", "ACCESS_LOG_SAMPLE must be a number from 0.0 to 1.0"),
        ("SLOW_REQUEST_MS", "soon", "SLOW_REQUEST_MS must be a whole number of milliseconds"),
        ("SLOW_REQUEST_MS", "-5", "SLOW_REQUEST_MS must be a whole number of milliseconds"),
        ("ACCESS_LOG_SKIP", "/health,ready", "ACCESS_LOG_SKIP must be a comma-separated list of route templates"),
    ];
    for (name, value, message) in cases {
        let stderr = failed_start(&[(name, value)]);
        assert!(stderr.contains(message), "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
