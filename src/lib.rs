//! # reqscope
//!
//! One task-local **request context** for every request an axum/tower service handles, and a
//! `tracing-subscriber` layer that stamps it on every log line — handler logs, database
//! queries, error reports, spawned tasks and streaming bodies — with no `req` parameter
//! anywhere. The Rust counterpart of Node's `AsyncLocalStorage` request-context pattern.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use reqscope::{MatchedRouteLayer, RequestContext, RequestContextLayer};
//!
//! async fn hello() -> &'static str {
//!     tracing::info!("hello"); // {"…","message":"hello","request_id":"…","method":"GET","path":"/hello",…}
//!     let _user = RequestContext::with(|ctx| ctx.user_id()).flatten();
//!     "hi"
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _guard = reqscope::logging::init_from_env()?; // JSON lines on a non-blocking stdout
//!     let app = Router::new()
//!         .route("/hello", get(hello))
//!         .route_layer(MatchedRouteLayer)
//!         .layer(RequestContextLayer::new());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The parts:
//!
//! - the context itself and the propagation helpers ([`spawn`], [`spawn_blocking`], [`bind`],
//!   [`FutureExt::in_current_context`]) — from `reqscope-core`, always on;
//! - [`RequestContextLayer`] (feature `tower`, default), [`MatchedRouteLayer`] and
//!   [`ApiError`] (feature `axum`: add it for axum apps; it reads the peer address from
//!   `ConnectInfo`) — from `reqscope-tower`; their service, future and body types in [`tower`];
//! - [`logging`]: the stamping [`LogLayer`](logging::LogLayer) and its non-blocking writer — from
//!   `reqscope-tracing`, feature `tracing` (default); [`redact`]: the values lines and Sentry
//!   events write as `"[redacted]"` (on by default), and [`logged_headers`]: the request
//!   headers an access line carries;
//! - [`auth`]: the JWT layer (feature `jwt`, default);
//! - [`rate_limit`]: per-user / per-ip limits with the IETF headers (feature `rate-limit`,
//!   default; Redis with feature `redis`);
//! - [`carry`] and [`job`]: the context carried into queued jobs and other processes, and
//!   [`Envelope`] for messages through in-process channels; `amqp`: RabbitMQ messages through
//!   lapin (feature `amqp`, off by default); [`baggage`]: W3C baggage;
//! - [`trace`]: the W3C trace of each request (`trace_id` and `span_id` on every line), and
//!   [`outgoing`]: calls to other services carry the request id, the [`baggage`] and a
//!   `traceparent` naming a client span of each call's own, with one `reqscope::outgoing` line per call (tower
//!   clients; `reqwest-middleware` with feature `reqwest`; OpenTelemetry spans with feature
//!   `otel`);
//! - [`error_response`]: how the layers' refusals and panics are answered — JSON for HTTP
//!   clients, a trailers-only gRPC status for gRPC clients (tonic), or a format of your own;
//! - [`classify`]: which requests failed (an ERROR access line: HTTP 5xx, gRPC statuses read
//!   from the trailers), [`access_sampling`]: which access lines are written (successful
//!   health checks skipped, a share of the successful requests kept by request id), and
//!   [`peer`]: where the client's address is found;
//! - gRPC: [`RequestContextLayer`] wraps a `tonic::transport::Server` as it wraps a router
//!   (`Server::builder().layer(RequestContextLayer::new())`); with feature `tonic` (off by
//!   default) `client_ip` comes from tonic's `TcpConnectInfo`;
//! - `sentry`: Sentry events with the request and the user (feature `sentry`, off by default);
//! - `websocket`: axum WebSocket connections that keep the upgrade request's context, with
//!   one `websocket closed` line each (feature `websocket`, off by default);
//! - `otlp`: requests, outgoing calls and jobs exported as OpenTelemetry spans, and every
//!   line as a log record, with the lines' ids (feature `otlp`, off by default; gRPC with
//!   `otlp-grpc`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use reqscope_core::{
    Captured, ClientIpHeader, ContextField, Envelope, FieldValue, ForwardedIdPolicy, FutureExt, IdGenerator, InContext,
    InvalidProxy, InvalidRequestId, NoRequestContext, Patch, REQUEST_SPAN_TARGET, RaisedLevel, RequestContext,
    RequestContextBuilder, RequestId, Scoped, TrustedProxies, bind, bind_fn, elapsed, spawn, spawn_blocking,
};

/// W3C Baggage: the `baggage` header, parsed, edited (allow-lists) and written back.
pub mod baggage {
    pub use reqscope_core::baggage::*;
}

/// A serializable snapshot of the request context ([`RequestContext::carry`]) that travels
/// with a queued job or message as headers, validated when restored.
pub mod carry {
    pub use reqscope_core::carry::*;
}

/// Jobs run on behalf of a request, maybe in another process: the carried context restored,
/// `job` / `job_id` / `attempt` on every line, one end line with `outcome`, `duration_ms`,
/// `queue_ms`.
pub mod job {
    pub use reqscope_core::job::*;
}

/// Redaction: which values log lines and error reports write as `"[redacted]"` — the
/// default keys (`password`, `token`, `api_key`, …), keys you add, a hook for values.
pub mod redact {
    pub use reqscope_core::redact::*;
}

/// The request headers kept with the context for the access line
/// (`RequestContextLayer::log_request_headers`), credentials never kept.
pub mod logged_headers {
    pub use reqscope_core::logged_headers::*;
}

/// RabbitMQ (lapin) messages that carry the request context in their headers, and jobs that
/// run inside it (feature `amqp`).
#[cfg(feature = "amqp")]
pub mod amqp {
    pub use reqscope_amqp::*;
}

/// W3C Trace Context: `traceparent` / `tracestate`, validated; the trace of a request.
pub mod trace {
    pub use reqscope_core::trace::*;
}

/// Outgoing calls carry the request id, a `traceparent` and the baggage, each call a client span with a
/// line of its own (feature `tower`; the `reqwest-middleware` middleware with feature
/// `reqwest`).
#[cfg(feature = "tower")]
pub mod outgoing {
    pub use reqscope_tower::outgoing::*;
}

/// Which requests failed, for the access line: HTTP 5xx and gRPC statuses from the trailers
/// by default, a `ClassifyFailure` of your own otherwise (feature `tower`).
#[cfg(feature = "tower")]
pub mod classify {
    pub use reqscope_tower::classify::*;
}

/// Which access lines are written: every one by default, or successful health checks
/// skipped and a share of the successful requests kept by request id, failures and slow
/// requests always (feature `tower`).
#[cfg(feature = "tower")]
pub mod access_sampling {
    pub use reqscope_tower::access_sampling::*;
}

/// Where the connection's peer address is found: axum's `ConnectInfo`, tonic's
/// `TcpConnectInfo` (feature `tonic`), or a `PeerAddr` of your own (feature `tower`).
#[cfg(feature = "tower")]
pub mod peer {
    pub use reqscope_tower::peer::*;
}

/// The services, response futures and bodies the root layers make, for naming them in types
/// (feature `tower`). The module docs of `reqscope_tower` describe each layer in full.
#[cfg(feature = "tower")]
pub mod tower {
    pub use reqscope_tower::catch_panic::{CatchPanic, CatchPanicFuture};
    pub use reqscope_tower::request_context::{ContextBody, RequestContextService, ResponseFuture, X_REQUEST_ID};
    #[cfg(feature = "axum")]
    pub use reqscope_tower::route::MatchedRoute;
}

#[cfg(feature = "axum")]
pub use reqscope_tower::api_error::ApiError;
#[cfg(feature = "tower")]
pub use reqscope_tower::catch_panic::CatchPanicLayer;
#[cfg(feature = "tower")]
pub use reqscope_tower::request_context::RequestContextLayer;
#[cfg(feature = "axum")]
pub use reqscope_tower::route::MatchedRouteLayer;

/// How refusals and panics become responses: HTTP JSON or trailers-only gRPC, chosen per
/// request (feature `tower`).
#[cfg(feature = "tower")]
pub mod error_response {
    pub use reqscope_tower::error_response::*;
}

/// JWT authentication: `AuthLayer`, `RequireRoleLayer`, `Claims` (feature `jwt`).
#[cfg(feature = "jwt")]
pub mod auth {
    pub use reqscope_tower::auth::*;
}

/// Rate limits that feed the context (feature `rate-limit`; Redis with feature `redis`).
#[cfg(feature = "rate-limit")]
pub mod rate_limit {
    pub use reqscope_tower::rate_limit::*;
}

/// Sentry reports carrying the request context (feature `sentry`).
#[cfg(feature = "sentry")]
pub mod sentry {
    pub use reqscope_tower::sentry::*;
}

/// WebSocket connections that run inside the upgrade request's context:
/// `WebSocketUpgradeExt::on_upgrade_in_context`, `ContextWebSocket` (feature `websocket`).
#[cfg(feature = "websocket")]
pub mod websocket {
    pub use reqscope_tower::websocket::*;
}

/// The stamping log layer and its writers (feature `tracing`).
#[cfg(feature = "tracing")]
pub mod logging {
    // Item by item, not a glob: the crate's `otlp` module has its own path, `reqscope::otlp`.
    pub use reqscope_tracing::{
        FieldNames, Format, HoldLimits, InitError, LogLayer, MemoryWriter, NonBlocking, NonBlockingBuilder,
        RequestLevelFilter, WriterGuard, init_from_env, init_from_env_with, init_from_env_with_layer,
        install_log_bridge, non_blocking,
    };
}

/// Spans and log records exported to an OpenTelemetry collector over OTLP, with the ids of
/// the log lines: `Otlp::from_env`, `OtlpLayer` (feature `otlp`).
#[cfg(feature = "otlp")]
pub mod otlp {
    pub use reqscope_tracing::otlp::*;
}
