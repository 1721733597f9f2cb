//! W3C Trace Context: the `traceparent` / `tracestate` headers.
//!
//! Every request context carries a [`TraceContext`]: the trace it belongs to (continued from a
//! valid incoming `traceparent`, or new), this service's own span id within it, and the
//! caller's `tracestate`, validated. Log lines show `trace_id` and `span_id`; each outgoing
//! call gets a client span of its own ([`TraceContext::child`]), whose id is the parent in the
//! `traceparent` it sends, so the next service's lines join the same trace.
//!
//! **`traceparent`** ([`TraceParent::parse`]): version `00` is exactly 55 bytes of lowercase
//! hex fields with non-zero ids. A higher version (any other two lowercase hex digits but `ff`)
//! is read with the version-00 layout, as the spec's "Versioning of traceparent" asks: its
//! first 55 bytes must parse, and a longer value must go on with `-` there; what is sent onward
//! is always version `00`, with only the sampled flag kept.
//!
//! **`tracestate`** ([`TraceState::from_headers`]): read only next to a valid `traceparent`;
//! every `tracestate` header is joined, members may be surrounded by spaces and tabs, and empty
//! members are skipped. Each member must follow the spec's grammar (a key of 1–256 characters
//! of `a-z 0-9 _ - * / @` starting with a letter or digit — `tenant@system` keys included — and
//! a value of 1–256 printable characters but `,` and `=`, not ending in a space); at most 32
//! members. A header that breaks a rule is dropped as a whole: the spec allows it, and the
//! official test suite expects it (a partial list would misstate what the vendors recorded). A
//! repeated key keeps its first (leftmost, most recent) value. Beyond 512 bytes whole entries
//! are removed, those longer than 128 characters first (from the right), then from the right
//! end, as the spec says.
//!
//! A service can put an entry of its own at the front of the list with
//! [`TraceContext::with_entry`] (`RequestContextLayer::tracestate_entry` does it for every
//! request). Traces a service starts are marked sampled unless it asks otherwise
//! ([`TraceContext::new_root_sampled`]; `RequestContextLayer::sample_new_traces`).

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The 16 lowercase hex digits of `word`, most significant first, computed a word at a time:
/// each nibble is spread into a byte of its own, then turned into its digit without a branch.
#[inline]
pub(crate) fn hex16(word: u64) -> [u8; 16] {
    fn hex8(half: u32) -> [u8; 8] {
        let v = u64::from(half);
        let v = ((v & 0xffff_0000) << 16) | (v & 0xffff);
        let v = ((v & 0x0000_ff00_0000_ff00) << 8) | (v & 0x0000_00ff_0000_00ff);
        let v = ((v & 0x00f0_00f0_00f0_00f0) << 4) | (v & 0x000f_000f_000f_000f);
        // 1 in each byte whose nibble is 10 or more: adding 6 carries into bit 4 just then.
        let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        (v + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
    }
    let mut hex = [0u8; 16];
    hex[..8].copy_from_slice(&hex8((word >> 32) as u32));
    hex[8..].copy_from_slice(&hex8(word as u32));
    hex
}

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
        const { assert!(N.is_multiple_of(16), "whole random words only") };
        loop {
            let mut hex = [0u8; N];
            // The random words OR-ed together: zero only if every digit is `0`.
            let mut seen = 0;
            for chunk in hex.chunks_exact_mut(16) {
                let word = next();
                seen |= word;
                chunk.copy_from_slice(&hex16(word));
            }
            // All-zero ids are invalid; with 64+ random bits this loop runs once.
            if seen != 0 {
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
    /// Shorter than 55 bytes, or a version-00 value longer than 55 (extra fields).
    #[error("traceparent is not 55 bytes long (or longer with a version above 00)")]
    Length,
    /// The version is not two lowercase hex digits, or is the invalid `ff`.
    #[error("traceparent version is not two lowercase hex digits other than ff")]
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
    /// Parses a `traceparent` value: version `00` strictly (exactly 55 bytes, lowercase hex,
    /// non-zero ids); a higher version with the version-00 layout (its first 55 bytes, then
    /// the end or a `-` before fields this version does not know, which are ignored). Version
    /// `ff` is invalid.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidTraceParent> {
        let version = value.get(..2).and_then(parse_flags).ok_or(InvalidTraceParent::Version)?;
        if version == 0xff {
            return Err(InvalidTraceParent::Version);
        }
        // A version prefix is two hex digits and a dash; anything else cannot be versioned.
        if value.get(2) != Some(&b'-') {
            return Err(InvalidTraceParent::Separator);
        }
        match value.len() {
            55 => {}
            // Later versions only add fields after a dash; version 00 has none.
            56.. if version != 0 => {
                if value[55] != b'-' {
                    return Err(InvalidTraceParent::Separator);
                }
            }
            _ => return Err(InvalidTraceParent::Length),
        }
        if value[35] != b'-' || value[52] != b'-' {
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

/// Two lowercase hex digits.
fn parse_flags(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(hex[0])? << 4 | digit(hex[1])?)
}

/// Why a `tracestate` was dropped, or an entry refused. The message never contains the value.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum InvalidTraceState {
    /// A list member without `=`.
    #[error("a tracestate list member has no '='")]
    Member,
    /// A key that is not 1–256 characters of `a-z 0-9 _ - * / @` starting with a letter or a digit.
    #[error("a tracestate key is not 1-256 characters of a-z 0-9 _ - * / @ starting with a letter or digit")]
    Key,
    /// A value that is not 1–256 printable ASCII characters other than `,` and `=`, or ends in a space.
    #[error("a tracestate value is not 1-256 printable characters other than ',' and '=', not ending in a space")]
    Value,
    /// More than 32 list members.
    #[error("tracestate has more than 32 list members")]
    TooManyMembers,
}

/// The caller's `tracestate`, validated and normalized (members joined by `,`, without the
/// optional whitespace and empty members); see the [module docs](self) for the rules.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceState(HeaderValue);

impl TraceState {
    /// The longest `tracestate` carried, in bytes (the size W3C asks every vendor to propagate);
    /// longer lists lose whole entries.
    pub const MAX_LEN: usize = 512;
    /// The most list members a `tracestate` may have.
    pub const MAX_MEMBERS: usize = 32;
    /// Entries longer than this are the first removed when a list is over [`Self::MAX_LEN`].
    const LONG_ENTRY: usize = 128;

    /// The `tracestate` of `headers` (every header so named, in order), if it is valid and
    /// lists something.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        Self::parse_headers(headers).ok().flatten()
    }

    /// Like [`TraceState::from_headers`], with the reason a `tracestate` was dropped.
    /// `Ok(None)` when there is none, or it lists nothing.
    pub fn parse_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidTraceState> {
        Self::parse_values(headers.get_all(TRACESTATE).iter().map(HeaderValue::as_bytes))
    }

    /// Parses one `tracestate` value (as sent in one header). `Ok(None)` when it lists nothing.
    pub fn parse(value: &[u8]) -> Result<Option<Self>, InvalidTraceState> {
        Self::parse_values(std::iter::once(value))
    }

    fn parse_values<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<Self>, InvalidTraceState> {
        let mut members: Vec<(&'a [u8], &'a [u8])> = Vec::new();
        let mut count = 0;
        for value in values {
            for member in value.split(|&b| b == b',') {
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                count += 1;
                if count > Self::MAX_MEMBERS {
                    return Err(InvalidTraceState::TooManyMembers);
                }
                let eq = member.iter().position(|&b| b == b'=').ok_or(InvalidTraceState::Member)?;
                let (key, value) = (&member[..eq], &member[eq + 1..]);
                check_key(key)?;
                check_value(value)?;
                // A repeated key keeps its first, most recent value (the spec lets a vendor
                // drop duplicates; sending both would repeat the key downstream).
                if !members.iter().any(|(k, _)| *k == key) {
                    members.push((key, value));
                }
            }
        }
        Ok(Self::join(&mut members, 0))
    }

    /// Joins members with `,`, first removing whole entries beyond [`Self::MAX_LEN`]: entries
    /// longer than 128 characters first (from the right), then from the right end. The first
    /// `keep` members are never removed.
    fn join(members: &mut Vec<(&[u8], &[u8])>, keep: usize) -> Option<Self> {
        let entry_len = |(k, v): &(&[u8], &[u8])| k.len() + 1 + v.len();
        let total =
            |members: &[(&[u8], &[u8])]| members.iter().map(entry_len).sum::<usize>() + members.len().saturating_sub(1);
        while total(members) > Self::MAX_LEN && members.len() > keep {
            let long = (keep..members.len()).rev().find(|&i| entry_len(&members[i]) > Self::LONG_ENTRY);
            members.remove(long.unwrap_or(members.len() - 1));
        }
        if members.is_empty() {
            return None;
        }
        let mut joined = Vec::with_capacity(total(members));
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(key);
            joined.push(b'=');
            joined.extend_from_slice(value);
        }
        // Checked to be printable ASCII, which is always a valid header value.
        HeaderValue::from_bytes(&joined).ok().map(TraceState)
    }

    /// This list with `entry` at the front (the spec's place for a vendor's own, changed
    /// entry), replacing an entry with the same key; over 32 members or 512 bytes, entries are
    /// removed as for an incoming list, never `entry` itself.
    pub fn with_entry(&self, entry: &TraceStateEntry) -> Self {
        let key = entry.key().as_bytes();
        let mut members: Vec<(&[u8], &[u8])> = vec![(key, entry.value().as_bytes())];
        members.extend(self.members().map(|(k, v)| (k.as_bytes(), v.as_bytes())).filter(|(k, _)| *k != key));
        // The spec: when an added entry makes more than 32, the right-most member goes.
        members.truncate(Self::MAX_MEMBERS);
        Self::join(&mut members, 1).unwrap_or_else(|| entry.to_state())
    }

    /// The members, in order, as `(key, value)`.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        // Normalized: no empty members, each with exactly one `=`.
        self.as_str().split(',').filter_map(|member| member.split_once('='))
    }

    /// The value of `key`, if listed.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The value, as sent on.
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

/// One valid `tracestate` entry of this service's own, for [`TraceContext::with_entry`].
///
/// ```
/// use reqscope_core::trace::TraceStateEntry;
///
/// assert!(TraceStateEntry::new("acme", "t61rcWkgMzE").is_ok());
/// assert!(TraceStateEntry::new("tenant@acme", "1").is_ok());
/// assert!(TraceStateEntry::new("Acme", "1").is_err());
/// assert!(TraceStateEntry::new("acme", "a,b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceStateEntry {
    text: Box<str>,
    eq: usize,
}

impl TraceStateEntry {
    /// An entry `key=value`, checked against the `tracestate` grammar (see the
    /// [module docs](self)).
    pub fn new(key: &str, value: &str) -> Result<Self, InvalidTraceState> {
        check_key(key.as_bytes())?;
        check_value(value.as_bytes())?;
        Ok(TraceStateEntry { text: format!("{key}={value}").into_boxed_str(), eq: key.len() })
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.text[..self.eq]
    }

    /// The value.
    pub fn value(&self) -> &str {
        &self.text[self.eq + 1..]
    }

    fn to_state(&self) -> TraceState {
        // Key and value were checked: printable ASCII.
        TraceState(HeaderValue::from_str(&self.text).unwrap_or(HeaderValue::from_static("")))
    }
}

impl fmt::Debug for TraceStateEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceStateEntry({:?})", &*self.text)
    }
}

/// Strips the optional whitespace (spaces and tabs) around a list member.
fn trim_ows(mut member: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = member {
        member = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = member {
        member = rest;
    }
    member
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@" )`: the
/// current spec's grammar, which also covers `tenant@system` keys.
fn check_key(key: &[u8]) -> Result<(), InvalidTraceState> {
    let valid = matches!(key.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && key.len() <= 256
        && key.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'));
    if valid { Ok(()) } else { Err(InvalidTraceState::Key) }
}

/// `value = 0*255(chr) nblk-chr`, `chr = %x20 / nblk-chr`, `nblk-chr` printable but `,` `=`.
fn check_value(value: &[u8]) -> Result<(), InvalidTraceState> {
    let valid = (1..=256).contains(&value.len())
        && value.last() != Some(&b' ')
        && value.iter().all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    if valid { Ok(()) } else { Err(InvalidTraceState::Value) }
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
        Self::new_root_sampled(true)
    }

    /// A new trace with this service as its root span, marked sampled or not.
    pub fn new_root_sampled(sampled: bool) -> Self {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            flags: if sampled { SAMPLED } else { 0 },
            state: None,
        }
    }

    /// A child span of this one in the same trace: a new span id, this span as its parent,
    /// the same flags and `tracestate`. Each outgoing call is one (a client span), so that
    /// calls made by one request are told apart downstream.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
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

    /// Puts this service's own `tracestate` entry at the front of the list (replacing an
    /// entry with the same key), as the spec asks of a vendor that adds or changes its entry.
    pub fn with_entry(mut self, entry: &TraceStateEntry) -> Self {
        self.state = Some(match &self.state {
            Some(state) => state.with_entry(entry),
            None => entry.to_state(),
        });
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

    /// The `tracestate` carried along (the caller's, with this service's entry if it adds one).
    #[inline]
    pub fn state(&self) -> Option<&TraceState> {
        self.state.as_ref()
    }

    /// The `traceparent` naming this span as the parent: same trace, this span's id, same
    /// flags, version `00`. An outgoing call sends the one of its client span
    /// ([`TraceContext::child`]).
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
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Version),
            ("CC-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Version),
            (".0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Version),
            ("000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", InvalidTraceParent::Separator),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x", InvalidTraceParent::Separator),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", InvalidTraceParent::Length),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.", InvalidTraceParent::Length),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", InvalidTraceParent::SpanId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", InvalidTraceParent::Flags),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", InvalidTraceParent::SpanId),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", InvalidTraceParent::Length),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", InvalidTraceParent::Length),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", InvalidTraceParent::Separator),
            ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", InvalidTraceParent::TraceId),
            ("", InvalidTraceParent::Version),
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
    fn a_higher_version_is_read_with_the_version_00_layout_and_sent_on_as_00() {
        for value in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
            "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-",
        ] {
            let parent = TraceParent::parse(value.as_bytes()).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(parent.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736", "{value}");
            let sent = TraceContext::child_of(parent, None).traceparent();
            assert!(sent.to_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{value}");
            assert!(sent.to_str().unwrap().ends_with("-01"), "{value}: only the sampled flag goes on");
        }
    }

    fn state(values: &[&str]) -> Option<String> {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("tracestate", *v)).collect();
        TraceState::from_headers(&headers(&pairs)).map(|s| s.as_str().to_owned())
    }

    #[test]
    fn tracestate_members_may_be_surrounded_by_spaces_and_tabs() {
        assert_eq!(state(&["foo=1 \t , \t bar=2, \t baz=3"]).as_deref(), Some("foo=1,bar=2,baz=3"));
        assert_eq!(state(&["foo=1\t \t,\t \tbar=2,\t \tbaz=3"]).as_deref(), Some("foo=1,bar=2,baz=3"));
        assert_eq!(state(&["\t foo=1 \t"]).as_deref(), Some("foo=1"));
        assert_eq!(state(&["foo=1,,  ,bar=2"]).as_deref(), Some("foo=1,bar=2"));
        assert_eq!(state(&["", "foo=1"]).as_deref(), Some("foo=1"));
        // Leading spaces belong to the value.
        assert_eq!(state(&["foo=  1"]).as_deref(), Some("foo=  1"));
        assert_eq!(state(&[""]), None);
        assert_eq!(state(&[" , "]), None);
    }

    #[test]
    fn tracestate_members_follow_the_grammar_or_the_header_is_dropped() {
        let key = |n: usize| "z".repeat(n);
        for valid in [
            "foo@=1".to_owned(),
            "foo@@bar=1".to_owned(),
            "foo@bar@baz=1".to_owned(),
            "1special=1".to_owned(),
            format!("{}@{}=1", "t".repeat(241), "v".repeat(14)),
            format!("{}@v=1", "t".repeat(242)),
            format!("{}=1", key(256)),
            format!("a={}", "x".repeat(256)),
            "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/= !\"#$%&'()*+-./0123456789:;<>?@[\\]^_`{|}~"
                .to_owned(),
        ] {
            assert!(state(&[&valid, "bar=2"]).is_some_and(|s| s.starts_with(&valid)), "{valid}");
        }
        let mut too_many: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        for invalid in [
            "@foo=1".to_owned(),
            "FOO=1".to_owned(),
            "foo =1".to_owned(),
            "foo.bar=1".to_owned(),
            "foo=bar=baz".to_owned(),
            "foo=".to_owned(),
            "foobar".to_owned(),
            "foo=a\tb".to_owned(),
            format!("{}=1", key(257)),
            format!("a={}", "x".repeat(257)),
            too_many.join(","),
        ] {
            assert_eq!(state(&["foo=1", &invalid]), None, "{invalid}");
            assert!(TraceState::parse_headers(&headers(&[("tracestate", &invalid)])).is_err(), "{invalid}");
        }
        too_many.pop();
        assert_eq!(state(&[&too_many.join(",")]).map(|s| s.split(',').count()), Some(32));
        // A repeated key keeps its first value.
        assert_eq!(state(&["foo=1,foo=2", "foo=3,bar=4"]).as_deref(), Some("foo=1,bar=4"));
        // Non-ASCII bytes are never accepted (they cannot be a `&str` header, so go raw).
        let mut raw = HeaderMap::new();
        raw.insert(TRACESTATE, HeaderValue::from_bytes(b"foo=\xff").unwrap());
        assert_eq!(TraceState::from_headers(&raw), None);
    }

    #[test]
    fn beyond_512_bytes_whole_entries_go_long_ones_first_then_from_the_end() {
        let long = format!("long={}", "x".repeat(200));
        let entries: Vec<String> = (0..10).map(|i| format!("k{i}={}", "v".repeat(40))).collect();
        let mut list = vec![entries[0].clone(), long.clone()];
        list.extend(entries[1..].iter().cloned());
        let kept = state(&[&list.join(",")]).unwrap();
        assert!(kept.len() <= TraceState::MAX_LEN, "{}", kept.len());
        assert!(!kept.contains("long="), "the long entry goes first: {kept}");
        // 10 entries of 43 bytes and their commas fit (439 bytes): nothing else removed.
        assert_eq!(kept, entries.join(","));
        let more: Vec<String> = (0..14).map(|i| format!("k{i}={}", "v".repeat(40))).collect();
        let kept = state(&[&more.join(",")]).unwrap();
        // 11 fit (483 bytes); the ones on the right end go.
        assert_eq!(kept, more[..11].join(","));
        // One value over the cap on its own is only the last resort, entry by entry.
        let half = format!("a={}", "x".repeat(250));
        let other = format!("b={}", "y".repeat(250));
        let third = format!("c={}", "z".repeat(250));
        assert_eq!(state(&[&half, &other, &third]), Some(format!("{half},{other}")));
    }

    #[test]
    fn a_services_own_entry_goes_first_and_replaces_its_old_value() {
        let entry = TraceStateEntry::new("acme", "s1").unwrap();
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        let incoming = TraceState::from_headers(&headers(&[("tracestate", "rojo=1,acme=old,congo=2")]));
        let trace = TraceContext::child_of(parent, incoming).with_entry(&entry);
        assert_eq!(trace.state().map(TraceState::as_str), Some("acme=s1,rojo=1,congo=2"));
        assert_eq!(TraceContext::new_root().with_entry(&entry).state().map(TraceState::as_str), Some("acme=s1"));
        let full: Vec<String> = (1..=32).map(|i| format!("k{i}=1")).collect();
        let full = TraceState::from_headers(&headers(&[("tracestate", &full.join(","))])).unwrap();
        let added = full.with_entry(&entry);
        assert_eq!(added.members().count(), 32);
        assert_eq!(added.members().next(), Some(("acme", "s1")));
        assert_eq!(added.get("k32"), None, "the right-most member makes room");
        assert_eq!(added.get("k31"), Some("1"));
        for (key, value) in [("Acme", "1"), ("@a", "1"), ("a", ""), ("a", "x "), ("a", "1,b=2"), ("a", "\t")] {
            assert!(TraceStateEntry::new(key, value).is_err(), "{key}={value}");
        }
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
    fn a_child_span_keeps_the_trace_and_names_its_parent() {
        let parent = TraceParent::parse(VALID.as_bytes()).unwrap();
        let request = TraceContext::child_of(parent, TraceState::from_headers(&headers(&[("tracestate", "rojo=1")])));
        let (a, b) = (request.child(), request.child());
        assert_ne!(a.span_id(), b.span_id());
        assert_ne!(a.span_id(), request.span_id());
        assert_eq!(a.parent_id(), Some(request.span_id()));
        assert_eq!(a.trace_id(), request.trace_id());
        assert_eq!(a.state(), request.state());
        assert!(!TraceContext::new_root_sampled(false).sampled());
        assert!(TraceContext::new_root_sampled(false).child().traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn hex16_writes_what_format_writes() {
        let mut words = vec![0, 1, 9, 10, 15, 16, 0xff, 0x0123_4567_89ab_cdef, u64::MAX, u64::MAX - 1];
        words.extend((0..64).map(|bit| 1u64 << bit));
        words.extend((0..10_000).map(|_| fastrand::u64(..)));
        for word in words {
            assert_eq!(std::str::from_utf8(&hex16(word)).unwrap(), format!("{word:016x}"));
        }
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
