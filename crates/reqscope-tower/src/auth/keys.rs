//! Verification keys: one secret or public key, a JWKS document, or a JWKS URL with a cache.
//!
//! A JWKS URL is fetched in a task of its own (`tokio::spawn`), never in a request's future:
//! a client that hangs up while its request waits for the keys cannot cancel the fetch, and
//! every request that needs the keys meanwhile waits for that one fetch (a `watch` channel).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderMap, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::watch;

use super::AuthConfigError;
use super::verify::KnownHeaders;

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

/// One key and the algorithms it may verify: the family is fixed by the key's type, so a
/// public RSA key can never be used as an HMAC secret.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
    /// Names the key across refetches (its `kid` and public parameters): the verified-token
    /// cache forgets tokens whose key no longer has a fingerprint in the set.
    pub(crate) fingerprint: Arc<str>,
    /// For a shared secret: the secret prepared for each HMAC algorithm.
    pub(crate) hmac: Option<Arc<HmacKeys>>,
}

/// A shared secret with its HMAC pads already hashed, once per algorithm. Verifying a token
/// then hashes the token alone; `jsonwebtoken::crypto::verify` would prepare the key again on
/// every call (two more hash blocks), and allocate a verifier for it.
pub(crate) struct HmacKeys {
    hs256: aws_lc_rs::hmac::Key,
    hs384: aws_lc_rs::hmac::Key,
    hs512: aws_lc_rs::hmac::Key,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> Self {
        use aws_lc_rs::hmac::{HMAC_SHA256, HMAC_SHA384, HMAC_SHA512, Key};
        HmacKeys {
            hs256: Key::new(HMAC_SHA256, secret),
            hs384: Key::new(HMAC_SHA384, secret),
            hs512: Key::new(HMAC_SHA512, secret),
        }
    }

    /// The prepared key for `alg`, if it is an HMAC algorithm.
    pub(crate) fn for_algorithm(&self, alg: Algorithm) -> Option<&aws_lc_rs::hmac::Key> {
        match alg {
            Algorithm::HS256 => Some(&self.hs256),
            Algorithm::HS384 => Some(&self.hs384),
            Algorithm::HS512 => Some(&self.hs512),
            _ => None,
        }
    }
}

impl KeyEntry {
    pub(crate) fn hmac(secret: &[u8]) -> Self {
        KeyEntry {
            kid: None,
            key: DecodingKey::from_secret(secret),
            algorithms: HMAC.to_vec(),
            fingerprint: static_key(),
            hmac: Some(Arc::new(HmacKeys::new(secret))),
        }
    }

    pub(crate) fn rsa_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: RSA.to_vec(), fingerprint: static_key(), hmac: None })
    }

    pub(crate) fn ec_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: EC.to_vec(), fingerprint: static_key(), hmac: None })
    }

    pub(crate) fn ed_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: ED.to_vec(), fingerprint: static_key(), hmac: None })
    }

    fn from_jwk(jwk: &Jwk) -> Result<Self, AuthConfigError> {
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA.to_vec(),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err(AuthConfigError::InvalidJwks("unsupported elliptic curve".into())),
            },
            AlgorithmParameters::OctetKeyPair(_) => ED.to_vec(),
            // Key sets are public documents: a shared secret in one could sign tokens for
            // anyone who reads it. Shared secrets go through `AuthLayer::hmac`.
            AlgorithmParameters::OctetKey(_) => {
                return Err(AuthConfigError::InvalidJwks(
                    "symmetric (kty \"oct\") keys are not accepted in a JWKS".into(),
                ));
            }
        };
        // A key that names its algorithm is pinned to exactly that one.
        let algorithms = match jwk.common.key_algorithm.and_then(signing_algorithm) {
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(_) => return Err(AuthConfigError::InvalidJwks("key algorithm does not match its key type".into())),
            None => family,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthConfigError::InvalidJwks(e.to_string()))?;
        let params = serde_json::to_string(&jwk.algorithm).unwrap_or_default();
        let fingerprint = Arc::from(format!("{:?} {params}", jwk.common.key_id));
        Ok(KeyEntry { kid: jwk.common.key_id.clone(), key, algorithms, fingerprint, hmac: None })
    }
}

/// Keys given in code never change, so they share one fingerprint.
fn static_key() -> Arc<str> {
    Arc::from("static")
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document, keeping the signing keys (encryption-only keys are skipped).
pub(crate) fn parse_jwks(json: &str) -> Result<Vec<KeyEntry>, AuthConfigError> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| AuthConfigError::InvalidJwks(e.to_string()))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        let signing =
            jwk.common.public_key_use.as_ref().is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature));
        if !signing {
            continue;
        }
        // One key this layer cannot use must not take the others down with it.
        match KeyEntry::from_jwk(jwk) {
            Ok(key) => keys.push(key),
            Err(error) => skipped.push(format!("{}: {error}", jwk.common.key_id.as_deref().unwrap_or("(no kid)"))),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(target: "reqscope::auth", skipped = %skipped.join("; "), "JWKS keys skipped");
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() { "none given".to_owned() } else { skipped.join("; ") };
        return Err(AuthConfigError::InvalidJwks(format!("the key set has no usable signing key ({why})")));
    }
    Ok(keys)
}

pub(crate) fn read_jwks_file(path: &Path) -> Result<Vec<KeyEntry>, AuthConfigError> {
    let json = std::fs::read_to_string(path).map_err(|e| AuthConfigError::Io(path.display().to_string(), e))?;
    parse_jwks(&json)
}

/// The keys verified with at one moment: a remote set is replaced whole by each fetch.
pub(crate) struct KeySet {
    pub(crate) keys: Vec<KeyEntry>,
    /// Bumped when a fetch brings a different set of keys (not when the same keys come back).
    pub(crate) generation: u64,
    /// When a remote set was fetched (`None`: given in code, or never fetched) and how long it
    /// may be used before it is refetched in the background.
    fetched: Option<Instant>,
    max_age: Duration,
    /// The headers of tokens these keys verified.
    pub(crate) headers: KnownHeaders,
}

impl KeySet {
    pub(crate) fn fixed(keys: Vec<KeyEntry>) -> Self {
        KeySet { keys, generation: 0, fetched: None, max_age: Duration::MAX, headers: KnownHeaders::default() }
    }

    /// Whether a key with this fingerprint is in the set.
    pub(crate) fn holds(&self, fingerprint: &str) -> bool {
        self.keys.iter().any(|k| &*k.fingerprint == fingerprint)
    }

    fn is_stale(&self) -> bool {
        self.fetched.is_some_and(|at| at.elapsed() >= self.max_age)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(generation: u64, fingerprints: &[&str]) -> Self {
        let keys =
            fingerprints.iter().map(|f| KeyEntry { fingerprint: Arc::from(*f), ..KeyEntry::hmac(b"test") }).collect();
        KeySet { keys, generation, fetched: None, max_age: Duration::MAX, headers: KnownHeaders::default() }
    }
}

/// Where keys come from.
#[derive(Clone)]
pub(crate) enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// The key set of [`KeySource::current`]: a fetched set is held (a refetch may replace it
/// meanwhile), a fixed one borrowed.
pub(crate) enum CurrentKeys<'a> {
    Fixed(&'a KeySet),
    Fetched(Arc<KeySet>),
}

impl std::ops::Deref for CurrentKeys<'_> {
    type Target = KeySet;
    fn deref(&self) -> &KeySet {
        match self {
            CurrentKeys::Fixed(keys) => keys,
            CurrentKeys::Fetched(keys) => keys,
        }
    }
}

/// The result of looking a token's key up.
pub(crate) enum Lookup {
    /// [`candidates`] are the keys to try (more than one only for tokens without a `kid`).
    Found,
    /// No key with that `kid` (or no keys yet): a fetch is under way, wait for it.
    Wait(Pending),
    /// No key can verify this token.
    NoKey,
    /// No key for this token, and the remote set could not be fetched last time.
    Unavailable,
}

impl KeySource {
    /// The keys to verify with now. A remote set older than its maximum age is still used
    /// (stale-while-revalidate) while a fetch in the background replaces it.
    pub(crate) fn current(&self) -> CurrentKeys<'_> {
        match self {
            // Borrowed: no reference count touched by every request on every core.
            KeySource::Static(keys) => CurrentKeys::Fixed(keys),
            KeySource::Remote(remote) => {
                let keys = remote.snapshot();
                if keys.is_stale() {
                    remote.revalidate_in_background();
                }
                CurrentKeys::Fetched(keys)
            }
        }
    }

    /// Whether `keys` has a key to try ([`candidates`]) for a token with `kid` and `alg`, and
    /// if not, what to do. With `may_wait`, an unknown `kid` starts a fetch (unless one ran
    /// within the minimum interval) to wait for.
    pub(crate) fn lookup(&self, keys: &KeySet, kid: Option<&str>, alg: Algorithm, may_wait: bool) -> Lookup {
        if candidates(&keys.keys, kid, alg).next().is_some() {
            return Lookup::Found;
        }
        match self {
            KeySource::Static(_) => Lookup::NoKey,
            KeySource::Remote(remote) => {
                if may_wait && let Some(pending) = remote.start_fetch(false) {
                    return Lookup::Wait(pending);
                }
                if remote.last_fetch_failed() || keys.fetched.is_none() { Lookup::Unavailable } else { Lookup::NoKey }
            }
        }
    }
}

/// The keys to try for a token: the one with its `kid` when it names one, else every key
/// whose family has the token's algorithm (during a rotation several may). A key without a
/// `kid` serves tokens with any `kid`. When no key of the family matches, the first key by
/// `kid` is the one candidate, so that verification reports the algorithm mismatch. Yielded
/// as they are tried, not collected: a request pays for no list.
pub(crate) fn candidates<'k>(
    keys: &'k [KeyEntry],
    kid: Option<&'k str>,
    alg: Algorithm,
) -> impl Iterator<Item = &'k KeyEntry> + 'k {
    let by_kid = move |k: &&KeyEntry| match (kid, k.kid.as_deref()) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    };
    let mut of_family = keys.iter().filter(move |k| by_kid(k) && k.algorithms.contains(&alg)).peekable();
    let fallback = if of_family.peek().is_none() { keys.iter().find(by_kid) } else { None };
    of_family.chain(fallback)
}

/// Why a JWKS URL could not be fetched (from [`AuthLayer::refresh`](super::AuthLayer::refresh)).
/// The messages never contain the URL's credentials or the response body.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The connection or the request failed.
    #[error("JWKS request failed: {0}")]
    Request(String),
    /// The server answered with a status other than 2xx.
    #[error("JWKS request answered with status {0}")]
    Status(u16),
    /// The document is not a key set with a usable signing key.
    #[error("{0}")]
    InvalidJwks(String),
    /// No answer within 10 s.
    #[error("JWKS request timed out")]
    Timeout,
    /// Called outside a tokio runtime, where the fetch task cannot run.
    #[error("the JWKS is fetched in a tokio task: call this inside a tokio runtime")]
    NoRuntime,
    /// The fetch task ended without an answer (its runtime shut down).
    #[error("the JWKS fetch was abandoned")]
    Abandoned,
}

type Outcome = Option<Result<(), JwksError>>;

/// A fetch under way, to wait for. Waiting is cancel-safe: dropping the waiter leaves the
/// fetch running.
#[derive(Clone)]
pub(crate) struct Pending(watch::Receiver<Outcome>);

impl Pending {
    pub(crate) async fn wait(mut self) -> Result<(), JwksError> {
        // `wait_for` looks at the current value first, so a fetch that already ended counts.
        let outcome = self.0.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
        match outcome {
            Ok(outcome) => outcome.unwrap_or(Err(JwksError::Abandoned)),
            Err(_) => self.0.borrow().clone().unwrap_or(Err(JwksError::Abandoned)),
        }
    }
}

/// When the last fetch was attempted, whether it failed, and the one under way.
#[derive(Default)]
struct FetchState {
    attempted: Option<Instant>,
    failed: bool,
    in_flight: Option<(Instant, Pending)>,
}

/// Longest [`RemoteJwks::set_max_age`] accepted: a day.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(86_400);

/// A JWKS URL, its cached keys and the refresh policy.
pub(crate) struct RemoteJwks {
    url: Uri,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: RwLock<Arc<KeySet>>,
    state: Mutex<FetchState>,
    /// The last attempt, in milliseconds after `created` (0: none), readable without the
    /// lock: while a stale set cannot be refetched yet, requests pass without touching it.
    attempted_ms: AtomicU64,
    created: Instant,
    min_refresh_ms: AtomicU64,
    max_age_ms: AtomicU64,
    timeout: Duration,
}

impl RemoteJwks {
    pub(crate) fn new(url: &str) -> Result<Self, AuthConfigError> {
        let url: Uri = url.parse().map_err(|_| AuthConfigError::InvalidUrl(url.to_owned()))?;
        let Some(host) = url.host() else { return Err(AuthConfigError::InvalidUrl(url.to_string())) };
        match url.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let loopback = host == "localhost"
                    || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    // Anyone on the path could swap in their own signing key.
                    tracing::warn!(target: "reqscope::auth", host, "JWKS fetched over plain HTTP; use https://");
                }
            }
            _ => return Err(AuthConfigError::InvalidUrl(url.to_string())),
        }
        // The provider is named, not taken from the process default: an application whose other
        // crates turn on a second rustls provider must not leave the layer without one.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| AuthConfigError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(RemoteJwks {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::new(KeySet::fixed(Vec::new()))),
            state: Mutex::new(FetchState::default()),
            attempted_ms: AtomicU64::new(0),
            created: Instant::now(),
            min_refresh_ms: AtomicU64::new(30_000),
            max_age_ms: AtomicU64::new(600_000),
            timeout: Duration::from_secs(10),
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_min_refresh_interval(&self, interval: Duration) {
        self.min_refresh_ms.store(millis(interval), Ordering::Relaxed);
    }

    fn min_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.min_refresh_ms.load(Ordering::Relaxed))
    }

    /// The longest a fetched set is used before it is refetched (bounded by a day).
    pub(crate) fn set_max_age(&self, max_age: Duration) {
        self.max_age_ms.store(millis(max_age.min(MAX_AGE_LIMIT)), Ordering::Relaxed);
    }

    fn max_age(&self) -> Duration {
        Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed))
    }

    fn last_fetch_failed(&self) -> bool {
        self.state().failed
    }

    /// Starts a fetch of a stale set that nobody waits for (the next requests see its keys),
    /// unless one was attempted within the minimum interval — checked without the lock.
    fn revalidate_in_background(self: &Arc<Self>) {
        let attempted = self.attempted_ms.load(Ordering::Relaxed);
        let now = millis(self.created.elapsed()).saturating_add(1);
        if attempted != 0 && now.saturating_sub(attempted) < millis(self.min_refresh_interval()) {
            return;
        }
        let _ = self.start_fetch(false);
    }

    /// Starts a fetch in a task of its own, or joins the one under way. Without `force`, not
    /// within the minimum interval of the last attempt (`None` then): tokens with made-up
    /// `kid`s cannot make the layer hammer the identity provider.
    pub(crate) fn start_fetch(self: &Arc<Self>, force: bool) -> Option<Pending> {
        let mut state = self.state();
        if let Some((_, pending)) = &state.in_flight {
            return Some(pending.clone());
        }
        let recent = state.attempted.is_some_and(|at| at.elapsed() < self.min_refresh_interval());
        if recent && !force {
            return None;
        }
        // Counted before the attempt: a failing endpoint is not hammered either.
        let now = Instant::now();
        state.attempted = Some(now);
        self.attempted_ms.store(millis(now.duration_since(self.created)).saturating_add(1), Ordering::Relaxed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            state.failed = true;
            tracing::warn!(target: "reqscope::auth", error = %JwksError::NoRuntime, "cannot fetch the JWKS");
            let (_, receiver) = watch::channel(Some(Err(JwksError::NoRuntime)));
            return Some(Pending(receiver));
        };
        let (sender, receiver) = watch::channel(None);
        state.in_flight = Some((now, Pending(receiver.clone())));
        drop(state);
        let fetch = FetchTask { remote: Arc::clone(self), sender: Some(sender) };
        runtime.spawn(fetch.run());
        Some(Pending(receiver))
    }

    /// Fetches the set now, whatever the minimum interval: joins a fetch that started after
    /// this call, else waits for the one under way and starts another, so that keys published
    /// before the call are seen.
    pub(crate) async fn refresh_now(self: &Arc<Self>) -> Result<(), JwksError> {
        let asked = Instant::now();
        loop {
            let in_flight = self.state().in_flight.clone();
            match in_flight {
                Some((started, pending)) if started >= asked => return pending.wait().await,
                // Its outcome does not answer this call; the next round starts a new fetch.
                Some((_, pending)) => {
                    let _ = pending.wait().await;
                }
                None => {
                    let Some(pending) = self.start_fetch(true) else { return Ok(()) };
                    return pending.wait().await;
                }
            }
        }
    }

    /// Installs what a fetch brought: a new set of keys, or the failure.
    fn complete(&self, fetched: Result<(Vec<KeyEntry>, Option<Duration>), JwksError>) -> Result<(), JwksError> {
        let outcome = match fetched {
            Ok((keys, cache_max_age)) => {
                // `Cache-Control: max-age` may shorten the configured maximum age, never
                // lengthen it; refetches are at least the minimum interval apart anyway.
                let configured = self.max_age();
                let max_age = cache_max_age.map_or(configured, |age| age.min(configured));
                let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
                let changed = fingerprints(&current.keys) != fingerprints(&keys);
                let generation = current.generation + u64::from(changed);
                *current = Arc::new(KeySet {
                    keys,
                    generation,
                    fetched: Some(Instant::now()),
                    max_age,
                    // The same keys again: the headers they verified stay known.
                    headers: if changed { KnownHeaders::default() } else { current.headers.clone() },
                });
                Ok(())
            }
            Err(error) => {
                tracing::warn!(target: "reqscope::auth", url = %self.url_for_logs(), %error, "cannot fetch the JWKS");
                Err(error)
            }
        };
        let mut state = self.state();
        state.failed = outcome.is_err();
        state.in_flight = None;
        outcome
    }

    async fn fetch(&self) -> Result<(Vec<KeyEntry>, Option<Duration>), JwksError> {
        let response = self.client.get(self.url.clone()).await.map_err(|e| JwksError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let max_age = cache_max_age(response.headers());
        // Key sets are small; a megabyte is generous and keeps a broken endpoint from
        // filling memory.
        let body = Limited::new(response.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| JwksError::Request(e.to_string()))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|e| JwksError::Request(e.to_string()))?;
        let keys = parse_jwks(text).map_err(|e| JwksError::InvalidJwks(e.to_string()))?;
        Ok((keys, max_age))
    }

    /// The URL without user info or query string, which may hold credentials: for logs.
    pub(crate) fn url_for_logs(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme_str().unwrap_or("http"),
            self.url.authority().map_or("", |a| a.as_str().rsplit('@').next().unwrap_or("")),
            self.url.path()
        )
    }
}

/// One fetch, run by `tokio::spawn`. If the task is dropped before it ends (its runtime shuts
/// down), the fetch still counts as ended, failed, so that nobody waits for it forever.
struct FetchTask {
    remote: Arc<RemoteJwks>,
    sender: Option<watch::Sender<Outcome>>,
}

impl FetchTask {
    async fn run(mut self) {
        let fetched = match tokio::time::timeout(self.remote.timeout, self.remote.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(JwksError::Timeout),
        };
        self.finish(fetched);
    }

    fn finish(&mut self, fetched: Result<(Vec<KeyEntry>, Option<Duration>), JwksError>) {
        if let Some(sender) = self.sender.take() {
            let outcome = self.remote.complete(fetched);
            sender.send_replace(Some(outcome));
        }
    }
}

impl Drop for FetchTask {
    fn drop(&mut self) {
        self.finish(Err(JwksError::Abandoned));
    }
}

fn fingerprints(keys: &[KeyEntry]) -> Vec<&str> {
    let mut all: Vec<&str> = keys.iter().map(|k| &*k.fingerprint).collect();
    all.sort_unstable();
    all
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The freshness lifetime a JWKS response gives itself: the smallest `max-age` of its
/// `Cache-Control` headers, zero for `no-cache` / `no-store`; `None` without either.
fn cache_max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut age: Option<u64> = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let seconds = if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store") {
                Some(0)
            } else {
                match directive.split_once('=') {
                    Some((name, seconds)) if name.trim().eq_ignore_ascii_case("max-age") => {
                        seconds.trim().trim_matches('"').parse::<u64>().ok()
                    }
                    _ => None,
                }
            };
            if let Some(seconds) = seconds {
                age = Some(age.map_or(seconds, |a| a.min(seconds)));
            }
        }
    }
    age.map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_named_key_or_the_family_in_order() {
        let named = |kid: Option<&str>, fingerprint: &str| KeyEntry {
            kid: kid.map(str::to_owned),
            fingerprint: Arc::from(fingerprint),
            ..KeyEntry::hmac(b"a secret of thirty-two bytes or more")
        };
        let keys = vec![named(Some("a"), "1"), named(None, "2"), named(Some("b"), "3")];
        let found = |kid: Option<&str>, alg| -> Vec<String> {
            candidates(&keys, kid, alg).map(|k| k.fingerprint.to_string()).collect()
        };
        // A key without a `kid` serves any `kid`, after the named one, in the set's order.
        assert_eq!(found(Some("a"), Algorithm::HS256), ["1", "2"]);
        assert_eq!(found(Some("b"), Algorithm::HS512), ["2", "3"]);
        assert_eq!(found(Some("c"), Algorithm::HS256), ["2"]);
        // No `kid`: the whole family, as during a rotation.
        assert_eq!(found(None, Algorithm::HS384), ["1", "2", "3"]);
        // No key of the family: the first by `kid`, once, so that verification says why.
        assert_eq!(found(Some("b"), Algorithm::RS256), ["2"]);
        assert_eq!(found(None, Algorithm::ES256), ["1"]);
        let only_named = vec![named(Some("a"), "1")];
        assert_eq!(candidates(&only_named, Some("z"), Algorithm::HS256).count(), 0);
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(cache_max_age(&headers(&[])), None);
        assert_eq!(cache_max_age(&headers(&["public, max-age=300"])), Some(Duration::from_secs(300)));
        assert_eq!(cache_max_age(&headers(&["Max-Age = \"60\", must-revalidate"])), Some(Duration::from_secs(60)));
        assert_eq!(cache_max_age(&headers(&["max-age=300", "max-age=120"])), Some(Duration::from_secs(120)));
        assert_eq!(cache_max_age(&headers(&["no-store"])), Some(Duration::ZERO));
        assert_eq!(cache_max_age(&headers(&["max-age=soon", "private"])), None);
        assert_eq!(cache_max_age(&headers(&["s-maxage=5"])), None);
    }

    #[test]
    fn max_age_is_bounded_by_the_configuration() {
        let remote = RemoteJwks::new("http://127.0.0.1:9/jwks.json").unwrap();
        remote.set_max_age(Duration::from_secs(100));
        let key = || KeyEntry { kid: Some("a".into()), fingerprint: Arc::from("a"), ..KeyEntry::hmac(b"k") };
        remote.complete(Ok((vec![key()], Some(Duration::from_secs(5))))).unwrap();
        assert_eq!(remote.snapshot().max_age, Duration::from_secs(5), "a shorter max-age is honoured");
        remote.complete(Ok((vec![key()], Some(Duration::from_secs(86_400))))).unwrap();
        assert_eq!(remote.snapshot().max_age, Duration::from_secs(100), "never longer than configured");
        remote.complete(Ok((vec![key()], None))).unwrap();
        assert_eq!(remote.snapshot().max_age, Duration::from_secs(100));
        assert_eq!(remote.snapshot().generation, 1, "the same keys again: the same generation");
        remote.set_max_age(Duration::from_secs(10 * 86_400));
        assert_eq!(remote.max_age(), MAX_AGE_LIMIT);
    }

    #[test]
    fn known_headers_outlive_a_refetch_of_the_same_keys_only() {
        use base64::Engine as _;
        let remote = RemoteJwks::new("http://127.0.0.1:9/jwks.json").unwrap();
        let key = |kid: &str| KeyEntry { kid: Some(kid.into()), fingerprint: Arc::from(kid), ..KeyEntry::hmac(b"k") };
        remote.complete(Ok((vec![key("a")], None))).unwrap();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"a"}"#);
        let token = format!("{encoded}.e30.sig");
        let keys = remote.snapshot();
        keys.headers.remember(&token, &super::super::verify::token_header(&token, &keys.headers).unwrap());
        assert!(remote.snapshot().headers.knows(&token));
        remote.complete(Ok((vec![key("a")], None))).unwrap();
        assert!(remote.snapshot().headers.knows(&token), "the same keys came back");
        remote.complete(Ok((vec![key("b")], None))).unwrap();
        assert!(!remote.snapshot().headers.knows(&token), "other keys start afresh");
    }
}
