//! Verification keys: one secret or public key, a JWKS document, or a JWKS URL with a cache.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthConfigError;

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
}

impl KeyEntry {
    pub(crate) fn hmac(secret: &[u8]) -> Self {
        KeyEntry { kid: None, key: DecodingKey::from_secret(secret), algorithms: HMAC.to_vec() }
    }

    pub(crate) fn rsa_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: RSA.to_vec() })
    }

    pub(crate) fn ec_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: EC.to_vec() })
    }

    pub(crate) fn ed_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| AuthConfigError::InvalidKey(e.to_string()))?;
        Ok(KeyEntry { kid: None, key, algorithms: ED.to_vec() })
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
        Ok(KeyEntry { kid: jwk.common.key_id.clone(), key, algorithms })
    }
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

/// Where keys come from.
#[derive(Clone)]
pub(crate) enum KeySource {
    Static(Arc<[KeyEntry]>),
    Remote(Arc<RemoteJwks>),
}

/// The result of looking a token's key up.
pub(crate) enum Lookup {
    /// `keys[i]` for each `i`, in order, are the keys to try (the `Arc` keeps a set that a
    /// refresh replaces alive meanwhile). More than one only for tokens without a `kid`.
    Found(Arc<[KeyEntry]>, Vec<usize>),
    /// No key with that `kid`, or the remote set is due: fetch it first.
    Refresh,
    /// No key can verify this token.
    NoKey,
    /// No key for this token, and the remote set could not be fetched last time.
    Unavailable,
}

impl KeySource {
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match self {
            KeySource::Static(keys) => {
                let found = select(keys, kid, alg);
                if found.is_empty() { Lookup::NoKey } else { Lookup::Found(Arc::clone(keys), found) }
            }
            KeySource::Remote(remote) => {
                let keys = remote.snapshot();
                let found = select(&keys, kid, alg);
                let may_refresh = remote.may_refresh();
                // A set older than its maximum age is fetched again, so that keys the provider
                // removed (revoked) stop verifying.
                if may_refresh && (found.is_empty() || remote.is_stale()) {
                    Lookup::Refresh
                } else if !found.is_empty() {
                    Lookup::Found(keys, found)
                } else if remote.last_fetch_failed() {
                    Lookup::Unavailable
                } else {
                    Lookup::NoKey
                }
            }
        }
    }
}

/// The keys to try for a token: the one with its `kid` when it names one, else every key
/// whose family has the token's algorithm (during a rotation several may). A key without a
/// `kid` serves tokens with any `kid`. When no key of the family matches, the first key by
/// `kid` is returned so that verification reports the algorithm mismatch.
fn select(keys: &[KeyEntry], kid: Option<&str>, alg: Algorithm) -> Vec<usize> {
    let by_kid = |k: &KeyEntry| match (kid, k.kid.as_deref()) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    };
    let of_family: Vec<usize> =
        keys.iter().enumerate().filter(|(_, k)| by_kid(k) && k.algorithms.contains(&alg)).map(|(i, _)| i).collect();
    if of_family.is_empty() { keys.iter().position(by_kid).into_iter().collect() } else { of_family }
}

/// Why the remote key set could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("{0}")]
    Parse(AuthConfigError),
    #[error("timed out")]
    Timeout,
}

/// A JWKS URL, its cached keys and the refresh policy.
pub(crate) struct RemoteJwks {
    url: Uri,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: RwLock<Arc<[KeyEntry]>>,
    /// When the last fetch was attempted, whether it failed, and when one last succeeded.
    last_fetch: Mutex<FetchState>,
    fetching: tokio::sync::Mutex<()>,
    min_refresh_ms: AtomicU64,
    pub(crate) max_age: Duration,
    timeout: Duration,
}

#[derive(Default, Clone, Copy)]
struct FetchState {
    attempted: Option<Instant>,
    failed: bool,
    succeeded: Option<Instant>,
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
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Ok(RemoteJwks {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::from(Vec::new())),
            last_fetch: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            min_refresh_ms: AtomicU64::new(30_000),
            max_age: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
        })
    }

    fn snapshot(&self) -> Arc<[KeyEntry]> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn state(&self) -> FetchState {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_min_refresh_interval(&self, interval: Duration) {
        self.min_refresh_ms.store(interval.as_millis().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    fn min_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.min_refresh_ms.load(Ordering::Relaxed))
    }

    /// Never fetched, or the last attempt is older than the minimum interval.
    fn may_refresh(&self) -> bool {
        self.state().attempted.is_none_or(|at| at.elapsed() >= self.min_refresh_interval())
    }

    fn is_stale(&self) -> bool {
        self.state().succeeded.is_none_or(|at| at.elapsed() >= self.max_age)
    }

    fn last_fetch_failed(&self) -> bool {
        self.state().failed
    }

    /// Fetches the key set unless another fetch ran within the minimum interval (concurrent
    /// callers wait for the one fetch in flight). `Ok` also when rate-limited: the caller
    /// then looks the key up again in whatever is cached.
    pub(crate) async fn refresh(&self) -> Result<(), FetchError> {
        let _one_at_a_time = self.fetching.lock().await;
        if !self.may_refresh() {
            return Ok(());
        }
        // Counted before the attempt: a failing endpoint is not hammered either.
        self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()).attempted = Some(Instant::now());
        let fetched = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(FetchError::Timeout),
        };
        let mut state = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        state.failed = fetched.is_err();
        let keys = fetched?;
        state.succeeded = Some(Instant::now());
        drop(state);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(keys);
        Ok(())
    }

    async fn fetch(&self) -> Result<Vec<KeyEntry>, FetchError> {
        let response = self.client.get(self.url.clone()).await.map_err(|e| FetchError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        // Key sets are small; a megabyte is generous and keeps a broken endpoint from
        // filling memory.
        let body = Limited::new(response.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|e| FetchError::Request(e.to_string()))?;
        parse_jwks(text).map_err(FetchError::Parse)
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
