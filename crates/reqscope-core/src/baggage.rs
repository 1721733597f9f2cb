//! W3C Baggage: the `baggage` header, parsed, edited and written back.
//!
//! ```
//! use http::HeaderMap;
//! use reqscope_core::baggage::{BAGGAGE, Baggage};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(BAGGAGE, "tenant=acme, user.name=Ren%C3%A9;visible".parse().unwrap());
//! let mut baggage = Baggage::from_headers(&headers).unwrap().unwrap();
//! assert_eq!(baggage.get("user.name"), Some("René"));
//!
//! // Only what the next service may see goes on.
//! baggage.retain(|entry| entry.key() != "user.name");
//! baggage.insert("region", "eu west, 2").unwrap();
//! let value = baggage.to_header_value().unwrap();
//! assert_eq!(value, "tenant=acme,region=eu%20west%2C%202");
//! assert_eq!(Baggage::parse(value.as_bytes()).unwrap(), baggage);
//! ```
//!
//! **Reading** ([`Baggage::parse`], [`Baggage::from_headers`]) follows the spec's grammar:
//! list members `key=value` separated by `,`, each with optional properties after `;`
//! (`key` or `key=value`), with optional whitespace (spaces and tabs) around every `,`, `;` and
//! `=`. A key is an RFC 7230 token; a value is made of baggage octets (printable ASCII but
//! `"`, `,`, `;` and `\`), may be empty, and is percent-decoded: every `%` must start a `%XX`
//! escape and the decoded bytes must be UTF-8. Properties are checked the same way and kept as
//! received (their outer whitespace removed, their values still encoded): reqscope gives them
//! no meaning. Several `baggage` headers are one list, in order; an empty header adds nothing.
//! A repeated key keeps its first value. Anything else — an empty list member, a bad key,
//! value or property, more than [`MAX_MEMBERS`] members or more than [`MAX_BYTES`] bytes —
//! rejects the whole header: a partial list would misstate what the caller sent.
//!
//! **Writing** ([`Baggage::to_header_value`]) percent-encodes every value byte that is not a
//! baggage octet, and `%` itself, so no value can break the header or the list (CR, LF, `,`,
//! `;`, spaces and non-ASCII text all travel encoded). When the list is over the limits, whole
//! entries are dropped, the last ones first.
//!
//! [`InvalidBaggage`] names the reason a header was rejected and never repeats the header:
//! it comes from the caller and may end up in a log line.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

/// The `baggage` header.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The longest `baggage` read or written, in bytes (all headers together, with the `,` that
/// joins them): the spec's limit.
pub const MAX_BYTES: usize = 8192;

/// The most list members a `baggage` may have: the spec's limit.
pub const MAX_MEMBERS: usize = 180;

/// Why a `baggage` header was rejected, or a key refused. The message names the reason only,
/// never the value.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidBaggage {
    /// More than [`MAX_BYTES`] bytes.
    #[error("baggage is longer than 8192 bytes")]
    TooLong,
    /// More than [`MAX_MEMBERS`] list members.
    #[error("baggage has more than 180 list members")]
    TooManyMembers,
    /// A list member that is empty or only whitespace (`a=1,,b=2`, a trailing `,`).
    #[error("a baggage list member is empty")]
    EmptyMember,
    /// A list member without `=`.
    #[error("a baggage list member has no '='")]
    NoValue,
    /// A key that is not a token: one or more letters, digits, backquotes or ``!#$%&'*+-.^_|~``.
    #[error("a baggage key is not a token")]
    BadKey,
    /// A value with a byte that is not a baggage octet (space, `"`, `\`, a control or non-ASCII byte).
    #[error("a baggage value has a character that is not allowed")]
    BadValue,
    /// A `%` not followed by two hex digits, or decoded bytes that are not UTF-8.
    #[error("a baggage value is not valid percent-encoded UTF-8")]
    BadPercentEncoding,
    /// A property that is empty (a trailing `;`) or not `key` / `key=value` by the rules above.
    #[error("a baggage property is not 'key' or 'key=value'")]
    BadProperty,
}

/// Whether `key` can be a baggage key: an RFC 7230 token (one or more letters, digits,
/// backquotes or ``!#$%&'*+-.^_|~``). For checking configuration (an allow-list of keys)
/// before it is used.
pub fn is_valid_key(key: &str) -> bool {
    is_token(key.as_bytes())
}

/// One list member: a key, its decoded value and its properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaggageEntry {
    key: String,
    value: String,
    properties: Vec<String>,
}

impl BaggageEntry {
    /// The key, a token.
    #[inline]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, percent-decoded.
    #[inline]
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The properties, as received (`key` or `key=value`, values still percent-encoded,
    /// outer whitespace removed), in order.
    #[inline]
    pub fn properties(&self) -> &[String] {
        &self.properties
    }

    /// The entry as written in a header: `key=value;property…`, its value percent-encoded.
    fn encode(&self) -> String {
        let mut out = String::with_capacity(self.key.len() + 1 + self.value.len());
        out.push_str(&self.key);
        out.push('=');
        percent_encode(&mut out, &self.value);
        for property in &self.properties {
            out.push(';');
            out.push_str(property);
        }
        out
    }
}

/// A W3C `baggage` list: entries in order, keys unique; see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    entries: Vec<BaggageEntry>,
}

impl Baggage {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one `baggage` value. An empty value (or only whitespace) is an empty list.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidBaggage> {
        Self::parse_values(&[value])
    }

    /// The `baggage` of every header so named in `headers`, read as one list. `Ok(None)` when
    /// there is none.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidBaggage> {
        let values: Vec<&[u8]> = headers.get_all(BAGGAGE).iter().map(HeaderValue::as_bytes).collect();
        if values.is_empty() {
            return Ok(None);
        }
        Self::parse_values(&values).map(Some)
    }

    fn parse_values(values: &[&[u8]]) -> Result<Self, InvalidBaggage> {
        // Checked before any work, so an oversized header costs one pass over the lengths.
        let mut bytes = 0usize;
        for value in values.iter().copied().map(trim_ows).filter(|v| !v.is_empty()) {
            bytes += if bytes == 0 { value.len() } else { value.len() + 1 };
            if bytes > MAX_BYTES {
                return Err(InvalidBaggage::TooLong);
            }
        }
        let mut entries = Vec::new();
        for value in values.iter().copied().map(trim_ows).filter(|v| !v.is_empty()) {
            for member in value.split(|&b| b == b',') {
                if entries.len() == MAX_MEMBERS {
                    return Err(InvalidBaggage::TooManyMembers);
                }
                entries.push(parse_member(member)?);
            }
        }
        // The spec gives a repeated key no meaning; keeping the first, as for `tracestate`,
        // makes keys unique.
        keep_first_of_each_key(&mut entries);
        Ok(Baggage { entries })
    }

    /// The decoded value of `key`, if listed.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(BaggageEntry::value)
    }

    /// The entry of `key`, with its properties, if listed.
    pub fn entry(&self, key: &str) -> Option<&BaggageEntry> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    /// The entries, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, BaggageEntry> {
        self.entries.iter()
    }

    /// How many entries there are.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `key` to `value` (any text: it is percent-encoded on the way out). An existing
    /// entry of `key` is replaced in its place, its properties dropped; a new one goes last.
    /// Fails with [`InvalidBaggage::BadKey`] when `key` is not a token. The limits are applied
    /// when writing ([`Baggage::to_header_value`]), not here.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<(), InvalidBaggage> {
        let key = key.into();
        if !is_token(key.as_bytes()) {
            return Err(InvalidBaggage::BadKey);
        }
        let entry = BaggageEntry { key, value: value.into(), properties: Vec::new() };
        match self.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(existing) => *existing = entry,
            None => self.entries.push(entry),
        }
        Ok(())
    }

    /// Removes the entry of `key`, returning it.
    pub fn remove(&mut self, key: &str) -> Option<BaggageEntry> {
        let index = self.entries.iter().position(|entry| entry.key == key)?;
        Some(self.entries.remove(index))
    }

    /// Keeps only the entries for which `keep` returns `true` (an allow-list of keys, say),
    /// in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&BaggageEntry) -> bool) {
        self.entries.retain(|entry| keep(entry));
    }

    /// The `baggage` header value: `key=value;properties` joined by `,`, values
    /// percent-encoded. Beyond [`MAX_MEMBERS`] entries or [`MAX_BYTES`] bytes, whole entries
    /// are dropped, the last ones first. `None` when nothing is left to send.
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        let mut out = String::new();
        for entry in self.entries.iter().take(MAX_MEMBERS) {
            let encoded = entry.encode();
            let separator = usize::from(!out.is_empty());
            // Entries are dropped from the end: once one does not fit, none after it is sent,
            // so the list keeps its order and only ever loses its latest entries.
            if out.len() + separator + encoded.len() > MAX_BYTES {
                break;
            }
            if separator == 1 {
                out.push(',');
            }
            out.push_str(&encoded);
        }
        if out.is_empty() {
            return None;
        }
        // Tokens, encoded values and validated properties: visible ASCII, spaces and tabs.
        HeaderValue::from_str(&out).ok()
    }
}

impl<'a> IntoIterator for &'a Baggage {
    type Item = &'a BaggageEntry;
    type IntoIter = std::slice::Iter<'a, BaggageEntry>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Drops every entry whose key an earlier one has, keeping the order. A long list is sorted
/// by key rather than searched once per entry: 180 members would cost 16,000 comparisons.
fn keep_first_of_each_key(entries: &mut Vec<BaggageEntry>) {
    if entries.len() <= 16 {
        let mut i = 1;
        while i < entries.len() {
            if entries[..i].iter().any(|earlier| earlier.key == entries[i].key) {
                entries.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    // Ties broken by position, so that the first of each key comes first.
    order.sort_unstable_by(|&a, &b| entries[a].key.cmp(&entries[b].key).then(a.cmp(&b)));
    let mut repeated = vec![false; entries.len()];
    let mut any = false;
    for pair in order.windows(2) {
        if entries[pair[0]].key == entries[pair[1]].key {
            repeated[pair[1]] = true;
            any = true;
        }
    }
    if any {
        let mut index = 0;
        entries.retain(|_| {
            index += 1;
            !repeated[index - 1]
        });
    }
}

/// `list-member = key OWS "=" OWS value *( OWS ";" OWS property )`.
fn parse_member(member: &[u8]) -> Result<BaggageEntry, InvalidBaggage> {
    let member = trim_ows(member);
    if member.is_empty() {
        return Err(InvalidBaggage::EmptyMember);
    }
    let mut parts = member.split(|&b| b == b';');
    let pair = parts.next().unwrap_or_default();
    let eq = pair.iter().position(|&b| b == b'=').ok_or(InvalidBaggage::NoValue)?;
    let key = trim_ows(&pair[..eq]);
    if !is_token(key) {
        return Err(InvalidBaggage::BadKey);
    }
    let value = decode_value(trim_ows(&pair[eq + 1..]))?;
    let properties = parts.map(parse_property).collect::<Result<Vec<_>, _>>()?;
    Ok(BaggageEntry { key: ascii(key), value, properties })
}

/// `property = key OWS "=" OWS value / key OWS`, kept as received but its outer whitespace.
fn parse_property(property: &[u8]) -> Result<String, InvalidBaggage> {
    let property = trim_ows(property);
    let key = match property.iter().position(|&b| b == b'=') {
        Some(eq) => {
            decode_value(trim_ows(&property[eq + 1..])).map_err(|_| InvalidBaggage::BadProperty)?;
            trim_ows(&property[..eq])
        }
        None => property,
    };
    if !is_token(key) {
        return Err(InvalidBaggage::BadProperty);
    }
    Ok(ascii(property))
}

/// Appends `text` with every byte that is not a baggage octet, and `%` itself, as `%XX`: the
/// result is a valid baggage value and a valid header value.
pub(crate) fn percent_encode(out: &mut String, text: &str) {
    for &byte in text.as_bytes() {
        if is_baggage_octet(byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            // Infallible: writing to a String.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// `value = *baggage-octet`, percent-decoded to UTF-8.
pub(crate) fn decode_value(value: &[u8]) -> Result<String, InvalidBaggage> {
    if !value.iter().all(|&b| is_baggage_octet(b)) {
        return Err(InvalidBaggage::BadValue);
    }
    let mut decoded = Vec::with_capacity(value.len());
    let mut rest = value;
    while let [first, tail @ ..] = rest {
        if *first == b'%' {
            let [high, low, tail @ ..] = tail else {
                return Err(InvalidBaggage::BadPercentEncoding);
            };
            let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) else {
                return Err(InvalidBaggage::BadPercentEncoding);
            };
            decoded.push(high << 4 | low);
            rest = tail;
        } else {
            decoded.push(*first);
            rest = tail;
        }
    }
    String::from_utf8(decoded).map_err(|_| InvalidBaggage::BadPercentEncoding)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// RFC 7230 `token = 1*tchar`.
pub(crate) fn is_token(key: &[u8]) -> bool {
    !key.is_empty()
        && key.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Text already checked to be ASCII.
fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Strips the optional whitespace (spaces and tabs) at both ends.
pub(crate) fn trim_ows(mut text: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = text {
        text = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = text {
        text = rest;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Baggage, InvalidBaggage> {
        Baggage::parse(value.as_bytes())
    }

    fn entries(baggage: &Baggage) -> Vec<(&str, &str, Vec<&str>)> {
        baggage.iter().map(|e| (e.key(), e.value(), e.properties().iter().map(String::as_str).collect())).collect()
    }

    #[test]
    fn parses_the_spec_example() {
        let baggage =
            parse("key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue").unwrap();
        assert_eq!(
            entries(&baggage),
            [
                ("key1", "value1", vec!["property1", "property2"]),
                ("key2", "value2", vec![]),
                ("key3", "value3", vec!["propertyKey=propertyValue"]),
            ]
        );
        assert_eq!(baggage.len(), 3);
        assert_eq!(baggage.get("key2"), Some("value2"));
        assert_eq!(baggage.get("key4"), None);
        assert_eq!(
            baggage.to_header_value().unwrap(),
            "key1=value1;property1;property2,key2=value2,key3=value3;propertyKey=propertyValue"
        );
    }

    #[test]
    fn parses_the_spec_header_examples() {
        let single = parse("userId=alice,serverNode=DF%2028,isProduction=false").unwrap();
        let expected =
            [("userId", "alice", vec![]), ("serverNode", "DF 28", vec![]), ("isProduction", "false", vec![])];
        assert_eq!(entries(&single), expected);
        // The same context split over two headers is the same list.
        let mut headers = HeaderMap::new();
        headers.append(BAGGAGE, HeaderValue::from_static("userId=alice"));
        headers.append(BAGGAGE, HeaderValue::from_static("serverNode=DF%2028,isProduction=false"));
        assert_eq!(Baggage::from_headers(&headers), Ok(Some(single.clone())));
        assert_eq!(single.to_header_value().unwrap(), "userId=alice,serverNode=DF%2028,isProduction=false");
        // A value outside the baggage octets travels percent-encoded UTF-8.
        let encoded = parse("userId=Am%C3%A9lie,serverNode=DF%2028,isProduction=false").unwrap();
        assert_eq!(encoded.get("userId"), Some("Amélie"));
        let mut written = Baggage::new();
        for (key, value) in [("userId", "Amélie"), ("serverNode", "DF 28"), ("isProduction", "false")] {
            written.insert(key, value).unwrap();
        }
        assert_eq!(written.to_header_value().unwrap(), "userId=Am%C3%A9lie,serverNode=DF%2028,isProduction=false");
    }

    #[test]
    fn keys_are_tokens() {
        for key in ["session", "user.id", "a-b_c~!#$%&'*+^`|", "K9"] {
            assert!(is_valid_key(key), "{key:?}");
        }
        for key in ["", "a b", "a,b", "a;b", "a=b", "é", "a\r\n", "(x)"] {
            assert!(!is_valid_key(key), "{key:?}");
        }
    }

    #[test]
    fn whitespace_around_separators_is_optional() {
        let baggage = parse(" \t a \t = \t 1 \t ; \t p \t = \t x \t ; q \t , \t b=2\t").unwrap();
        assert_eq!(entries(&baggage), [("a", "1", vec!["p \t = \t x", "q"]), ("b", "2", vec![])]);
        assert_eq!(entries(&parse("a=").unwrap()), [("a", "", vec![])]);
        assert_eq!(entries(&parse("a= ;p").unwrap()), [("a", "", vec!["p"])]);
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" \t ").unwrap().is_empty());
        // Whitespace inside a value is not allowed (it must be encoded).
        assert_eq!(parse("a=b c"), Err(InvalidBaggage::BadValue));
    }

    #[test]
    fn values_are_percent_decoded() {
        let baggage = parse("a=hello%20world,b=caf%C3%A9,c=%25%2C%3b,d=%e2%82%ac,e=%F0%9F%A6%80,f=x=y").unwrap();
        assert_eq!(baggage.get("a"), Some("hello world"));
        assert_eq!(baggage.get("b"), Some("café"));
        assert_eq!(baggage.get("c"), Some("%,;"));
        assert_eq!(baggage.get("d"), Some("€"));
        assert_eq!(baggage.get("e"), Some("🦀"));
        assert_eq!(baggage.get("f"), Some("x=y"));
    }

    #[test]
    fn rejects_every_deviation_without_echoing_it() {
        let cases = [
            ("a=1,,b=2", InvalidBaggage::EmptyMember),
            ("a=1,", InvalidBaggage::EmptyMember),
            (",a=1", InvalidBaggage::EmptyMember),
            ("a=1, \t ,b=2", InvalidBaggage::EmptyMember),
            ("secretkey", InvalidBaggage::NoValue),
            ("=secret", InvalidBaggage::BadKey),
            ("se cret=1", InvalidBaggage::BadKey),
            ("sec(ret)=1", InvalidBaggage::BadKey),
            ("sécret=1", InvalidBaggage::BadKey),
            ("k=sec\"ret", InvalidBaggage::BadValue),
            ("k=sec\\ret", InvalidBaggage::BadValue),
            ("k=sec\u{7f}ret", InvalidBaggage::BadValue),
            ("k=sécret", InvalidBaggage::BadValue),
            ("k=secret%", InvalidBaggage::BadPercentEncoding),
            ("k=secret%2", InvalidBaggage::BadPercentEncoding),
            ("k=secret%zz", InvalidBaggage::BadPercentEncoding),
            ("k=secret%C3", InvalidBaggage::BadPercentEncoding),
            ("k=secret%FF", InvalidBaggage::BadPercentEncoding),
            ("k=v;", InvalidBaggage::BadProperty),
            ("k=v; ;p", InvalidBaggage::BadProperty),
            ("k=v;=secret", InvalidBaggage::BadProperty),
            ("k=v;p=sec ret", InvalidBaggage::BadProperty),
            ("k=v;p=secret%zz", InvalidBaggage::BadProperty),
            ("k=v;se(cret", InvalidBaggage::BadProperty),
        ];
        for (value, reason) in cases {
            assert_eq!(parse(value), Err(reason), "{value:?}");
            assert!(!reason.to_string().contains("secret"), "{reason}");
        }
        assert_eq!(Baggage::parse(b"k=\xff"), Err(InvalidBaggage::BadValue));
        assert_eq!(Baggage::parse(b"k=v\r\nx=1"), Err(InvalidBaggage::BadValue));
    }

    #[test]
    fn a_repeated_key_keeps_its_first_value() {
        let baggage = parse("a=1,b=2,a=3").unwrap();
        assert_eq!(entries(&baggage), [("a", "1", vec![]), ("b", "2", vec![])]);
    }

    #[test]
    fn a_long_list_keeps_the_first_of_each_key_in_order() {
        let list: Vec<String> = (0..60).map(|i| format!("k{}={i}", i % 20)).collect();
        let baggage = parse(&list.join(",")).unwrap();
        assert_eq!(baggage.len(), 20);
        for (i, entry) in baggage.iter().enumerate() {
            assert_eq!((entry.key(), entry.value()), (format!("k{i}").as_str(), i.to_string().as_str()));
        }
    }

    #[test]
    fn several_headers_are_one_list() {
        let mut headers = HeaderMap::new();
        assert_eq!(Baggage::from_headers(&headers), Ok(None));
        headers.append(BAGGAGE, HeaderValue::from_static("a=1, b=2"));
        headers.append(BAGGAGE, HeaderValue::from_static(""));
        headers.append(BAGGAGE, HeaderValue::from_static("c=3;p"));
        let baggage = Baggage::from_headers(&headers).unwrap().unwrap();
        assert_eq!(entries(&baggage), [("a", "1", vec![]), ("b", "2", vec![]), ("c", "3", vec!["p"])]);
        headers.append(BAGGAGE, HeaderValue::from_static("d"));
        assert_eq!(Baggage::from_headers(&headers), Err(InvalidBaggage::NoValue));
        let mut empty = HeaderMap::new();
        empty.append(BAGGAGE, HeaderValue::from_static(""));
        assert_eq!(Baggage::from_headers(&empty), Ok(Some(Baggage::default())));
    }

    fn members(n: usize) -> String {
        (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn at_most_180_members() {
        assert_eq!(parse(&members(MAX_MEMBERS)).unwrap().len(), 180);
        assert_eq!(parse(&members(MAX_MEMBERS + 1)), Err(InvalidBaggage::TooManyMembers));
        // Repeated keys count: they were sent.
        let repeated = vec!["a=1"; 181].join(",");
        assert_eq!(parse(&repeated), Err(InvalidBaggage::TooManyMembers));
        let mut headers = HeaderMap::new();
        headers.append(BAGGAGE, members(100).parse().unwrap());
        headers.append(BAGGAGE, members(80).replace('k', "j").parse().unwrap());
        assert_eq!(Baggage::from_headers(&headers).unwrap().unwrap().len(), 180);
        headers.append(BAGGAGE, HeaderValue::from_static("x=1"));
        assert_eq!(Baggage::from_headers(&headers), Err(InvalidBaggage::TooManyMembers));
    }

    #[test]
    fn at_most_8192_bytes() {
        let exact = format!("k={}", "v".repeat(MAX_BYTES - 2));
        assert_eq!(exact.len(), 8192);
        assert_eq!(parse(&exact).unwrap().get("k").map(str::len), Some(8190));
        assert_eq!(parse(&format!("{exact}v")), Err(InvalidBaggage::TooLong));
        // Two headers are joined by a `,`, which counts.
        let mut headers = HeaderMap::new();
        headers.append(BAGGAGE, format!("a={}", "v".repeat(4094)).parse().unwrap());
        headers.append(BAGGAGE, format!("b={}", "v".repeat(4093)).parse().unwrap());
        assert!(Baggage::from_headers(&headers).is_ok());
        headers.append(BAGGAGE, HeaderValue::from_static("c"));
        assert_eq!(Baggage::from_headers(&headers), Err(InvalidBaggage::TooLong));
    }

    #[test]
    fn insert_replaces_in_place_and_remove_and_retain_edit() {
        let mut baggage = parse("a=1;p,b=2,c=3").unwrap();
        baggage.insert("a", "new").unwrap();
        assert_eq!(entries(&baggage)[0], ("a", "new", vec![]));
        baggage.insert("d", "4").unwrap();
        assert_eq!(baggage.iter().map(BaggageEntry::key).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        for bad in ["", "a b", "a,b", "a;b", "a=b", "é", "a\r\n"] {
            assert_eq!(baggage.insert(bad, "x"), Err(InvalidBaggage::BadKey), "{bad:?}");
        }
        assert_eq!(baggage.remove("b").map(|e| e.value().to_owned()).as_deref(), Some("2"));
        assert_eq!(baggage.remove("b"), None);
        baggage.retain(|entry| ["a", "d"].contains(&entry.key()));
        assert_eq!(entries(&baggage), [("a", "new", vec![]), ("d", "4", vec![])]);
        baggage.retain(|_| false);
        assert!(baggage.is_empty());
        assert_eq!(baggage.to_header_value(), None);
    }

    #[test]
    fn values_that_would_break_the_header_are_encoded() {
        let mut baggage = Baggage::new();
        let nasty = "a\r\nset-cookie: x=1, b=2; p\t%20 \"\\\u{0}\u{7f}é€🦀";
        baggage.insert("k", nasty).unwrap();
        baggage.insert("other", "ok").unwrap();
        let value = baggage.to_header_value().unwrap();
        let text = value.to_str().unwrap();
        assert!(text.bytes().all(|b| is_baggage_octet(b) || b == b'=' || b == b','), "{text}");
        assert_eq!(text.matches(',').count(), 1, "{text}");
        assert!(!text.contains(';'), "{text}");
        assert_eq!(Baggage::parse(value.as_bytes()).unwrap(), baggage);
    }

    #[test]
    fn over_the_limits_the_last_entries_are_dropped_whole() {
        let mut baggage = Baggage::new();
        for i in 0..200 {
            baggage.insert(format!("k{i}"), "v").unwrap();
        }
        let sent = Baggage::parse(baggage.to_header_value().unwrap().as_bytes()).unwrap();
        assert_eq!(sent.len(), MAX_MEMBERS);
        assert_eq!(sent.iter().last().map(BaggageEntry::key), Some("k179"));

        let mut baggage = Baggage::new();
        // Each encodes to 2 + 3 * 1000 = 3002 bytes: two fit (6005 with the comma), three do not.
        for key in ["a", "b", "c"] {
            baggage.insert(key, " ".repeat(1000)).unwrap();
        }
        let value = baggage.to_header_value().unwrap();
        assert!(value.len() <= MAX_BYTES);
        let sent = Baggage::parse(value.as_bytes()).unwrap();
        assert_eq!(sent.iter().map(BaggageEntry::key).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(sent.get("b").map(str::len), Some(1000));

        let mut alone = Baggage::new();
        alone.insert("huge", "x".repeat(MAX_BYTES)).unwrap();
        assert_eq!(alone.to_header_value(), None);
        let mut exact = Baggage::new();
        exact.insert("k", "x".repeat(MAX_BYTES - 2)).unwrap();
        assert_eq!(exact.to_header_value().map(|v| v.len()), Some(MAX_BYTES));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const TOKEN: &str = "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}";
        /// Any text: controls, separators, `%` and non-ASCII included (at most 32 characters,
        /// so that 16 entries stay within the limits even when every byte is encoded).
        const VALUE: &str = "(?s).{0,32}";

        /// Whatever was accepted is written back as a valid header and read the same.
        fn written_back_reads_the_same(input: &[u8]) -> Result<(), TestCaseError> {
            if let Ok(baggage) = Baggage::parse(input)
                && let Some(value) = baggage.to_header_value()
            {
                prop_assert_eq!(Baggage::parse(value.as_bytes()), Ok(baggage));
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                written_back_reads_the_same(&bytes)?;
            }

            #[test]
            fn baggage_like_text_never_panics(text in "([ \t]?[a-c]{1,2}[ \t]?=[ \t]?(%[0-9A-Fa-f]{2}|[a-c%\"\\\\=]){0,3}(;[ \t]?[a-c=%]{0,3})?[ \t]?,?){0,6}") {
                written_back_reads_the_same(text.as_bytes())?;
            }

            #[test]
            fn inserted_entries_round_trip(pairs in proptest::collection::vec((TOKEN, VALUE), 0..16)) {
                let mut baggage = Baggage::new();
                for (key, value) in &pairs {
                    prop_assert_eq!(baggage.insert(key.as_str(), value.as_str()), Ok(()));
                }
                match baggage.to_header_value() {
                    Some(value) => prop_assert_eq!(Baggage::parse(value.as_bytes()), Ok(baggage)),
                    None => prop_assert!(baggage.is_empty()),
                }
            }
        }
    }
}
