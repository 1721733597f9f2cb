//! Micro-benchmarks of the per-request and per-event costs.
//!
//! ```text
//! cargo bench --bench stamping
//! ```
//!
//! - `context/*`: id generation and validation, building a context and scoping a future with
//!   it, reading it back.
//! - `event/*`: one event with 8 context fields (request id, trace id, span id, user, org,
//!   method, path, route) and 2 event fields, written to a sink, by reqscope's `LogLayer` and
//!   by `tracing_subscriber::fmt().json()` with the same 8 fields on an entered span;
//!   `event/reqscope_json_to_sink` with the default redaction (on, no sensitive key in the
//!   event) and `event/reqscope_json_redaction_off` with `Redaction::none()`;
//!   `event/reqscope_ecs` and `event/reqscope_gcp`: the same event and context in the ECS and
//!   Google Cloud formats (with paired runs against the JSON line printed first).
//! - `request/*`: one `GET /hello` through axum in process (no socket): bare, with
//!   `RequestContextLayer` added by `Router::layer`, and wrapping the finished router.
//! - `request_logged/*`: the same with a subscriber and one log line from the handler.
//! - `jwt_verify/*`: one bearer token through `AuthLayer`: full verification with HS256,
//!   RS256 and ES256, and an HS256 token found in the verified-token cache.
//! - `rate_limit/*`: one request through `RateLimitLayer` with the in-process store: a key it
//!   has seen (one user), and a new key every time (a flood of distinct client ips, the store
//!   at its bound and evicting).
//!
//! - `grpc/*`: one unary gRPC call (`reqscope.example.v1.Users/GetUser`, the example's
//!   service definition) through tonic in process: bare tonic, with `RequestContextLayer`,
//!   and with the layer, a subscriber and one stamped line from the handler (bare tonic with
//!   the same subscriber and line as its baseline), then with the access line as well.
//! - `trace/*`: parsing an incoming `traceparent` (with its `tracestate`), starting a new
//!   trace, and adding the id and a child `traceparent` to an outgoing request's headers.
//! - `baggage/*`: parsing an incoming `baggage` of 3 members and one of 180, writing one back,
//!   and one event stamped with a listed baggage entry (its heap allocations printed first).
//!
//! - `carry/*`: a context with user, org, roles, a custom and a hidden field and one baggage
//!   entry: its snapshot written as headers, the headers validated and restored into a
//!   context, and a restored job run to its end line (no subscriber).
//!
//! - `otlp/*`: a request's handler line and access line through `LogLayer`, alone and with
//!   `OtlpLayer` (two log records and a server span built and handed to the SDK), on the
//!   calling thread.
//! - `level/*`: one INFO event under `EnvFilter::new("info")` (what `init_from_env`
//!   installed before the request-level filter) and under `RequestLevelFilter` wrapping it,
//!   no request raised; a DEBUG event both filters drop; a DEBUG line of a raised request,
//!   written; and, with `keep_until_error`, a DEBUG line kept in its request's buffer against
//!   the same line of a raised request, written — to a sink, and through the non-blocking
//!   writer.
//!
//! Before the timings it prints heap allocations per event and per request, counted by a
//! global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use reqscope::logging::LogLayer;
use reqscope::{RequestContext, RequestContextLayer, RequestId};
use tracing_subscriber::prelude::*;

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const FORWARDED: &[u8] = b"67e55044-10b1-426f-9247-bb680e5fe0c8";

fn request_context() -> Arc<RequestContext> {
    let ctx = RequestContext::builder(RequestId::from_bytes(FORWARDED).unwrap())
        .method(http::Method::GET)
        .path("/users/42")
        .trace(reqscope::trace::TraceContext::new_root())
        .build_shared();
    ctx.set_user_id("42");
    ctx.set_org_id("acme");
    ctx.set_route("/users/{id}");
    ctx
}

fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fn context(c: &mut Criterion) {
    let mut group = c.benchmark_group("context");
    group.bench_function("generate_uuid_v4", |b| b.iter(RequestId::new_v4));
    group.bench_function("generate_uuid_v7", |b| b.iter(RequestId::new_v7));
    group.bench_function("validate_forwarded_36b", |b| b.iter(|| RequestId::from_bytes(black_box(FORWARDED))));
    group.bench_function("build_scope_current", |b| {
        b.iter(|| {
            let ctx = RequestContext::builder(RequestId::new_v4())
                .method(http::Method::GET)
                .path(black_box("/users/42"))
                .build_shared();
            poll_once(RequestContext::scope(ctx, async { RequestContext::current().map(|c| c.id().as_str().len()) }))
        })
    });
    let ctx = request_context();
    RequestContext::scope_sync(ctx, || {
        group.bench_function("with_read_id", |b| b.iter(|| RequestContext::with(|c| c.id().as_str().len())));
        group.bench_function("current_clone", |b| b.iter(RequestContext::current));
    });
    group.finish();
}

fn emit() {
    tracing::info!(rows = 3u64, table = "users", "query done");
}

/// Heap allocations per `emit()` under the current subscriber, averaged over 10,000 events.
fn allocations_per_event() -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        emit();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
}

fn event(c: &mut Criterion) {
    let reqscope = tracing_subscriber::registry().with(LogLayer::new().with_writer(std::io::sink));
    let ctx = request_context();
    tracing::subscriber::with_default(reqscope, || {
        RequestContext::scope_sync(ctx.clone(), || {
            for _ in 0..100 {
                emit();
            }
            println!("reqscope LogLayer: {} heap allocations per stamped event", allocations_per_event());
            c.bench_function("event/reqscope_json_to_sink", |b| b.iter(emit));
        })
    });
    let unredacted = tracing_subscriber::registry()
        .with(LogLayer::new().redaction(reqscope::redact::Redaction::none()).with_writer(std::io::sink));
    tracing::subscriber::with_default(unredacted, || {
        RequestContext::scope_sync(ctx.clone(), || {
            c.bench_function("event/reqscope_json_redaction_off", |b| b.iter(emit));
        })
    });

    let formats = [
        ("event/reqscope_ecs", reqscope::logging::Format::Ecs),
        ("event/reqscope_gcp", reqscope::logging::Format::Gcp),
    ];
    let json: tracing::Dispatch =
        tracing_subscriber::registry().with(LogLayer::new().with_writer(std::io::sink)).into();
    for (name, format) in formats {
        let dispatch: tracing::Dispatch =
            tracing_subscriber::registry().with(LogLayer::new().with_format(format).with_writer(std::io::sink)).into();
        tracing::dispatcher::with_default(&dispatch, || {
            RequestContext::scope_sync(ctx.clone(), || {
                for _ in 0..100 {
                    emit();
                }
                println!("{name}: {} heap allocations per stamped event", allocations_per_event());
            })
        });
        paired(
            &format!("{name} against JSON"),
            ("JSON", &json, &request_context),
            (name, &dispatch, &request_context),
            emit,
            None,
        );
        tracing::dispatcher::with_default(&dispatch, || {
            RequestContext::scope_sync(ctx.clone(), || c.bench_function(name, |b| b.iter(emit)))
        });
    }

    let fmt_json = tracing_subscriber::fmt().json().with_writer(std::io::sink).finish();
    tracing::subscriber::with_default(fmt_json, || {
        let span = tracing::info_span!(
            "request",
            request_id = "67e55044-10b1-426f-9247-bb680e5fe0c8",
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id = "00f067aa0ba902b7",
            user_id = "42",
            org_id = "acme",
            method = "GET",
            path = "/users/42",
            route = "/users/{id}"
        );
        let _entered = span.enter();
        println!("fmt().json(): {} heap allocations per event", allocations_per_event());
        c.bench_function("event/fmt_json_span_to_sink", |b| b.iter(emit));
    });
}

/// Serves one request in process (no socket) and counts its allocations, then times it.
fn bench_request<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    name: &str,
    service: S,
) where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    // A URI sharing its buffer, as hyper's parser produces; and the `host` header every
    // HTTP/1.1 request carries, so that the header map exists as it does in a served request.
    let uri = http::Uri::from_maybe_shared(bytes::Bytes::from_static(b"/hello")).unwrap();
    let one_request = || {
        let request = http::Request::get(uri.clone())
            .header(http::header::HOST, http::HeaderValue::from_static("localhost"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = poll_once(service.clone().oneshot(request)).unwrap().unwrap();
        poll_once(response.into_body().collect()).unwrap().unwrap().to_bytes()
    };
    count_then_time(group, &format!("{group_name}/{name}"), "request", name, one_request);
}

/// Prints the heap allocations of one run of `run` (averaged over 1,000), then times it.
fn count_then_time<T>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    unit: &str,
    name: &str,
    run: impl Fn() -> T,
) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1_000 {
        run();
    }
    let per_run = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1_000.0;
    println!("{label}: {per_run} heap allocations per {unit}");
    group.bench_function(name, |b| b.iter(&run));
}

/// One request through axum, bare and with the context layer: the layer's own cost.
fn layer(c: &mut Criterion) {
    use axum::routing::get;
    use tower::Layer;

    async fn hello() -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({ "message": "hello" }))
    }
    // `with_state` prepares the routes once, as `axum::serve` does.
    let bare = axum::Router::new().route("/hello", get(hello)).with_state(());
    let context = || RequestContextLayer::new().access_log(false);
    let mut group = c.benchmark_group("request");
    bench_request(&mut group, "request", "bare_axum", bare.clone());
    // `Router::layer` boxes the layered route's future and re-boxes the response body.
    bench_request(
        &mut group,
        "request",
        "router_layer",
        axum::Router::new().route("/hello", get(hello)).layer(context()).with_state(()),
    );
    // Wrapping the finished router avoids both.
    bench_request(&mut group, "request", "wrapping_the_router", context().layer(bare));
    group.finish();

    // The same with a subscriber and one log line from the handler: what a stamped line costs
    // on the request path (formatting, the request span, the writer's buffer).
    async fn hello_logged() -> axum::Json<serde_json::Value> {
        tracing::info!(greeting = "hello", "saying hello");
        axum::Json(serde_json::json!({ "message": "hello" }))
    }
    let (writer, _guard) = reqscope::logging::non_blocking(std::io::sink());
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(writer));
    tracing::subscriber::with_default(subscriber, || {
        let mut group = c.benchmark_group("request_logged");
        let logged = axum::Router::new().route("/hello", get(hello_logged)).with_state(());
        bench_request(&mut group, "request_logged", "bare_axum", logged.clone());
        bench_request(&mut group, "request_logged", "context_and_line", context().layer(logged));
        group.finish();
    });
}

/// Verifying one bearer token through `AuthLayer` (header parsing, key lookup, signature,
/// claims into the context) in process, per algorithm.
fn jwt(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use reqscope::auth::AuthLayer;
    use tower::{Layer, ServiceExt};

    let fixture = |name: &str| std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let claims = serde_json::json!({ "sub": "42", "org_id": "acme", "roles": ["reader"], "exp": 4_102_444_800u64 });
    let secret = b"a bench secret that is at least 32 bytes";
    let sign = |alg, key: &EncodingKey| jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap();
    let hs256 = sign(Algorithm::HS256, &EncodingKey::from_secret(secret));
    let cases = [
        ("hs256", AuthLayer::hmac(secret).without_verified_token_cache(), hs256.clone()),
        ("hs256_cached_token", AuthLayer::hmac(secret), hs256),
        (
            "rs256",
            AuthLayer::rsa_pem(fixture("rsa_a_public.pem")).unwrap().without_verified_token_cache(),
            sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&fixture("rsa_a_private.pem")).unwrap()),
        ),
        (
            "es256",
            AuthLayer::ec_pem(fixture("ec256_public.pem")).unwrap().without_verified_token_cache(),
            sign(Algorithm::ES256, &EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).unwrap()),
        ),
    ];
    let mut group = c.benchmark_group("jwt_verify");
    for (name, auth, token) in cases {
        let service = auth.layer(tower::service_fn(|_: http::Request<axum::body::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        }));
        let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let ctx = Arc::new(RequestContext::new(RequestId::new_v4()));
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = http::Request::get("/")
                    .header("authorization", bearer.clone())
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = RequestContext::scope_sync(ctx.clone(), || poll_once(service.clone().oneshot(request)));
                assert_eq!(response.unwrap().unwrap().status(), 200);
            })
        });
    }
    group.finish();
}

/// One request through `RateLimitLayer` (in-process store) around a service that answers at
/// once: the limiter's own cost, headers and context patch included.
fn rate_limit(c: &mut Criterion) {
    use reqscope::rate_limit::{Quota, RateLimitLayer};
    use tower::{Layer, ServiceExt};

    let limit = RateLimitLayer::new(Quota::per_second(u32::MAX).unwrap()).max_keys(10_000);
    let service = limit.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let call = |ctx: Arc<RequestContext>| {
        let response = RequestContext::scope_sync(ctx, || poll_once(service.clone().oneshot(http::Request::new(()))));
        assert_eq!(response.unwrap().unwrap().status(), 200);
    };
    let user = request_context();
    call(user.clone());
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        call(user.clone());
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0;
    println!("rate_limit/known_key: {per_request} heap allocations per request");

    let mut group = c.benchmark_group("rate_limit");
    let bare = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    group.bench_function("no_limit_baseline", |b| {
        b.iter(|| {
            let response = RequestContext::scope_sync(user.clone(), || poll_once(bare.oneshot(http::Request::new(()))));
            assert_eq!(response.unwrap().unwrap().status(), 200);
        })
    });
    group.bench_function("known_key", |b| b.iter(|| call(user.clone())));
    let mut n: u32 = 0;
    group.bench_function("new_key_each_time", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(n));
            call(RequestContext::builder(RequestId::new_v4()).client_ip(ip).build_shared());
        })
    });
    group.finish();
}

fn trace(c: &mut Criterion) {
    use reqscope::outgoing::inject_headers;
    use reqscope::tower::X_REQUEST_ID;
    use reqscope::trace::TraceContext;

    let mut incoming = http::HeaderMap::new();
    incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    incoming.insert("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse().unwrap());
    let mut group = c.benchmark_group("trace");
    group.bench_function("continue_from_headers", |b| b.iter(|| TraceContext::from_headers(black_box(&incoming))));
    group.bench_function("new_root", |b| b.iter(TraceContext::new_root));
    RequestContext::scope_sync(request_context(), || {
        group.bench_function("inject_outgoing_headers", |b| {
            b.iter(|| {
                let mut headers = http::HeaderMap::new();
                inject_headers(&mut headers, &X_REQUEST_ID);
                headers
            })
        });
    });
    group.finish();
}

fn carry(c: &mut Criterion) {
    use reqscope::carry::Carried;
    use reqscope::job::Job;

    let ctx = request_context();
    ctx.set_roles(["admin", "billing"]);
    ctx.set_field("tenant", "acme");
    ctx.set_hidden_field("device_id", "d-4f2a");
    ctx.set_baggage("session", "s-19").unwrap();
    let headers = ctx.carry().to_headers();
    let mut group = c.benchmark_group("carry");
    group.bench_function("snapshot_to_headers", |b| b.iter(|| black_box(&ctx).carry().to_headers()));
    group.bench_function("restore_from_headers", |b| {
        b.iter(|| Carried::from_headers(black_box(&headers)).map(Carried::into_context))
    });
    let job = Job::new("welcome_email").with_id("m-1");
    group.bench_function("restore_run_job_no_subscriber", |b| {
        b.iter(|| poll_once(job.clone().run(Carried::from_headers(black_box(&headers)), async { Ok::<_, &str>(()) })))
    });
    group.finish();
}

fn baggage(c: &mut Criterion) {
    use reqscope::baggage::Baggage;

    let typical = b"session=4f1c2a9e,tenant=acme,user.name=Ren%C3%A9;visible".to_vec();
    let full: Vec<u8> = (0..180).map(|i| format!("key{i}=value{i}")).collect::<Vec<_>>().join(",").into_bytes();
    assert_eq!(Baggage::parse(&full).map(|b| b.len()), Ok(180));
    let mut group = c.benchmark_group("baggage");
    group.bench_function("parse_3_members", |b| b.iter(|| Baggage::parse(black_box(&typical))));
    group.bench_function("parse_180_members", |b| b.iter(|| Baggage::parse(black_box(&full))));
    let parsed = Baggage::parse(&typical).unwrap();
    group.bench_function("write_3_members", |b| b.iter(|| black_box(&parsed).to_header_value()));
    group.finish();

    let subscriber =
        tracing_subscriber::registry().with(LogLayer::new().baggage_fields(["session"]).with_writer(std::io::sink));
    let ctx = request_context();
    let shared = Arc::new(parsed);
    ctx.update(|patch| patch.baggage = Arc::clone(&shared));
    tracing::subscriber::with_default(subscriber, || {
        RequestContext::scope_sync(ctx, || {
            for _ in 0..100 {
                emit();
            }
            println!(
                "reqscope LogLayer with baggage.session: {} heap allocations per stamped event",
                allocations_per_event()
            );
            c.bench_function("baggage/event_with_session_to_sink", |b| b.iter(emit));
        })
    });
}

/// The example's `Users` service without a database: `GetUser` answers at once.
struct Users {
    log: bool,
}

#[tonic::async_trait]
impl reqscope_example_proto::users_server::Users for Users {
    async fn get_user(
        &self,
        request: tonic::Request<reqscope_example_proto::GetUserRequest>,
    ) -> Result<tonic::Response<reqscope_example_proto::User>, tonic::Status> {
        let id = request.into_inner().id;
        if self.log {
            tracing::info!(user = id, "loading a user");
        }
        let name = "Ada Lovelace".to_owned();
        Ok(tonic::Response::new(reqscope_example_proto::User { id, name, email: "ada@example.com".to_owned() }))
    }

    async fn who_am_i(
        &self,
        _: tonic::Request<reqscope_example_proto::WhoAmIRequest>,
    ) -> Result<tonic::Response<reqscope_example_proto::User>, tonic::Status> {
        Err(tonic::Status::unimplemented("not benchmarked"))
    }

    type CountUpStream = futures_util::stream::Empty<Result<reqscope_example_proto::Tick, tonic::Status>>;

    async fn count_up(
        &self,
        _: tonic::Request<reqscope_example_proto::CountUpRequest>,
    ) -> Result<tonic::Response<Self::CountUpStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not benchmarked"))
    }
}

/// Serves one unary gRPC call in process (no socket) and counts its allocations, then times it.
fn bench_grpc<S, B>(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, service: S)
where
    S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use prost::Message as _;
    use tower::ServiceExt;

    // A length-prefixed, uncompressed message, as a gRPC client sends it.
    let message = reqscope_example_proto::GetUserRequest { id: 42 }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let frame = bytes::Bytes::from(frame);
    let uri = http::Uri::from_static("/reqscope.example.v1.Users/GetUser");
    let one_call = || {
        let request = http::Request::post(uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(frame.clone()))
            .unwrap();
        let response = poll_once(service.clone().oneshot(request)).unwrap().unwrap();
        let body = poll_once(response.into_body().collect()).unwrap().unwrap();
        assert_eq!(body.trailers().and_then(|t| t.get("grpc-status")).map(|s| s.as_bytes()), Some(&b"0"[..]));
        body.to_bytes()
    };
    count_then_time(group, &format!("grpc/{name}"), "call", name, one_call);
}

/// One unary call through tonic, bare and with the context layer: the layer's cost on gRPC.
fn grpc(c: &mut Criterion) {
    use reqscope_example_proto::users_server::UsersServer;
    use tower::Layer;

    let context = || RequestContextLayer::new().access_log(false);
    let mut group = c.benchmark_group("grpc");
    bench_grpc(&mut group, "bare_tonic", UsersServer::new(Users { log: false }));
    bench_grpc(&mut group, "context", context().layer(UsersServer::new(Users { log: false })));
    let (writer, _guard) = reqscope::logging::non_blocking(std::io::sink());
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(writer));
    tracing::subscriber::with_default(subscriber, || {
        bench_grpc(&mut group, "bare_tonic_and_line", UsersServer::new(Users { log: true }));
        bench_grpc(&mut group, "context_and_line", context().layer(UsersServer::new(Users { log: true })));
        // The access line too: the classifier reads `grpc-status` from the trailers.
        let with_access_line = RequestContextLayer::new().layer(UsersServer::new(Users { log: true }));
        bench_grpc(&mut group, "context_line_and_access_line", with_access_line);
    });
    group.finish();
}

fn debug_emit() {
    tracing::debug!(rows = 3u64, table = "users", "query done");
}

/// One side of [`paired`]: a name, a subscriber, and the contexts its events run in.
type Side<'a> = (&'a str, &'a tracing::Dispatch, &'a dyn Fn() -> Arc<RequestContext>);

/// Nanoseconds per `f()` on side `a` and on side `b`, measured in short rounds that alternate
/// (A B, then B A, …: a machine that speeds up or slows down meanwhile affects both alike):
/// the median and the fastest round of each, and their ratios. Every 64 events run in a new
/// context of their side. With `flush`, each round also waits for the writer thread to
/// write what it was given, so that its work stays within its side's rounds.
fn paired(what: &str, a: Side<'_>, b: Side<'_>, f: fn(), flush: Option<&reqscope::logging::NonBlocking>) {
    const ROUNDS: usize = 201;
    const PER_ROUND: u32 = 64;
    const REPEATS: u32 = 20;
    let mut times = [Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS)];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (_, dispatch, ctx) = [a, b][i];
            let mut spent = std::time::Duration::ZERO;
            tracing::dispatcher::with_default(dispatch, || {
                for _ in 0..REPEATS {
                    RequestContext::scope_sync(ctx(), || {
                        let start = std::time::Instant::now();
                        for _ in 0..PER_ROUND {
                            f();
                        }
                        spent += start.elapsed();
                    });
                }
            });
            if let Some(writer) = flush {
                writer.flush_timeout(std::time::Duration::from_secs(5));
            }
            times[i].push(spent.as_nanos() as f64 / f64::from(PER_ROUND * REPEATS));
        }
    }
    let [a_times, b_times] = &mut times;
    a_times.sort_by(f64::total_cmp);
    b_times.sort_by(f64::total_cmp);
    let (ma, mb) = (a_times[ROUNDS / 2], b_times[ROUNDS / 2]);
    let (fa, fb) = (a_times[0], b_times[0]);
    println!(
        "{what}: median {} {ma:.1} ns, {} {mb:.1} ns per event ({:+.1}%); fastest round {fa:.1} ns, {fb:.1} ns ({:+.1}%)",
        a.0,
        b.0,
        (mb / ma - 1.0) * 100.0,
        (fb / fa - 1.0) * 100.0
    );
}

/// The request-level filter: its cost when no request is raised, and a kept line against a
/// written one. Last of all: once a line has been kept, every log layer of the process checks
/// ERROR and access lines for kept lines.
fn level(c: &mut Criterion) {
    use reqscope::RaisedLevel;
    use reqscope::logging::RequestLevelFilter;
    use tracing_subscriber::EnvFilter;

    let mut group = c.benchmark_group("level");
    let ctx = request_context();
    {
        let env: tracing::Dispatch = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(LogLayer::new().with_writer(std::io::sink))
            .into();
        let wrapped: tracing::Dispatch = tracing_subscriber::registry()
            .with(RequestLevelFilter::new(EnvFilter::new("info")))
            .with(LogLayer::new().with_writer(std::io::sink))
            .into();
        let plain = request_context;
        paired(
            "INFO line, no request raised",
            ("EnvFilter", &env, &plain),
            ("RequestLevelFilter", &wrapped, &plain),
            emit,
            None,
        );
        paired(
            "DEBUG event dropped",
            ("EnvFilter", &env, &plain),
            ("RequestLevelFilter", &wrapped, &plain),
            debug_emit,
            None,
        );
        let keep = || RequestLevelFilter::new(EnvFilter::new("info")).keep_until_error(Some(RaisedLevel::Debug));
        // A real file, so that the writer thread makes its system calls.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");
        let (writer, _guard) = reqscope::logging::non_blocking(null);
        let non_blocking: tracing::Dispatch = tracing_subscriber::registry()
            .with(keep())
            .with(LogLayer::new().with_writer(reqscope::logging::NonBlocking::clone(&writer)))
            .into();
        let to_sink: tracing::Dispatch =
            tracing_subscriber::registry().with(keep()).with(LogLayer::new().with_writer(std::io::sink)).into();
        let raised = || {
            let ctx = request_context();
            ctx.raise_level(Some(RaisedLevel::Debug));
            ctx
        };
        // Written: the same line in a raised request, through the same subscriber.
        let (written, kept) =
            (("written (raised request)", &non_blocking, &raised as _), ("kept", &non_blocking, &plain as _));
        paired("DEBUG line, non-blocking writer to /dev/null", written, kept, debug_emit, Some(&writer));
        let (written, kept) = (("written (raised request)", &to_sink, &raised as _), ("kept", &to_sink, &plain as _));
        paired("DEBUG line, io::sink", written, kept, debug_emit, None);
        // Lines have been kept by now: every layer looks at ERROR and access lines.
        paired(
            "INFO line, keeping DEBUG lines",
            ("EnvFilter", &env, &plain),
            ("RequestLevelFilter", &to_sink, &plain),
            emit,
            None,
        );
    }
    let in_request = |subscriber: tracing::Dispatch, f: &mut dyn FnMut()| {
        tracing::dispatcher::with_default(&subscriber, || RequestContext::scope_sync(ctx.clone(), f));
    };
    let env =
        || tracing_subscriber::registry().with(EnvFilter::new("info")).with(LogLayer::new().with_writer(std::io::sink));
    let wrapped = || {
        tracing_subscriber::registry()
            .with(RequestLevelFilter::new(EnvFilter::new("info")))
            .with(LogLayer::new().with_writer(std::io::sink))
    };
    in_request(env().into(), &mut || {
        group.bench_function("info_env_filter", |b| b.iter(emit));
        group.bench_function("debug_dropped_env_filter", |b| b.iter(debug_emit));
    });
    in_request(wrapped().into(), &mut || {
        group.bench_function("info_request_filter", |b| b.iter(emit));
        group.bench_function("debug_dropped_request_filter", |b| b.iter(debug_emit));
    });
    let raised = request_context();
    raised.raise_level(Some(RaisedLevel::Debug));
    tracing::dispatcher::with_default(&wrapped().into(), || {
        RequestContext::scope_sync(Arc::clone(&raised), || {
            group.bench_function("debug_raised_written", |b| b.iter(debug_emit));
        })
    });
    raised.raise_level(None);

    // Kept lines, 64 to a request (a fresh context each time: a request's buffer is
    // allocated), against the same DEBUG lines of raised requests, written; the contexts are
    // built and dropped outside the timing.
    fn per_request(raised: bool, subscriber: &tracing::Dispatch) -> impl FnMut(u64) -> std::time::Duration + '_ {
        move |iters: u64| {
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters;
            tracing::dispatcher::with_default(subscriber, || {
                while left > 0 {
                    let batch = left.min(64);
                    let ctx = request_context();
                    ctx.raise_level(raised.then_some(RaisedLevel::Debug));
                    RequestContext::scope_sync(ctx, || {
                        let start = std::time::Instant::now();
                        for _ in 0..batch {
                            debug_emit();
                        }
                        spent += start.elapsed();
                    });
                    left -= batch;
                }
            });
            spent
        }
    }
    let keep = || RequestLevelFilter::new(EnvFilter::new("info")).keep_until_error(Some(RaisedLevel::Debug));
    let to_sink: tracing::Dispatch =
        tracing_subscriber::registry().with(keep()).with(LogLayer::new().with_writer(std::io::sink)).into();
    let (writer, _guard) = reqscope::logging::non_blocking(std::io::sink());
    let non_blocking: tracing::Dispatch =
        tracing_subscriber::registry().with(keep()).with(LogLayer::new().with_writer(writer)).into();
    tracing::dispatcher::with_default(&to_sink, || {
        RequestContext::scope_sync(request_context(), || {
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for _ in 0..200 {
                debug_emit();
            }
            let per_line = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 200.0;
            println!("kept DEBUG lines: {per_line} heap allocations per line (the request's first 200)");
        })
    });
    group.bench_function("debug_written_sink", |b| b.iter_custom(per_request(true, &to_sink)));
    group.bench_function("debug_kept_sink", |b| b.iter_custom(per_request(false, &to_sink)));
    group.bench_function("debug_written_non_blocking", |b| b.iter_custom(per_request(true, &non_blocking)));
    group.bench_function("debug_kept_non_blocking", |b| b.iter_custom(per_request(false, &non_blocking)));
    // A request at its bound of 256 lines: the oldest line's buffer is reused.
    in_request(to_sink.clone(), &mut || {
        group.bench_function("debug_kept_at_bound", |b| b.iter(debug_emit));
    });
    group.finish();
}

/// A request's two lines (the handler's and the access line) through `LogLayer` alone and with
/// `OtlpLayer` next to it: the cost on the request's own thread, what the SDK's batch threads
/// do being elsewhere. The exporter points at a collector that takes connections and never
/// answers, so those threads wait in their first exports and the queues soon stay full: each
/// record and span is still built and offered to them, and dropped there.
fn otlp(c: &mut Criterion) {
    // Never accepted: the kernel completes the connections, the requests sit unread.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let endpoint = format!("http://{}", silent.local_addr().expect("its address"));
    let otlp = reqscope::otlp::Otlp::builder()
        .endpoint(endpoint)
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("the exporter");
    let lines = || {
        emit();
        tracing::info!(target: "reqscope::access", status = 200u64, duration_ms = 1.25, bytes = 17u64, "request completed");
    };
    let ctx = request_context();
    let mut group = c.benchmark_group("otlp");
    let plain = tracing_subscriber::registry().with(LogLayer::new().with_writer(std::io::sink));
    tracing::subscriber::with_default(plain, || {
        RequestContext::scope_sync(ctx.clone(), || group.bench_function("request_lines_log_only", |b| b.iter(lines)))
    });
    let exported = tracing_subscriber::registry().with(otlp.layer()).with(LogLayer::new().with_writer(std::io::sink));
    tracing::subscriber::with_default(exported, || {
        RequestContext::scope_sync(ctx.clone(), || group.bench_function("request_lines_exported", |b| b.iter(lines)))
    });
    group.finish();
    // Not flushed: its exports would wait for the silent collector.
    std::mem::forget(otlp);
    drop(silent);
}

criterion_group!(benches, context, event, layer, jwt, rate_limit, grpc, trace, baggage, carry, level, otlp);
criterion_main!(benches);
