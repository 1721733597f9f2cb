//! Verify JWT bearer tokens and put who is asking into the request context.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::RequestContextLayer;
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
//! org id, the roles claim (default `roles`: an array, or a space-separated string; else
//! OAuth's `scope`) its roles — so every later log line of the request, and its access line,
//! carries them. The whole verified claim set is available to handlers as [`Claims`], in the
//! request's extensions (axum's `Extension<Claims>`) and the context's.
//!
//! **Validation.** `exp` is required and checked, `nbf` is checked, both with a leeway of
//! 30 s by default ([`AuthLayer::leeway`]). `iss` and `aud` are checked — and required — when
//! configured. The algorithm is pinned to the key's family: an HMAC key verifies only HS256/
//! 384/512, an RSA key only RS*/PS*, an EC key ES256/ES384, an Ed25519 key EdDSA; so a token
//! signed with an RSA public key used as an HMAC secret is refused. `alg: none` is never
//! accepted. Tokens over 8 KiB ([`AuthLayer::max_token_bytes`]) are refused before parsing.
//!
//! **Rejections.** 401 with `{"error":"unauthorized","message":<reason>,"request_id":…}` and
//! `WWW-Authenticate: Bearer realm="api", error="invalid_token", error_description=<reason>`
//! (RFC 6750; just `Bearer realm="api"` when the token is missing), where `<reason>` is one
//! of [`Reason`]'s classes. One WARN event (target `reqscope::auth`) per rejection carries
//! the reason class — never the token, never the `Authorization` header. In optional mode
//! ([`AuthLayer::optional`]) requests without a token pass as anonymous; a token that is
//! present but bad is still refused.
//!
//! **Verified-token cache.** A client usually sends the same token on every request. The
//! layer remembers verified tokens (the whole token string is the key) for up to 60 s and
//! 10,000 tokens, re-checking `exp` and `nbf` on each use, so the signature is checked about
//! once a minute per token; [`AuthLayer::verified_token_cache`] tunes it,
//! [`AuthLayer::without_verified_token_cache`] turns it off.
//!
//! **Keys.** An HMAC secret, an RSA / EC / Ed25519 public key in PEM, a JWKS document (string
//! or file), or a JWKS URL: fetched on first use, cached, fetched again every 10 minutes (so
//! revoked keys drop out) and when a token names an unknown `kid` — at most once per
//! [`AuthLayer::min_refresh_interval`] (30 s by default), so tokens with made-up `kid`s cannot
//! hammer the identity provider. While the provider is down, cached keys keep verifying; a
//! token no cached key can verify gets 503 JSON, since it cannot be judged. Key sets never
//! carry shared secrets (`kty: oct` is refused: use [`AuthLayer::hmac`]); keys the layer
//! cannot use (an unsupported curve) are skipped with a WARN; plain `http://` outside
//! loopback is accepted with a WARN. Tokens without a `kid` are tried against every key of
//! their algorithm's family, as during a key rotation.
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

use http::{Request, Response};
use pin_project_lite::pin_project;
use reqscope_core::RequestContext;
use tower_layer::Layer;
use tower_service::Service;

use keys::{KeyEntry, KeySource, Lookup, RemoteJwks};
pub use reject::Reason;
pub use role::{RequireRole, RequireRoleLayer};
pub use verify::Claims;
use verify::{Rules, TokenHeader, Verified};

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
}

#[derive(Clone)]
struct Config {
    keys: KeySource,
    rules: Rules,
    required: bool,
    realm: String,
    /// Built from `rules` on first use, one per algorithm, instead of per request.
    validations: verify::Validations,
    cache: Option<Arc<cache::VerifiedCache>>,
}

/// Verifies bearer JWTs and patches user, org and roles into the request context; see the
/// [module docs](self).
#[derive(Clone)]
pub struct AuthLayer {
    config: Arc<Config>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of Debug output.
        f.debug_struct("AuthLayer")
            .field("rules", &self.config.rules)
            .field("required", &self.config.required)
            .finish_non_exhaustive()
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
                },
                required: true,
                realm: "api".to_owned(),
                validations: verify::Validations::default(),
                cache: Some(Arc::new(cache::VerifiedCache::new(10_000, Duration::from_secs(60)))),
            }),
        }
    }

    fn single(key: KeyEntry) -> Self {
        Self::with_keys(KeySource::Static(Arc::from(vec![key])))
    }

    /// HS256 / HS384 / HS512 with a shared secret.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self::single(KeyEntry::hmac(secret.as_ref()))
    }

    /// RS256/384/512 and PS256/384/512 with an RSA public key in PEM.
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::single(KeyEntry::rsa_pem(pem.as_ref())?))
    }

    /// ES256 / ES384 with an EC public key in PEM.
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::single(KeyEntry::ec_pem(pem.as_ref())?))
    }

    /// EdDSA with an Ed25519 public key in PEM.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        Ok(Self::single(KeyEntry::ed_pem(pem.as_ref())?))
    }

    /// The signing keys of a JWKS document.
    pub fn jwks_json(json: &str) -> Result<Self, AuthConfigError> {
        Ok(Self::with_keys(KeySource::Static(Arc::from(keys::parse_jwks(json)?))))
    }

    /// The signing keys of a JWKS file.
    pub fn jwks_file(path: impl AsRef<Path>) -> Result<Self, AuthConfigError> {
        Ok(Self::with_keys(KeySource::Static(Arc::from(keys::read_jwks_file(path.as_ref())?))))
    }

    /// The signing keys published at an `https://` (or `http://`) URL, fetched on first use
    /// and again when a token names an unknown `kid`. Must be used inside a tokio runtime.
    pub fn jwks_url(url: &str) -> Result<Self, AuthConfigError> {
        Ok(Self::with_keys(KeySource::Remote(Arc::new(RemoteJwks::new(url)?))))
    }

    fn config_mut(&mut self) -> &mut Config {
        let config = Arc::make_mut(&mut self.config);
        // The rules are about to change: what was built or verified under the old ones is stale.
        config.validations = verify::Validations::default();
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

    /// The claim holding the roles (default `roles`; `scope` is the fallback).
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.config_mut().rules.roles_claim = claim.into();
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

    /// Remembers up to `capacity` verified tokens for at most `ttl` (default: 10,000 tokens,
    /// 60 s), so a client that sends the same token on every request pays for the signature
    /// check once a minute instead of every time. `exp` and `nbf` are checked on every use.
    /// A key removed from a JWKS URL stops verifying when the set is next fetched (at most
    /// 10 minutes), and tokens it verified leave the cache within `ttl` after that.
    pub fn verified_token_cache(mut self, capacity: usize, ttl: Duration) -> Self {
        self.config_mut().cache = Some(Arc::new(cache::VerifiedCache::new(capacity, ttl)));
        self
    }

    /// Verifies every token in full, every time.
    pub fn without_verified_token_cache(mut self) -> Self {
        self.config_mut().cache = None;
        self
    }

    /// Minimum time between two fetches of a JWKS URL (default 30 s). No effect on other keys.
    pub fn min_refresh_interval(self, interval: Duration) -> Self {
        if let KeySource::Remote(remote) = &self.config.keys {
            remote.set_min_refresh_interval(interval);
        }
        self
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

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, config: Arc::clone(&self.config) }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    config: Arc<Config>,
}

/// Puts the verified identity into the context and the claims into the extensions.
fn admit<B>(request: &mut Request<B>, verified: Verified) {
    let Verified { claims, user_id, org_id, roles, .. } = verified;
    RequestContext::with(|ctx| {
        ctx.update(|patch| {
            patch.user_id = user_id.clone();
            patch.org_id = org_id.clone();
            patch.roles = Arc::clone(&roles);
        });
        ctx.insert_extension(claims.clone());
    });
    request.extensions_mut().insert(claims);
}

impl Config {
    /// Verifies with the keys at hand: `Ok(Some)` admitted, `Ok(None)` anonymous, `Err(None)`
    /// when a remote key set must be fetched first.
    fn check<B>(&self, request: &mut Request<B>) -> Result<bool, Option<Reason>> {
        let token = match verify::bearer_token(request.headers(), self.rules.max_token_bytes) {
            Ok(Some(token)) => token,
            Ok(None) if self.required => return Err(Some(Reason::Missing)),
            Ok(None) => return Ok(false),
            Err(reason) => return Err(Some(reason)),
        };
        if let Some(verified) = self.cache.as_ref().and_then(|cache| cache.get(token, self.rules.leeway_secs)) {
            admit(request, verified);
            return Ok(true);
        }
        let header = verify::token_header(token).map_err(Some)?;
        let verified = match self.keys.lookup(header.kid.as_deref(), header.alg) {
            Lookup::Found(keys, candidates) => {
                let mut outcome = Err(Reason::InvalidSignature);
                for index in candidates {
                    outcome = verify::verify(token, &header, &keys[index], &self.rules, &self.validations);
                    // Only a signature mismatch is worth trying the next key of the family for.
                    if !matches!(outcome, Err(Reason::InvalidSignature)) {
                        break;
                    }
                }
                outcome.map_err(Some)?
            }
            Lookup::NoKey => return Err(Some(no_key(&header))),
            Lookup::Unavailable => return Err(Some(Reason::Unavailable)),
            Lookup::Refresh => return Err(None),
        };
        if let Some(cache) = &self.cache {
            cache.insert(token, verified.clone());
        }
        admit(request, verified);
        Ok(true)
    }
}

fn no_key(header: &TokenHeader) -> Reason {
    // A named key we do not have cannot have made the signature; without a name, no key of
    // the token's algorithm family exists here.
    if header.kid.is_some() { Reason::InvalidSignature } else { Reason::UnsupportedAlgorithm }
}

type BoxResponseFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.config.check(&mut request) {
            Ok(_) => AuthFuture::Inner { future: self.inner.call(request) },
            Err(Some(reason)) => AuthFuture::Ready { response: Some(reject::refuse(reason, &self.config.realm)) },
            Err(None) => {
                // The ready service handles this request; a clone takes its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let config = Arc::clone(&self.config);
                AuthFuture::Pending { future: Box::pin(refresh_then_call(config, inner, request)) }
            }
        }
    }
}

async fn refresh_then_call<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    let mut fetch_failed = false;
    if let KeySource::Remote(remote) = &config.keys
        && let Err(error) = remote.refresh().await
    {
        // Stale keys still verify until the provider answers again; tokens for keys we do not
        // have get 503 below, since we cannot tell whether they are good.
        tracing::warn!(target: "reqscope::auth", url = %remote.url_for_logs(), %error, "cannot fetch the JWKS");
        fetch_failed = true;
    }
    match config.check(&mut request) {
        Ok(_) => inner.call(request).await,
        Err(None) if fetch_failed => Ok(reject::refuse(Reason::Unavailable, &config.realm)),
        // Still unknown after a refresh (or refreshes are rate-limited).
        Err(None) => Ok(reject::refuse(Reason::InvalidSignature, &config.realm)),
        Err(Some(reason)) => Ok(reject::refuse(reason, &config.realm)),
    }
}

pin_project! {
    /// The response future of [`Auth`] and [`RequireRole`].
    #[project = AuthFutureProj]
    #[allow(missing_docs)] // the variants say what their one field is
    pub enum AuthFuture<F, B, E> {
        /// Admitted: the inner service's future.
        Inner { #[pin] future: F },
        /// Refused: the error response, taken on the first poll.
        Ready { response: Option<Response<B>> },
        /// Waiting for the remote key set, then verifying and calling the inner service.
        Pending { future: BoxResponseFuture<B, E> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { future } => future.poll(cx),
            AuthFutureProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            AuthFutureProj::Pending { future } => future.as_mut().poll(cx),
        }
    }
}
