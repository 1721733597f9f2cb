//! W3C Trace Context: the `traceparent` / `tracestate` headers, parsed strictly.
//!
//! Every request context carries a [`TraceContext`]: the trace it belongs to (continued from a
//! valid incoming `traceparent`, or new), this service's own span id within it, and the
//! caller's `tracestate`, carried unchanged. Log lines show `trace_id` and `span_id`;
//! outgoing calls send a `traceparent` whose parent is this service's span, so the next
//! service's lines join the same trace.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Lowercase hex of `N` bytes, stored as text so that log lines and headers copy it as is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// `N` lowercase hex digits, not all zero.
    fn parse(text: &[u8]) -> Option<Self> {
        let hex: [u8; N] = text.try_into().ok()?;
        let valid = hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (valid && hex.iter().any(|&b| b != b'0')).then_some(Hex(hex))
    }

    fn random(mut next: impl FnMut() -> u64) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        loop {
            let mut hex = [0u8; N];
            for chunk in hex.chunks_mut(16) {
                let bits = next();
                for (i, digit) in chunk.iter_mut().enumerate() {
                    *digit = DIGITS[((bits >> (4 * i)) & 0xf) as usize];
                }
            }
            // All-zero ids are invalid; with 64+ random bits this loop runs once.
            if hex.iter().any(|&b| b != b'0') {
                return Hex(hex);
            }
        }
    }

    fn as_str(&self) -> &str {
        // Only ever built from lowercase hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $bytes:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(Hex<{ $bytes * 2 }>);

        impl $name {
            /// A new random id (never all zeros).
            pub fn random() -> Self {
                $name(Hex::random(|| fastrand::u64(..)))
            }

            /// Parses the lowercase hex form; all-zero ids are invalid.
            pub fn parse(hex: &str) -> Result<Self, InvalidTraceParent> {
                Hex::parse(hex.as_bytes()).map($name).ok_or(InvalidTraceParent::$name)
            }

            /// The lowercase hex form.
            #[inline]
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The lowercase hex form, as bytes.
            #[inline]
            pub fn as_bytes(&self) -> &[u8] {
                &self.0 .0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, "({})"), self.as_str())
            }
        }
    };
}

hex_id!(
    /// A 16-byte trace id, shown as 32 lowercase hex digits.
    TraceId, 16, "TraceId"
);
hex_id!(
    /// An 8-byte span id, shown as 16 lowercase hex digits.
    SpanId, 8, "SpanId"
);

/// Why a `traceparent` value was rejected. The message never contains the value itself.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum InvalidTraceParent {
    /// More than one `traceparent` header.
    #[error("traceparent was sent more than once")]
    Repeated,
    /// Not exactly 55 bytes (`00-` + 32 + `-` + 16 + `-` + 2): short, long, or extra fields.
    #[error("traceparent is not 55 bytes long")]
    Length,
    /// A version other than `00`.
    #[error("traceparent version is not 00")]
    Version,
    /// A missing `-` between the fields.
    #[error("traceparent fields are not separated by '-'")]
    Separator,
    /// The trace id is not 32 lowercase hex digits, or is all zeros.
    #[error("traceparent trace id is not 32 lowercase hex digits, or is all zeros")]
    TraceId,
    /// The parent id is not 16 lowercase hex digits, or is all zeros.
    #[error("traceparent parent id is not 16 lowercase hex digits, or is all zeros")]
    SpanId,
    /// The flags are not 2 lowercase hex digits.
    #[error("traceparent flags are not 2 lowercase hex digits")]
    Flags,
}

/// A parsed `traceparent`: the caller's trace, its span, and the sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of this service's span.
    pub parent_id: SpanId,
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value strictly: version `00`, lowercase hex, non-zero ids,
    /// exactly 55 bytes (so a version-00 value with extra fields is rejected too).
    pub fn parse(value: &[u8]) -> Result<Self, InvalidTraceParent> {
        if value.len() != 55 {
            return Err(InvalidTraceParent::Length);
        }
        if &value[..2] != b"00" {
            return Err(InvalidTraceParent::Version);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(InvalidTraceParent::Separator);
        }
        let trace_id = Hex::parse(&value[3..35]).map(TraceId).ok_or(InvalidTraceParent::TraceId)?;
        let parent_id = Hex::parse(&value[36..52]).map(SpanId).ok_or(InvalidTraceParent::SpanId)?;
        let flags = parse_flags(&value[53..55]).ok_or(InvalidTraceParent::Flags)?;
        Ok(TraceParent { trace_id, parent_id, flags })
    }

    /// The `traceparent` of every header named so in `headers`: exactly one must be present.
    /// `Ok(None)` when there is none.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidTraceParent> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(InvalidTraceParent::Repeated);
        }
        Self::parse(first.as_bytes()).map(Some)
    }
}

fn parse_flags(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(hex[0])? << 4 | digit(hex[1])?)
}

/// The caller's `tracestate`, carried unchanged to the next service.
///
/// Accepted only next to a valid `traceparent`, only when it lists something, only as
/// printable ASCII and only up to
/// [`TraceState::MAX_LEN`] bytes (all `tracestate` headers joined with `,`); otherwise it is
/// dropped as a whole — the W3C spec allows dropping, and a partial list would misstate what
/// the vendors in it recorded.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceState(HeaderValue);

impl TraceState {
    /// The longest `tracestate` carried, in bytes (the size W3C asks every vendor to propagate).
    pub const MAX_LEN: usize = 512;

    /// The `tracestate` of `headers`, if it is within the limits.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACESTATE).iter();
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Self::check(first.as_bytes()).then(|| TraceState(first.clone()));
        };
        let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
        for value in [first, second].into_iter().chain(values) {
            if !joined.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(value.as_bytes());
            if joined.len() > Self::MAX_LEN {
                return None;
            }
        }
        if !Self::check(&joined) {
            return None;
        }
        HeaderValue::from_bytes(&joined).ok().map(TraceState)
    }

    fn check(value: &[u8]) -> bool {
        // An empty list says nothing; sending it on would only add an empty header.
        !value.iter().all(|&b| b == b' ' || b == b',')
            && value.len() <= Self::MAX_LEN
            && value.iter().all(|b| (0x20..=0x7e).contains(b))
    }

    /// The value, as sent.
    pub fn as_str(&self) -> &str {
        // Checked to be printable ASCII.
        self.0.to_str().unwrap_or_default()
    }

    /// The header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceState({:?})", self.as_str())
    }
}

/// The trace a request belongs to and this service's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_id: Option<SpanId>,
    flags: u8,
    state: Option<TraceState>,
}

/// The "sampled" trace flag.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A new trace with this service as its root span, marked sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: SAMPLED,
            state: None,
        }
    }

    /// Continues the caller's trace with a new span of this service, whose parent is the
    /// caller's span; the caller's `tracestate` goes along unchanged.
    pub fn child_of(parent: TraceParent, state: Option<TraceState>) -> Self {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(parent.parent_id),
            // Version 00 defines only the sampled bit; unknown bits are not passed on.
            flags: parent.flags & SAMPLED,
            state,
        }
    }

    /// A context from ids decided elsewhere (e.g. an OpenTelemetry span).
    pub fn from_parts(trace_id: TraceId, span_id: SpanId, parent_id: Option<SpanId>, sampled: bool) -> Self {
        TraceContext { trace_id, span_id, parent_id, flags: if sampled { SAMPLED } else { 0 }, state: None }
    }

    /// Continues the trace of a valid incoming `traceparent` (with its `tracestate`), or
    /// starts a new one. An invalid `traceparent` is never an error for the request: the
    /// reason is returned beside the new trace, and the value itself is dropped.
    pub fn from_headers(headers: &HeaderMap) -> (Self, Option<InvalidTraceParent>) {
        match TraceParent::from_headers(headers) {
            Ok(Some(parent)) => (Self::child_of(parent, TraceState::from_headers(headers)), None),
            Ok(None) => (Self::new_root(), None),
            Err(invalid) => (Self::new_root(), Some(invalid)),
        }
    }

    /// Replaces the `tracestate` carried along.
    pub fn with_state(mut self, state: Option<TraceState>) -> Self {
        self.state = state;
        self
    }

    /// The trace id.
    #[inline]
    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    /// This service's span id within the trace.
    #[inline]
    pub fn span_id(&self) -> &SpanId {
        &self.span_id
    }

    /// The caller's span, when the trace was continued from a `traceparent`.
    #[inline]
    pub fn parent_id(&self) -> Option<&SpanId> {
        self.parent_id.as_ref()
    }

    /// Whether the trace is marked sampled.
    #[inline]
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The caller's `tracestate`, if one was carried.
    #[inline]
    pub fn state(&self) -> Option<&TraceState> {
        self.state.as_ref()
    }

    /// The `traceparent` for an outgoing call made on behalf of this span: same trace, this
    /// service's span as the parent, same flags.
    pub fn traceparent(&self) -> HeaderValue {
        let mut value = [0u8; 55];
        value[..3].copy_from_slice(b"00-");
        value[3..35].copy_from_slice(self.trace_id.as_bytes());
        value[35] = b'-';
        value[36..52].copy_from_slice(self.span_id.as_bytes());
        value[52] = b'-';
        value[53..].copy_from_slice(if self.sampled() { b"01" } else { b"00" });
        HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn parses_the_spec_example() {
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(parent.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id.as_str(), "00f067aa0ba902b7");
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn rejects_every_deviation() {
        let cases = [
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Version),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Version),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", InvalidTraceParent::SpanId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", InvalidTraceParent::Flags),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", InvalidTraceParent::SpanId),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", InvalidTraceParent::Length),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", InvalidTraceParent::Length),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", InvalidTraceParent::Separator),
            ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("", InvalidTraceParent::Length),
        ];
        for (value, reason) in cases {
            assert_eq!(TraceParent::parse(value.as_bytes()), Err(reason), "{value}");
            assert!(!reason.to_string().contains(value) || value.is_empty());
        }
        let twice = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(TraceParent::from_headers(&twice), Err(InvalidTraceParent::Repeated));
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let map = headers(&[
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let (trace, invalid) = TraceContext::from_headers(&map);
        assert_eq!(invalid, None);
        assert_eq!(trace.trace_id().as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id().map(SpanId::as_str), Some("00f067aa0ba902b7"));
        assert_ne!(trace.span_id().as_str(), "00f067aa0ba902b7");
        assert_eq!(trace.state().map(TraceState::as_str), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        let outgoing = trace.traceparent();
        assert_eq!(outgoing.to_str().unwrap(), format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", trace.span_id()));
        assert!(TraceParent::parse(outgoing.as_bytes()).is_ok());
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        let map = headers(&[("traceparent", "00-ABC"), ("tracestate", "rojo=1")]);
        let (trace, invalid) = TraceContext::from_headers(&map);
        assert_eq!(invalid, Some(InvalidTraceParent::Length));
        assert!(trace.parent_id().is_none());
        assert!(trace.state().is_none());
        assert!(trace.sampled());
    }

    #[test]
    fn tracestate_over_the_cap_is_dropped_whole() {
        let long = format!("a={}", "x".repeat(TraceState::MAX_LEN));
        assert!(TraceState::from_headers(&headers(&[("tracestate", &long)])).is_none());
        let half = format!("a={}", "x".repeat(300));
        assert!(TraceState::from_headers(&headers(&[("tracestate", &half), ("tracestate", &half)])).is_none());
        assert!(TraceState::from_headers(&headers(&[("tracestate", "a=1\t")])).is_none());
        assert!(TraceState::from_headers(&headers(&[("tracestate", &half)])).is_some());
        assert!(TraceState::from_headers(&headers(&[("tracestate", "")])).is_none());
        assert!(TraceState::from_headers(&headers(&[("tracestate", " , ")])).is_none());
    }

    #[test]
    fn unknown_flags_are_not_passed_on() {
        let parent = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        let trace = TraceContext::child_of(parent, None);
        assert!(trace.traceparent().to_str().unwrap().ends_with("-01"));
        let unsampled = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(TraceContext::child_of(unsampled, None).traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn random_ids_are_hex_and_distinct() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert!(TraceId::parse(a.as_str()).is_ok());
        assert!(SpanId::parse(SpanId::random().as_str()).is_ok());
    }
}
