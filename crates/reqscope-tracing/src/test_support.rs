//! What the format tests share: a capture, a request, and the ecs-logging spec check.

use std::sync::Arc;

use reqscope_core::logged_headers::LoggedHeader;
use reqscope_core::{RequestContext, RequestId};
use serde_json::{Map, Value};
use tracing_subscriber::prelude::*;

use crate::{LogLayer, MemoryWriter};

/// The lines `layer` writes while `f` runs.
pub(crate) fn capture(layer: impl FnOnce(MemoryWriter) -> LogLayer<MemoryWriter>, f: impl FnOnce()) -> MemoryWriter {
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry().with(layer(logs.clone()));
    tracing::subscriber::with_default(subscriber, f);
    logs
}

/// The W3C trace the test requests continue.
pub(crate) const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A request with an id, a method, a path, a client ip, a trace continued from
/// [`TRACEPARENT`] and these request headers kept for the access line.
pub(crate) fn request_with_headers(id: &str, headers: &[(&str, &str)]) -> Arc<RequestContext> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let kept = headers.iter().filter_map(|(name, _)| {
        LoggedHeader::from_headers(&http::HeaderName::from_bytes(name.as_bytes()).unwrap(), &map)
    });
    let parent = reqscope_core::trace::TraceParent::parse(TRACEPARENT).unwrap();
    Arc::new(
        RequestContext::builder(RequestId::parse(id).unwrap())
            .method(http::Method::GET)
            .path("/users/7")
            .client_ip("10.1.2.3".parse().unwrap())
            .trace(reqscope_core::trace::TraceContext::child_of(parent, None))
            .logged_headers(kept)
            .build(),
    )
}

pub(crate) fn request(id: &str) -> Arc<RequestContext> {
    request_with_headers(id, &[])
}

/// A line's keys and values in the order written; panics on a line that is not one JSON
/// object with unique keys.
pub(crate) fn ordered(line: &str) -> Vec<(String, Value)> {
    struct Ordered(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut entries: Vec<(String, Value)> = Vec::new();
                    while let Some((key, value)) = map.next_entry::<String, Value>()? {
                        if entries.iter().any(|(k, _)| *k == key) {
                            return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
                        }
                        entries.push((key, value));
                    }
                    Ok(Ordered(entries))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    match serde_json::from_str::<Ordered>(line) {
        Ok(Ordered(entries)) => entries,
        Err(e) => panic!("not one JSON object with unique keys ({e}): {line}"),
    }
}

/// The ecs-logging spec (`spec/spec.json` of elastic/ecs-logging), from the fixtures.
fn ecs_spec() -> Map<String, Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/ecs-logging-spec.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let spec: Value = serde_json::from_str(&text).unwrap();
    spec["fields"].as_object().expect("the spec's fields").clone()
}

/// Checks an ECS line against the ecs-logging spec: its required fields are there, the
/// fields with an `index` come first in that order, `ecs.version` right after them, every
/// field of the spec the line has is of the spec's type and at the top level when the spec
/// says so, and labels are strings under names without `.`, `*` or `\`. Returns the line.
pub(crate) fn check_ecs_line(line: &str) -> Map<String, Value> {
    let spec = ecs_spec();
    let entries = ordered(line);
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let object: Map<String, Value> = entries.iter().cloned().collect();
    let mut indexed: Vec<(u64, &str)> = spec
        .iter()
        .filter_map(|(name, field)| Some((field.get("index")?.as_u64()?, name.as_str())))
        .filter(|(_, name)| object.contains_key(*name))
        .collect();
    indexed.sort_unstable();
    let first: Vec<&str> = indexed.iter().map(|(_, name)| *name).collect();
    assert_eq!(keys[..first.len()], first[..], "the spec's order: {line}");
    assert_eq!(keys.get(first.len()), Some(&"ecs.version"), "ecs.version right after them: {line}");
    for (name, field) in &spec {
        let value = object.get(name);
        if field["required"] == true {
            assert!(value.is_some(), "{name} is required: {line}");
        }
        if field["top_level_field"] == true {
            let parent = name.split('.').next().unwrap();
            assert!(!object.contains_key(parent), "{name} must be a dotted top-level key: {line}");
        }
        let Some(value) = value else { continue };
        match field["type"].as_str().unwrap() {
            "string" => assert!(value.is_string(), "{name} must be a string: {line}"),
            "integer" => assert!(value.is_i64() || value.is_u64(), "{name} must be an integer: {line}"),
            "datetime" => {
                let text = value.as_str().unwrap_or_else(|| panic!("{name} must be a string: {line}"));
                assert!(is_rfc3339_utc(text), "{name} must be an RFC 3339 UTC time: {line}");
            }
            "object" => assert!(value.is_object(), "{name} must be an object: {line}"),
            other => panic!("a type the check does not know: {other}"),
        }
    }
    for (key, value) in &object {
        if let Some(label) = key.strip_prefix("labels.") {
            assert!(!label.contains(['.', '*', '\\']), "{key}: a label's name has no `.`, `*` or `\\`: {line}");
            assert!(value.is_string(), "{key}: labels are strings: {line}");
        }
    }
    object
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub(crate) fn is_rfc3339_utc(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    bytes.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && text.ends_with('Z')
        && (bytes.len() == 20 || (bytes[19] == b'.' && digits(20..bytes.len() - 1) && bytes.len() > 21))
}
