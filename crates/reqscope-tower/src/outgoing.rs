//! Carry the request id and the trace onto outgoing HTTP calls, each call a span of its own.
//!
//! ```
//! use http::{Request, Response};
//! use reqscope_core::trace::TraceContext;
//! use reqscope_core::{RequestContext, RequestId};
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
//! - **`traceparent`**: the same trace, with the id of a **client span** of this call's own
//!   as the parent: a new span id for every call, whose parent is the request's span (so two
//!   calls made by one request are told apart downstream). With the `otel` feature and a
//!   `tracing-opentelemetry` layer, the client span is an OpenTelemetry span (kind `client`),
//!   exported like any other, and its parent is the current OpenTelemetry span (a handler's
//!   `#[instrument]` span, else the request's). **`tracestate`**: the request's (the caller's,
//!   validated, with this service's entry in front if it adds one).
//! - **`baggage`**: the request's [baggage](reqscope_core::Patch::baggage) — what a trusted
//!   caller sent and what the application added with `RequestContext::set_baggage` — as one
//!   header: every entry by default, or only the keys named with
//!   [`PropagateContextLayer::baggage_keys`] (or the middleware's). Values are
//!   percent-encoded, so CR, LF, `,` or `;` in a value cannot break the header or the list;
//!   beyond 180 entries or 8192 bytes the last entries are left out whole. No header when
//!   there is nothing to send. [Hidden fields](reqscope_core::ContextField::hidden) stay in
//!   the process, except those named with
//!   [`PropagateContextLayer::hidden_fields_as_baggage`] (or the middleware's), sent as
//!   entries of their own for a downstream service trusted with them.
//!
//! Each call made through [`PropagateContextLayer`] or [`PropagateContextMiddleware`] (or
//! timed with [`OutgoingCall`]) writes **one line**, target `reqscope::outgoing`, when its
//! response head arrives:
//!
//! ```json
//! {"level":"INFO","target":"reqscope::outgoing","message":"outgoing call","request_id":"…",
//!  "trace_id":"…","span_id":"<the client span>","method":"GET","path":"/users/7",…,
//!  "url":"http://users.internal:8080/users/7","status":200,"duration_ms":3.1,
//!  "parent_span_id":"<the request's span>"}
//! ```
//!
//! It is stamped like any line of the request (id, user, route, custom fields), except that
//! `span_id` is the client span's, and `method` and `path` are the call's — the URL without
//! its query, fragment or user info, which may carry secrets. A trace is rebuilt from lines
//! alone: the call's `span_id` is the parent the next service logs, its `parent_span_id` the
//! `span_id` of this request's lines. A call that fails without a response logs a WARN with
//! `error` (the kind of failure, never the error text, which can hold the full URL); a call
//! dropped before its response logs `aborted: true`.
//!
//! An `x-request-id`, a `traceparent` or a `baggage` the caller set explicitly is left alone (with whatever
//! `tracestate` came with it; the line then names the span of that `traceparent`); when the
//! `traceparent` is added here, any `tracestate` on the request is replaced by the trace's own
//! (or removed). Outside any request context nothing is added and nothing is logged: there
//! is no request to relate the call to. A job that runs in a context built without a trace
//! (`RequestContext::scope` in a CLI or a worker) starts one at its first outgoing call, and
//! its later log lines carry it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use pin_project_lite::pin_project;
use reqscope_core::baggage::{BAGGAGE, Baggage};
use reqscope_core::trace::{SpanId, TraceContext, TraceParent};
use reqscope_core::trace::{TRACEPARENT, TRACESTATE};
use reqscope_core::{FieldValue, Patch, RequestContext};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::request_context::X_REQUEST_ID;

/// The target of the line each outgoing call writes.
pub const OUTGOING_TARGET: &str = "reqscope::outgoing";

/// Adds the current request's id, `traceparent`, `tracestate` and `baggage` (every entry) to
/// `headers`, for a client that none of the layers here fit. The `traceparent` names a new
/// client span (a new span id each call, whose parent is the request's span), but **no line
/// is written** for it: use [`OutgoingCall::start`] and [`OutgoingCall::finish`] to have the
/// call's line (and, with `otel`, its exported span). An id, a `traceparent` or a `baggage`
/// already set is left alone (a `tracestate` goes with its `traceparent`): to send only some
/// baggage entries, set the header first from a filtered copy of
/// [`RequestContext::baggage`]. Returns `false` (and adds nothing) outside a request context.
pub fn inject_headers(headers: &mut HeaderMap, request_id_header: &HeaderName) -> bool {
    RequestContext::with(|ctx| {
        let request = ctx.trace_or_start();
        inject(ctx, headers, request_id_header, &OutgoingBaggage::default(), || request.child());
    })
    .is_some()
}

/// What an outgoing call sends as `baggage`: the request's entries (all, or those of a list
/// of keys), and the hidden fields named to go along as entries of their own.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutgoingBaggage {
    /// `None`: every entry.
    keys: Option<Arc<[Box<str>]>>,
    hidden: Arc<[Box<str>]>,
}

impl OutgoingBaggage {
    fn keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.keys = Some(keys.into_iter().map(|key| Box::from(key.as_ref())).collect());
        self
    }

    fn hidden<I, K>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.hidden = names.into_iter().map(|name| Box::from(name.as_ref())).collect();
        self
    }

    /// The `baggage` header for a request with this patch; `None` when nothing is to be sent.
    fn header(&self, patch: &Patch) -> Option<HeaderValue> {
        let mut hidden = self.hidden.iter().filter_map(|name| Some((name, patch.hidden_field(name)?))).peekable();
        if hidden.peek().is_none() {
            if patch.baggage.is_empty() {
                return None;
            }
            if self.keys.is_none() {
                // The common case: the whole list, without a copy.
                return patch.baggage.to_header_value();
            }
        }
        let mut sent = Baggage::clone(&patch.baggage);
        if let Some(keys) = &self.keys {
            sent.retain(|entry| keys.iter().any(|key| **key == *entry.key()));
        }
        for (name, value) in hidden {
            let text = match value {
                FieldValue::Str(text) => text.to_string(),
                FieldValue::I64(n) => n.to_string(),
                FieldValue::U64(n) => n.to_string(),
                FieldValue::F64(n) => n.to_string(),
                FieldValue::Bool(b) => b.to_string(),
            };
            // A name that is no baggage key cannot be sent as one.
            let _ = sent.insert(&**name, text);
        }
        sent.to_header_value()
    }
}

/// Adds the headers for a call whose client span `client` makes; returns the call's span as
/// sent (the explicit `traceparent`'s, if one was set).
fn inject(
    ctx: &RequestContext,
    headers: &mut HeaderMap,
    request_id_header: &HeaderName,
    baggage: &OutgoingBaggage,
    client: impl FnOnce() -> TraceContext,
) -> Option<TraceContext> {
    if !headers.contains_key(request_id_header) {
        headers.insert(request_id_header.clone(), ctx.id().to_header_value());
    }
    if !headers.contains_key(BAGGAGE)
        && let Some(value) = ctx.read_patch(|patch| baggage.header(patch))
    {
        headers.insert(BAGGAGE, value);
    }
    if headers.contains_key(TRACEPARENT) {
        // The caller chose the parent: the line names that span, in the trace it names.
        let explicit = TraceParent::from_headers(headers).ok().flatten()?;
        let request = ctx.trace_or_start();
        let parent = (explicit.trace_id == *request.trace_id()).then_some(*request.span_id());
        return Some(TraceContext::from_parts(explicit.trace_id, explicit.parent_id, parent, explicit.flags & 1 != 0));
    }
    let trace = client();
    headers.insert(TRACEPARENT, trace.traceparent());
    // A tracestate belongs to the traceparent it came with.
    match trace.state() {
        Some(state) => headers.insert(TRACESTATE, state.header_value().clone()),
        None => headers.remove(TRACESTATE),
    };
    Some(trace)
}

/// One outgoing call made on behalf of the current request: its client span, its headers and
/// its log line (see the [module docs](self)). The layers here use it; use it directly for
/// other clients:
///
/// ```
/// use http::{HeaderMap, Method, StatusCode, Uri};
/// use reqscope_core::{RequestContext, RequestId};
/// use reqscope_tower::outgoing::OutgoingCall;
///
/// let ctx = RequestContext::new(RequestId::parse("req-1").unwrap());
/// RequestContext::scope_sync(ctx, || {
///     let mut headers = HeaderMap::new();
///     let uri: Uri = "http://users.internal/users/7?token=secret".parse().unwrap();
///     let call = OutgoingCall::start(&Method::GET, &uri, &mut headers).expect("inside a request");
///     assert_eq!(call.url(), "http://users.internal/users/7");
///     // … send the request with `headers`, then:
///     call.finish(StatusCode::OK);
/// });
/// ```
///
/// Dropped without [`finish`](Self::finish) or [`fail`](Self::fail), it logs the call as
/// aborted.
#[derive(Debug)]
pub struct OutgoingCall {
    ctx: Arc<RequestContext>,
    trace: Option<TraceContext>,
    method: Method,
    url: String,
    path: Box<str>,
    started: Instant,
    span: Span,
    done: bool,
}

impl OutgoingCall {
    /// Starts a call of `method` to `uri` on behalf of the current request: adds the
    /// `x-request-id`, `traceparent`, `tracestate` and `baggage` (every entry) headers to
    /// `headers`, as [`inject_headers`] does, and starts its clock.
    /// `None` (and nothing added) outside a request context.
    pub fn start(method: &Method, uri: &Uri, headers: &mut HeaderMap) -> Option<Self> {
        Self::start_with_header(method, uri, headers, &X_REQUEST_ID)
    }

    /// Like [`OutgoingCall::start`], sending the id in `request_id_header`.
    pub fn start_with_header(
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        request_id_header: &HeaderName,
    ) -> Option<Self> {
        let (url, path) = uri_without_secrets(uri);
        Self::begin(method, url, path, headers, request_id_header, &OutgoingBaggage::default())
    }

    pub(crate) fn begin(
        method: &Method,
        url: String,
        path: Box<str>,
        headers: &mut HeaderMap,
        request_id_header: &HeaderName,
        baggage: &OutgoingBaggage,
    ) -> Option<Self> {
        let ctx = RequestContext::current()?;
        let mut span = Span::none();
        let trace = inject(&ctx, headers, request_id_header, baggage, || {
            let (client_span, trace) = client_span(ctx.trace_or_start(), method, &url);
            span = client_span;
            trace
        });
        Some(OutgoingCall { ctx, trace, method: method.clone(), url, path, started: Instant::now(), span, done: false })
    }

    /// The call's span (its id is the parent sent in `traceparent`); `None` when an explicit
    /// `traceparent` on the request could not be read.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The URL logged: without query, fragment or user info.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `tracing` span of the call (with `otel`, the exported client span; else disabled):
    /// enter it while the call runs so that the client's own events nest under it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The response head arrived with `status`: writes the call's line.
    pub fn finish(mut self, status: StatusCode) {
        self.span.record("http.response.status_code", status.as_u16());
        self.log(Outcome::Status(status));
    }

    /// The call failed without a response; `kind` names how (`"timeout"`, `"connect"`, …),
    /// never with the error's text. Writes the call's line, as a WARN.
    pub fn fail(mut self, kind: Option<&'static str>) {
        self.span.record("otel.status_code", "ERROR");
        self.log(Outcome::Failed(kind));
    }

    fn log(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        let parent_span_id = self.trace.as_ref().and_then(TraceContext::parent_id).map(SpanId::as_str);
        // The line is stamped from a context of its own: the request's, with the client span
        // as its span and the call's method and path, so that every key says one thing.
        let mut line = RequestContext::builder(self.ctx.id().clone()).method(self.method.clone()).path(&*self.path);
        if let Some(trace) = &self.trace {
            line = line.trace(trace.clone());
        }
        if let Some(ip) = self.ctx.client_ip() {
            line = line.client_ip(ip);
        }
        let line = line.build();
        let patch = self.ctx.patch();
        line.update(|p| p.clone_from(&patch));
        let url = self.url.as_str();
        RequestContext::scope_sync(line, || match outcome {
            Outcome::Status(status) => tracing::info!(
                target: OUTGOING_TARGET, url, status = status.as_u16(), duration_ms, parent_span_id, "outgoing call"
            ),
            Outcome::Failed(kind) => tracing::warn!(
                target: OUTGOING_TARGET, url, duration_ms, parent_span_id, error = kind.unwrap_or("error"),
                "outgoing call failed without a response"
            ),
            Outcome::Aborted => tracing::info!(
                target: OUTGOING_TARGET, url, duration_ms, parent_span_id, aborted = true,
                "outgoing call dropped before its response"
            ),
        });
    }
}

impl Drop for OutgoingCall {
    fn drop(&mut self) {
        self.log(Outcome::Aborted);
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Status(StatusCode),
    Failed(Option<&'static str>),
    Aborted,
}

/// `scheme://host[:port]/path` and the path: no user info, query or fragment.
fn uri_without_secrets(uri: &Uri) -> (String, Box<str>) {
    let path = uri.path();
    let url = match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        },
        (None, Some(host)) => match uri.port_u16() {
            Some(port) => format!("{host}:{port}{path}"),
            None => format!("{host}{path}"),
        },
        _ => path.to_owned(),
    };
    (url, path.into())
}

#[cfg(feature = "otel")]
use crate::otel::client_span;

/// Without `otel`, the client span is a child in ids only.
#[cfg(not(feature = "otel"))]
fn client_span(request: &TraceContext, _method: &Method, _url: &str) -> (Span, TraceContext) {
    (Span::none(), request.child())
}

/// Adds the request id, the trace and the baggage to every request a tower client sends,
/// with a client span and a line per call; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct PropagateContextLayer {
    header: HeaderName,
    baggage: OutgoingBaggage,
}

impl Default for PropagateContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PropagateContextLayer {
    /// Sends the id as `x-request-id`, and every baggage entry.
    pub fn new() -> Self {
        PropagateContextLayer { header: X_REQUEST_ID, baggage: OutgoingBaggage::default() }
    }

    /// Sends the id in another header (e.g. `x-correlation-id`).
    pub fn header_name(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Sends only the baggage entries with one of these keys (none for an empty list), for a
    /// call that leaves the trust boundary or a service that needs only some of them.
    pub fn baggage_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.baggage = self.baggage.keys(keys);
        self
    }

    /// Also sends these hidden fields, when the request has them, as baggage entries of the
    /// same name (their values percent-encoded like any): for a service downstream that needs
    /// one (a device id) and is trusted with it. None by default; a name that is not a
    /// baggage key (a token) is not sent. The next service receives them as baggage — it
    /// decides whether to log them.
    pub fn hidden_fields_as_baggage<I, K>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.baggage = self.baggage.hidden(names);
        self
    }
}

impl<S> Layer<S> for PropagateContextLayer {
    type Service = PropagateContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateContext { inner, header: self.header.clone(), baggage: self.baggage.clone() }
    }
}

/// The service made by [`PropagateContextLayer`].
#[derive(Clone, Debug)]
pub struct PropagateContext<S> {
    inner: S,
    header: HeaderName,
    baggage: OutgoingBaggage,
}

impl<S, B, ResBody> Service<Request<B>> for PropagateContext<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = OutgoingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // `call` runs in the caller's task, where the request context is.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let (url, path) = uri_without_secrets(&uri);
        let call = OutgoingCall::begin(&method, url, path, req.headers_mut(), &self.header, &self.baggage);
        let inner = match &call {
            Some(call) => call.span.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        OutgoingFuture { inner, call }
    }
}

pin_project! {
    /// The response future of [`PropagateContext`]: writes the call's line when the response
    /// head (or an error) arrives, or when it is dropped first.
    pub struct OutgoingFuture<F> {
        #[pin]
        inner: F,
        call: Option<OutgoingCall>,
    }
}

impl<F, ResBody, E> Future for OutgoingFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.call.as_ref() {
            Some(call) => {
                let _entered = call.span.enter();
                ready!(this.inner.poll(cx))
            }
            None => ready!(this.inner.poll(cx)),
        };
        if let Some(call) = this.call.take() {
            match &result {
                Ok(response) => call.finish(response.status()),
                // A tower client's error type says nothing we could name; the WARN says it failed.
                Err(_) => call.fail(None),
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(feature = "reqwest")]
pub use self::reqwest::PropagateContextMiddleware;

#[cfg(feature = "reqwest")]
mod reqwest {
    use http::{Extensions, HeaderName};
    use reqwest_middleware::reqwest::{Request, Response, Url};
    use reqwest_middleware::{Error, Middleware, Next, Result};
    use tracing::Instrument;

    use super::{OutgoingBaggage, OutgoingCall};
    use crate::request_context::X_REQUEST_ID;

    /// A `reqwest-middleware` middleware that adds the request id, the trace and the baggage
    /// to every request the client sends, with a client span and a line per call; see the
    /// [module docs](super).
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
        baggage: OutgoingBaggage,
    }

    impl Default for PropagateContextMiddleware {
        fn default() -> Self {
            Self::new()
        }
    }

    impl PropagateContextMiddleware {
        /// Sends the id as `x-request-id`, and every baggage entry.
        pub fn new() -> Self {
            PropagateContextMiddleware { header: X_REQUEST_ID, baggage: OutgoingBaggage::default() }
        }

        /// Sends the id in another header (e.g. `x-correlation-id`).
        pub fn header_name(mut self, header: HeaderName) -> Self {
            self.header = header;
            self
        }

        /// Sends only the baggage entries with one of these keys (none for an empty list),
        /// for a call that leaves the trust boundary or a service that needs only some of them.
        pub fn baggage_keys<I, K>(mut self, keys: I) -> Self
        where
            I: IntoIterator<Item = K>,
            K: AsRef<str>,
        {
            self.baggage = self.baggage.keys(keys);
            self
        }

        /// Also sends these hidden fields, when the request has them, as baggage entries of the
        /// same name (their values percent-encoded like any): for a service downstream that needs
        /// one (a device id) and is trusted with it. None by default; a name that is not a
        /// baggage key (a token) is not sent. The next service receives them as baggage — it
        /// decides whether to log them.
        pub fn hidden_fields_as_baggage<I, K>(mut self, names: I) -> Self
        where
            I: IntoIterator<Item = K>,
            K: AsRef<str>,
        {
            self.baggage = self.baggage.hidden(names);
            self
        }
    }

    /// `scheme://host[:port]/path` and the path: no user info, query or fragment.
    fn url_without_secrets(url: &Url) -> (String, Box<str>) {
        let path = url.path();
        let logged = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}{path}", url.scheme()),
            (Some(host), None) => format!("{}://{host}{path}", url.scheme()),
            (None, _) => format!("{}:{path}", url.scheme()),
        };
        (logged, path.into())
    }

    /// How a call failed, in a word (the error's text can hold the full URL).
    fn failure_kind(error: &Error) -> &'static str {
        match error {
            Error::Middleware(_) => "middleware",
            Error::Reqwest(e) if e.is_timeout() => "timeout",
            Error::Reqwest(e) if e.is_connect() => "connect",
            Error::Reqwest(e) if e.is_redirect() => "redirect",
            Error::Reqwest(e) if e.is_body() || e.is_decode() => "body",
            Error::Reqwest(_) => "request",
        }
    }

    #[async_trait::async_trait]
    impl Middleware for PropagateContextMiddleware {
        async fn handle(&self, mut req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
            // The middleware future is polled by the caller, inside its request context.
            let method = req.method().clone();
            let (url, path) = url_without_secrets(req.url());
            let Some(call) = OutgoingCall::begin(&method, url, path, req.headers_mut(), &self.header, &self.baggage)
            else {
                return next.run(req, extensions).await;
            };
            let result = next.run(req, extensions).instrument(call.span().clone()).await;
            match &result {
                Ok(response) => call.finish(response.status()),
                Err(error) => call.fail(Some(failure_kind(error))),
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqscope_core::RequestId;
    use reqscope_core::trace::{TraceContext, TraceParent};

    #[test]
    fn the_logged_url_has_no_query_fragment_or_user_info() {
        for (uri, url) in [
            ("http://user:pw@example.com:8080/a/b?token=x#frag", "http://example.com:8080/a/b"),
            ("https://example.com/?q=1", "https://example.com/"),
            ("http://[::1]:3000/x", "http://[::1]:3000/x"),
            ("/relative?secret=1", "/relative"),
        ] {
            let (logged, _) = uri_without_secrets(&uri.parse().unwrap());
            assert_eq!(logged, url, "{uri}");
        }
    }

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
        let trace = TraceContext::child_of(parent, reqscope_core::trace::TraceState::from_headers(&incoming));
        let ctx = RequestContext::builder(RequestId::parse("r-9").unwrap()).trace(trace.clone()).build();
        RequestContext::scope_sync(ctx, || {
            let mut headers = HeaderMap::new();
            headers.insert(TRACESTATE, "stale=1".parse().unwrap());
            assert!(inject_headers(&mut headers, &X_REQUEST_ID));
            assert_eq!(headers["x-request-id"], "r-9");
            let sent = TraceParent::parse(headers[TRACEPARENT].as_bytes()).unwrap();
            assert_eq!(sent.trace_id, parent.trace_id);
            assert_ne!(&sent.parent_id, trace.span_id(), "a client span of its own");
            assert_eq!(headers[TRACESTATE], "rojo=1");
            let mut again = HeaderMap::new();
            inject_headers(&mut again, &X_REQUEST_ID);
            assert_ne!(again[TRACEPARENT], headers[TRACEPARENT], "every call its own span");

            let mut explicit = HeaderMap::new();
            explicit.insert("x-request-id", "chosen".parse().unwrap());
            explicit.insert(TRACEPARENT, "00-11111111111111111111111111111111-2222222222222222-00".parse().unwrap());
            inject_headers(&mut explicit, &X_REQUEST_ID);
            assert_eq!(explicit["x-request-id"], "chosen");
            assert_eq!(explicit[TRACEPARENT], "00-11111111111111111111111111111111-2222222222222222-00");
        });
    }

    #[test]
    fn sends_the_baggage_whole_filtered_or_not_at_all() {
        let ctx = std::sync::Arc::new(RequestContext::new(RequestId::parse("r-bag").unwrap()));
        RequestContext::scope_sync(ctx.clone(), || {
            let mut empty = HeaderMap::new();
            inject_headers(&mut empty, &X_REQUEST_ID);
            assert!(empty.get(BAGGAGE).is_none(), "no header for an empty baggage");

            ctx.set_baggage("session", "s-1").unwrap();
            ctx.set_baggage("note", "a\r\nb, c;d").unwrap();
            let mut all = HeaderMap::new();
            inject_headers(&mut all, &X_REQUEST_ID);
            assert_eq!(all[BAGGAGE], "session=s-1,note=a%0D%0Ab%2C%20c%3Bd");
            assert_eq!(Baggage::parse(all[BAGGAGE].as_bytes()).unwrap(), *ctx.baggage());

            let mut only = HeaderMap::new();
            let keys = OutgoingBaggage::default().keys(["note", "absent"]);
            OutgoingCall::begin(&Method::GET, "u".into(), "/".into(), &mut only, &X_REQUEST_ID, &keys);
            assert_eq!(only[BAGGAGE], "note=a%0D%0Ab%2C%20c%3Bd");
            let mut none = HeaderMap::new();
            let keys = OutgoingBaggage::default().keys(["absent"]);
            OutgoingCall::begin(&Method::GET, "u".into(), "/".into(), &mut none, &X_REQUEST_ID, &keys);
            assert!(none.get(BAGGAGE).is_none());

            // Hidden fields go only when named, as entries of their own.
            ctx.set_hidden_field("device_id", "d 7");
            ctx.set_hidden_field("secret", "never-sent");
            let mut with_hidden = HeaderMap::new();
            let hidden = OutgoingBaggage::default().keys(["session"]).hidden(["device_id", "absent", "not a key"]);
            OutgoingCall::begin(&Method::GET, "u".into(), "/".into(), &mut with_hidden, &X_REQUEST_ID, &hidden);
            assert_eq!(with_hidden[BAGGAGE], "session=s-1,device_id=d%207");
            let mut default = HeaderMap::new();
            inject_headers(&mut default, &X_REQUEST_ID);
            assert!(!default[BAGGAGE].to_str().unwrap().contains("device_id"), "hidden fields stay by default");

            let mut explicit = HeaderMap::new();
            explicit.insert(BAGGAGE, "chosen=1".parse().unwrap());
            inject_headers(&mut explicit, &X_REQUEST_ID);
            assert_eq!(explicit.get_all(BAGGAGE).iter().collect::<Vec<_>>(), ["chosen=1"]);
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
            let first = TraceParent::parse(first[TRACEPARENT].as_bytes()).unwrap();
            let second = TraceParent::parse(second[TRACEPARENT].as_bytes()).unwrap();
            assert_eq!(first.trace_id, second.trace_id, "one trace for the job");
        });
        assert!(ctx.trace().is_some());
    }
}
