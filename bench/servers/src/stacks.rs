//! The stacks under comparison. Adding a row (a new layer) is one variant and one match arm.

use std::str::FromStr;

use axum::http::{HeaderName, Request};
use axum::routing::get;
use axum::{Json, Router};
use reqscope::auth::AuthLayer;
use reqscope::logging::{LogLayer, NonBlocking, RequestLevelFilter};
use reqscope::rate_limit::{Quota, RateLimitLayer, RedisStore};
use reqscope::redact::Redaction;
use reqscope::{MatchedRouteLayer, RaisedLevel, RequestContext, RequestContextLayer};
use serde_json::{Value, json};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::handrolled;

/// The HS256 secret of the full stack; `bench-server token` signs with it.
pub const BENCH_SECRET: &[u8] = b"the bench secret, 32 bytes or more";

/// A token the full stack accepts for the next hour, sent on every request of every stack.
pub fn token() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = json!({ "sub": "42", "org_id": "acme", "roles": ["reader"], "exp": now + 3600 });
    reqscope::auth::mint_hs256(BENCH_SECRET, &claims).unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// axum alone.
    Bare,
    /// A hand-rolled `task_local!` request id and a minimal JSON layer: the anchor.
    Handrolled,
    /// reqscope context only: id, scope, `current()` read in the handler; no log output.
    Context,
    /// reqscope context and one stamped JSON line from the handler.
    ContextLog,
    /// reqscope full stack: context, HS256 JWT auth, route, handler line and access line.
    Full,
    /// The same, verifying the token in full on every request (verified-token cache off).
    FullVerifyEach,
    /// The full stack with `Redaction::none()` (`LogLayer::new()` redacts by default).
    FullRedactionOff,
    /// The full stack under `RequestLevelFilter::new(EnvFilter::new("info"))`, as
    /// `init_from_env` installs it; the handler adds a DEBUG line the filter turns away.
    FullLevelFilter,
    /// The same with `keep_until_error(Debug)`: that DEBUG line is kept, then dropped when
    /// the request succeeds.
    FullKeepUntilError,
    /// The full stack plus `RateLimitLayer` with the in-process store (a quota never reached).
    FullRateLimit,
    /// The full stack plus `RateLimitLayer` with the Redis store (`REDIS_URL`, default local).
    FullRedisLimit,
    /// The same with the Redis store's local leases (16 cells per script call, 1 s).
    FullRedisLease,
    /// tower-http SetRequestId/PropagateRequestId + TraceLayer + `fmt().json()`, two lines.
    TowerHttp,
    /// The full stack, its request exported as a span and its lines as log records over
    /// OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://127.0.0.1:4318`).
    FullOtlp,
}

/// The exporter of `full-otlp`, alive as long as the process.
static OTLP: std::sync::OnceLock<reqscope::otlp::Otlp> = std::sync::OnceLock::new();

impl Stack {
    pub const NAMES: [&'static str; 14] = [
        "bare",
        "handrolled",
        "context",
        "context-log",
        "full",
        "full-verify-each",
        "full-redaction-off",
        "full-level-filter",
        "full-keep-until-error",
        "full-rate-limit",
        "full-redis-limit",
        "full-redis-lease",
        "tower-http",
        "full-otlp",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The stack's router. Must run inside the Tokio runtime (the Redis store needs it).
    pub fn router(self, writer: NonBlocking) -> Result<Router, String> {
        Ok(match self {
            Stack::Bare => Router::new().route("/hello", get(hello)),
            Stack::Handrolled => {
                init(tracing_subscriber::registry().with(handrolled::JsonLayer::new(writer)))?;
                handrolled::router(Router::new().route("/hello", get(hello_logged)))
            }
            Stack::Context => {
                Router::new().route("/hello", get(hello_context)).layer(RequestContextLayer::new().access_log(false))
            }
            Stack::ContextLog => {
                init(tracing_subscriber::registry().with(LogLayer::new().with_writer(writer)))?;
                Router::new().route("/hello", get(hello_logged)).layer(RequestContextLayer::new().access_log(false))
            }
            Stack::Full
            | Stack::FullVerifyEach
            | Stack::FullRateLimit
            | Stack::FullRedisLimit
            | Stack::FullRedisLease
            | Stack::FullOtlp => {
                let otlp = if self == Stack::FullOtlp {
                    let otlp = reqscope::otlp::Otlp::builder()
                        .endpoint("http://127.0.0.1:4318")
                        .default_service_name("bench-server")
                        .build()
                        .map_err(|e| e.to_string())?;
                    Some(OTLP.get_or_init(|| otlp).layer())
                } else {
                    None
                };
                init(tracing_subscriber::registry().with(otlp).with(LogLayer::new().with_writer(writer)))?;
                self.full_router()?
            }
            Stack::FullRedactionOff => {
                let log = LogLayer::new().redaction(Redaction::none()).with_writer(writer);
                init(tracing_subscriber::registry().with(log))?;
                self.full_router()?
            }
            Stack::FullLevelFilter | Stack::FullKeepUntilError => {
                let keep = (self == Stack::FullKeepUntilError).then_some(RaisedLevel::Debug);
                let filter = RequestLevelFilter::new(EnvFilter::new("info")).keep_until_error(keep);
                init(tracing_subscriber::registry().with(filter).with(LogLayer::new().with_writer(writer)))?;
                self.full_router()?
            }
            Stack::TowerHttp => {
                init(tracing_subscriber::fmt().json().with_writer(writer).finish())?;
                let x_request_id = HeaderName::from_static("x-request-id");
                Router::new()
                    .route("/hello", get(hello_logged))
                    .layer(
                        TraceLayer::new_for_http()
                            .make_span_with(|request: &Request<_>| {
                                let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok());
                                tracing::info_span!(
                                    "request",
                                    request_id = id.unwrap_or_default(),
                                    method = %request.method(),
                                    path = request.uri().path(),
                                )
                            })
                            .on_request(())
                            .on_response(DefaultOnResponse::new().level(Level::INFO)),
                    )
                    .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
                    .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
            }
        })
    }
}

impl Stack {
    /// The full stack's router: the layers of every `full*` row, around its handler.
    fn full_router(self) -> Result<Router, String> {
        let auth = AuthLayer::hmac(BENCH_SECRET);
        let auth = if self == Stack::FullVerifyEach { auth.without_verified_token_cache() } else { auth };
        let handler = match self {
            Stack::FullLevelFilter | Stack::FullKeepUntilError => get(hello_logged_with_debug),
            _ => get(hello_logged),
        };
        let mut router = Router::new().route("/hello", handler).route_layer(MatchedRouteLayer);
        if let Some(limit) = self.rate_limit()? {
            router = router.route_layer(limit);
        }
        Ok(router.route_layer(auth).layer(RequestContextLayer::new()))
    }

    /// The rate limit of the stacks that have one: a quota the benchmark never reaches, so
    /// that every request pays for a check and gets its headers.
    fn rate_limit(self) -> Result<Option<RateLimitLayer>, String> {
        let quota = Quota::per_second(u32::MAX).map_err(|e| e.to_string())?;
        Ok(match self {
            Stack::FullRateLimit => Some(RateLimitLayer::new(quota)),
            Stack::FullRedisLimit => Some(RateLimitLayer::redis(quota, redis_store()?)),
            Stack::FullRedisLease => Some(RateLimitLayer::redis(quota, redis_store()?.local_lease(16))),
            _ => None,
        })
    }
}

/// Installs a stack's subscriber, under `BENCH_MAX_LEVEL` (`info`, …) when it is set. The
/// h2c rows set it: the h2 crate emits DEBUG and TRACE events of its own, which an unfiltered
/// subscriber would write (HTTP/1.1 through hyper emits none). Not for the level rows, whose
/// DEBUG line it would filter out before their own filter sees it.
pub fn init(subscriber: impl Subscriber + Send + Sync + 'static) -> Result<(), String> {
    let max_level = match std::env::var("BENCH_MAX_LEVEL") {
        Ok(level) => Some(level.parse::<LevelFilter>().map_err(|_| format!("bad BENCH_MAX_LEVEL {level:?}"))?),
        Err(_) => None,
    };
    subscriber.with(max_level).try_init().map_err(|e| e.to_string())
}

/// A Redis store on `REDIS_URL` (default the local server) with a prefix of this process.
pub fn redis_store() -> Result<RedisStore, String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = RedisStore::open(&url).map_err(|e| e.to_string())?;
    Ok(store.prefix(format!("reqscope-bench:{}:", std::process::id())))
}

impl FromStr for Stack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            Stack::Bare,
            Stack::Handrolled,
            Stack::Context,
            Stack::ContextLog,
            Stack::Full,
            Stack::FullVerifyEach,
            Stack::FullRedactionOff,
            Stack::FullLevelFilter,
            Stack::FullKeepUntilError,
            Stack::FullRateLimit,
            Stack::FullRedisLimit,
            Stack::FullRedisLease,
            Stack::TowerHttp,
            Stack::FullOtlp,
        ];
        all.into_iter().find(|stack| stack.name() == s).ok_or_else(|| format!("unknown stack {s:?}"))
    }
}

async fn hello() -> Json<Value> {
    Json(json!({ "message": "hello" }))
}

async fn hello_context() -> Json<Value> {
    let id_len = RequestContext::with(|ctx| ctx.id().as_str().len());
    std::hint::black_box(id_len);
    Json(json!({ "message": "hello" }))
}

async fn hello_logged() -> Json<Value> {
    tracing::info!(greeting = "hello", "saying hello");
    Json(json!({ "message": "hello" }))
}

/// `hello_logged` plus a DEBUG line: what the level rows filter out, or keep and drop.
async fn hello_logged_with_debug() -> Json<Value> {
    tracing::debug!(rows = 3u64, table = "users", "query done");
    hello_logged().await
}
