//! Carry the request id and the trace onto outgoing HTTP calls.
//!
//! ```
//! use http::{Request, Response};
//! use reqscope_core::{RequestContext, RequestId, TraceContext};
//! use reqscope_tower::outgoing::PropagateContextLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Any tower client works the same: a hyper-util `Client`, a `service_fn` as here, …
//! let mut client = ServiceBuilder::new().layer(PropagateContextLayer::new()).service(service_fn(
//!     |req: Request<()>| async move { Ok::<_, std::convert::Infallible>(Response::new(req.headers().clone())) },
//! ));
//!
//! let ctx = RequestContext::builder(RequestId::parse("req-1").unwrap()).trace(TraceContext::new_root()).build();
//! let sent = RequestContext::scope(ctx, async {
//!     client.ready().await.unwrap().call(Request::new(())).await.unwrap().into_body()
//! })
//! .await;
//! assert_eq!(sent["x-request-id"], "req-1");
//! assert!(sent["traceparent"].to_str().unwrap().starts_with("00-"));
//! # }
//! ```
//!
//! What an outgoing request gets, while it is made on behalf of a request (inside its
//! context — also from tasks started with `reqscope::spawn`):
//!
//! - **`x-request-id`**: the request's id. Inside one trust boundary the next service keeps
//!   it (its `RequestContextLayer` trusts valid forwarded ids by default), so one id finds
//!   the lines of every hop; a service at a public edge can refuse it with
//!   `ForwardedIdPolicy` and mint its own — the shared `trace_id` still joins the hops.
//! - **`traceparent`**: the same trace, with this service's span id as the parent, so the
//!   next service's span is a child of this one; **`tracestate`**: the caller's, unchanged.
//!
//! An `x-request-id` or a `traceparent` the caller set explicitly is left alone (with whatever
//! `tracestate` came with it); when the `traceparent` is added here, any `tracestate` on the
//! request is replaced by the trace's own (or removed). Outside any request context nothing is
//! added: there is no request to relate the call to. A job that runs in a context built
//! without a trace (`RequestContext::scope` in a CLI or a worker) starts one at its first
//! outgoing call, and its later log lines carry it.
//!
//! With the `reqwest` feature, [`PropagateContextMiddleware`] does the same for
//! `reqwest-middleware` clients.

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request};
use reqscope_core::RequestContext;
use reqscope_core::trace::{TRACEPARENT, TRACESTATE};
use tower_layer::Layer;
use tower_service::Service;

use crate::request_context::X_REQUEST_ID;

/// Adds the current request's id, `traceparent` and `tracestate` to `headers`. An id or a
/// `traceparent` already set is left alone (a `tracestate` goes with its `traceparent`).
/// Returns `false` (and adds nothing) outside a request context.
pub fn inject_headers(headers: &mut HeaderMap, request_id_header: &HeaderName) -> bool {
    RequestContext::with(|ctx| {
        if !headers.contains_key(request_id_header) {
            headers.insert(request_id_header.clone(), ctx.id().to_header_value());
        }
        if !headers.contains_key(TRACEPARENT) {
            let trace = ctx.trace_or_start();
            headers.insert(TRACEPARENT, trace.traceparent());
            // A tracestate belongs to the traceparent it came with.
            match trace.state() {
                Some(state) => headers.insert(TRACESTATE, state.header_value().clone()),
                None => headers.remove(TRACESTATE),
            };
        }
    })
    .is_some()
}

/// Adds the request id and the trace to every request a tower client sends; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct PropagateContextLayer {
    header: HeaderName,
}

impl Default for PropagateContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PropagateContextLayer {
    /// Sends the id as `x-request-id`.
    pub fn new() -> Self {
        PropagateContextLayer { header: X_REQUEST_ID }
    }

    /// Sends the id in another header (e.g. `x-correlation-id`).
    pub fn header_name(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for PropagateContextLayer {
    type Service = PropagateContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateContext { inner, header: self.header.clone() }
    }
}

/// The service made by [`PropagateContextLayer`].
#[derive(Clone, Debug)]
pub struct PropagateContext<S> {
    inner: S,
    header: HeaderName,
}

impl<S, B> Service<Request<B>> for PropagateContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // `call` runs in the caller's task, where the request context is.
        inject_headers(req.headers_mut(), &self.header);
        self.inner.call(req)
    }
}

#[cfg(feature = "reqwest")]
pub use self::reqwest::PropagateContextMiddleware;

#[cfg(feature = "reqwest")]
mod reqwest {
    use http::{Extensions, HeaderName};
    use reqwest_middleware::reqwest::{Request, Response};
    use reqwest_middleware::{Middleware, Next, Result};

    use super::inject_headers;
    use crate::request_context::X_REQUEST_ID;

    /// A `reqwest-middleware` middleware that adds the request id and the trace to every
    /// request the client sends; see the [module docs](super).
    ///
    /// ```
    /// use reqscope_tower::outgoing::PropagateContextMiddleware;
    ///
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(PropagateContextMiddleware::new())
    ///     .build();
    /// # drop(client);
    /// ```
    #[derive(Clone, Debug)]
    pub struct PropagateContextMiddleware {
        header: HeaderName,
    }

    impl Default for PropagateContextMiddleware {
        fn default() -> Self {
            Self::new()
        }
    }

    impl PropagateContextMiddleware {
        /// Sends the id as `x-request-id`.
        pub fn new() -> Self {
            PropagateContextMiddleware { header: X_REQUEST_ID }
        }

        /// Sends the id in another header (e.g. `x-correlation-id`).
        pub fn header_name(mut self, header: HeaderName) -> Self {
            self.header = header;
            self
        }
    }

    #[async_trait::async_trait]
    impl Middleware for PropagateContextMiddleware {
        async fn handle(&self, mut req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
            // The middleware future is polled by the caller, inside its request context.
            inject_headers(req.headers_mut(), &self.header);
            next.run(req, extensions).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqscope_core::{RequestId, TraceContext, TraceParent};

    #[test]
    fn adds_nothing_outside_a_request() {
        let mut headers = HeaderMap::new();
        assert!(!inject_headers(&mut headers, &X_REQUEST_ID));
        assert!(headers.is_empty());
    }

    #[test]
    fn sends_a_child_traceparent_and_keeps_explicit_headers() {
        let parent = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACESTATE, "rojo=1".parse().unwrap());
        let trace = TraceContext::child_of(parent, reqscope_core::TraceState::from_headers(&incoming));
        let ctx = RequestContext::builder(RequestId::parse("r-9").unwrap()).trace(trace.clone()).build();
        RequestContext::scope_sync(ctx, || {
            let mut headers = HeaderMap::new();
            headers.insert(TRACESTATE, "stale=1".parse().unwrap());
            assert!(inject_headers(&mut headers, &X_REQUEST_ID));
            assert_eq!(headers["x-request-id"], "r-9");
            let sent = TraceParent::parse(headers[TRACEPARENT].as_bytes()).unwrap();
            assert_eq!(sent.trace_id, parent.trace_id);
            assert_eq!(&sent.parent_id, trace.span_id());
            assert_eq!(headers[TRACESTATE], "rojo=1");

            let mut explicit = HeaderMap::new();
            explicit.insert("x-request-id", "chosen".parse().unwrap());
            explicit.insert(TRACEPARENT, "00-11111111111111111111111111111111-2222222222222222-00".parse().unwrap());
            inject_headers(&mut explicit, &X_REQUEST_ID);
            assert_eq!(explicit["x-request-id"], "chosen");
            assert_eq!(explicit[TRACEPARENT], "00-11111111111111111111111111111111-2222222222222222-00");
        });
    }

    #[test]
    fn a_job_without_a_trace_starts_one_at_its_first_call() {
        let ctx = std::sync::Arc::new(RequestContext::new(RequestId::parse("job-1").unwrap()));
        assert!(ctx.trace().is_none());
        RequestContext::scope_sync(ctx.clone(), || {
            let mut first = HeaderMap::new();
            let mut second = HeaderMap::new();
            inject_headers(&mut first, &X_REQUEST_ID);
            inject_headers(&mut second, &X_REQUEST_ID);
            assert_eq!(first[TRACEPARENT], second[TRACEPARENT]);
        });
        assert!(ctx.trace().is_some());
    }
}
