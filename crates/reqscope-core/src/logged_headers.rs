//! Request headers kept with the context to be written on the request's access line: the ones
//! a request layer was told to keep, each value capped, credentials never kept at all.
//!
//! ```
//! use http::{HeaderMap, HeaderName};
//! use reqscope_core::logged_headers::LoggedHeader;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("user-agent", "curl/8.5.0".parse().unwrap());
//! headers.insert("authorization", "Bearer eyJ…".parse().unwrap());
//! let agent = LoggedHeader::from_headers(&HeaderName::from_static("user-agent"), &headers).unwrap();
//! assert_eq!(agent.value(), Some("curl/8.5.0"));
//! let auth = LoggedHeader::from_headers(&http::header::AUTHORIZATION, &headers).unwrap();
//! assert_eq!(auth.value(), None); // always redacted: the value is not even kept
//! ```
//!
//! The names in [`ALWAYS_REDACTED`] carry credentials: a header of those names is kept as
//! sent-but-redacted, never with its value, even when it is listed. Other values are kept up
//! to [`MAX_VALUE_BYTES`] bytes (cut at a character boundary); bytes that are not UTF-8 become
//! U+FFFD; a header sent more than once is kept as its values joined by `, `, as HTTP reads
//! such a list.

use http::{HeaderMap, HeaderName};

/// The most bytes of a header value kept.
pub const MAX_VALUE_BYTES: usize = 256;

/// Headers whose values are never kept, whatever the list says.
pub const ALWAYS_REDACTED: [HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    HeaderName::from_static("x-api-key"),
];

/// One request header as kept for the access line; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedHeader {
    name: HeaderName,
    value: Option<Box<str>>,
}

impl LoggedHeader {
    /// The header `name` of `headers`, or `None` when the request did not send it.
    pub fn from_headers(name: &HeaderName, headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        if ALWAYS_REDACTED.contains(name) {
            return Some(LoggedHeader { name: name.clone(), value: None });
        }
        let mut kept = String::new();
        for (i, value) in values.enumerate() {
            if i > 0 {
                kept.push_str(", ");
            }
            kept.push_str(&String::from_utf8_lossy(value.as_bytes()));
            if kept.len() >= MAX_VALUE_BYTES {
                break;
            }
        }
        if kept.len() > MAX_VALUE_BYTES {
            let mut end = MAX_VALUE_BYTES;
            while !kept.is_char_boundary(end) {
                end -= 1;
            }
            kept.truncate(end);
        }
        Some(LoggedHeader { name: name.clone(), value: Some(kept.into_boxed_str()) })
    }

    /// The header's name (lowercase, as `http` keeps every name).
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The value as kept; `None` for a header in [`ALWAYS_REDACTED`].
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), http::HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn absent_headers_are_not_kept() {
        assert!(LoggedHeader::from_headers(&http::header::USER_AGENT, &HeaderMap::new()).is_none());
        assert!(LoggedHeader::from_headers(&http::header::COOKIE, &HeaderMap::new()).is_none());
    }

    #[test]
    fn credentials_are_never_kept() {
        let sent = headers(&[
            ("authorization", b"Bearer x"),
            ("proxy-authorization", b"Basic y"),
            ("cookie", b"s=1"),
            ("set-cookie", b"s=2"),
            ("x-api-key", b"k"),
        ]);
        for name in &ALWAYS_REDACTED {
            let kept = LoggedHeader::from_headers(name, &sent).unwrap();
            assert_eq!(kept.value(), None, "{name}");
            assert_eq!(kept.name(), name);
        }
    }

    #[test]
    fn values_are_capped_at_a_character_boundary_and_joined() {
        let long = format!("a{}", "é".repeat(200)); // 401 bytes: byte 256 is inside a character
        let sent = headers(&[("user-agent", long.as_bytes()), ("accept", b"a/b"), ("accept", b"c/d")]);
        let agent = LoggedHeader::from_headers(&http::header::USER_AGENT, &sent).unwrap();
        let value = agent.value().unwrap();
        assert_eq!(value.len(), MAX_VALUE_BYTES - 1);
        assert!(long.starts_with(value));
        let accept = LoggedHeader::from_headers(&http::header::ACCEPT, &sent).unwrap();
        assert_eq!(accept.value(), Some("a/b, c/d"));
        let odd = headers(&[("x-odd", b"a\xffb")]);
        let odd = LoggedHeader::from_headers(&HeaderName::from_static("x-odd"), &odd).unwrap();
        assert_eq!(odd.value(), Some("a\u{fffd}b"));
    }
}
