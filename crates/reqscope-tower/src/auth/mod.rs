//! Verify JWT bearer tokens and put who is asking into the request context.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::auth::{AuthLayer, RequireRoleLayer};
//!
//! # fn main() -> Result<(), reqscope_tower::auth::AuthConfigError> {
//! let auth = AuthLayer::hmac(b"a secret of at least 32 bytes, from the environment").audience("my-api");
//! let app: Router = Router::new()
//!     .route("/admin/stats", get(|| async { "stats" }).route_layer(RequireRoleLayer::new("admin")))
//!     .route("/me", get(|| async { "me" }))
//!     .route_layer(auth) // only matched routes: unknown paths still answer 404
//!     .layer(RequestContextLayer::new());
//! # Ok(()) }
//! ```
//!
//! A valid token's `sub` becomes the context's user id, the org claim (default `org_id`) its
//! org id, the roles claim (default `roles`: an array, or a space-separated string) its roles
//! — so every later log line of the request, and its access line, carries them. OAuth's
//! `scope` is read as roles only when asked to ([`AuthLayer::roles_from_scope`]): a scope
//! granted to a client is not a role of its user. The whole verified claim set is available to
//! handlers as [`Claims`], in the request's extensions (axum's `Extension<Claims>`) and the
//! context's. [`RequireRoleLayer`] decides from those verified [`Claims`], not from the
//! context's roles, which any code may change for its log lines.
//!
//! **Validation.** `exp` is required and checked, `nbf` is checked, both with a leeway of
//! 30 s by default ([`AuthLayer::leeway`]). `sub` is required and must be a non-empty string
//! (RFC 7519 §4.1.2; a numeric `sub` is refused as `malformed`, since a large JSON number can
//! lose digits and two users would share an id). `iss` and `aud` are checked — and required —
//! when configured. The algorithm is pinned to the key's family: an HMAC key verifies only
//! HS256/384/512, an RSA key only RS*/PS*, an EC key ES256/ES384, an Ed25519 key EdDSA; so a
//! token signed with an RSA public key used as an HMAC secret is refused. `alg: none` is never
//! accepted. A header with a `crit` parameter is refused (`unsupported_crit`): it lists
//! extensions the recipient must understand, and this layer understands none (RFC 7515
//! §4.1.11). Other header parameters, of any JSON type, are ignored (RFC 7515 §4). Tokens over
//! 8 KiB ([`AuthLayer::max_token_bytes`]) are refused before parsing.
//!
//! **Audience of a remote key set.** Identity providers (Google, Auth0, Entra ID, …) sign the
//! tokens of every application of every customer with one key set, so a token signed by that
//! key set proves nothing about *which* application it was meant for. [`AuthLayer::jwks_url`]
//! therefore returns a [`JwksAuthBuilder`], which becomes an [`AuthLayer`] only through
//! [`JwksAuthBuilder::audience`] or — explicitly waiving the check —
//! [`JwksAuthBuilder::allow_any_audience`]: forgetting the audience is a compile error, not a
//! hole found in production.
//!
//! ```
//! use reqscope_tower::auth::AuthLayer;
//! # fn main() -> Result<(), reqscope_tower::auth::AuthConfigError> {
//! let auth: AuthLayer = AuthLayer::jwks_url("https://id.example.com/.well-known/jwks.json")?
//!     .audience("my-api")
//!     .issuer("https://id.example.com/");
//! # Ok(()) }
//! ```
//!
//! ```compile_fail
//! use reqscope_tower::auth::AuthLayer;
//! # fn main() -> Result<(), reqscope_tower::auth::AuthConfigError> {
//! // Does not compile: which application's tokens should this accept?
//! let auth: AuthLayer = AuthLayer::jwks_url("https://id.example.com/.well-known/jwks.json")?;
//! # Ok(()) }
//! ```
//!
//! **Rejections.** 401 with `{"error":"unauthorized","message":<reason>,"request_id":…}` and
//! `WWW-Authenticate: Bearer realm="api", error="invalid_token", error_description=<reason>`
//! (RFC 6750; just `Bearer realm="api"` when the token is missing), where `<reason>` is one
//! of [`Reason`]'s classes. One WARN event (target `reqscope::auth`) per rejection carries
//! the reason class — never the token, never the `Authorization` header. In optional mode
//! ([`AuthLayer::optional`]) requests without a token pass as anonymous; a token that is
//! present but bad is still refused.
//!
//! **gRPC.** The token is read from the `authorization` metadata, which is the same header.
//! A gRPC request (`content-type: application/grpc…`) is refused with a trailers-only
//! response instead of JSON: status `UNAUTHENTICATED` (16) with `<reason>` as its message
//! and `www-authenticate` as metadata; `UNAVAILABLE` (14) for the 503, `PERMISSION_DENIED`
//! (7) for [`RequireRoleLayer`]'s 403. [`AuthLayer::error_response`] picks another format
//! (see [`error_response`](crate::error_response)).
//!
//! ```
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::auth::AuthLayer;
//!
//! // For `tonic::transport::Server::builder().layer(stack)`: the same layers as for axum.
//! let stack = tower::ServiceBuilder::new()
//!     .layer(RequestContextLayer::new())
//!     .layer(AuthLayer::hmac(b"a secret of at least 32 bytes, from the environment").audience("my-api"));
//! # let _ = stack;
//! ```
//!
//! **Verified-token cache.** A client usually sends the same token on every request. The
//! layer remembers verified tokens (the whole token string is the key) for up to 60 s and
//! about 10,000 tokens, re-checking `exp` and `nbf` on each use, so the signature is checked
//! about once a minute per token; [`AuthLayer::verified_token_cache`] tunes it,
//! [`AuthLayer::without_verified_token_cache`] turns it off. The cache is sharded (a hit
//! takes one shard's read lock) and, when full, evicts the entries least used (S3-FIFO), so a
//! token in use stays while one-off tokens come and go. When a refetched key set no longer
//! has a key, every cached token that key verified is forgotten at once. Apart from it (and
//! with it off too), the layer remembers the first four distinct header segments of tokens
//! that verified with the current keys (a refetch that brings other keys starts afresh): an
//! issuer's tokens share one header per key, so a new token's header is recognized by its
//! text instead of decoded and parsed again. A token whose header is remembered is verified
//! like any other; only tokens that verified add a header, so made-up headers cannot take
//! the places.
//!
//! **Keys.** An HMAC secret, an RSA / EC / Ed25519 public key in PEM, a JWKS document (string
//! or file), or a JWKS URL. A JWKS URL is fetched on first use and cached. It is fetched again:
//! - in the background when the set is older than its maximum age: the response's
//!   `Cache-Control: max-age` (`no-cache` / `no-store` count as 0), but never more than
//!   [`AuthLayer::jwks_max_age`] (default 10 minutes, at most a day; also the age used when
//!   the response has no `max-age`), so keys the provider removed (revoked) drop out.
//!   Requests meanwhile keep verifying with the set they have (stale-while-revalidate): a
//!   slow provider delays nobody;
//! - when a token names an unknown `kid`; that request waits for the fetch (at most 10 s);
//! - when [`AuthLayer::refresh`] is called (e.g. from a key-rotation webhook).
//!
//! Automatic fetches start at most once per [`AuthLayer::min_refresh_interval`] (30 s by
//! default), so tokens with made-up `kid`s cannot hammer the identity provider, and a
//! `max-age` shorter than the interval means "every interval". Each fetch runs in a tokio task
//! of its own, shared by every request waiting for it: a client that hangs up mid-fetch
//! cancels nothing. While the provider is down, cached keys keep verifying; a token no cached
//! key can verify gets 503 JSON, since it cannot be judged. Key sets never carry shared
//! secrets (`kty: oct` is refused: use [`AuthLayer::hmac`]); keys the layer cannot use (an
//! unsupported curve) are skipped with a WARN; plain `http://` outside loopback is accepted
//! with a WARN. Tokens without a `kid` are tried against every key of their algorithm's
//! family, as during a key rotation.
//!
//! Crypto comes from `jsonwebtoken` with its `aws_lc_rs` backend, chosen on purpose:
//! `jsonwebtoken` ≥ 10 panics at the first verification unless exactly one backend is enabled,
//! and `aws_lc_rs` verifies RS256 9× and ES256 5× faster than the pure-Rust `rust_crypto` one
//! (21 µs against 191 µs, 55 µs against 282 µs here). It builds with the C compiler every
//! Rust toolchain setup has; no CMake is needed on Linux.

mod cache;
mod keys;
mod reject;
mod role;
mod verify;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use reqscope_core::RequestContext;
use tower_layer::Layer;
use tower_service::Service;

pub use keys::JwksError;
use keys::{KeyEntry, KeySet, KeySource, Lookup, Pending, RemoteJwks};
pub use reject::Reason;
pub use role::{RequireRole, RequireRoleLayer};
pub use verify::Claims;
use verify::{Rules, TokenHeader, Verified};

use crate::error_response::{ByContentType, MakeErrorResponse, RespondWithError, ResponseBody};

/// A key or key set that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A PEM key did not parse.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A JWKS document did not parse or has no usable signing key.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    /// A JWKS file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A JWKS URL is not an absolute http(s) URL.
    #[error("invalid JWKS URL {0:?}: expected http:// or https://")]
    InvalidUrl(String),
    /// The TLS client for fetching the JWKS could not be set up.
    #[error("cannot set up TLS for the JWKS client: {0}")]
    Tls(String),
}

#[derive(Clone)]
struct Config {
    keys: KeySource,
    rules: Rules,
    required: bool,
    realm: String,
    cache: Option<Arc<cache::VerifiedCache>>,
}

/// Verifies bearer JWTs and patches user, org and roles into the request context; see the
/// [module docs](self). `M` makes the refusals ([`ByContentType`] by default: gRPC for gRPC
/// requests, JSON for the rest; see [`AuthLayer::error_response`]).
#[derive(Clone)]
pub struct AuthLayer<M = ByContentType> {
    config: Arc<Config>,
    errors: M,
}

impl<M: std::fmt::Debug> std::fmt::Debug for AuthLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of Debug output.
        f.debug_struct("AuthLayer")
            .field("rules", &self.config.rules)
            .field("required", &self.config.required)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

/// What [`AuthLayer::jwks_url`] returns: an [`AuthLayer`] for a remote key set that still
/// needs to know which tokens are meant for this service. Call [`audience`](Self::audience),
/// or — for a key set that signs tokens for this service only — waive the check with
/// [`allow_any_audience`](Self::allow_any_audience). See the [module docs](self).
#[derive(Debug)]
#[must_use = "a JWKS URL needs `.audience(…)` or `.allow_any_audience()` to become an AuthLayer"]
pub struct JwksAuthBuilder {
    layer: AuthLayer,
}

impl JwksAuthBuilder {
    /// Requires `aud` to contain this audience (call [`AuthLayer::audience`] on the result to
    /// accept several).
    pub fn audience(self, audience: impl Into<String>) -> AuthLayer {
        self.layer.audience(audience)
    }

    /// Accepts tokens whatever their `aud`: only for a key set that signs tokens for this
    /// service alone (your own issuer), never for a shared identity provider's.
    pub fn allow_any_audience(self) -> AuthLayer {
        self.layer
    }
}

impl AuthLayer {
    fn with_keys(keys: KeySource) -> Self {
        AuthLayer {
            config: Arc::new(Config {
                keys,
                rules: Rules {
                    leeway_secs: 30,
                    issuers: None,
                    audiences: None,
                    max_token_bytes: 8 * 1024,
                    org_claim: "org_id".to_owned(),
                    roles_claim: "roles".to_owned(),
                    scope_fallback: false,
                },
                required: true,
                realm: "api".to_owned(),
                cache: Some(Arc::new(cache::VerifiedCache::new(10_000, Duration::from_secs(60)))),
            }),
            errors: ByContentType,
        }
    }

    fn fixed(keys: Vec<KeyEntry>) -> Self {
        Self::with_keys(KeySource::Static(Arc::new(KeySet::fixed(keys))))
    }

    /// HS256 / HS384 / HS512 with a shared secret.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self::fixed(vec![KeyEntry::hmac(secret.as_ref())])
    }

    /// RS256/384/512 and PS256/384/512 with an RSA public key in PEM.
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::fixed(vec![KeyEntry::rsa_pem(pem.as_ref())?]))
    }

    /// ES256 / ES384 with an EC public key in PEM.
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::fixed(vec![KeyEntry::ec_pem(pem.as_ref())?]))
    }

    /// EdDSA with an Ed25519 public key in PEM.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::fixed(vec![KeyEntry::ed_pem(pem.as_ref())?]))
    }

    /// The signing keys of a JWKS document.
    pub fn jwks_json(json: &str) -> Result<Self, AuthConfigError> {
        Ok(Self::fixed(keys::parse_jwks(json)?))
    }

    /// The signing keys of a JWKS file.
    pub fn jwks_file(path: impl AsRef<Path>) -> Result<Self, AuthConfigError> {
        Ok(Self::fixed(keys::read_jwks_file(path.as_ref())?))
    }

    /// The signing keys published at an `https://` (or `http://`) URL, fetched on first use,
    /// refreshed as the [module docs](self) say. Name the audience next:
    /// `AuthLayer::jwks_url(url)?.audience("my-api")` (see [`JwksAuthBuilder`]). Fetches run
    /// in tokio tasks: the layer must serve inside a tokio runtime.
    pub fn jwks_url(url: &str) -> Result<JwksAuthBuilder, AuthConfigError> {
        let layer = Self::with_keys(KeySource::Remote(Arc::new(RemoteJwks::new(url)?)));
        Ok(JwksAuthBuilder { layer })
    }
}

impl<M> AuthLayer<M> {
    /// Answers refusals with `errors`' responses instead of [`ByContentType`]'s (e.g.
    /// [`JsonErrors`](crate::error_response::JsonErrors) to answer JSON whatever the request).
    /// The reason and the WARN event stay the same.
    pub fn error_response<N: MakeErrorResponse>(self, errors: N) -> AuthLayer<N> {
        AuthLayer { config: self.config, errors }
    }

    fn config_mut(&mut self) -> &mut Config {
        let config = Arc::make_mut(&mut self.config);
        // The rules are about to change: what was verified under the old ones is stale.
        if let Some(cache) = &config.cache {
            config.cache = Some(Arc::new(cache.emptied()));
        }
        config
    }

    /// Requires `iss` to be this issuer (call again to accept several).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.config_mut().rules.issuers.get_or_insert_with(Vec::new).push(issuer.into());
        self
    }

    /// Requires `aud` to contain this audience (call again to accept several).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.config_mut().rules.audiences.get_or_insert_with(Vec::new).push(audience.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s, at most a day).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        // Bounded: a leeway of years would overflow the time arithmetic and mean nothing.
        self.config_mut().rules.leeway_secs = leeway.as_secs().min(86_400);
        self
    }

    /// Longest token accepted, in bytes (default 8 KiB; between 64 B and 1 MiB).
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.config_mut().rules.max_token_bytes = bytes.clamp(64, 1024 * 1024);
        self
    }

    /// The claim holding the org id (default `org_id`).
    pub fn org_claim(mut self, claim: impl Into<String>) -> Self {
        self.config_mut().rules.org_claim = claim.into();
        self
    }

    /// The claim holding the roles (default `roles`).
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.config_mut().rules.roles_claim = claim.into();
        self
    }

    /// Reads OAuth's space-separated `scope` as the roles when the roles claim gives none.
    /// Off by default: a scope is what a client application was allowed, not a role of the
    /// user, and [`RequireRoleLayer`] would otherwise let a token with `scope: "admin"` in.
    pub fn roles_from_scope(mut self) -> Self {
        self.config_mut().rules.scope_fallback = true;
        self
    }

    /// Lets requests without a token through as anonymous (no user in the context).
    pub fn optional(mut self) -> Self {
        self.config_mut().required = false;
        self
    }

    /// The `realm` of `WWW-Authenticate` (default `api`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.config_mut().realm = realm.into().replace(['"', '\\'], "");
        self
    }

    /// Remembers up to about `capacity` verified tokens for at most `ttl` (default: 10,000
    /// tokens, 60 s), so a client that sends the same token on every request pays for the
    /// signature check once a minute instead of every time. `exp` and `nbf` are checked on
    /// every use; tokens of a key that a refetched key set no longer has are forgotten at
    /// once. Memory stays below about `capacity` × the token size cap.
    pub fn verified_token_cache(mut self, capacity: usize, ttl: Duration) -> Self {
        self.config_mut().cache = Some(Arc::new(cache::VerifiedCache::new(capacity, ttl)));
        self
    }

    /// Verifies every token in full, every time: signature and claims (what its header says
    /// may still come from the remembered headers; see the module docs).
    pub fn without_verified_token_cache(mut self) -> Self {
        self.config_mut().cache = None;
        self
    }

    /// Minimum time between two automatic fetches of a JWKS URL (default 30 s; `ZERO` lets an
    /// unknown `kid` always trigger one). [`AuthLayer::refresh`] is not limited by it. No
    /// effect on other keys.
    pub fn min_refresh_interval(self, interval: Duration) -> Self {
        if let KeySource::Remote(remote) = &self.config.keys {
            remote.set_min_refresh_interval(interval);
        }
        self
    }

    /// The longest a fetched JWKS is used before it is refetched in the background (default
    /// 10 minutes, at most a day). A shorter `Cache-Control: max-age` on the response wins;
    /// refetches stay at least [`AuthLayer::min_refresh_interval`] apart. No effect on other
    /// keys.
    pub fn jwks_max_age(self, max_age: Duration) -> Self {
        if let KeySource::Remote(remote) = &self.config.keys {
            remote.set_max_age(max_age);
        }
        self
    }

    /// Fetches the JWKS URL now, whatever the minimum interval, and resolves once the new
    /// set is in use (or the fetch failed, the old set staying in use): for a key-rotation
    /// webhook or an admin endpoint. Tokens of keys the new set no longer has stop passing,
    /// cached ones included. Every clone of this layer shares the key set, so keep a clone
    /// to call this on. Does nothing for keys given in code or files. Call it inside a tokio
    /// runtime ([`JwksError::NoRuntime`] otherwise); dropping the future does not cancel the
    /// fetch.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        match &self.config.keys {
            KeySource::Remote(remote) => remote.refresh_now().await,
            KeySource::Static(_) => Ok(()),
        }
    }
}

/// Signs `claims` with HS256: for development tools and tests that need a token the layer
/// accepts (`cargo run --example mint_token`). Production tokens come from your identity
/// provider.
pub fn mint_hs256(secret: &[u8], claims: &serde_json::Value) -> Result<String, AuthConfigError> {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret))
        .map_err(|e| AuthConfigError::InvalidKey(e.to_string()))
}

impl<S, M: Clone> Layer<S> for AuthLayer<M> {
    type Service = Auth<S, M>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, config: Arc::clone(&self.config), errors: self.errors.clone() }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S, M = ByContentType> {
    inner: S,
    config: Arc<Config>,
    errors: M,
}

/// Puts the verified identity into the context and the claims into the extensions.
fn admit<B>(request: &mut Request<B>, verified: &Verified) {
    let Verified { claims, user_id, org_id, roles, .. } = verified;
    RequestContext::with(|ctx| {
        ctx.update(|patch| {
            patch.user_id = user_id.clone();
            patch.org_id = org_id.clone();
            patch.roles = Arc::clone(roles);
        });
        ctx.insert_extension(claims.clone());
    });
    request.extensions_mut().insert(claims.clone());
}

/// What the layer decided about a request, with the keys at hand.
enum Checked {
    /// A valid token: the user is in the context.
    Admitted,
    /// No token, in optional mode.
    Anonymous,
    Refused(Reason),
    /// The token names a key not fetched yet: wait for the fetch, then check again.
    Wait(Pending),
}

impl Config {
    /// Verifies with the keys at hand. With `may_wait`, a token naming an unknown key of a
    /// remote set starts (or joins) a fetch to wait for; without, it is judged on the spot.
    fn check<B>(&self, request: &mut Request<B>, may_wait: bool) -> Checked {
        let token = match verify::bearer_token(request.headers(), self.rules.max_token_bytes) {
            Ok(Some(token)) => token,
            Ok(None) if self.required => return Checked::Refused(Reason::Missing),
            Ok(None) => return Checked::Anonymous,
            Err(reason) => return Checked::Refused(reason),
        };
        let keys = self.keys.current();
        if let Some(cache) = &self.cache {
            cache.forget_removed_keys(&keys);
            if let Some(entry) = cache.get(token, self.rules.leeway_secs, &keys) {
                admit(request, &entry.verified);
                return Checked::Admitted;
            }
        }
        let header = match verify::token_header(token, &keys.headers) {
            Ok(header) => header,
            Err(reason) => return Checked::Refused(reason),
        };
        match self.keys.lookup(&keys, header.kid.as_deref(), header.alg, may_wait) {
            Lookup::Found => {}
            Lookup::Wait(pending) => return Checked::Wait(pending),
            Lookup::NoKey => return Checked::Refused(no_key(&header)),
            Lookup::Unavailable => return Checked::Refused(Reason::Unavailable),
        }
        let mut outcome = Err(Reason::InvalidSignature);
        for key in keys::candidates(&keys.keys, header.kid.as_deref(), header.alg) {
            outcome = verify::verify(token, &header, key, &self.rules).map(|verified| (verified, key));
            // Only a signature mismatch is worth trying the next key of the family for.
            if !matches!(outcome, Err(Reason::InvalidSignature)) {
                break;
            }
        }
        match outcome {
            Ok((verified, key)) => {
                keys.headers.remember(token, &header);
                if let Some(cache) = &self.cache {
                    cache.insert(token, verified.clone(), keys.generation, &key.fingerprint);
                }
                admit(request, &verified);
                Checked::Admitted
            }
            Err(reason) => Checked::Refused(reason),
        }
    }
}

fn no_key(header: &TokenHeader) -> Reason {
    // A named key we do not have cannot have made the signature; without a name, no key of
    // the token's algorithm family exists here.
    if header.kid.is_some() { Reason::InvalidSignature } else { Reason::UnsupportedAlgorithm }
}

type BoxResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    M: MakeErrorResponse,
    M::Responder: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.config.check(&mut request, true) {
            Checked::Admitted | Checked::Anonymous => AuthFuture::inner(self.inner.call(request)),
            Checked::Refused(reason) => {
                let reply = reject::refuse(reason, &self.config.realm);
                AuthFuture::ready(self.errors.for_request(&request).respond(&reply))
            }
            Checked::Wait(pending) => {
                let responder = self.errors.for_request(&request);
                // The ready service handles this request; a clone takes its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let config = Arc::clone(&self.config);
                let kind =
                    Kind::Pending { future: Box::pin(wait_then_call(config, pending, inner, request, responder)) };
                AuthFuture { kind }
            }
        }
    }
}

/// Waits for the key-set fetch (which runs in a task of its own: dropping this future, when
/// the client hangs up, cancels nothing), then judges the request with what it brought.
async fn wait_then_call<S, R, ReqBody, ResBody>(
    config: Arc<Config>,
    pending: Pending,
    mut inner: S,
    mut request: Request<ReqBody>,
    responder: R,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RespondWithError,
{
    // A failure was logged by the fetch; the lookup below answers 503 for it (a token no
    // cached key can judge), while keys already cached keep verifying.
    let _ = pending.wait().await;
    let reason = match config.check(&mut request, false) {
        Checked::Admitted | Checked::Anonymous => return Ok(inner.call(request).await?.map(ResponseBody::inner)),
        Checked::Refused(reason) => reason,
        // Not returned without `may_wait`; answered as "cannot judge" all the same.
        Checked::Wait(_) => Reason::Unavailable,
    };
    Ok(responder.respond(&reject::refuse(reason, &config.realm)).map(ResponseBody::reply))
}

pin_project! {
    /// The response future of [`Auth`] and [`RequireRole`].
    pub struct AuthFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Admitted: the inner service's future.
        Inner { #[pin] future: F },
        // Refused: the error response, taken on the first poll.
        Ready { response: Option<Response<Bytes>> },
        // Waiting for the remote key set, then verifying and calling the inner service.
        Pending { future: BoxResponseFuture<B, E> },
    }
}

impl<F, B, E> AuthFuture<F, B, E> {
    fn inner(future: F) -> Self {
        AuthFuture { kind: Kind::Inner { future } }
    }

    fn ready(response: Response<Bytes>) -> Self {
        AuthFuture { kind: Kind::Ready { response: Some(response) } }
    }
}

impl<F, B, E> Future for AuthFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_ok(|response| response.map(ResponseBody::inner)),
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(ResponseBody::reply))),
                None => Poll::Pending,
            },
            KindProj::Pending { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    #[test]
    fn only_tokens_that_verify_leave_their_header_behind() {
        let secret = b"a secret of thirty-two bytes or more";
        let layer = AuthLayer::hmac(secret).without_verified_token_cache();
        let claims = serde_json::json!({"sub": "1", "exp": verify::unix_now() + 60});
        let header = Header { kid: Some("k".to_owned()), ..Header::new(Algorithm::HS256) };
        let good = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
        let (message, _) = good.rsplit_once('.').unwrap();
        let forged = format!("{message}.AAAA");
        let request =
            |token: &str| Request::builder().header(AUTHORIZATION, format!("Bearer {token}")).body(()).unwrap();
        let keys = layer.config.keys.current();
        assert!(matches!(layer.config.check(&mut request(&forged), false), Checked::Refused(Reason::InvalidSignature)));
        assert!(!keys.headers.knows(&forged), "a refused token left its header");
        assert!(matches!(layer.config.check(&mut request(&good), false), Checked::Admitted));
        assert!(keys.headers.knows(&good));
        // Remembered, the header does not make the forged token good.
        assert!(matches!(layer.config.check(&mut request(&forged), false), Checked::Refused(Reason::InvalidSignature)));
    }
}
