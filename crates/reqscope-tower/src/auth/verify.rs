//! From an `Authorization` header to verified claims, or a reason class.
//!
//! The header and the claims are read here rather than by `jsonwebtoken::decode`: its
//! `Header` keeps unknown parameters as strings only (a numeric one made the whole token
//! `malformed`, against RFC 7515 §4) and does not expose `crit`. The cryptography is
//! jsonwebtoken's ([`jsonwebtoken::crypto::verify`]; for shared secrets its backend,
//! aws-lc-rs, with the key prepared once). The payload is parsed once, in full but into
//! nothing beyond the claims the checks need (their strings borrowed when unescaped); the
//! claim map is built when a handler first asks for it ([`Claims::get`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::keys::KeyEntry;
use super::reject::Reason;

/// The verified claim set of the request's token, as a typed extension (in the request's
/// extensions and the context's) for handlers that need more than user, org and roles.
///
/// Only [`AuthLayer`](super::AuthLayer) makes one (there is no public constructor), so a
/// `Claims` in the request's extensions is proof that the token was verified; this is what
/// [`RequireRoleLayer`](super::RequireRoleLayer) decides from.
#[derive(Clone)]
pub struct Claims {
    claims: Arc<ClaimSet>,
    roles: Arc<[Arc<str>]>,
}

/// The verified payload (UTF-8 JSON), parsed into a map on first use: most requests never ask.
struct ClaimSet {
    json: String,
    map: OnceLock<Map<String, Value>>,
}

impl ClaimSet {
    fn map(&self) -> &Map<String, Value> {
        // The payload was checked as UTF-8 and parsed in full as a JSON object when the token
        // was checked (every value, nested ones included), so this parse succeeds; an empty
        // map would only stand for a token that could not have been admitted.
        self.map.get_or_init(|| serde_json::from_str(&self.json).unwrap_or_default())
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims").field("claims", self.as_map()).field("roles", &self.roles).finish()
    }
}

impl PartialEq for Claims {
    fn eq(&self, other: &Self) -> bool {
        self.roles == other.roles && self.as_map() == other.as_map()
    }
}

impl Claims {
    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.as_map().get(name)
    }

    /// The `sub` claim. Always a non-empty string in an admitted token: RFC 7519 §4.1.2 makes
    /// `sub` a string, and a numeric one is refused as `malformed` (large numbers lose digits
    /// as JSON numbers, so two users could share one id).
    pub fn subject(&self) -> Option<String> {
        self.get("sub").and_then(Value::as_str).map(str::to_owned)
    }

    /// The roles the layer read from the token: the roles claim
    /// ([`AuthLayer::roles_claim`](super::AuthLayer::roles_claim)), or OAuth's `scope` when
    /// [`AuthLayer::roles_from_scope`](super::AuthLayer::roles_from_scope) is on.
    pub fn roles(&self) -> &[Arc<str>] {
        &self.roles
    }

    /// Whether [`Claims::roles`] contains `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }

    /// Every claim.
    pub fn as_map(&self) -> &Map<String, Value> {
        self.claims.map()
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let claims = ClaimSet { json: "{}".to_owned(), map: OnceLock::new() };
        Claims { claims: Arc::new(claims), roles: Arc::from(Vec::new()) }
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
    /// Read roles from OAuth's `scope` when the roles claim gives none.
    pub(crate) scope_fallback: bool,
}

/// The parts of a token's header the layer acts on, and where the token's other two
/// segments start (the token is split once, here).
pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<Arc<str>>,
    /// The byte offsets of the payload and of the signature in the token.
    payload_at: usize,
    signature_at: usize,
    /// Read from [`KnownHeaders`]: nothing to remember.
    known: bool,
}

/// The longest header decoded onto the stack; a longer one (many parameters, a long `kid`)
/// is decoded onto the heap.
const STACK_HEADER_BYTES: usize = 256;

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

/// Whether a header parameter is there at all, whatever its value (`null` included).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Present(true))
    }
}

/// Splits the token into its three segments and reads `alg` and `kid` from its header
/// (from `known` when a verified token had the same header). `alg: none`, unknown algorithms
/// and any `crit` are refused here, before any key is looked at; other parameters, of any
/// JSON type, are ignored (RFC 7515 §4).
pub(crate) fn token_header(token: &str, known: &KnownHeaders) -> Result<TokenHeader, Reason> {
    // Three segments, two dots: each byte is looked at once.
    let (header, rest) = token.split_once('.').ok_or(Reason::Malformed)?;
    let (payload, signature) = rest.split_once('.').ok_or(Reason::Malformed)?;
    if signature.contains('.') {
        return Err(Reason::Malformed);
    }
    let payload_at = header.len() + 1;
    let signature_at = payload_at + payload.len() + 1;
    let ((alg, kid), known) = match known.get(header) {
        Some(read) => (read, true),
        None => (read_header(header)?, false),
    };
    Ok(TokenHeader { alg, kid, payload_at, signature_at, known })
}

/// Decodes and parses a header segment: its `alg` and `kid`.
fn read_header(header: &str) -> Result<(Algorithm, Option<Arc<str>>), Reason> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        alg: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        kid: Option<Cow<'a, str>>,
        #[serde(default)]
        crit: Present,
    }
    let mut stack = [0u8; STACK_HEADER_BYTES];
    let heap;
    let bytes = match URL_SAFE_NO_PAD.decode_slice(header, &mut stack) {
        Ok(length) => &stack[..length],
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            heap = URL_SAFE_NO_PAD.decode(header).map_err(|_| Reason::Malformed)?;
            &heap[..]
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => return Err(Reason::Malformed),
    };
    // Checked once here, so the parser need not check each string again.
    let json = std::str::from_utf8(bytes).map_err(|_| Reason::Malformed)?;
    // serde would also read a struct from a JSON array; a header is an object.
    if json.trim_start_matches(|c: char| c.is_ascii_whitespace()).as_bytes().first() != Some(&b'{') {
        return Err(Reason::Malformed);
    }
    // Duplicate parameter names are refused by serde (RFC 7515 §4 allows refusing them).
    let raw: Raw<'_> = serde_json::from_str(json).map_err(|_| Reason::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, and this layer
    // understands none; an empty or non-array `crit` is invalid anyway.
    if raw.crit.0 {
        return Err(Reason::UnsupportedCrit);
    }
    let alg = raw.alg.ok_or(Reason::Malformed)?;
    let alg = Algorithm::from_str(&alg).map_err(|_| Reason::UnsupportedAlgorithm)?;
    Ok((alg, raw.kid.map(|kid| Arc::from(&*kid))))
}

/// How many header segments [`KnownHeaders`] keeps.
const KNOWN_HEADERS: usize = 4;

/// Header segments of tokens that verified, with what they say. The tokens of one issuer
/// carry the same header (`{"alg":"HS256","typ":"JWT"}`, or one per `kid`), so the next
/// token's header is recognized by comparing its text instead of being decoded and parsed
/// again: what a header says depends on its text alone. Only headers of verified tokens are
/// kept, the first [`KNOWN_HEADERS`] of them, so tokens with made-up headers can neither
/// fill it nor push the real ones out. Slots are set once and read without a lock (a hit is
/// a few loads and a text comparison, and a reference count for a `kid`); it belongs to a key
/// set, so a refetch that brings other keys, as after a rotation, starts with none (the same
/// keys again keep them).
#[derive(Clone, Default)]
pub(crate) struct KnownHeaders([OnceLock<KnownHeader>; KNOWN_HEADERS]);

#[derive(Clone)]
struct KnownHeader {
    encoded: Box<str>,
    alg: Algorithm,
    kid: Option<Arc<str>>,
}

impl KnownHeaders {
    fn get(&self, encoded: &str) -> Option<(Algorithm, Option<Arc<str>>)> {
        let found = self.0.iter().map_while(OnceLock::get).find(|h| *h.encoded == *encoded)?;
        Some((found.alg, found.kid.clone()))
    }

    /// Remembers the header of `token`, which has just verified with `header` read from it,
    /// while a slot is free.
    pub(crate) fn remember(&self, token: &str, header: &TokenHeader) {
        if header.known {
            return;
        }
        let Some(encoded) = token.get(..header.payload_at - 1) else { return };
        for slot in &self.0 {
            match slot.get() {
                Some(known) if *known.encoded == *encoded => return,
                Some(_) => {}
                None => {
                    let entry = KnownHeader { encoded: encoded.into(), alg: header.alg, kid: header.kid.clone() };
                    // Another request may fill the slot first; its header is as good.
                    let _ = slot.set(entry);
                    return;
                }
            }
        }
    }

    /// Whether `token`'s header segment is kept.
    #[cfg(test)]
    pub(crate) fn knows(&self, token: &str) -> bool {
        token.split_once('.').is_some_and(|(header, _)| self.get(header).is_some())
    }
}

/// Checks the signature with `key` (whose family must include the token's algorithm), then
/// the claims: `exp` and `sub` (required), `nbf`, `iss` and `aud`.
pub(crate) fn verify(token: &str, header: &TokenHeader, key: &KeyEntry, rules: &Rules) -> Result<Verified, Reason> {
    if !key.algorithms.contains(&header.alg) {
        return Err(Reason::UnsupportedAlgorithm);
    }
    // Split by `token_header`, from this same token.
    let segment = |range: std::ops::Range<usize>| token.get(range).ok_or(Reason::Malformed);
    let message = segment(0..header.signature_at - 1)?;
    let payload = segment(header.payload_at..header.signature_at - 1)?;
    let signature = segment(header.signature_at..token.len())?;
    match key.hmac.as_deref().and_then(|keys| keys.for_algorithm(header.alg)) {
        Some(prepared) => verify_hmac(prepared, message.as_bytes(), signature)?,
        None => match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, header.alg) {
            Ok(true) => {}
            Ok(false) => return Err(Reason::InvalidSignature),
            Err(error) => return Err(classify(error.kind())),
        },
    }
    // Only signed bytes are parsed from here on.
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Reason::Malformed)?;
    // Checked once here, so the parser need not check each string again.
    let json = String::from_utf8(bytes).map_err(|_| Reason::Malformed)?;
    let (exp, nbf, user_id, org_id, roles) = {
        let claims = Registered::read(&json, rules).ok_or(Reason::Malformed)?;
        let (exp, nbf) = check_claims(&claims, rules, unix_now())?;
        let user_id = claims.sub.as_ref().and_then(Claim::as_str).map(Arc::from);
        let org_id = claims.org.as_ref().and_then(text);
        let roles: Arc<[Arc<str>]> = roles(&claims, rules.scope_fallback).into();
        (exp, nbf, user_id, org_id, roles)
    };
    let claims = ClaimSet { json, map: OnceLock::new() };
    Ok(Verified {
        claims: Claims { claims: Arc::new(claims), roles: Arc::clone(&roles) },
        user_id,
        org_id,
        roles,
        exp,
        nbf,
    })
}

/// An HMAC signature (base64url, no padding, as JWS writes it) checked in constant time.
/// A signature that does not decode, or has the wrong length, is invalid, as jsonwebtoken
/// would say.
fn verify_hmac(key: &aws_lc_rs::hmac::Key, message: &[u8], signature: &str) -> Result<(), Reason> {
    // SHA-512's 64 bytes are the longest tag; the signature is decoded onto the stack.
    let mut tag = [0u8; 64];
    let length = URL_SAFE_NO_PAD.decode_slice(signature, &mut tag).map_err(|_| Reason::InvalidSignature)?;
    aws_lc_rs::hmac::verify(key, message, &tag[..length]).map_err(|_| Reason::InvalidSignature)
}

/// The registered claims (RFC 7519 §4.1): `exp` and `sub` are required, `iss` and `aud`
/// when configured; then `exp` and `nbf` against `now` with the leeway. `(exp, nbf)` if good.
fn check_claims(claims: &Registered<'_>, rules: &Rules, now: u64) -> Result<(u64, Option<u64>), Reason> {
    let exp = claims.exp.as_ref().ok_or(Reason::Malformed)?;
    // A `sub` that names no one (empty, `true`, an object) would authenticate nobody; a
    // numeric one is not a StringOrURI (RFC 7519 §4.1.2) and may have lost digits.
    if claims.sub.as_ref().and_then(Claim::as_str).is_none_or(str::is_empty) {
        return Err(Reason::Malformed);
    }
    if rules.issuers.is_some() && claims.iss.is_none() {
        return Err(Reason::WrongIssuer);
    }
    if rules.audiences.is_some() && claims.aud.is_none() {
        return Err(Reason::WrongAudience);
    }
    let exp = numeric_date(exp).ok_or(Reason::Malformed)?;
    let nbf = claims.nbf.as_ref().map(|nbf| numeric_date(nbf).ok_or(Reason::Malformed)).transpose()?;
    if exp.saturating_add(rules.leeway_secs) < now {
        return Err(Reason::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(rules.leeway_secs)) {
        return Err(Reason::NotYetValid);
    }
    if let Some(issuers) = &rules.issuers {
        let iss = claims.iss.as_ref().and_then(Claim::as_str).ok_or(Reason::WrongIssuer)?;
        if !issuers.iter().any(|want| want == iss) {
            return Err(Reason::WrongIssuer);
        }
    }
    if let Some(audiences) = &rules.audiences {
        // RFC 7519 §4.1.3: one string, or an array of strings of which one must be ours.
        let ours = |aud: &str| audiences.iter().any(|want| want == aud);
        let matched = match &claims.aud {
            Some(Claim::Str(aud)) => ours(aud),
            Some(Claim::List(auds)) => auds.iter().filter_map(Claim::as_str).any(ours),
            _ => false,
        };
        if !matched {
            return Err(Reason::WrongAudience);
        }
    }
    Ok((exp, nbf))
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, fractions dropped; negative,
/// non-finite and non-numbers are not dates.
fn numeric_date(value: &Claim<'_>) -> Option<u64> {
    let Claim::Num(number) = value else { return None };
    if let Some(secs) = number.as_u64() {
        return Some(secs);
    }
    let secs = number.as_f64()?;
    // `as` saturates; the bound check keeps a huge float from meaning "never expires" wrongly.
    (secs.is_finite() && secs >= 0.0 && secs < u64::MAX as f64).then_some(secs as u64)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn classify(kind: &ErrorKind) -> Reason {
    match kind {
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
fn text(value: &Claim<'_>) -> Option<Arc<str>> {
    match value {
        Claim::Str(s) if !s.is_empty() => Some(Arc::from(&**s)),
        Claim::Num(n) => Some(Arc::from(n.to_string())),
        _ => None,
    }
}

/// Roles from the configured claim (an array of strings, or a space-separated string), else
/// — when `scope_fallback` is on — from OAuth's space-separated `scope`.
fn roles(claims: &Registered<'_>, scope_fallback: bool) -> Vec<Arc<str>> {
    let from = |value: &Claim<'_>| -> Vec<Arc<str>> {
        match value {
            Claim::List(items) => items.iter().filter_map(Claim::as_str).map(Arc::from).collect(),
            Claim::Str(s) => s.split_whitespace().map(Arc::from).collect(),
            _ => Vec::new(),
        }
    };
    let roles = claims.roles.as_ref().map(from).unwrap_or_default();
    if roles.is_empty() && scope_fallback { claims.scope.as_ref().map(from).unwrap_or_default() } else { roles }
}

/// The claims the checks read, borrowed from the payload where JSON allows (strings without
/// escapes). A name read twice keeps its last value, as a map of the payload would.
#[derive(Default)]
struct Registered<'a> {
    sub: Option<Claim<'a>>,
    exp: Option<Claim<'a>>,
    nbf: Option<Claim<'a>>,
    iss: Option<Claim<'a>>,
    aud: Option<Claim<'a>>,
    scope: Option<Claim<'a>>,
    /// The configured org and roles claims (`AuthLayer::org_claim`, `roles_claim`).
    org: Option<Claim<'a>>,
    roles: Option<Claim<'a>>,
}

impl<'a> Registered<'a> {
    /// `None` unless `json` is one JSON object and nothing else.
    fn read(json: &'a str, rules: &Rules) -> Option<Self> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let claims = Pick { rules }.deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        Some(claims)
    }
}

/// A claim's value, as far as the checks look into it; anything else is `Other`.
#[derive(Clone, Debug, PartialEq)]
enum Claim<'a> {
    Str(Cow<'a, str>),
    Num(serde_json::Number),
    List(Vec<Claim<'a>>),
    Other,
}

impl Claim<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Claim::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Claim<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimVisitor;
        impl<'de> Visitor<'de> for ClaimVisitor {
            type Value = Claim<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Claim::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Claim::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Claim::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Claim::Other, Claim::Num))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Claim::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Claim::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Claim::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Parsed, not skipped: skipping checks less (number range, surrogates, depth)
                // than the map a handler gets from `Claims::get`, which must parse too.
                while map.next_entry::<Claim<'de>, Claim<'de>>()?.is_some() {}
                Ok(Claim::Other)
            }
        }
        deserializer.deserialize_any(ClaimVisitor)
    }
}

/// Reads the payload object, keeping the claims [`Registered`] names and skipping the rest.
struct Pick<'r> {
    rules: &'r Rules,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Registered<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Registered<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut claims = Registered::default();
        // Names as `Claim`s: borrowed when unescaped (serde's `Cow<str>` always copies).
        while let Some(name) = map.next_key::<Claim<'de>>()? {
            let Claim::Str(name) = name else { return Err(serde::de::Error::custom("a claim name is a string")) };
            let org = *name == *self.rules.org_claim;
            let roles = *name == *self.rules.roles_claim;
            let slot = match &*name {
                "sub" => Some(&mut claims.sub),
                "exp" => Some(&mut claims.exp),
                "nbf" => Some(&mut claims.nbf),
                "iss" => Some(&mut claims.iss),
                "aud" => Some(&mut claims.aud),
                "scope" => Some(&mut claims.scope),
                _ => None,
            };
            if slot.is_none() && !org && !roles {
                // Parsed as fully as the rest (see `Claim`), then dropped.
                map.next_value::<Claim<'de>>()?;
                continue;
            }
            // One value may fill several slots: the org or roles claim can be configured to
            // a registered name.
            let value: Claim<'de> = map.next_value()?;
            if org {
                claims.org = Some(value.clone());
            }
            if roles {
                claims.roles = Some(value.clone());
            }
            if let Some(slot) = slot {
                *slot = Some(value);
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            leeway_secs: 30,
            issuers: None,
            audiences: Some(vec!["api".into()]),
            max_token_bytes: 8192,
            org_claim: "org_id".into(),
            roles_claim: "roles".into(),
            scope_fallback: false,
        }
    }

    fn header(json: &str) -> String {
        format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(json))
    }

    /// The header of `token`, read with nothing remembered.
    fn fresh_header(token: &str) -> Result<TokenHeader, Reason> {
        token_header(token, &KnownHeaders::default())
    }

    fn hs256(claims: &Value, kid: Option<&str>) -> String {
        let secret = jsonwebtoken::EncodingKey::from_secret(b"a secret of thirty-two bytes or more");
        let header =
            jsonwebtoken::Header { kid: kid.map(str::to_owned), ..jsonwebtoken::Header::new(Algorithm::HS256) };
        jsonwebtoken::encode(&header, claims, &secret).unwrap()
    }

    #[test]
    fn only_verified_headers_are_remembered_and_only_a_few() {
        let key = KeyEntry::hmac(b"a secret of thirty-two bytes or more");
        let known = KnownHeaders::default();
        let claims = json!({"sub": "1", "exp": unix_now() + 60, "aud": "api"});
        let check = |token: &str| {
            let header = token_header(token, &known)?;
            let verified = verify(token, &header, &key, &rules())?;
            known.remember(token, &header);
            Ok::<_, Reason>((header, verified))
        };
        let token = hs256(&claims, Some("k1"));
        check(&token).unwrap();
        assert!(known.knows(&token));
        // Read from what was remembered: the same as reading it afresh.
        let again = hs256(&json!({"sub": "2", "exp": unix_now() + 60, "aud": "api"}), Some("k1"));
        let (header, verified) = check(&again).unwrap();
        assert!(header.known, "read from what was remembered");
        let fresh = fresh_header(&again).unwrap();
        assert!(!fresh.known);
        assert_eq!((header.alg, header.kid.as_deref()), (fresh.alg, fresh.kid.as_deref()));
        assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::HS256, Some("k1")));
        assert_eq!(verified.user_id.as_deref(), Some("2"));
        // A remembered header does not make a bad signature good.
        let (message, _) = again.rsplit_once('.').unwrap();
        assert_eq!(check(&format!("{message}.AAAA")).err(), Some(Reason::InvalidSignature));
        // A token that fails is not remembered, whatever its header.
        let forged = hs256(&claims, Some("k-forged"));
        let (message, _) = forged.rsplit_once('.').unwrap();
        assert_eq!(check(&format!("{message}.AAAA")).err(), Some(Reason::InvalidSignature));
        assert!(!known.knows(&forged));
        // Only the first few are kept; later ones verify all the same.
        let kids: Vec<String> = (2..=KNOWN_HEADERS + 1).map(|n| format!("k{n}")).collect();
        for kid in &kids {
            check(&hs256(&claims, Some(kid))).unwrap();
        }
        assert!(known.knows(&token), "the first header stays");
        let (kept, later) = kids.split_at(KNOWN_HEADERS - 1);
        for kid in kept {
            assert!(known.knows(&hs256(&claims, Some(kid))), "{kid}");
        }
        assert!(!known.knows(&hs256(&claims, Some(&later[0]))), "no slot left");
        check(&hs256(&claims, Some(&later[0]))).unwrap();
    }

    #[test]
    fn unknown_header_parameters_of_any_type_are_ignored() {
        for extra in [r#"1"#, r#"1.5"#, r#"true"#, r#"null"#, r#"[1,"a"]"#, r#"{"n":1}"#, r#""s""#] {
            let parsed = fresh_header(&header(&format!(r#"{{"alg":"HS256","x-extra":{extra},"kid":"k"}}"#)));
            let parsed = parsed.unwrap_or_else(|r| panic!("{extra}: {r}"));
            assert_eq!(parsed.alg, Algorithm::HS256);
            assert_eq!(parsed.kid.as_deref(), Some("k"));
        }
    }

    #[test]
    fn any_crit_is_refused() {
        for crit in [r#"["exp"]"#, r#"["b64"]"#, r#"[]"#, r#""b64""#, r#"null"#] {
            let parsed = fresh_header(&header(&format!(r#"{{"alg":"HS256","crit":{crit}}}"#)));
            assert_eq!(parsed.err(), Some(Reason::UnsupportedCrit), "{crit}");
        }
    }

    #[test]
    fn headers_that_are_not_objects_or_repeat_a_name_are_malformed() {
        for bad in [r#"["HS256","k"]"#, r#"{"alg":"HS256","alg":"HS512"}"#, r#"{"alg":5}"#, r#"{"kid":"k"}"#] {
            assert_eq!(fresh_header(&header(bad)).err(), Some(Reason::Malformed), "{bad}");
        }
        assert_eq!(fresh_header(&header(r#"{"alg":"none"}"#)).err(), Some(Reason::UnsupportedAlgorithm));
        let valid = header(r#"{"alg":"HS256"}"#);
        let (head, rest) = valid.split_once('.').unwrap();
        for bad in [head.to_owned(), format!("{head}.e30"), format!("{valid}.x"), format!("{head}..e30.sig")] {
            assert_eq!(fresh_header(&bad).err(), Some(Reason::Malformed), "{bad}");
        }
        let not_utf8 = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"{\"alg\":\"HS256\",\"x\":\"\xff\"}"));
        assert_eq!(fresh_header(&not_utf8).err(), Some(Reason::Malformed));
        assert_eq!(fresh_header(&format!("{head}!.{rest}")).err(), Some(Reason::Malformed), "not base64url");
    }

    #[test]
    fn a_header_too_long_for_the_stack_is_read_all_the_same() {
        let kid = "k".repeat(STACK_HEADER_BYTES * 2);
        let parsed = fresh_header(&header(&format!(r#"{{"alg":"HS384","kid":"{kid}"}}"#))).unwrap();
        assert_eq!((parsed.alg, parsed.kid.as_deref()), (Algorithm::HS384, Some(kid.as_str())));
        let crit = format!(r#"{{"alg":"HS384","kid":"{kid}","crit":["b64"]}}"#);
        assert_eq!(fresh_header(&header(&crit)).err(), Some(Reason::UnsupportedCrit));
    }

    #[test]
    fn claims_are_checked_as_rfc_7519_says() {
        let now = 1_000_000;
        let check = |claims: Value| {
            let json = serde_json::to_string(&claims).unwrap();
            check_claims(&Registered::read(&json, &rules()).unwrap(), &rules(), now)
        };
        assert_eq!(check(json!({"sub": "1", "exp": now, "aud": "api"})), Ok((now, None)));
        assert!(check(json!({"sub": "1", "exp": now as f64 + 0.5, "aud": ["other", "api"]})).is_ok());
        assert_eq!(check(json!({"sub": 1, "exp": now, "aud": "api"})), Err(Reason::Malformed), "numeric sub");
        assert_eq!(check(json!({"sub": "", "exp": now, "aud": "api"})), Err(Reason::Malformed));
        assert_eq!(check(json!({"sub": "1", "aud": "api"})), Err(Reason::Malformed), "no exp");
        assert_eq!(check(json!({"sub": "1", "exp": "soon", "aud": "api"})), Err(Reason::Malformed));
        assert_eq!(check(json!({"sub": "1", "exp": -5, "aud": "api"})), Err(Reason::Malformed));
        assert_eq!(check(json!({"sub": "1", "exp": now - 31, "aud": "api"})), Err(Reason::Expired));
        assert!(check(json!({"sub": "1", "exp": now - 30, "aud": "api"})).is_ok(), "inside the leeway");
        assert_eq!(check(json!({"sub": "1", "exp": now, "nbf": now + 31, "aud": "api"})), Err(Reason::NotYetValid));
        assert_eq!(check(json!({"sub": "1", "exp": now, "nbf": "x", "aud": "api"})), Err(Reason::Malformed));
        assert_eq!(check(json!({"sub": "1", "exp": now})), Err(Reason::WrongAudience));
        assert_eq!(check(json!({"sub": "1", "exp": now, "aud": ["other"]})), Err(Reason::WrongAudience));
        assert_eq!(check(json!({"sub": "1", "exp": now, "aud": 7})), Err(Reason::WrongAudience));
    }

    #[test]
    fn hmac_signatures_are_checked_with_the_prepared_keys() {
        let key = KeyEntry::hmac(b"a secret of thirty-two bytes or more");
        let other = KeyEntry::hmac(b"another secret of thirty-two bytes");
        let claims = json!({"sub": "1", "exp": unix_now() + 60, "aud": "api"});
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let secret = jsonwebtoken::EncodingKey::from_secret(b"a secret of thirty-two bytes or more");
            let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &secret).unwrap();
            let header = fresh_header(&token).unwrap();
            let verified = verify(&token, &header, &key, &rules()).unwrap_or_else(|r| panic!("{alg:?}: {r}"));
            assert_eq!(verified.user_id.as_deref(), Some("1"));
            assert_eq!(verify(&token, &header, &other, &rules()).err(), Some(Reason::InvalidSignature), "{alg:?}");
            let (message, signature) = token.rsplit_once('.').unwrap();
            let first = if signature.starts_with('A') { "B" } else { "A" };
            let flipped = format!("{first}{}", &signature[1..]);
            let truncated = &signature[..signature.len() - 2];
            let longer = format!("{signature}AAAA");
            for bad in [flipped.as_str(), truncated, &longer, "", "!!!!", &format!("{signature}=")] {
                let forged = format!("{message}.{bad}");
                assert_eq!(
                    verify(&forged, &header, &key, &rules()).err(),
                    Some(Reason::InvalidSignature),
                    "{alg:?} {bad:?}"
                );
            }
        }
    }

    #[test]
    fn claims_are_read_as_a_map_of_the_payload_would_read_them() {
        fn read(json: &str) -> Option<Registered<'_>> {
            Registered::read(json, &rules())
        }
        // Escaped names and values, a repeated name (the last one counts), nested values skipped.
        let claims =
            read(r#"{"su\u0062":"first","sub":"a\"b","exp":1e3,"x":{"sub":"no"},"roles":["r",1,"s"]}"#).unwrap();
        assert_eq!(claims.sub, Some(Claim::Str("a\"b".into())));
        assert_eq!(claims.exp.as_ref().and_then(numeric_date), Some(1000));
        assert_eq!(roles(&claims, false), vec![Arc::from("r"), Arc::from("s")]);
        for not_an_object in [r#"["sub"]"#, r#""sub""#, "1", "null", r#"{"sub":"a"} x"#, r#"{"sub":"a""#, ""] {
            assert!(read(not_an_object).is_none(), "{not_an_object}");
        }
        // What a map of the payload refuses, in claims the checks skip, is refused too.
        let deep = format!(r#"{{"sub":"a","x":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for bad in [r#"{"sub":"a","x":1e400}"#, r#"{"sub":"a","x":"\ud800"}"#, r#"{"sub":"a","x":{"y":1e400}}"#, &deep]
        {
            assert!(serde_json::from_str::<Map<String, Value>>(bad).is_err(), "{bad}");
            assert!(read(bad).is_none(), "{bad}");
        }
        // The org claim may be a registered name: one value fills both.
        let rules = Rules { org_claim: "sub".into(), ..rules() };
        let claims = Registered::read(r#"{"sub":"7"}"#, &rules).unwrap();
        assert_eq!(claims.org.as_ref().and_then(text).as_deref(), Some("7"));
        assert_eq!(claims.sub.as_ref().and_then(Claim::as_str), Some("7"));
    }

    #[test]
    fn the_full_claim_set_is_there_when_a_handler_asks() {
        let key = KeyEntry::hmac(b"a secret of thirty-two bytes or more");
        let claims = json!({"sub": "1", "exp": unix_now() + 60, "aud": "api", "tenant": {"id": 5}});
        let secret = jsonwebtoken::EncodingKey::from_secret(b"a secret of thirty-two bytes or more");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &secret).unwrap();
        let verified = verify(&token, &fresh_header(&token).unwrap(), &key, &rules()).unwrap();
        assert_eq!(verified.claims.get("tenant"), Some(&json!({"id": 5})));
        assert_eq!(verified.claims.subject().as_deref(), Some("1"));
        assert_eq!(Value::Object(verified.claims.as_map().clone()), claims);
    }

    #[test]
    fn a_signed_payload_that_is_not_utf8_is_malformed_even_in_a_claim_no_check_reads() {
        let key = KeyEntry::hmac(b"a secret of thirty-two bytes or more");
        let secret = jsonwebtoken::EncodingKey::from_secret(b"a secret of thirty-two bytes or more");
        let exp = unix_now() + 60;
        let sign = |payload: &[u8]| {
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &secret, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        };
        let good = sign(format!(r#"{{"sub":"1","exp":{exp},"aud":"api","x":"é"}}"#).as_bytes());
        assert!(verify(&good, &fresh_header(&good).unwrap(), &key, &rules()).is_ok());
        let mut bad = format!(r#"{{"sub":"1","exp":{exp},"aud":"api","x":"??"}}"#).into_bytes();
        let at = bad.len() - 4;
        bad[at..at + 2].copy_from_slice(b"\xc3\x28");
        let bad = sign(&bad);
        assert_eq!(verify(&bad, &fresh_header(&bad).unwrap(), &key, &rules()).err(), Some(Reason::Malformed));
    }

    #[test]
    fn scope_gives_roles_only_when_asked_to() {
        let json = r#"{"scope": "read admin", "roles": []}"#;
        let claims = Registered::read(json, &rules()).unwrap();
        assert!(roles(&claims, false).is_empty());
        assert_eq!(roles(&claims, true), vec![Arc::from("read"), Arc::from("admin")]);
    }
}
