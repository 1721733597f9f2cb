//! Verification keys: one secret or public key, a JWKS document, or a JWKS URL with a cache.

use std::path::Path;
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
            AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
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
    let keys: Vec<KeyEntry> = set
        .keys
        .iter()
        .filter(|jwk| {
            jwk.common.public_key_use.as_ref().is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
        })
        .map(KeyEntry::from_jwk)
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(AuthConfigError::InvalidJwks("the key set has no signing keys".into()));
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
    /// `keys[index]` is the key (the `Arc` keeps a refreshed-away set alive meanwhile).
    Found(Arc<[KeyEntry]>, usize),
    /// No key with that `kid`; a refresh of the remote set may find it.
    Refresh,
    /// No key can verify this token.
    NoKey,
}

impl KeySource {
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match self {
            KeySource::Static(keys) => {
                select(keys, kid, alg).map_or(Lookup::NoKey, |i| Lookup::Found(Arc::clone(keys), i))
            }
            KeySource::Remote(remote) => {
                let keys = remote.snapshot();
                match select(&keys, kid, alg) {
                    Some(index) => Lookup::Found(keys, index),
                    None if remote.may_refresh() => Lookup::Refresh,
                    None => Lookup::NoKey,
                }
            }
        }
    }
}

/// The key for a token: by `kid` when the token names one, else the first key whose family
/// has the token's algorithm. A key without a `kid` serves tokens with any `kid`.
fn select(keys: &[KeyEntry], kid: Option<&str>, alg: Algorithm) -> Option<usize> {
    let by_kid = |k: &KeyEntry| match (kid, k.kid.as_deref()) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    };
    keys.iter().position(|k| by_kid(k) && k.algorithms.contains(&alg)).or_else(|| keys.iter().position(by_kid))
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
    last_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    pub(crate) min_refresh_interval: Duration,
    timeout: Duration,
}

impl RemoteJwks {
    pub(crate) fn new(url: &str) -> Result<Self, AuthConfigError> {
        let url: Uri = url.parse().map_err(|_| AuthConfigError::InvalidUrl(url.to_owned()))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(AuthConfigError::InvalidUrl(url.to_string()));
        }
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Ok(RemoteJwks {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::from(Vec::new())),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            min_refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        })
    }

    fn snapshot(&self) -> Arc<[KeyEntry]> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn last_fetch(&self) -> Option<Instant> {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Never fetched, or the last fetch is older than the minimum interval.
    fn may_refresh(&self) -> bool {
        self.last_fetch().is_none_or(|at| at.elapsed() >= self.min_refresh_interval)
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
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let keys = tokio::time::timeout(self.timeout, self.fetch()).await.map_err(|_| FetchError::Timeout)??;
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

    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }
}
