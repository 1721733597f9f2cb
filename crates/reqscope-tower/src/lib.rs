//! Tower layers for reqscope.
//!
//! - [`RequestContextLayer`](request_context::RequestContextLayer) gives every request its [`RequestContext`](reqscope_core::RequestContext):
//!   it assigns or forwards the request id, echoes it on every response, scopes the context
//!   around the inner service *and every poll of the response body*, opens the request span
//!   and writes one access-log event per request, with the request headers you list.
//!   Which requests failed (an ERROR access line) is the [`classify`] module's call: HTTP
//!   5xx and server-side gRPC statuses, read from the trailers, by default; where the peer
//!   address comes from is the [`peer`] module's (axum's `ConnectInfo`, tonic's
//!   `TcpConnectInfo` with feature `tonic`, or your own reader).
//!   Which access lines are written is the [`access_sampling`] module's: every one by
//!   default; or successful health checks skipped and a share of the successful requests
//!   kept, chosen by request id so that every service of a chain keeps the same ones.
//! - [`MatchedRouteLayer`](route::MatchedRouteLayer) (feature `axum`) records axum's matched route template into the
//!   context.
//! - [`CatchPanicLayer`](catch_panic::CatchPanicLayer) turns a panicking handler into 500 JSON (gRPC: `INTERNAL`) and one
//!   stamped ERROR event.
//! - [`auth::AuthLayer`] (feature `jwt`) verifies JWT bearer tokens and patches user, org and
//!   roles into the context; [`auth::RequireRoleLayer`] guards a route by role.
//! - [`rate_limit::RateLimitLayer`] (feature `rate-limit`; Redis with feature `redis`) limits
//!   requests per user or client ip and puts the remaining budget into the context.
//! - [`error_response`]: how these layers answer a refusal or a panic — HTTP JSON, or a
//!   trailers-only gRPC response for gRPC requests ([`error_response::ByContentType`], the
//!   default), or a format of your own behind two small traits.
//! - [`outgoing`]: [`outgoing::PropagateContextLayer`] for tower/hyper clients and (feature
//!   `reqwest`) `PropagateContextMiddleware` for `reqwest-middleware` send the request id and
//!   a W3C `traceparent` naming a client span of each call's own, and write one
//!   `reqscope::outgoing` line per call.
//! - feature `otel`: with a `tracing-opentelemetry` layer installed, the request's
//!   `trace_id` / `span_id` are those of its OpenTelemetry span.
//! - [`sentry`] (feature `sentry`): Sentry events, errors and panics carry the request id,
//!   the user and the route, from spawned tasks and streaming bodies too; sensitive values
//!   are redacted as on the log lines.
//! - [`websocket`] (feature `websocket`): axum WebSocket connections run inside the context
//!   of their upgrade request, with a span of their own and one `websocket closed` line.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_sampling;
#[cfg(feature = "axum")]
pub mod api_error;
#[cfg(feature = "jwt")]
pub mod auth;
pub mod catch_panic;
pub mod classify;
pub mod error_response;
mod log_level;
#[cfg(feature = "otel")]
mod otel;
pub mod outgoing;
pub mod peer;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
pub mod request_context;
#[cfg(feature = "axum")]
pub mod route;
#[cfg(feature = "sentry")]
pub mod sentry;
#[cfg(feature = "websocket")]
pub mod websocket;
