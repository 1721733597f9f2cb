//! Rate limits per user (or client ip) that feed the request context and the IETF headers.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::rate_limit::{Quota, RateLimitLayer};
//!
//! let per_user = RateLimitLayer::new(Quota::per_minute(600).expect("a valid quota"));
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "a user" }))
//!     .route_layer(per_user) // inside the auth layer, if any: then it sees the user
//!     .layer(RequestContextLayer::new());
//! ```
//!
//! Every request it sees is counted against a key: `user:<id>` when the auth layer has put a
//! user into the context, else `ip:<client ip>` — the context's client ip, which honours a
//! forwarding header only from [trusted proxies](reqscope_core::TrustedProxies); IPv6
//! clients by their /64 network (one subscriber usually holds a whole /64, so per-address
//! keys would give each of them 2⁶⁴ budgets; see [`ipv6_prefix`](RateLimitLayer::ipv6_prefix))
//! — else the shared key `anonymous`; or whatever [`RateLimitLayer::key_fn`] returns.
//!
//! A request with neither a user nor a client ip means the server does not hand the peer
//! address to the stack (serve with axum's `into_make_service_with_connect_info`, or put a
//! `SocketAddr` into the request extensions): all such requests share the one `anonymous`
//! budget, and the layer says so in one WARN line (target `reqscope::rate_limit`) the first
//! time it happens.
//!
//! # Limiting floods of bad tokens too
//!
//! Placed inside the auth layer, a per-user limit never sees a request the auth layer
//! refused, so a flood of forged tokens is not limited by it. Add an outer limit per client
//! ip, before authentication:
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::auth::AuthLayer;
//! use reqscope_tower::rate_limit::{Quota, RateLimitLayer};
//!
//! let per_user = RateLimitLayer::new(Quota::per_minute(600).expect("a valid quota"));
//! let per_ip = RateLimitLayer::new(Quota::per_minute(3_000).expect("a valid quota")).per_client_ip();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "a user" }))
//!     .route_layer(per_user) // innermost: sees the verified user
//!     .route_layer(AuthLayer::hmac(b"a secret of at least 32 bytes, from the environment").audience("my-api"))
//!     .layer(per_ip) // outside auth: counts refused tokens too
//!     .layer(RequestContextLayer::new());
//! ```
//!
//! # Algorithm
//!
//! GCRA (the generic cell rate algorithm), which behaves as a token bucket of `burst`
//! requests refilled at `requests / window`, without a timer or a counter per window: each
//! key stores one time. Over any interval of length `t`, a key gets at most
//! `burst + t × requests / window` requests through. Time is kept in nanoseconds in process
//! and in microseconds in Redis (the Redis server's clock, so instances agree).
//!
//! # What the request sees
//!
//! - the context gets `rate_limit_remaining` (requests the key may still make now) and
//!   `rate_limit_reset` (seconds until the whole burst is available again), so every later log
//!   line of the request, the access line included, carries them;
//! - every response gets `RateLimit-Policy: "default";q=<requests>;w=<window seconds>` and
//!   `RateLimit: "default";r=<remaining>;t=<reset>`, the structured fields of
//!   draft-ietf-httpapi-ratelimit-headers;
//! - a refused request gets `429 {"error":"rate_limited","message":…,"request_id":…}` with
//!   `Retry-After` (whole seconds, rounded up: retrying then succeeds) and one INFO line; a
//!   gRPC request (`content-type: application/grpc…`) gets status `RESOURCE_EXHAUSTED` (8)
//!   with the same message, and `retry-after` and the `ratelimit` headers as metadata
//!   ([`RateLimitLayer::error_response`] picks another format; see
//!   [`error_response`](crate::error_response)).
//!
//! # Stores
//!
//! In process (the default): sharded maps, each lock held for one lookup; memory bounded by
//! [`max_keys`](RateLimitLayer::max_keys) (idle keys are dropped). Redis (feature `redis`,
//! [`RedisStore`]): budgets shared by every instance; concurrent checks are coalesced into
//! one atomic script call per round trip, with the decisions of one call per check (or, with
//! [`RedisStore::local_lease`], a few cells taken at a time and spent in process). When Redis
//! fails, requests go on (fail-open, with one stamped WARN per request and
//! [`store_failures`](RateLimitLayer::store_failures) counting), or get 503 JSON (gRPC:
//! `UNAVAILABLE`) with
//! [`fail_closed`](RateLimitLayer::fail_closed); the limiter recovers without a restart.

mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis;

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use reqscope_core::RequestContext;
use tower_layer::Layer;
use tower_service::Service;

use self::memory::MemoryStore;
use self::quota::ceil_secs;
pub use self::quota::{Decision, InvalidQuota, Quota};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreError, RedisStoreStats};
use crate::error_response::{ByContentType, ErrorCode, ErrorReply, MakeErrorResponse, RespondWithError, ResponseBody};

/// The `RateLimit-Policy` header.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Keys held by the in-process store before idle ones are dropped (default of
/// [`RateLimitLayer::max_keys`]).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

type KeyFn = dyn Fn(&RequestContext) -> Option<String> + Send + Sync;

/// Limits requests per key; see the [module docs](self). `M` makes the refusals
/// ([`ByContentType`] by default: gRPC for gRPC requests, JSON for the rest; see
/// [`RateLimitLayer::error_response`]).
#[derive(Clone)]
pub struct RateLimitLayer<M = ByContentType> {
    shared: Shared,
    errors: M,
}

/// Everything a clone of the layer shares: the store and the failure count.
#[derive(Clone)]
struct Shared {
    quota: Quota,
    store: Arc<Store>,
    key: Option<Arc<KeyFn>>,
    fail_closed: bool,
    failures: Arc<AtomicU64>,
    policy: HeaderValue,
    /// Key by client ip even when a user is known.
    client_ip_only: bool,
    /// Leading bits of an IPv6 client address that make its key.
    ipv6_prefix: u8,
    /// Whether the one "no client ip" warning has been written.
    warned_anonymous: Arc<AtomicBool>,
}

enum Store {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl<M: fmt::Debug> fmt::Debug for RateLimitLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &*self.shared.store {
            Store::Memory(_) => "in-process",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "redis",
        };
        f.debug_struct("RateLimitLayer")
            .field("quota", &self.shared.quota)
            .field("store", &store)
            .field("fail_closed", &self.shared.fail_closed)
            .field("errors", &self.errors)
            .finish()
    }
}

impl RateLimitLayer {
    /// `quota` per key, kept in process.
    pub fn new(quota: Quota) -> Self {
        Self::with_store(quota, Store::Memory(MemoryStore::new(DEFAULT_MAX_KEYS)))
    }

    /// `quota` per key, kept in Redis and shared by every instance using `store`'s prefix.
    #[cfg(feature = "redis")]
    pub fn redis(quota: Quota, store: RedisStore) -> Self {
        Self::with_store(quota, Store::Redis(store))
    }

    fn with_store(quota: Quota, store: Store) -> Self {
        let policy = format!("\"default\";q={};w={}", quota.requests(), ceil_secs(quota.window()));
        let policy = HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        let store = Arc::new(store);
        let failures = Arc::new(AtomicU64::new(0));
        RateLimitLayer {
            shared: Shared {
                quota,
                store,
                key: None,
                fail_closed: false,
                failures,
                policy,
                client_ip_only: false,
                ipv6_prefix: 64,
                warned_anonymous: Arc::new(AtomicBool::new(false)),
            },
            errors: ByContentType,
        }
    }
}

impl<M> RateLimitLayer<M> {
    /// Answers refusals (429, and 503 when [failing closed](Self::fail_closed)) with
    /// `errors`' responses instead of [`ByContentType`]'s.
    pub fn error_response<N: MakeErrorResponse>(self, errors: N) -> RateLimitLayer<N> {
        RateLimitLayer { shared: self.shared, errors }
    }

    /// At most this many keys in the in-process store (default [`DEFAULT_MAX_KEYS`]); idle
    /// keys go first. No effect on Redis, where idle keys expire.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        // Without the `redis` feature the in-process store is the only one.
        #[allow(irrefutable_let_patterns)]
        if let Store::Memory(_) = &*self.shared.store {
            self.shared.store = Arc::new(Store::Memory(MemoryStore::new(max_keys)));
        }
        self
    }

    /// Counts requests against the key `key(ctx)` returns instead of the user or client ip;
    /// `None` lets the request through unlimited (and without rate-limit headers).
    pub fn key_fn(mut self, key: impl Fn(&RequestContext) -> Option<String> + Send + Sync + 'static) -> Self {
        self.shared.key = Some(Arc::new(key));
        self
    }

    /// Keys every request by its client ip, even an authenticated one: for an outer limit in
    /// front of the auth layer (see the [module docs](self)).
    pub fn per_client_ip(mut self) -> Self {
        self.shared.client_ip_only = true;
        self
    }

    /// How many leading bits of an IPv6 client address make its key (default 64, the
    /// network one subscriber is usually given; 128 keys each address on its own, 48 a
    /// whole site). Clamped to 1–128. IPv4 clients are keyed by their whole address, and
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.shared.ipv6_prefix = bits.clamp(1, 128);
        self
    }

    /// When the store fails, answer 503 JSON instead of letting the request through.
    pub fn fail_closed(mut self) -> Self {
        self.shared.fail_closed = true;
        self
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.shared.quota
    }

    /// Checks the store could not answer (Redis down or slow), since the layer was made.
    pub fn store_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }
}

impl<S, M: Clone> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimit<S, M>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, shared: Arc::new(self.shared.clone()), errors: self.errors.clone() }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S, M = ByContentType> {
    inner: S,
    shared: Arc<Shared>,
    errors: M,
}

impl<S: fmt::Debug, M> fmt::Debug for RateLimit<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit").field("inner", &self.inner).finish_non_exhaustive()
    }
}

thread_local! {
    /// The default key is built here, so that an in-process check allocates nothing for a
    /// key it has seen.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Shared {
    /// The request's key, given to `f`; `None` when a custom key function says "unlimited".
    fn with_key<R>(&self, ctx: Option<&RequestContext>, f: impl FnOnce(&str) -> R) -> Option<R> {
        if let Some(key_fn) = &self.key {
            return ctx.and_then(|ctx| key_fn(ctx)).map(|key| f(&key));
        }
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            let user = ctx.filter(|_| !self.client_ip_only).and_then(RequestContext::user_id);
            match (user, ctx.and_then(RequestContext::client_ip)) {
                (Some(user), _) => {
                    key.push_str("user:");
                    key.push_str(&user);
                }
                (None, Some(ip)) => {
                    let _ = write!(key, "ip:");
                    write_ip_key(&mut key, ip, self.ipv6_prefix);
                }
                (None, None) => {
                    if !self.warned_anonymous.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            target: "reqscope::rate_limit",
                            "a request has no client ip: such requests share one `anonymous` budget; \
                             give the stack the peer address (axum's into_make_service_with_connect_info \
                             with reqscope's feature `axum`, tonic's Server with feature `tonic`, \
                             RequestContextLayer::peer_addr) or set key_fn"
                        );
                    }
                    key.push_str("anonymous");
                }
            }
            Some(f(&key))
        })
    }

    /// Records the decision in the context and builds the headers that report it.
    fn record(&self, decision: &Decision) -> RateHeaders {
        let reset = ceil_secs(decision.reset);
        RequestContext::with(|ctx| ctx.set_rate_limit(decision.remaining, reset));
        RateHeaders { policy: self.policy.clone(), current: Some((decision.remaining, reset)) }
    }

    fn refuse(&self, decision: &Decision) -> ErrorReply {
        let headers = self.record(decision);
        let retry_after = ceil_secs(decision.retry_after).max(1);
        tracing::info!(target: "reqscope::rate_limit", retry_after, "rate limited");
        let message = format!("too many requests; retry in {retry_after} s");
        let mut reply = ErrorReply::new(ErrorCode::ResourceExhausted, "rate_limited", message);
        reply.headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        headers.apply(&mut reply.headers);
        reply
    }
}

/// Writes `ip` as a key: IPv4 whole, IPv6 as its network of `prefix` bits (`2001:db8::/64`).
fn write_ip_key(key: &mut String, ip: IpAddr, prefix: u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let _ = write!(key, "{v4}");
        }
        IpAddr::V6(v6) if prefix >= 128 => {
            let _ = write!(key, "{v6}");
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - u32::from(prefix));
            let _ = write!(key, "{}/{prefix}", Ipv6Addr::from(u128::from(v6) & mask));
        }
    }
}

/// The rate-limit headers waiting for the response.
#[derive(Debug)]
struct RateHeaders {
    policy: HeaderValue,
    /// Remaining and reset seconds, unless the store could not say.
    current: Option<(u64, u64)>,
}

impl RateHeaders {
    fn apply(self, headers: &mut HeaderMap) {
        // Appended, not inserted: several limiters on one route list several policies.
        headers.append(RATELIMIT_POLICY.clone(), self.policy);
        if let Some((remaining, reset)) = self.current {
            // Formatted on the stack: the header value's own copy is the only allocation.
            let mut buf = [0u8; 64];
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            if std::io::Write::write_fmt(&mut cursor, format_args!("\"default\";r={remaining};t={reset}")).is_ok() {
                let len = usize::try_from(cursor.position()).unwrap_or(0);
                if let Ok(value) = HeaderValue::from_bytes(&buf[..len]) {
                    headers.append(RATELIMIT.clone(), value);
                }
            }
        }
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    M: MakeErrorResponse,
    M::Responder: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let ctx = RequestContext::current();
        let decided = |decision: Option<Decision>, inner: &mut S, errors: &M, request: Request<ReqBody>| match decision
        {
            None => Kind::Allowed { future: inner.call(request), headers: None },
            Some(decision) if decision.allowed => {
                Kind::Allowed { future: inner.call(request), headers: Some(shared.record(&decision)) }
            }
            Some(decision) => {
                let reply = shared.refuse(&decision);
                Kind::Refused { response: Some(errors.for_request(&request).respond(&reply)) }
            }
        };
        let kind = match &*shared.store {
            Store::Memory(store) => {
                let decision = shared.with_key(ctx.as_deref(), |key| store.check(key, &shared.quota));
                decided(decision, &mut self.inner, &self.errors, request)
            }
            #[cfg(feature = "redis")]
            Store::Redis(store) => {
                // A lease (local-lease mode) answers in place, like the in-process store.
                let local = shared.with_key(ctx.as_deref(), |key| {
                    store.check_local(key, &shared.quota).ok_or_else(|| key.to_owned())
                });
                let key = match local {
                    None => return ResponseFuture { kind: decided(None, &mut self.inner, &self.errors, request) },
                    Some(Ok(decision)) => {
                        return ResponseFuture {
                            kind: decided(Some(decision), &mut self.inner, &self.errors, request),
                        };
                    }
                    Some(Err(key)) => key,
                };
                let responder = self.errors.for_request(&request);
                // The ready service handles this request; a clone takes its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                Kind::Checking {
                    future: Box::pin(check_then_call(Arc::clone(&self.shared), key, inner, request, responder)),
                }
            }
        };
        ResponseFuture { kind }
    }
}

#[cfg(feature = "redis")]
async fn check_then_call<S, R, ReqBody, ResBody>(
    shared: Arc<Shared>,
    key: String,
    mut inner: S,
    request: Request<ReqBody>,
    responder: R,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RespondWithError,
{
    let Store::Redis(store) = &*shared.store else { unreachable!("only the Redis store checks asynchronously") };
    let headers = match store.check_remote(key, &shared.quota).await {
        Ok(decision) if decision.allowed => shared.record(&decision),
        Ok(decision) => return Ok(responder.respond(&shared.refuse(&decision)).map(ResponseBody::reply)),
        Err(error) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            if shared.fail_closed {
                tracing::warn!(target: "reqscope::rate_limit", %error, "rate-limit store unavailable: request refused");
                let reply = ErrorReply::new(
                    ErrorCode::Unavailable,
                    "unavailable",
                    "rate limiting is unavailable; try again later",
                );
                return Ok(responder.respond(&reply).map(ResponseBody::reply));
            }
            tracing::warn!(target: "reqscope::rate_limit", %error, "rate-limit store unavailable: request let through");
            RateHeaders { policy: shared.policy.clone(), current: None }
        }
    };
    let mut response = inner.call(request).await?;
    headers.apply(response.headers_mut());
    Ok(response.map(ResponseBody::inner))
}

type Checking<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Allowed (or not limited): the inner service's future, then the headers.
        Allowed { #[pin] future: F, headers: Option<RateHeaders> },
        // Waiting for the store (Redis), then the inner service.
        Checking { future: Checking<B, E> },
        // Refused: the error response, taken on the first poll.
        Refused { response: Option<Response<Bytes>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Allowed { future, headers } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(headers) = headers.take() {
                    headers.apply(response.headers_mut());
                }
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            KindProj::Checking { future } => future.as_mut().poll(cx),
            KindProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(ResponseBody::reply))),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write_ip_key;

    fn key(ip: &str, prefix: u8) -> String {
        let mut key = String::new();
        write_ip_key(&mut key, ip.parse().unwrap(), prefix);
        key
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:3::1", 64), "2001:db8:1:3::/64");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(key("2001:db8::1", 1), "::/1");
        assert_eq!(key("203.0.113.7", 64), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7", 64), "203.0.113.7", "a mapped IPv4 address counts as IPv4");
    }
}
