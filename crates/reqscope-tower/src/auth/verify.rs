//! From an `Authorization` header to verified claims, or a reason class.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::KeyEntry;
use super::reject::Reason;

/// The verified claim set of the request's token, as a typed extension (in the request's
/// extensions and the context's) for handlers that need more than user, org and roles.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(Arc<Map<String, Value>>);

impl Claims {
    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The `sub` claim as text (a numeric `sub` is written in decimal).
    pub fn subject(&self) -> Option<String> {
        self.get("sub").and_then(text)
    }

    /// Every claim.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Claims(Arc::new(Map::new()))
    }
}

/// What the layer checks besides the signature.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) leeway_secs: u64,
    pub(crate) issuers: Option<Vec<String>>,
    pub(crate) audiences: Option<Vec<String>>,
    pub(crate) max_token_bytes: usize,
    pub(crate) org_claim: String,
    pub(crate) roles_claim: String,
}

/// `Validation`s built once per algorithm from the rules.
#[derive(Clone, Default)]
pub(crate) struct Validations(std::sync::Arc<std::sync::OnceLock<Vec<(Algorithm, Validation)>>>);

const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Validations {
    fn get(&self, alg: Algorithm, rules: &Rules) -> &Validation {
        let all = self.0.get_or_init(|| ALGORITHMS.iter().map(|&alg| (alg, validation(alg, rules))).collect());
        // Every `Algorithm` is in ALGORITHMS; index 0 is never used for another algorithm.
        all.iter().find(|(a, _)| *a == alg).map_or(&all[0].1, |(_, v)| v)
    }
}

fn validation(alg: Algorithm, rules: &Rules) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = rules.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // `sub` is who is asking: a token without one cannot put a user in the context.
    let mut required: HashSet<String> = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
    match &rules.issuers {
        Some(issuers) => {
            validation.set_issuer(issuers);
            required.insert("iss".to_owned());
        }
        None => validation.iss = None,
    }
    match &rules.audiences {
        Some(audiences) => {
            validation.set_audience(audiences);
            required.insert("aud".to_owned());
        }
        None => validation.validate_aud = false,
    }
    validation.required_spec_claims = required;
    validation
}

pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) claims: Claims,
    pub(crate) user_id: Option<Arc<str>>,
    pub(crate) org_id: Option<Arc<str>>,
    pub(crate) roles: Arc<[Arc<str>]>,
    /// `exp` and `nbf`, re-checked on every cache hit.
    pub(crate) exp: u64,
    pub(crate) nbf: Option<u64>,
}

/// The bearer token of a request: `Ok(None)` when there is no `Authorization` header.
/// The scheme is matched case-insensitively (`bearer` is accepted, as RFC 7235 says).
pub(crate) fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&str>, Reason> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Reason::Malformed);
    }
    // Checked before anything else is done with the value.
    if value.len() > max_bytes.saturating_add("Bearer ".len()) {
        return Err(Reason::TooLarge);
    }
    let value = value.to_str().map_err(|_| Reason::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Reason::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Reason::Malformed);
    }
    if token.len() > max_bytes {
        return Err(Reason::TooLarge);
    }
    Ok(Some(token))
}

/// Reads `alg` and `kid` from the token's header. `alg: none` and unknown algorithms are
/// refused here, before any key is looked at.
pub(crate) fn token_header(token: &str) -> Result<TokenHeader, Reason> {
    #[derive(serde::Deserialize)]
    struct Raw {
        alg: Option<String>,
        kid: Option<String>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Reason::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| Reason::Malformed)?;
    let raw: Raw = serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)?;
    let alg = raw.alg.ok_or(Reason::Malformed)?;
    let alg = Algorithm::from_str(&alg).map_err(|_| Reason::UnsupportedAlgorithm)?;
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// Checks the signature with `key` (whose family must include the token's algorithm), then
/// `exp` (required), `nbf`, `iss` and `aud`.
pub(crate) fn verify(
    token: &str,
    header: &TokenHeader,
    key: &KeyEntry,
    rules: &Rules,
    validations: &Validations,
) -> Result<Verified, Reason> {
    if !key.algorithms.contains(&header.alg) {
        return Err(Reason::UnsupportedAlgorithm);
    }
    let validation = validations.get(header.alg, rules);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(|e| classify(e.kind()))?;
    let claims = data.claims;
    // A `sub` that names no one (empty, `true`, an object) would authenticate nobody.
    let user_id = Some(claims.get("sub").and_then(text).map(Arc::from).ok_or(Reason::Malformed)?);
    let org_id = claims.get(&rules.org_claim).and_then(text).map(Arc::from);
    let roles = roles(&claims, &rules.roles_claim).iter().map(|r| Arc::from(r.as_str())).collect();
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let nbf = claims.get("nbf").and_then(Value::as_u64);
    Ok(Verified { claims: Claims(Arc::new(claims)), user_id, org_id, roles, exp, nbf })
}

fn classify(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidIssuer => Reason::WrongIssuer,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Reason::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Reason::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            Reason::UnsupportedAlgorithm
        }
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::Provider(_) => Reason::InvalidSignature,
        _ => Reason::Malformed,
    }
}

/// A claim as text: strings as they are, numbers in decimal.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Roles from the configured claim (an array of strings, or a space-separated string), else
/// from OAuth's space-separated `scope`.
fn roles(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    let from = |value: &Value| -> Vec<String> {
        match value {
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    let roles = claims.get(claim).map(from).unwrap_or_default();
    if roles.is_empty() { claims.get("scope").map(from).unwrap_or_default() } else { roles }
}
