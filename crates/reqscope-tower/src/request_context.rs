//! Assign or forward the request id and scope the request context around a service.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_core::RequestContext;
//! use reqscope_tower::request_context::RequestContextLayer;
//!
//! async fn hello() -> String {
//!     // No `req` parameter: the context is task-local.
//!     let id = RequestContext::with(|ctx| ctx.id().to_string()).unwrap_or_default();
//!     tracing::info!("saying hello"); // stamped with request_id, method, path, …
//!     format!("hello from request {id}")
//! }
//!
//! let app: Router = Router::new()
//!     .route("/hello", get(hello))
//!     .layer(RequestContextLayer::new());
//! ```
//!
//! What the layer does for each request:
//!
//! 1. **Id.** A valid `x-request-id` (1–128 bytes of `[A-Za-z0-9._:+/=@-]`), sent once, is
//!    kept when the [`ForwardedIdPolicy`] trusts the peer; otherwise — invalid, untrusted, or
//!    sent in several headers — a new id is generated (UUID v4 by default). A rejected value
//!    is never echoed and never logged. The request's header is set to the final id, and the
//!    [`RequestId`] itself is put into the request's extensions, so inner services see it
//!    either way (axum's `Extension<RequestId>`, another tower layer's
//!    `req.extensions().get::<RequestId>()`).
//! 2. **Trace.** A valid W3C `traceparent` (lowercase hex, non-zero ids, sent once; version
//!    `00` exactly 55 bytes, a higher version read with the version-00 layout and sent on as
//!    `00`) is continued — same trace id, a new span id for this service, the caller's
//!    `tracestate` checked member by member (a member that breaks the grammar drops the
//!    header, beyond 32 members or 512 bytes whole entries are removed, the longest first;
//!    see [`TraceState`]) — when the [`traceparent_policy`](RequestContextLayer::traceparent_policy) trusts the
//!    peer. Anything else starts a new trace: an invalid header is never an error response,
//!    and its value is never logged (a DEBUG event on `reqscope::trace` names only the
//!    reason). A `traceparent` sent with the request is replaced, for inner services, by
//!    this service's own (its span as the parent), with the carried `tracestate` or none;
//!    a `tracestate` sent without a `traceparent` is replaced the same way.
//!    Log lines carry `trace_id` and `span_id`; outgoing calls carry a child
//!    `traceparent` (see [`outgoing`](crate::outgoing)). With the `otel` feature and a
//!    `tracing-opentelemetry` layer installed, the ids are those of the OpenTelemetry span.
//! 3. **Baggage.** A W3C `baggage` (every header so named, read as one list; see
//!    [`baggage`](reqscope_core::baggage)) becomes the context's
//!    [baggage](reqscope_core::Patch::baggage) when the
//!    [`baggage_policy`](RequestContextLayer::baggage_policy) trusts the peer: outgoing calls
//!    carry it on (see [`outgoing`](crate::outgoing)), and a log layer writes the keys it is
//!    told to. A malformed header, or one over 8192 bytes or 180 members, is ignored as a
//!    whole — never an error response — with one DEBUG event on `reqscope::baggage` that
//!    names only the reason, never the value. A request without the header costs one lookup.
//!    The request's own headers are left as sent.
//! 4. **Client ip.** The connection's peer address — found by the
//!    [`peer_addr`](RequestContextLayer::peer_addr) reader: by default axum's
//!    `ConnectInfo<SocketAddr>` (feature `axum`), tonic's `TcpConnectInfo` (feature `tonic`) or a `SocketAddr`
//!    request extension, see [`peer`](crate::peer) — or, only when the peer is one of the
//!    [`TrustedProxies`], the client named in the one forwarding header you chose with
//!    them ([`ClientIpHeader`]: the header your proxies append to; never picked for you).
//!    The same peer is what the forwarded-id, `traceparent` and `baggage` policies judge.
//! 5. **Scope.** The context is the task-local for the inner service's future and for every
//!    `poll_frame` of the response body, so streaming bodies log with the request id. A
//!    `request` span (target `reqscope::request`) is entered around both; it carries the
//!    context to threads that only see the span.
//! 6. **Echo.** Every response carries the final id in the same header: handler responses,
//!    404s and error responses built by inner layers alike.
//! 7. **Access line.** One event (target `reqscope::access`) per request: "request
//!    completed" when the body ends — or has sent all of its declared length (exact size
//!    hint or `Content-Length`), after which hyper drops it without polling it to its end —,
//!    an **ERROR** when the [failure classifier](crate::classify) says the request failed
//!    (by default an HTTP 5xx, or a gRPC status such as `INTERNAL` or `UNAVAILABLE`, read
//!    from the trailers or from the headers of a trailers-only response), INFO otherwise;
//!    INFO with `aborted = true` when the body is dropped before its end (the client left —
//!    a cancelled gRPC stream too; but `grpc_status` 4, `DEADLINE_EXCEEDED` — ERROR unless your
//!    classifier says otherwise — when the gRPC call's `grpc-timeout` (or the
//!    [`grpc_server_timeout`](RequestContextLayer::grpc_server_timeout)) had passed: tonic's
//!    server or the client cut it off), WARN with `aborted = true` when the body fails — each with
//!    `status`, `duration_ms` and `bytes`, and `grpc_status` (the number) whenever the
//!    response carried one. It is written with the context as it is *then*, so
//!    a user id patched in by an inner layer is on it. The request headers named with
//!    [`log_request_headers`](RequestContextLayer::log_request_headers) are kept in the
//!    context for it, and a log layer writes them as `header.<name>` (credentials always
//!    `"[redacted]"`). If the inner service returns `Err`
//!    instead of a response (never with axum, whose errors are `Infallible`), there is no
//!    response to echo the id on; the access line is a WARN without `status`. Turn errors
//!    into responses *inside* this layer (e.g. `HandleErrorLayer` after it) so they get the id.
//!    Every access line is written, unless the
//!    [`access_sampling`](RequestContextLayer::access_sampling) says otherwise: successful
//!    health checks skipped, a share of the successful requests kept by request id (those
//!    lines with `sample_rate`), see [`access_sampling`](crate::access_sampling).
//! 8. **Log level.** A request that sends `x-log-level: debug` (or `trace`), once, asks for its
//!    own lines to be written at that level while every other request stays at the global
//!    filter's: the context records the request ([`RequestContext::raise_level_for_role`]),
//!    and it is granted only when the context's roles include `log-debug` — set by the auth
//!    layer from a verified token, after this layer ([`log_level_role`](RequestContextLayer::log_level_role)
//!    names another role, [`log_level_header`](RequestContextLayer::log_level_header) another
//!    header or none). Without the role, or with another value, the header is ignored: no
//!    error, no line. A log filter that reads the level writes the lines: reqscope-tracing's
//!    `RequestLevelFilter`, which `reqscope::logging::init_from_env` installs.
//!
//! [`ForwardedIdPolicy`]: reqscope_core::ForwardedIdPolicy
//! [`TrustedProxies`]: reqscope_core::TrustedProxies
//! [`ClientIpHeader`]: reqscope_core::ClientIpHeader

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use reqscope_core::baggage::{BAGGAGE, Baggage};
use reqscope_core::logged_headers::LoggedHeader;
use reqscope_core::trace::{TRACEPARENT, TRACESTATE, TraceContext, TraceParent, TraceState, TraceStateEntry};
use reqscope_core::{
    ClientIpHeader, ForwardedIdPolicy, IdGenerator, REQUEST_SPAN_TARGET, RequestContext, RequestId, TrustedProxies,
};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::access_sampling::{AccessDecision, AccessRequest, AccessSampler, SampleAccess};
use crate::classify::{Classification, ClassifyFailure, DefaultClassifier};
use crate::error_response::is_grpc_content_type;
use crate::log_level::LevelRequests;
use crate::peer::{DefaultPeerAddr, PeerAddr};

/// The default request-id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
struct Config {
    header: HeaderName,
    generator: IdGenerator,
    policy: ForwardedIdPolicy,
    trace_policy: ForwardedIdPolicy,
    baggage_policy: ForwardedIdPolicy,
    proxies: TrustedProxies,
    client_ip_header: ClientIpHeader,
    peer: Arc<dyn PeerAddr>,
    /// Whether `peer` is the default reader: only then is a missing peer a setup mistake.
    default_peer: bool,
    classifier: Arc<dyn ClassifyFailure>,
    /// tonic's `Server::timeout`, which cuts calls off as `grpc-timeout` does.
    grpc_server_timeout: Option<std::time::Duration>,
    access_log: bool,
    sampler: Arc<dyn SampleAccess>,
    root_sampled: bool,
    tracestate_entry: Option<TraceStateEntry>,
    /// The request headers kept for the access line.
    logged_headers: Arc<[HeaderName]>,
    /// How a request asks for a raised log level.
    log_level: LevelRequests,
}

impl Config {
    /// `trace` with this service's own `tracestate` entry, if it has one.
    fn own_entry(&self, trace: TraceContext) -> TraceContext {
        match &self.tracestate_entry {
            Some(entry) => trace.with_entry(entry),
            None => trace,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The peer reader and the classifier are often closures, which have no `Debug`.
        f.debug_struct("Config")
            .field("header", &self.header)
            .field("generator", &self.generator)
            .field("policy", &self.policy)
            .field("trace_policy", &self.trace_policy)
            .field("baggage_policy", &self.baggage_policy)
            .field("proxies", &self.proxies)
            .field("client_ip_header", &self.client_ip_header)
            .field("access_log", &self.access_log)
            .field("root_sampled", &self.root_sampled)
            .field("tracestate_entry", &self.tracestate_entry)
            .field("logged_headers", &self.logged_headers)
            .field("log_level", &self.log_level)
            .finish_non_exhaustive()
    }
}

/// Gives every request a [`RequestContext`]; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RequestContextLayer {
    config: Arc<Config>,
}

impl Default for RequestContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestContextLayer {
    /// `x-request-id`, UUID v4 ids, valid forwarded ids, `traceparent`s and `baggage` kept, no trusted
    /// proxies, the peer from the server's connection info ([`DefaultPeerAddr`]), access log
    /// on with HTTP 5xx and server-side gRPC statuses as failures ([`DefaultClassifier`]).
    pub fn new() -> Self {
        RequestContextLayer {
            config: Arc::new(Config {
                header: X_REQUEST_ID,
                generator: IdGenerator::default(),
                policy: ForwardedIdPolicy::default(),
                trace_policy: ForwardedIdPolicy::default(),
                baggage_policy: ForwardedIdPolicy::default(),
                proxies: TrustedProxies::default(),
                // Read only when proxies are trusted, and then always named by the caller.
                client_ip_header: ClientIpHeader::XForwardedFor,
                peer: Arc::new(DefaultPeerAddr),
                default_peer: true,
                classifier: Arc::new(DefaultClassifier),
                grpc_server_timeout: None,
                access_log: true,
                sampler: Arc::new(AccessSampler::new()),
                root_sampled: true,
                tracestate_entry: None,
                logged_headers: Arc::new([]),
                log_level: LevelRequests::default(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        // Builders run before the layer is shared, so this clones nothing in practice.
        Arc::make_mut(&mut self.config)
    }

    /// Reads and echoes the id in another header (e.g. `x-correlation-id`).
    pub fn header_name(mut self, header: HeaderName) -> Self {
        self.config_mut().header = header;
        self
    }

    /// Generates ids with `generator` (UUID v7, your own function).
    pub fn id_generator(mut self, generator: IdGenerator) -> Self {
        self.config_mut().generator = generator;
        self
    }

    /// Decides when a forwarded id is kept.
    pub fn forwarded_id_policy(mut self, policy: ForwardedIdPolicy) -> Self {
        self.config_mut().policy = policy;
        self
    }

    /// Decides when an incoming `traceparent` is continued (default: whenever it is valid).
    /// At a public edge, `ForwardedIdPolicy::NeverTrust` makes every request start its own trace.
    pub fn traceparent_policy(mut self, policy: ForwardedIdPolicy) -> Self {
        self.config_mut().trace_policy = policy;
        self
    }

    /// Decides when an incoming `baggage` becomes the request's (default: whenever it is
    /// valid). At a public edge, `ForwardedIdPolicy::NeverTrust` keeps callers from putting
    /// entries on this service's lines and onto its outgoing calls; an untrusted `baggage` is
    /// ignored without a line.
    pub fn baggage_policy(mut self, policy: ForwardedIdPolicy) -> Self {
        self.config_mut().baggage_policy = policy;
        self
    }

    /// Believes `header` when the peer is one of these proxies, to find the client ip.
    ///
    /// Name the header your proxies *append* to — `ClientIpHeader::XForwardedFor` behind
    /// nginx, HAProxy, AWS ALB or Google Cloud load balancers. No other header is read: a
    /// proxy passes the ones it does not manage through as the client sent them.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies, header: ClientIpHeader) -> Self {
        let config = self.config_mut();
        config.proxies = proxies;
        config.client_ip_header = header;
        self
    }

    /// Finds the connection's peer address with `peer` instead of [`DefaultPeerAddr`] (see
    /// [`peer`](crate::peer)): a closure `Fn(&http::Extensions) -> Option<SocketAddr>` or
    /// a [`PeerAddr`] of your own, for a server that stores the peer its own way.
    pub fn peer_addr(mut self, peer: impl PeerAddr) -> Self {
        let config = self.config_mut();
        config.peer = Arc::new(peer);
        config.default_peer = false;
        self
    }

    /// The `timeout` your tonic `Server` was built with (`Server::builder().timeout(..)`):
    /// tonic cuts a call off at the shorter of it and the call's `grpc-timeout`, and the access
    /// line of a call cut off that way is then `DEADLINE_EXCEEDED` (ERROR by default), not a
    /// client that left. Without it only the `grpc-timeout` a client sends is known.
    pub fn grpc_server_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config_mut().grpc_server_timeout = Some(timeout);
        self
    }

    /// Decides which requests failed — an ERROR access line — with `classifier` instead of
    /// [`DefaultClassifier`] (see [`classify`](crate::classify)).
    pub fn failure_classifier(mut self, classifier: impl ClassifyFailure) -> Self {
        self.config_mut().classifier = Arc::new(classifier);
        self
    }

    /// Puts these request headers on the request's access line, each as
    /// `header.<lowercase-name>` (`"header.user-agent":"curl/8.5.0"`) when the request sent
    /// it; none by default. Values are kept up to 256 bytes; `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie` and `x-api-key` are always written
    /// `"[redacted]"`, their values not even kept (see
    /// [`logged_headers`](reqscope_core::logged_headers)), and a log layer's redaction applies
    /// to the others. Replaces an earlier list; a request pays nothing while the list is empty.
    pub fn log_request_headers<I>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        let mut names: Vec<HeaderName> = Vec::new();
        for name in headers {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        self.config_mut().logged_headers = names.into();
        self
    }

    /// Turns the access-log event off (or back on).
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.config_mut().access_log = enabled;
        self
    }

    /// Decides which access lines are written with `sampler` instead of writing every one
    /// (see [`access_sampling`](crate::access_sampling)): an [`AccessSampler`] that skips
    /// successful health checks and keeps a share of the other successful requests by request
    /// id, or a [`SampleAccess`] of your own.
    pub fn access_sampling(mut self, sampler: impl SampleAccess) -> Self {
        self.config_mut().sampler = Arc::new(sampler);
        self
    }

    /// Whether the traces this service starts (no usable incoming `traceparent`) are marked
    /// sampled in the `traceparent` sent onward — default `true`, so that the next services
    /// record them. `false` tells them this trace is not recorded. A continued trace keeps the
    /// caller's flag; with `otel` and a `tracing-opentelemetry` layer, the OpenTelemetry
    /// sampler decides instead.
    pub fn sample_new_traces(mut self, sampled: bool) -> Self {
        self.config_mut().root_sampled = sampled;
        self
    }

    /// The role a request's user needs for its `x-log-level` to count (default `log-debug`);
    /// see item 8 of the [module docs](self).
    pub fn log_level_role(mut self, role: impl Into<Arc<str>>) -> Self {
        self.config_mut().log_level.role = role.into();
        self
    }

    /// The header a request asks for a raised log level in (default `x-log-level`); `None`:
    /// no request can raise its level, and no header is read.
    pub fn log_level_header(mut self, header: Option<HeaderName>) -> Self {
        self.config_mut().log_level.header = header;
        self
    }

    /// Puts this service's own `tracestate` entry at the front of every request's
    /// `tracestate` (replacing an entry with the same key), as W3C asks of a vendor that adds
    /// its entry: inner services and outgoing calls carry it.
    pub fn tracestate_entry(mut self, entry: TraceStateEntry) -> Self {
        self.config_mut().tracestate_entry = Some(entry);
        self
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner, config: Arc::clone(&self.config) }
    }
}

/// The service made by [`RequestContextLayer`].
#[derive(Clone, Debug)]
pub struct RequestContextService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared_config = &self.config;
        let config = &**shared_config;
        let inner = &mut self.inner;
        let peer = config.peer.peer_addr(req.extensions()).map(|addr| addr.ip());
        if peer.is_none() && config.default_peer {
            warn_no_peer_once();
        }
        let sent = Sent::of(req.headers(), config);
        // Sent more than once, the id is ambiguous (which hop's is it?): none is kept.
        let forwarded = if sent.id && config.policy.trusts(peer) {
            let mut values = req.headers().get_all(&config.header).iter();
            match (values.next(), values.next()) {
                (Some(value), None) => RequestId::from_bytes(value.as_bytes()).ok().map(|id| (id, value.clone())),
                _ => None,
            }
        } else {
            None
        };
        let (id, id_header) = match forwarded {
            // Kept as sent: the request already carries it, and its header value is reused.
            Some((id, value)) => (id, value),
            None => {
                let id = config.generator.generate();
                let value = id.to_header_value();
                req.headers_mut().insert(config.header.clone(), value.clone());
                (id, value)
            }
        };
        req.extensions_mut().insert(id.clone());
        let head = req.method() == http::Method::HEAD;
        // Only a gRPC call has a deadline: on any other request the header means nothing.
        let grpc = sent.content_type
            && req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| is_grpc_content_type(v.as_bytes()));
        let grpc_timeout = if grpc {
            let sent = sent
                .grpc_timeout
                .then(|| req.headers().get(GRPC_TIMEOUT).and_then(|value| parse_grpc_timeout(value.as_bytes())))
                .flatten();
            match (sent, config.grpc_server_timeout) {
                (Some(sent), Some(server)) => Some(sent.min(server)),
                (sent, server) => sent.or(server),
            }
        } else {
            None
        };

        let (incoming, invalid, sent_traceparent) = if !sent.traceparent {
            (None, None, false)
        } else if config.trace_policy.trusts(peer) {
            match TraceParent::from_headers(req.headers()) {
                Ok(Some(parent)) => {
                    let state = if sent.tracestate { TraceState::from_headers(req.headers()) } else { None };
                    (Some((parent, state)), None, true)
                }
                Ok(None) => (None, None, false),
                Err(reason) => (None, Some(reason), true),
            }
        } else {
            (None, None, req.headers().contains_key(TRACEPARENT))
        };
        // A `tracestate` without a `traceparent` means nothing (and was not validated): inner
        // services see it replaced like a `traceparent` is.
        let sent_traceparent = sent_traceparent || (sent.tracestate && req.headers().contains_key(TRACESTATE));

        // Parsed only when sent and trusted.
        let baggage = (sent.baggage && config.baggage_policy.trusts(peer) && req.headers().contains_key(BAGGAGE))
            .then(|| Baggage::from_headers(req.headers()));

        let mut builder =
            RequestContext::builder(id).method(req.method().clone()).uri(req.uri()).version(req.version()).grpc(grpc);
        if config.access_log && !config.logged_headers.is_empty() {
            builder = builder.logged_headers(
                config.logged_headers.iter().filter_map(|name| LoggedHeader::from_headers(name, req.headers())),
            );
        }
        if let Some(ip) = config.proxies.client_ip(peer, req.headers(), &config.client_ip_header) {
            builder = builder.client_ip(ip);
        }
        // Without `otel` the trace depends on the headers alone, so the context is built with
        // it (setting it later costs a once-cell initialisation per request). With `otel` it
        // comes from the request's OpenTelemetry span, made in the context's scope below.
        #[cfg(not(feature = "otel"))]
        {
            builder = builder.trace(config.own_entry(plain_trace(incoming, config.root_sampled)));
        }
        let ctx = builder.build_shared();
        if sent.log_level {
            config.log_level.apply(req.headers(), &ctx);
        }
        let invalid_baggage = match baggage {
            Some(Ok(Some(baggage))) if !baggage.is_empty() => {
                let baggage = Arc::new(baggage);
                ctx.update(|patch| patch.baggage = Arc::clone(&baggage));
                None
            }
            Some(Err(reason)) => Some(reason),
            _ => None,
        };

        // Everything is built inside the scope and returned at once: the inner future is moved
        // as few times as can be. The context is lent to the scope, then put in the state.
        let mut held = Some(ctx);
        let mut future = RequestContext::scope_in_place(&mut held, move || {
            let span = tracing::info_span!(target: REQUEST_SPAN_TARGET, "request");
            // With `otel` the trace comes from the OpenTelemetry span, which needs the context
            // to exist first; so the trace is set right after, before anything logs. Only the
            // span's subscriber has seen the context yet, and it must not start a trace.
            #[cfg(feature = "otel")]
            let trace = config.own_entry(crate::otel::request_trace(&span, incoming, config.root_sampled));
            #[cfg(feature = "otel")]
            if RequestContext::with(|ctx| ctx.set_trace(trace).is_err()).unwrap_or(true) {
                debug_assert!(false, "the trace of a new request context is set once");
                // Released builds go on with the trace already there; the exported span's ids
                // may then differ from the logged ones, which is worth saying.
                tracing::warn!(target: "reqscope::trace", "the request's trace was started before its span could set it; exported spans may not match its log lines");
            }
            if sent_traceparent {
                // Inner services see this service's place in the trace, not the caller's (nor a
                // rejected value): a handler that copies headers onward sends a proper child.
                let headers = req.headers_mut();
                RequestContext::with(|ctx| {
                    let trace = ctx.trace_or_start();
                    headers.insert(TRACEPARENT, trace.traceparent());
                    match trace.state() {
                        Some(state) => headers.insert(TRACESTATE, state.header_value().clone()),
                        None => headers.remove(TRACESTATE),
                    };
                });
            }
            if let Some(reason) = invalid {
                // The reason only: the value is untrusted input and never reaches a log line.
                tracing::debug!(target: "reqscope::trace", %reason, "ignored an invalid traceparent; this request starts a new trace");
            }
            if let Some(reason) = invalid_baggage {
                // As for the traceparent: the reason only, never the caller's value.
                tracing::debug!(target: "reqscope::baggage", %reason, "ignored an invalid baggage; this request carries none from its caller");
            }
            let entered = span.enter();
            let inner = inner.call(req);
            drop(entered);
            ResponseFuture {
                inner,
                state: Some(RequestState {
                    ctx: None,
                    span,
                    status: None,
                    bytes: 0,
                    declared: None,
                    empty_body: false,
                    head,
                    log: config.access_log,
                    config: Arc::clone(shared_config),
                    grpc_timeout,
                    classification: Classification::SUCCESS,
                    finished: false,
                }),
                id: id_header,
            }
        });
        if let Some(state) = future.state.as_mut() {
            state.ctx = held;
        }
        future
    }
}

/// Which of the headers a context is made from the request sent. A request has few header
/// names, so one pass comparing them (mostly standard names, compared by tag) costs less than
/// a hash lookup per header this layer reads; past [`Sent::SCAN_LIMIT`] names each is looked
/// up instead. `true` means "look it up", so the lookups still decide.
#[derive(Clone, Copy)]
struct Sent {
    id: bool,
    content_type: bool,
    grpc_timeout: bool,
    traceparent: bool,
    tracestate: bool,
    baggage: bool,
    log_level: bool,
}

impl Sent {
    const SCAN_LIMIT: usize = 24;

    fn of(headers: &http::HeaderMap, config: &Config) -> Sent {
        let all = headers.keys_len() > Self::SCAN_LIMIT;
        let mut sent = Sent {
            id: all,
            content_type: all,
            grpc_timeout: all,
            traceparent: all,
            tracestate: all,
            baggage: all,
            log_level: all,
        };
        if all {
            return sent;
        }
        let log_level = config.log_level.header.as_ref();
        // Each name checked against every header, not an `else if` chain: the id and log-level
        // headers are configurable and may be named like another one.
        for name in headers.keys() {
            sent.content_type |= *name == http::header::CONTENT_TYPE;
            sent.grpc_timeout |= *name == GRPC_TIMEOUT;
            sent.id |= *name == config.header;
            sent.traceparent |= *name == TRACEPARENT;
            sent.tracestate |= *name == TRACESTATE;
            sent.baggage |= *name == BAGGAGE;
            sent.log_level |= log_level == Some(name);
        }
        sent
    }
}

/// Without a peer address, lines have no `client_ip`, `TrustFrom` trusts nobody and rate
/// limits fall back to one shared budget: said once per process, since it is a setup mistake.
fn warn_no_peer_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    // A load first: once warned, requests only read the shared flag.
    if !WARNED.load(Ordering::Relaxed) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: "reqscope::setup",
            "a request came without a peer address: `client_ip` is unknown; serve axum with \
             into_make_service_with_connect_info and reqscope's feature `axum`, tonic's Server with feature \
             `tonic`, or set RequestContextLayer::peer_addr"
        );
    }
}

/// The gRPC call's timeout header (gRPC over HTTP/2: "grpc-timeout").
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// The gRPC status of a call cut off at its deadline.
const DEADLINE_EXCEEDED: i32 = 4;

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`); anything
/// else is no timeout, as the protocol leaves it.
fn parse_grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The trace of a request from its headers alone: a child of the caller's, or a new root.
pub(crate) fn plain_trace(incoming: Option<(TraceParent, Option<TraceState>)>, root_sampled: bool) -> TraceContext {
    match incoming {
        Some((parent, state)) => TraceContext::child_of(parent, state),
        None => TraceContext::new_root_sampled(root_sampled),
    }
}

pin_project! {
    /// The response future of [`RequestContextService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<RequestState>,
        id: HeaderValue,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ContextBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.as_mut() {
            Some(state) => {
                let _entered = state.span.enter();
                let inner = this.inner;
                // Written in place rather than returned through the scope: a response is large,
                // and each return would copy it.
                let mut polled = Poll::Pending;
                RequestContext::scope_in_place(&mut state.ctx, || polled = inner.poll(cx));
                ready!(polled)
            }
            // Polled again after completion: the inner future decides what that means.
            None => ready!(this.inner.poll(cx)),
        };
        let Some(mut state) = this.state.take() else {
            return Poll::Ready(result.map(|response| response.map(|inner| ContextBody { inner, state: None })));
        };
        match result {
            Ok(mut response) => {
                // Taken, not cloned: the future answers once, and a clone is a reference count.
                let id = std::mem::replace(this.id, HeaderValue::from_static(""));
                response.headers_mut().insert(state.config.header.clone(), id);
                state.status = Some(response.status());
                if state.log {
                    state.classification =
                        state.config.classifier.classify_response(response.status(), response.headers());
                }
                // A body hyper will never send (HEAD, 204, 304) is dropped unpolled: that is a
                // completed response, not an aborted one.
                let status = response.status();
                state.empty_body = response.body().is_end_stream()
                    || state.head
                    || status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || status == StatusCode::NOT_MODIFIED;
                // hyper stops polling (and drops) a body once its declared length is out,
                // without asking whether it has ended: reaching that length is completion.
                state.declared = response.body().size_hint().exact().or_else(|| {
                    let length = response.headers().get(http::header::CONTENT_LENGTH)?;
                    length.to_str().ok()?.trim().parse().ok()
                });
                Poll::Ready(Ok(response.map(|inner| ContextBody { inner, state: Some(state) })))
            }
            Err(error) => {
                state.finish(Outcome::ServiceError);
                Poll::Ready(Err(error))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Aborted,
    BodyError,
    ServiceError,
}

/// What the access line needs; owned by the future, then by the body. Dropped unfinished, it
/// reports the request as aborted, so no request goes without its line.
struct RequestState {
    /// `None` only while lent to a scope (see [`RequestContext::scope_in_place`]), when
    /// nothing else can reach the state; and in the request's future until `call` returns.
    ctx: Option<Arc<RequestContext>>,
    span: Span,
    status: Option<StatusCode>,
    bytes: u64,
    /// The body's length as declared to the client (exact size hint or `Content-Length`).
    declared: Option<u64>,
    empty_body: bool,
    head: bool,
    log: bool,
    /// The layer's settings: the id header, the failure classifier, the access sampler.
    config: Arc<Config>,
    /// The call's `grpc-timeout`: a call dropped after it passed was cut off at its deadline
    /// (by tonic's server, or by the client), which is `DEADLINE_EXCEEDED`, not a client who left.
    grpc_timeout: Option<std::time::Duration>,
    /// The latest verdict: the head's, then the trailers'.
    classification: Classification,
    finished: bool,
}

impl RequestState {
    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let Some(ctx) = self.ctx.as_deref() else {
            debug_assert!(false, "a request's state finishes while its context is lent");
            return;
        };
        // Spans that outlive the request stop stamping it; the access line still is (task-local).
        ctx.mark_finished();
        if !self.log {
            return;
        }
        let _entered = self.span.enter();
        let elapsed = ctx.elapsed();
        let duration_ms = elapsed.as_micros() as f64 / 1000.0;
        let status = self.status.map(|s| s.as_u16());
        let bytes = self.bytes;
        let grpc_status = self.classification.grpc_status();
        let failed = self.classification.is_failure();
        // A client keeps its deadline from before it sent the call, so its reset can arrive a
        // little before this context's clock reaches the timeout: a drop within a tenth of it
        // (10 ms at most) counts as the deadline too. tonic's server timer starts after this
        // context, so its cut always comes later.
        let deadline_passed = self.grpc_timeout.is_some_and(|timeout| {
            let margin = (timeout / 10).min(std::time::Duration::from_millis(10));
            elapsed + margin >= timeout
        });
        // Judged like a status in trailers, so a classifier of your own decides the level.
        let deadline = (deadline_passed && grpc_status.is_none()).then(|| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert(crate::classify::GRPC_STATUS, HeaderValue::from(DEADLINE_EXCEEDED));
            self.config.classifier.classify_trailers(self.classification, &trailers)
        });
        let verdict = match (outcome, deadline) {
            (Outcome::Aborted, Some(deadline)) => deadline,
            _ => self.classification,
        };
        let request = AccessRequest::new(ctx, self.status, verdict, elapsed, outcome == Outcome::Completed);
        let sample_rate = match self.config.sampler.sample(&request) {
            AccessDecision::Log => None,
            AccessDecision::Sampled(rate) => Some(rate.get()),
            AccessDecision::Skip => return,
        };
        // Often run by a destructor (a dropped response): never a panic there.
        reqscope_core::__private::scope_in_place_or_outside(&mut self.ctx, || match outcome {
            Outcome::Completed if failed => {
                tracing::error!(target: "reqscope::access", status, grpc_status, duration_ms, bytes, sample_rate, "request completed")
            }
            Outcome::Completed => {
                tracing::info!(target: "reqscope::access", status, grpc_status, duration_ms, bytes, sample_rate, "request completed")
            }
            Outcome::Aborted if deadline.is_some_and(|verdict| verdict.is_failure()) => tracing::error!(
                target: "reqscope::access", status, grpc_status = DEADLINE_EXCEEDED, duration_ms, bytes, sample_rate, aborted = true,
                "request aborted at its gRPC deadline"
            ),
            Outcome::Aborted if deadline.is_some() => tracing::info!(
                target: "reqscope::access", status, grpc_status = DEADLINE_EXCEEDED, duration_ms, bytes, sample_rate, aborted = true,
                "request aborted at its gRPC deadline"
            ),
            Outcome::Aborted => tracing::info!(
                target: "reqscope::access", status, grpc_status, duration_ms, bytes, sample_rate, aborted = true,
                "request aborted before the response was complete"
            ),
            Outcome::BodyError => tracing::warn!(
                target: "reqscope::access", status, grpc_status, duration_ms, bytes, sample_rate, aborted = true,
                "response body failed"
            ),
            Outcome::ServiceError => tracing::warn!(
                target: "reqscope::access", duration_ms, sample_rate, "service failed without a response"
            ),
        });
    }
}

impl Drop for RequestState {
    fn drop(&mut self) {
        self.finish(Outcome::Aborted);
    }
}

pin_project! {
    /// The response body of [`RequestContextService`]: the inner body, polled inside the
    /// request context, counting bytes for the access line.
    pub struct ContextBody<B> {
        #[pin]
        inner: B,
        state: Option<RequestState>,
    }

    impl<B> PinnedDrop for ContextBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(state) = this.state.as_mut() {
                // hyper never polls a body that reports its end up front (empty bodies), and
                // drops one whose declared length has been sent without polling it to its end.
                let complete = state.empty_body || state.declared.is_some_and(|length| state.bytes >= length);
                let outcome = if complete { Outcome::Completed } else { Outcome::Aborted };
                state.finish(outcome);
            }
        }
    }
}

impl<B: Body> Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(state) = this.state.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        let polled = {
            let _entered = state.span.enter();
            let inner = this.inner.as_mut();
            RequestContext::scope_in_place(&mut state.ctx, || inner.poll_frame(cx))
        };
        let outcome = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    state.bytes += data.remaining() as u64;
                    this.inner.is_end_stream().then_some(Outcome::Completed)
                } else if let Some(trailers) = frame.trailers_ref() {
                    // gRPC's status is here. Trailers are the last frame: hyper sends them and
                    // stops, without polling again to see the end.
                    if state.log {
                        state.classification =
                            state.config.classifier.classify_trailers(state.classification, trailers);
                    }
                    Some(Outcome::Completed)
                } else {
                    this.inner.is_end_stream().then_some(Outcome::Completed)
                }
            }
            Poll::Ready(Some(Err(_))) => Some(Outcome::BodyError),
            Poll::Ready(None) => Some(Outcome::Completed),
            Poll::Pending => None,
        };
        if let Some(outcome) = outcome {
            state.finish(outcome);
            // Over: the span closes now, and later polls (to see the end) go straight through.
            *this.state = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_grpc_timeout;

    #[tokio::test]
    async fn a_header_the_layer_reads_for_two_purposes_is_read_for_both() {
        use http_body_util::BodyExt;
        use reqscope_core::RequestContext;
        use tower::{Layer, ServiceExt};

        // The log-level header named like the id header: one value, both readings.
        let layer = super::RequestContextLayer::new()
            .access_log(false)
            .log_level_header(Some(http::HeaderName::from_static("x-request-id")));
        let service = layer.layer(tower::service_fn(|_: http::Request<String>| async {
            let raised = RequestContext::with(|ctx| {
                ctx.set_roles(["log-debug"]);
                ctx.raised_level()
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(format!("{raised:?}")))
        }));
        let request = http::Request::get("/").header("x-request-id", "debug").body(String::new()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "debug");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "Some(Some(Debug))");
    }

    #[tokio::test]
    async fn the_request_continues_the_callers_trace_and_inner_services_see_the_same_trace() {
        use http_body_util::BodyExt;
        use reqscope_core::RequestContext;
        use reqscope_core::trace::TraceStateEntry;
        use tower::{Layer, ServiceExt};

        // Built with the trace (without `otel`) or given it by the span right after (with
        // `otel` and no OpenTelemetry layer): either way one trace, the caller's child,
        // carrying this service's entry first, and the headers inner services see agree.
        let layer = super::RequestContextLayer::new()
            .access_log(false)
            .tracestate_entry(TraceStateEntry::new("rs", "1").unwrap());
        let service = layer.layer(tower::service_fn(|request: http::Request<String>| async move {
            let (trace, state, parent) = RequestContext::with(|ctx| {
                let trace = ctx.trace().expect("a served request has a trace");
                (trace.traceparent(), trace.state().map(|s| s.as_str().to_owned()), trace.parent_id().copied())
            })
            .unwrap();
            assert_eq!(request.headers()["traceparent"], trace);
            assert_eq!(request.headers()["tracestate"].to_str().ok(), state.as_deref());
            let body = format!("{} {} {}", trace.to_str().unwrap(), state.unwrap(), parent.unwrap());
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        }));
        let request = http::Request::get("/")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .header("tracestate", "vendor=x")
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        let [traceparent, state, parent] = body.split(' ').collect::<Vec<_>>()[..] else { panic!("{body}") };
        assert!(traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{traceparent}");
        assert!(!traceparent.contains("b7ad6b7169203331"), "a span of its own: {traceparent}");
        assert!(traceparent.ends_with("-01"), "{traceparent}");
        assert_eq!(state, "rs=1,vendor=x");
        assert_eq!(parent, "b7ad6b7169203331");
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(parse_grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"m", b"100", b"123456789m", b"10x", b"-1S", b"1 S", b"\xff"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
