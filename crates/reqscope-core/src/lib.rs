//! The request context at the heart of reqscope.
//!
//! Every request gets one [`RequestContext`]: its [`RequestId`], its W3C [`TraceContext`](trace::TraceContext), method, path, client ip and
//! start time, plus a patchable part (user, org, roles, rate-limit budget, custom fields and
//! typed extensions) that later layers fill in. The context is task-local (current around
//! every poll of the request's future, like a `tokio::task_local!`), so any code running on
//! behalf of the request reads it with [`RequestContext::current`] or
//! [`RequestContext::with`] — no `req` parameter anywhere.
//!
//! ```
//! use reqscope_core::{RequestContext, RequestId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ctx = RequestContext::builder(RequestId::new_v4()).path("/jobs/nightly").build();
//! RequestContext::scope(ctx, async {
//!     // Deep inside any function, without a parameter:
//!     let id = RequestContext::with(|ctx| ctx.id().clone()).unwrap();
//!     assert_eq!(id.as_str().len(), 36);
//! })
//! .await;
//! assert!(RequestContext::current().is_none());
//! # }
//! ```
//!
//! This crate knows no HTTP framework and no log format: `reqscope-tower` builds the context
//! for each request and `reqscope-tracing` stamps it on log lines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod baggage;
pub mod carry;
mod context;
mod error;
mod id;
pub mod job;
mod level;
pub mod logged_headers;
mod panics;
mod propagate;
mod proxy;
pub mod redact;
pub mod trace;

/// The target of the `request` span that request layers open around each request.
///
/// Log layers keep the request context in this span, so that events on threads which entered
/// the span but lack the task-local (sqlx-sqlite's worker) are still stamped. Keep spans of
/// this target enabled in your filter.
pub const REQUEST_SPAN_TARGET: &str = "reqscope::request";

pub use context::{ContextField, FieldValue, Patch, RequestContext, RequestContextBuilder, Scoped};
pub use error::{InvalidRequestId, NoRequestContext};
pub use id::{ForwardedIdPolicy, IdGenerator, RequestId};
pub use level::RaisedLevel;
pub use propagate::{Captured, Envelope, FutureExt, InContext, bind, bind_fn, elapsed, spawn, spawn_blocking};
pub use proxy::{ClientIpHeader, InvalidProxy, TrustedProxies};

/// Plumbing shared by reqscope's own crates; not a public API, and it may change at any time.
#[doc(hidden)]
pub mod __private {
    pub use crate::context::{downgrade_current, log_lines, scope_in_place_or_outside};
    pub use crate::error::ErrorChain;
    pub use crate::panics::{install_panic_location_hook, panic_message, take_panic_location};
}
