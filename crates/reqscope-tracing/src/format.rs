//! Turning one event plus its request context into one line.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write as _;

use reqscope_core::{FieldValue, RequestContext};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use tracing::Event;
use tracing::field::{Field, Visit};

use crate::names::FieldNames;

/// Writes one JSON object and a newline into `buf`.
pub(crate) fn json_line(
    buf: &mut Vec<u8>,
    names: &FieldNames,
    timestamp: &[u8],
    event: &Event<'_>,
    ctx: Option<&RequestContext>,
) -> Result<(), serde_json::Error> {
    let meta = event.metadata();
    let mut ser = serde_json::Serializer::new(&mut *buf);
    let mut map = ser.serialize_map(None)?;
    // Timestamps are ASCII digits and punctuation: no escaping needed.
    map.serialize_entry(names.timestamp, std::str::from_utf8(timestamp).unwrap_or_default())?;
    map.serialize_entry(names.level, meta.level().as_str())?;
    map.serialize_entry(names.target, meta.target())?;
    let mut message = JsonFields { map: &mut map, only_message: true, names, result: Ok(()) };
    event.record(&mut message);
    message.result?;
    if let Some(ctx) = ctx {
        json_context(&mut map, names, ctx)?;
    }
    let mut fields = JsonFields { map: &mut map, only_message: false, names, result: Ok(()) };
    event.record(&mut fields);
    fields.result?;
    SerializeMap::end(map)?;
    buf.push(b'\n');
    Ok(())
}

fn json_context<M: SerializeMap>(map: &mut M, names: &FieldNames, ctx: &RequestContext) -> Result<(), M::Error> {
    map.serialize_entry(names.request_id, ctx.id().as_str())?;
    ctx.read_patch(|patch| {
        if let Some(user) = &patch.user_id {
            map.serialize_entry(names.user_id, &**user)?;
        }
        if let Some(org) = &patch.org_id {
            map.serialize_entry(names.org_id, &**org)?;
        }
        if let Some(method) = ctx.method() {
            map.serialize_entry(names.method, method.as_str())?;
        }
        if let Some(path) = ctx.path() {
            map.serialize_entry(names.path, path)?;
        }
        if let Some(route) = &patch.route {
            map.serialize_entry(names.route, &**route)?;
        }
        if let Some(ip) = ctx.client_ip() {
            map.serialize_entry(names.client_ip, &ip)?;
        }
        if !patch.roles.is_empty() {
            map.serialize_entry(names.roles, &Roles(&patch.roles))?;
        }
        if let Some(remaining) = patch.rate_limit_remaining {
            map.serialize_entry(names.rate_limit_remaining, &remaining)?;
        }
        if let Some(reset) = patch.rate_limit_reset {
            map.serialize_entry(names.rate_limit_reset, &reset)?;
        }
        for (key, value) in &patch.fields {
            map.serialize_entry(&names.field_key(key), &JsonValue(value))?;
        }
        Ok(())
    })
}

struct Roles<'a>(&'a [std::sync::Arc<str>]);

impl Serialize for Roles<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for role in self.0 {
            seq.serialize_element(&**role)?;
        }
        seq.end()
    }
}

struct JsonValue<'a>(&'a FieldValue);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FieldValue::Str(v) => s.serialize_str(v),
            FieldValue::I64(v) => s.serialize_i64(*v),
            FieldValue::U64(v) => s.serialize_u64(*v),
            FieldValue::F64(v) => s.serialize_f64(*v),
            FieldValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

/// Serializes any `Debug`/`Display` value as an escaped JSON string without an intermediate
/// `String` (serde_json escapes as it streams).
struct Streamed<'a>(&'a dyn fmt::Debug);

impl Serialize for Streamed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&DebugAsDisplay(self.0))
    }
}

struct DebugAsDisplay<'a>(&'a dyn fmt::Debug);

impl fmt::Display for DebugAsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

struct JsonFields<'a, M: SerializeMap> {
    map: &'a mut M,
    only_message: bool,
    names: &'a FieldNames,
    result: Result<(), M::Error>,
}

impl<M: SerializeMap> JsonFields<'_, M> {
    fn key(&self, field: &Field) -> Option<Cow<'static, str>> {
        let is_message = field.name() == "message";
        if is_message != self.only_message || field.name().starts_with("log.") {
            return None;
        }
        Some(if is_message { Cow::Borrowed(self.names.message) } else { self.names.field_key(field.name()) })
    }

    fn entry<V: Serialize + ?Sized>(&mut self, field: &Field, value: &V) {
        if self.result.is_err() {
            return;
        }
        if let Some(key) = self.key(field) {
            self.result = self.map.serialize_entry(&*key, value);
        }
    }
}

impl<M: SerializeMap> Visit for JsonFields<'_, M> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.entry(field, &value);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.entry(field, &value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        // Bytes are not text; a lossless JSON form is an array of numbers.
        self.entry(field, value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let chain = ErrorChain(value);
        self.entry(field, &Streamed(&format_args!("{chain}")));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, &Streamed(value));
    }
}

/// Writes one human-readable line into `buf`: `time LEVEL target: message key=value …`.
pub(crate) fn pretty_line(
    buf: &mut Vec<u8>,
    names: &FieldNames,
    timestamp: &[u8],
    event: &Event<'_>,
    ctx: Option<&RequestContext>,
) {
    let meta = event.metadata();
    let mut line = PrettyLine { buf, only_message: true };
    line.buf.extend_from_slice(timestamp);
    let _ = write!(line.buf, " {:>5} {}:", meta.level().as_str(), meta.target());
    event.record(&mut line);
    if let Some(ctx) = ctx {
        line.pair(names.request_id, &ctx.id().as_str());
        ctx.read_patch(|patch| {
            if let Some(user) = &patch.user_id {
                line.pair(names.user_id, &&**user);
            }
            if let Some(org) = &patch.org_id {
                line.pair(names.org_id, &&**org);
            }
            if let Some(method) = ctx.method() {
                line.pair(names.method, &method.as_str());
            }
            if let Some(path) = ctx.path() {
                line.pair(names.path, &path);
            }
            if let Some(route) = &patch.route {
                line.pair(names.route, &&**route);
            }
            if let Some(ip) = ctx.client_ip() {
                line.pair(names.client_ip, &format_args!("{ip}"));
            }
            if !patch.roles.is_empty() {
                line.pair(names.roles, &patch.roles);
            }
            if let Some(remaining) = patch.rate_limit_remaining {
                line.pair(names.rate_limit_remaining, &remaining);
            }
            if let Some(reset) = patch.rate_limit_reset {
                line.pair(names.rate_limit_reset, &reset);
            }
            for (key, value) in &patch.fields {
                match value {
                    FieldValue::Str(v) => line.pair(key, &&**v),
                    FieldValue::I64(v) => line.pair(key, v),
                    FieldValue::U64(v) => line.pair(key, v),
                    FieldValue::F64(v) => line.pair(key, v),
                    FieldValue::Bool(v) => line.pair(key, v),
                }
            }
        });
    }
    line.only_message = false;
    event.record(&mut line);
    line.buf.push(b'\n');
}

struct PrettyLine<'a> {
    buf: &'a mut Vec<u8>,
    only_message: bool,
}

impl PrettyLine<'_> {
    /// Writes ` key=value`. Values use `Debug` (strings quoted) and every control character is
    /// escaped, so no value — not even a `%display` field — can start a new line.
    fn pair(&mut self, key: &str, value: &dyn fmt::Debug) {
        self.buf.push(b' ');
        let _ = write!(Escaped(self.buf), "{key}={value:?}");
    }
}

/// Escapes control characters while formatting straight into the line buffer.
struct Escaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.chars().any(char::is_control) {
            self.0.extend_from_slice(s.as_bytes());
            return Ok(());
        }
        for c in s.chars() {
            if c.is_control() {
                let _ = write!(self.0, "{}", c.escape_default());
            } else {
                let mut utf8 = [0u8; 4];
                self.0.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
        Ok(())
    }
}

impl Visit for PrettyLine<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let is_message = field.name() == "message";
        if is_message != self.only_message || field.name().starts_with("log.") {
            return;
        }
        if is_message {
            self.buf.push(b' ');
            let _ = write!(Escaped(self.buf), "{value:?}");
        } else {
            self.pair(field.name(), value);
        }
    }
}
