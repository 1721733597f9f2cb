use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use arrayvec::ArrayString;
use http::HeaderValue;

use crate::error::InvalidRequestId;
use crate::proxy::TrustedProxies;

/// Ids up to this many bytes are stored inline; longer forwarded ids share one allocation.
const INLINE: usize = 48;

/// The id of one request: generated (UUID v4 by default) or forwarded from `x-request-id`.
///
/// Cheap to clone: generated UUIDs and forwarded ids up to 48 bytes are stored inline, with no
/// heap allocation; longer ids share one `Arc<str>`. The content is always valid (1–128 bytes
/// of `[A-Za-z0-9._:+/=@-]`), so it is safe to log and to echo in a header.
#[derive(Clone)]
pub struct RequestId(Repr);

#[derive(Clone)]
enum Repr {
    // Text, not bytes: reading it back is free, where bytes would be re-checked as UTF-8 on
    // every line that writes the id.
    Inline(ArrayString<INLINE>),
    Shared(Arc<str>),
}

impl RequestId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// A new random UUID v4 id, e.g. `67e55044-10b1-426f-9247-bb680e5fe0c8`.
    #[inline]
    pub fn new_v4() -> Self {
        Self::from_uuid(uuid::Uuid::new_v4())
    }

    /// A new time-ordered UUID v7 id: ids sort by creation time, which suits log stores.
    #[inline]
    pub fn new_v7() -> Self {
        Self::from_uuid(uuid::Uuid::now_v7())
    }

    #[inline]
    fn from_uuid(uuid: uuid::Uuid) -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid.hyphenated().encode_lower(&mut buf);
        // 36 bytes always fit in the inline capacity.
        let inline = ArrayString::from(text).unwrap_or_default();
        RequestId(Repr::Inline(inline))
    }

    /// Validates `id` and wraps it; see [`RequestId::validate`] for the rules.
    pub fn parse(id: &str) -> Result<Self, InvalidRequestId> {
        Self::from_bytes(id.as_bytes())
    }

    /// Validates raw header bytes and wraps them.
    #[inline]
    pub fn from_bytes(id: &[u8]) -> Result<Self, InvalidRequestId> {
        Self::validate(id)?;
        // Validation guarantees ASCII, so the bytes are valid UTF-8.
        let text = std::str::from_utf8(id).map_err(|_| InvalidRequestId::ForbiddenByte)?;
        match ArrayString::from(text) {
            Ok(inline) => Ok(RequestId(Repr::Inline(inline))),
            Err(_) => Ok(RequestId(Repr::Shared(Arc::from(text)))),
        }
    }

    /// Checks the rules for a forwarded id: 1–128 bytes, each one of `[A-Za-z0-9._:+/=@-]`.
    ///
    /// The alphabet covers UUIDs, ULIDs, base64 and the ids of common proxies and cloud load
    /// balancers, and excludes everything that could break a header, a log line or a terminal
    /// (spaces, quotes, backslashes, control characters, non-ASCII bytes).
    #[inline]
    pub fn validate(id: &[u8]) -> Result<(), InvalidRequestId> {
        if id.is_empty() {
            return Err(InvalidRequestId::Empty);
        }
        if id.len() > Self::MAX_LEN {
            return Err(InvalidRequestId::TooLong);
        }
        if id.iter().all(|&b| is_id_byte(b)) { Ok(()) } else { Err(InvalidRequestId::ForbiddenByte) }
    }

    /// The id as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(inline) => inline.as_str(),
            Repr::Shared(s) => s,
        }
    }

    /// The id as bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    /// The id as a header value, for echoing on the response. The value shares this id's
    /// storage (one allocation, then clones of the header are reference-count increments).
    #[inline]
    pub fn to_header_value(&self) -> HeaderValue {
        // Every id byte is a visible ASCII character, which HeaderValue accepts.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(self.clone()))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// One entry per byte value: validation is a table lookup per byte, on every request.
static ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'+' | b'/' | b'=' | b'@' | b'-');
        b += 1;
    }
    table
};

#[inline]
fn is_id_byte(b: u8) -> bool {
    ID_BYTES[b as usize]
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RequestId {}

impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl AsRef<[u8]> for RequestId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for RequestId {
    type Err = InvalidRequestId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Makes the id of a request that arrives without an acceptable forwarded one.
#[derive(Clone, Default)]
pub enum IdGenerator {
    /// Random UUID v4 (the default).
    #[default]
    UuidV4,
    /// Time-ordered UUID v7.
    UuidV7,
    /// Your own function, e.g. a ULID or a prefixed counter.
    Custom(Arc<dyn Fn() -> RequestId + Send + Sync>),
}

impl IdGenerator {
    /// A generator from a function.
    pub fn custom(f: impl Fn() -> RequestId + Send + Sync + 'static) -> Self {
        IdGenerator::Custom(Arc::new(f))
    }

    /// Makes one id.
    #[inline]
    pub fn generate(&self) -> RequestId {
        match self {
            IdGenerator::UuidV4 => RequestId::new_v4(),
            IdGenerator::UuidV7 => RequestId::new_v7(),
            IdGenerator::Custom(f) => f(),
        }
    }
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdGenerator::UuidV4 => f.write_str("UuidV4"),
            IdGenerator::UuidV7 => f.write_str("UuidV7"),
            IdGenerator::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// When a request id sent by the client (or a proxy) is kept instead of generating one.
///
/// A forwarded id that is not kept — by policy or because it is invalid — is replaced by a
/// generated one; it is never echoed and never logged.
#[derive(Clone, Debug, Default)]
pub enum ForwardedIdPolicy {
    /// Keep any valid forwarded id (the default): right for services behind your own gateway,
    /// and harmless elsewhere because validation limits what a client can inject.
    #[default]
    TrustIfValid,
    /// Always generate: for services on the open internet that do not want client-chosen ids.
    NeverTrust,
    /// Keep a valid forwarded id only when the connection comes from one of these proxies.
    TrustFrom(TrustedProxies),
}

impl ForwardedIdPolicy {
    /// Whether a valid forwarded id from a connection with this peer address is kept.
    #[inline]
    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        match self {
            ForwardedIdPolicy::TrustIfValid => true,
            ForwardedIdPolicy::NeverTrust => false,
            ForwardedIdPolicy::TrustFrom(proxies) => peer.is_some_and(|ip| proxies.contains(ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuids() {
        let v4 = RequestId::new_v4();
        assert_eq!(v4.as_str().len(), 36);
        assert_eq!(&v4.as_str()[14..15], "4");
        let v7 = RequestId::new_v7();
        assert_eq!(&v7.as_str()[14..15], "7");
        assert_ne!(RequestId::new_v4(), v4);
    }

    #[test]
    fn validation_classes() {
        assert_eq!(RequestId::parse(""), Err(InvalidRequestId::Empty));
        assert_eq!(RequestId::parse(&"a".repeat(129)), Err(InvalidRequestId::TooLong));
        assert!(RequestId::parse(&"a".repeat(128)).is_ok());
        for bad in ["a b", "a\"b", "a\\b", "a\nb", "é", "a;b", "a,b", "<x>"] {
            assert_eq!(RequestId::parse(bad), Err(InvalidRequestId::ForbiddenByte), "{bad:?}");
        }
        assert_eq!(RequestId::from_bytes(&[b'a', 0xff]), Err(InvalidRequestId::ForbiddenByte));
        for good in ["abc", "A-Z_0.9:+/=@", "67e55044-10b1-426f-9247-bb680e5fe0c8"] {
            assert_eq!(RequestId::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn long_ids_round_trip() {
        let long = "x".repeat(100);
        let id = RequestId::parse(&long).unwrap();
        assert_eq!(id.as_str(), long);
        assert_eq!(id.to_header_value(), long.as_str());
    }

    #[test]
    fn custom_generator() {
        let generator = IdGenerator::custom(|| RequestId::parse("fixed-1").unwrap());
        assert_eq!(generator.generate().as_str(), "fixed-1");
    }
}
