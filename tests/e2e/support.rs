//! Shared test plumbing: one global log capture, servers on 127.0.0.1:0, a raw HTTP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use reqscope::logging::{LogLayer, MemoryWriter};
use serde_json::Value;
use tracing_subscriber::prelude::*;

/// Every line written by every test's servers; tests pick theirs by request id.
pub fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Capture::default();
        // What a production setup writes: `RUST_LOG=info` behind the request-level filter, with
        // `LOG_ON_ERROR=debug`. Its own layer, so that the lines above stay all of them.
        let level = reqscope::logging::RequestLevelFilter::new(tracing_subscriber::EnvFilter::new("info"))
            .keep_until_error(Some(reqscope::RaisedLevel::Debug));
        let level_layer = LogLayer::new()
            .baggage_fields(["session"])
            .held_by(&level)
            .with_writer(level_logs().clone())
            .with_filter(level);
        // Every level of every target, except the HTTP/2 implementation's frame-by-frame
        // TRACE and DEBUG lines: hundreds per request, about h2 itself, and they would be
        // most of what a thousand-stream test keeps in memory.
        let filter = tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::TRACE)
            .with_target("h2", tracing::Level::INFO)
            // Likewise RabbitMQ's client, frame by frame.
            .with_target("lapin", tracing::Level::INFO)
            .with_target("amq_protocol", tracing::Level::INFO);
        tracing_subscriber::registry()
            // The example server's default `LOG_BAGGAGE_KEYS` and `LOG_REDACT`.
            .with(
                LogLayer::new()
                    .baggage_fields(["session"])
                    .redaction(crate::log_settings::redaction(crate::log_settings::DEFAULT_REDACT).expect("valid"))
                    .with_writer(logs.clone())
                    .with_filter(filter),
            )
            // Sends nothing until a test binds a Sentry client (error_tracking.rs).
            .with(reqscope::sentry::layer())
            .with(level_layer)
            .init();
        logs
    })
}

/// The lines written at `RUST_LOG=info` by the request-level filter, which raises requests
/// and keeps DEBUG lines until their request fails (`LOG_ON_ERROR=debug`); see [`logs`].
fn level_logs() -> &'static Capture {
    static LEVEL_LOGS: OnceLock<Capture> = OnceLock::new();
    LEVEL_LOGS.get_or_init(Capture::default)
}

/// The lines of one request as written at `RUST_LOG=info` with `LOG_ON_ERROR=debug`.
pub fn level_lines_of(request_id: &str) -> Vec<Value> {
    logs();
    level_logs().of_request(request_id)
}

/// [`level_lines_of`], once the request's access line is among them.
pub async fn level_lines_after_access(request_id: &str) -> Vec<Value> {
    let logged = || level_lines_of(request_id).iter().any(|l| l["target"] == "reqscope::access");
    wait_until(&format!("the access line of {request_id} at INFO"), logged).await;
    level_lines_of(request_id)
}

/// The global log capture. Writers only append bytes; readers parse what arrived since the
/// last read, once, and index it by request id, so waiting on a line costs what is new, not
/// everything written so far.
#[derive(Clone, Default)]
pub struct Capture {
    state: Arc<Mutex<CaptureState>>,
}

#[derive(Default)]
struct CaptureState {
    /// Bytes written and not yet parsed (the tail of an unfinished line included).
    unparsed: Vec<u8>,
    /// Every complete line, raw and parsed.
    raw: String,
    lines: Vec<Value>,
    by_request: HashMap<String, Vec<usize>>,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.parse_new();
        state
    }

    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        self.lock().raw.clone()
    }

    /// Every line written so far, as written.
    pub fn lines(&self) -> Vec<String> {
        self.lock().raw.lines().map(str::to_owned).collect()
    }

    /// Every line written so far, parsed.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lock().lines.clone()
    }

    fn of_request(&self, request_id: &str) -> Vec<Value> {
        let state = self.lock();
        state
            .by_request
            .get(request_id)
            .map_or_else(Vec::new, |at| at.iter().map(|&i| state.lines[i].clone()).collect())
    }
}

impl CaptureState {
    fn parse_new(&mut self) {
        let Some(end) = self.unparsed.iter().rposition(|&b| b == b'\n') else { return };
        let complete: Vec<u8> = self.unparsed.drain(..=end).collect();
        let text = String::from_utf8_lossy(&complete).into_owned();
        // Parsed by MemoryWriter's reader, which fails on a line that is not one JSON object
        // or that gives a key twice (a plain `Value` would keep the last copy silently).
        let parser = MemoryWriter::new();
        std::io::Write::write_all(&mut &parser, text.as_bytes()).expect("in memory");
        for value in parser.json_lines() {
            if let Some(id) = value["request_id"].as_str() {
                self.by_request.entry(id.to_owned()).or_default().push(self.lines.len());
            }
            self.lines.push(value);
        }
        self.raw.push_str(&text);
    }
}

impl std::io::Write for &Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // No parsing here: this runs on the servers' threads, inside their requests.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).unparsed.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = &'a Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Log lines that satisfy `pick`.
pub fn lines_where(pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    logs().lock().lines.iter().filter(|line| pick(line)).cloned().collect()
}

/// Lines of one request.
pub fn lines_of(request_id: &str) -> Vec<Value> {
    logs().of_request(request_id)
}

/// Waits until `done` holds, checking every 10 ms, for at most 10 s; then fails naming `what`.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The access line(s) of one request, waiting for the first to appear (it is written when the
/// server finishes the body, which may be just after the client has read it). A request has
/// one access line by construction (it is written once, under a flag), so nothing is gained
/// by waiting longer for a second.
pub async fn access_lines_of(request_id: &str) -> Vec<Value> {
    let access =
        || -> Vec<Value> { lines_of(request_id).into_iter().filter(|l| l["target"] == "reqscope::access").collect() };
    wait_until(&format!("the access line of {request_id}"), || !access().is_empty()).await;
    access()
}

/// Serves `app` on a fresh port of 127.0.0.1 with connection info, for the rest of the test.
pub async fn serve(app: Router) -> SocketAddr {
    logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("server failed");
    });
    addr
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn request_id(&self) -> &str {
        self.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id on the response")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `GET path` over a new connection, with raw header values (bytes, to send non-ASCII).
pub async fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    fetch_with(http::Method::GET, addr, path, headers).await
}

/// Like [`fetch`], with any method.
pub async fn fetch_with(method: http::Method, addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    send(method, addr, path, headers, Bytes::new()).await
}

/// Any method, headers and body, over a new connection.
pub async fn send(method: http::Method, addr: SocketAddr, path: &str, headers: &[(&str, &[u8])], body: Bytes) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_bytes(value).expect("header value"));
    }
    let response = sender.send_request(request.body(http_body_util::Full::new(body)).unwrap()).await.expect("send");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// The HS256 secret the tests' example server verifies with.
pub const TEST_SECRET: &[u8] = b"a test secret that is at least 32 bytes long";

/// The example server's router, with the test secret, a fresh in-memory SQLite database
/// of its own (so tests never share rows or race on migrations) and an embedded job queue
/// with its worker, as the server runs without `AMQP_URL`.
pub async fn example_app() -> Router {
    example_app_with_pool().await.0
}

/// [`example_app`] and its database pool, for tests that break the database.
pub async fn example_app_with_pool() -> (Router, sqlx::AnyPool) {
    example_app_with(default_limit(), crate::jobs::Jobs::embedded()).await
}

/// [`example_app`] with a budget of `per_minute` requests per user or client ip.
pub async fn example_app_limited(per_minute: u32) -> Router {
    example_app_with(crate::rate_limit::layer(per_minute, None).expect("a valid quota"), crate::jobs::Jobs::embedded())
        .await
        .0
}

/// [`example_app`] whose jobs go to `jobs` (RabbitMQ, say).
pub async fn example_app_with_jobs(jobs: crate::jobs::Jobs) -> Router {
    example_app_with(default_limit(), jobs).await.0
}

async fn example_app_with(
    limit: reqscope::rate_limit::RateLimitLayer,
    jobs: crate::jobs::Jobs,
) -> (Router, sqlx::AnyPool) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = format!("sqlite:file:reqscope-test-{}-{n}?mode=memory&cache=shared", std::process::id());
    let pool = crate::db::connect(&url, Duration::from_millis(100)).await.expect("open the test database");
    let app = crate::app::app(crate::app::auth_layer(TEST_SECRET), limit, pool.clone(), unused_next_hop());
    (app.layer(axum::Extension(jobs)), pool)
}

/// A `/chain` next hop for apps whose tests do not call it: a port that was just free, so
/// that a call is refused at once.
pub fn unused_next_hop() -> crate::chain::Chain {
    let free = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    crate::chain::Chain::new(&format!("http://{free}")).expect("a valid URL")
}

/// The example's rate limit with its defaults: 600 a minute, in process.
pub fn default_limit() -> reqscope::rate_limit::RateLimitLayer {
    crate::rate_limit::layer(600, None).expect("the default quota is valid")
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Valid claims for the example server's tokens, for user `sub`.
pub fn claims(sub: &str) -> Value {
    serde_json::json!({
        "sub": sub,
        "iss": crate::jwt::ISSUER,
        "aud": crate::jwt::AUDIENCE,
        "exp": now() + 600,
        "org_id": "acme",
        "roles": ["reader"],
    })
}

/// An HS256 token signed with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    reqscope::auth::mint_hs256(secret, claims).expect("mint")
}

/// The example app on a fresh PostgreSQL schema of its own, when `TEST_DATABASE_URL` is set;
/// `None` (with the reason printed) when it is not. With `CI=true` an unreachable server is a
/// failure, not a skip. Drop the returned [`PgSchema`] to remove the schema.
pub async fn postgres_app() -> Option<(Router, sqlx::AnyPool, PgSchema)> {
    postgres_app_via(None).await
}

/// [`postgres_app`] with the pool connecting through `via` (host:port, e.g. a test proxy)
/// instead of the server's own address.
pub async fn postgres_app_via(via: Option<SocketAddr>) -> Option<(Router, sqlx::AnyPool, PgSchema)> {
    let Ok(base) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("skipped: TEST_DATABASE_URL is not set (PostgreSQL tests run in CI, see .ci/run)");
        return None;
    };
    sqlx::any::install_default_drivers();
    let admin = match sqlx::AnyPool::connect(&base).await {
        Ok(pool) => pool,
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but PostgreSQL at TEST_DATABASE_URL is unreachable: {error}")
        }
        Err(error) => {
            eprintln!("skipped: PostgreSQL at TEST_DATABASE_URL is unreachable: {error}");
            return None;
        }
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let schema = format!(
        "reqscope_test_{}_{}_{}",
        std::process::id(),
        now(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    // The schema name is made of our own digits and underscores only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create the test schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    if let Some(via) = via {
        // postgres://user@HOST:PORT/db…: swap the authority's host and port.
        let start = url.find("://").map_or(0, |i| i + 3);
        let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
        let host_start = url[start..authority_end].rfind('@').map_or(start, |i| start + i + 1);
        url.replace_range(host_start..authority_end, &via.to_string());
    }
    let pool = crate::db::connect(&url, Duration::from_millis(100)).await.expect("open the test schema");
    let app = crate::app::app(crate::app::auth_layer(TEST_SECRET), default_limit(), pool.clone(), unused_next_hop())
        .layer(axum::Extension(crate::jobs::Jobs::embedded()));
    Some((app, pool, PgSchema { admin, name: schema }))
}

/// A PostgreSQL schema made for one test; dropped, with everything in it, at the end.
pub struct PgSchema {
    admin: sqlx::AnyPool,
    name: String,
}

impl PgSchema {
    pub async fn drop_schema(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&self.admin)
            .await
            .expect("drop the test schema");
    }
}

/// A TCP proxy in front of a service (PostgreSQL, Redis, RabbitMQ) that can be cut (every connection dropped, new ones
/// refused) and restored: the service "goes away" and "comes back" without touching it.
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl CuttableProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !*watch.borrow() {
                    continue; // dropped: refused
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        CuttableProxy { addr, up }
    }

    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}

/// A plain hyper client behind reqscope's outgoing propagation: what a service calls its next
/// hop with.
pub fn propagating_client() -> reqscope::outgoing::PropagateContext<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
> {
    tower::ServiceBuilder::new()
        .layer(reqscope::outgoing::PropagateContextLayer::new())
        .service(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http())
}
