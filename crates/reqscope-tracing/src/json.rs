//! The JSON line, written straight into a reused buffer.
//!
//! Keys are escaped once, when the layer is built; values are escaped as they are written:
//! text without `"`, `\` or control characters is copied as is, anything else goes through
//! `serde_json`'s string escaping. Numbers use `itoa` / `ryu`, as `serde_json` does. The
//! output is always exactly one valid JSON object and a newline.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::Arc;

use reqscope_core::{ErrorChain, FieldValue, RequestContext};
use tracing::Event;
use tracing::field::{Field, Visit};

use crate::names::FieldNames;

/// The keys of a line, pre-escaped as `,"name":`.
#[derive(Debug, Clone)]
pub(crate) struct JsonKeys {
    names: FieldNames,
    timestamp: Box<[u8]>,
    level: Box<[u8]>,
    target: Box<[u8]>,
    message: Box<[u8]>,
    request_id: Box<[u8]>,
    trace_id: Box<[u8]>,
    span_id: Box<[u8]>,
    user_id: Box<[u8]>,
    org_id: Box<[u8]>,
    method: Box<[u8]>,
    path: Box<[u8]>,
    route: Box<[u8]>,
    client_ip: Box<[u8]>,
    roles: Box<[u8]>,
    rate_limit_remaining: Box<[u8]>,
    rate_limit_reset: Box<[u8]>,
    /// Bit `n` is set when a stamped key is `n` bytes long: most field names are rejected as
    /// collisions by one bit test.
    reserved_lengths: u128,
}

fn key(name: &str) -> Box<[u8]> {
    let mut out = vec![b','];
    write_str(&mut out, name);
    out.push(b':');
    out.into_boxed_slice()
}

impl JsonKeys {
    pub(crate) fn new(names: &FieldNames) -> Self {
        let reserved_lengths =
            names.all().iter().fold(0u128, |mask, name| mask | 1u128.checked_shl(name.len() as u32).unwrap_or(0));
        JsonKeys {
            timestamp: key(names.timestamp),
            level: key(names.level),
            target: key(names.target),
            message: key(names.message),
            request_id: key(names.request_id),
            trace_id: key(names.trace_id),
            span_id: key(names.span_id),
            user_id: key(names.user_id),
            org_id: key(names.org_id),
            method: key(names.method),
            path: key(names.path),
            route: key(names.route),
            client_ip: key(names.client_ip),
            roles: key(names.roles),
            rate_limit_remaining: key(names.rate_limit_remaining),
            rate_limit_reset: key(names.rate_limit_reset),
            reserved_lengths,
            names: names.clone(),
        }
    }

    /// Writes `,"name":` for an event or custom field, renaming it `fields.<name>` when it
    /// collides with a stamped key.
    fn field(&self, buf: &mut Vec<u8>, name: &str) {
        buf.push(b',');
        let may_collide = name.len() < 128 && self.reserved_lengths & (1u128 << name.len()) != 0;
        if may_collide && self.names.all().contains(&name) {
            buf.extend_from_slice(b"\"fields.");
            write_str_contents(buf, name);
            buf.push(b'"');
        } else {
            write_str(buf, name);
        }
        buf.push(b':');
    }
}

/// Writes one JSON object and a newline into `buf`.
pub(crate) fn json_line(
    buf: &mut Vec<u8>,
    keys: &JsonKeys,
    timestamp: &[u8],
    event: &Event<'_>,
    ctx: Option<&RequestContext>,
) {
    let meta = event.metadata();
    buf.push(b'{');
    buf.extend_from_slice(&keys.timestamp[1..]);
    buf.push(b'"');
    // RFC 3339 digits and punctuation: nothing to escape.
    buf.extend_from_slice(timestamp);
    buf.push(b'"');
    buf.extend_from_slice(&keys.level);
    buf.push(b'"');
    buf.extend_from_slice(meta.level().as_str().as_bytes());
    buf.push(b'"');
    buf.extend_from_slice(&keys.target);
    write_str(buf, meta.target());
    event.record(&mut Fields { buf, keys, message_pass: true });
    if let Some(ctx) = ctx {
        write_context(buf, keys, ctx);
    }
    event.record(&mut Fields { buf, keys, message_pass: false });
    buf.extend_from_slice(b"}\n");
}

fn write_context(buf: &mut Vec<u8>, keys: &JsonKeys, ctx: &RequestContext) {
    buf.extend_from_slice(&keys.request_id);
    write_str(buf, ctx.id().as_str());
    if let Some(trace) = ctx.trace() {
        // Lowercase hex: nothing to escape.
        buf.extend_from_slice(&keys.trace_id);
        buf.push(b'"');
        buf.extend_from_slice(trace.trace_id().as_bytes());
        buf.push(b'"');
        buf.extend_from_slice(&keys.span_id);
        buf.push(b'"');
        buf.extend_from_slice(trace.span_id().as_bytes());
        buf.push(b'"');
    }
    ctx.read_patch(|patch| {
        if let Some(user) = &patch.user_id {
            buf.extend_from_slice(&keys.user_id);
            write_str(buf, user);
        }
        if let Some(org) = &patch.org_id {
            buf.extend_from_slice(&keys.org_id);
            write_str(buf, org);
        }
        if let Some(method) = ctx.method() {
            buf.extend_from_slice(&keys.method);
            write_str(buf, method.as_str());
        }
        if let Some(path) = ctx.path() {
            buf.extend_from_slice(&keys.path);
            write_str(buf, path);
        }
        if let Some(route) = &patch.route {
            buf.extend_from_slice(&keys.route);
            write_str(buf, route);
        }
        if let Some(ip) = ctx.client_ip() {
            buf.extend_from_slice(&keys.client_ip);
            write_ip(buf, ip);
        }
        if !patch.roles.is_empty() {
            buf.extend_from_slice(&keys.roles);
            write_roles(buf, &patch.roles);
        }
        if let Some(remaining) = patch.rate_limit_remaining {
            buf.extend_from_slice(&keys.rate_limit_remaining);
            write_u64(buf, remaining);
        }
        if let Some(reset) = patch.rate_limit_reset {
            buf.extend_from_slice(&keys.rate_limit_reset);
            write_u64(buf, reset);
        }
        for (name, value) in &patch.fields {
            keys.field(buf, name);
            match value {
                FieldValue::Str(v) => write_str(buf, v),
                FieldValue::I64(v) => buf.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
                FieldValue::U64(v) => write_u64(buf, *v),
                FieldValue::F64(v) => write_f64(buf, *v),
                FieldValue::Bool(v) => write_bool(buf, *v),
            }
        }
    });
}

fn write_roles(buf: &mut Vec<u8>, roles: &[Arc<str>]) {
    buf.push(b'[');
    for (i, role) in roles.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, role);
    }
    buf.push(b']');
}

fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    buf.push(b'"');
    let _ = write!(Escaper(buf), "{ip}");
    buf.push(b'"');
}

fn write_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        buf.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        // JSON has no NaN or infinity; serde_json writes null too.
        buf.extend_from_slice(b"null");
    }
}

fn write_bool(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(if v { b"true" } else { b"false" });
}

fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes `"s"`, escaped.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        // Writing into a Vec cannot fail, and a &str always serializes.
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// Writes `s` escaped, without the surrounding quotes.
fn write_str_contents(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        let start = buf.len();
        let _ = serde_json::to_writer(&mut *buf, s);
        // Drop the quotes serde_json put around it.
        buf.pop();
        buf.remove(start);
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
}

/// Escapes formatted text as it is produced: `Debug` and `Display` values go into the line
/// without an intermediate `String`.
struct Escaper<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str_contents(self.0, s);
        Ok(())
    }
}

/// Visits an event's fields twice: first for `message` only (its key comes before the
/// context), then for the rest.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    keys: &'a JsonKeys,
    message_pass: bool,
}

impl Fields<'_> {
    /// Writes the key of `field` if this pass takes it.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        let is_message = name == "message";
        if is_message != self.message_pass || name.starts_with("log.") {
            return false;
        }
        if is_message {
            self.buf.extend_from_slice(&self.keys.message);
        } else {
            self.keys.field(self.buf, name);
        }
        true
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            write_f64(self.buf, value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            write_u64(self.buf, value);
        }
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.key(field) {
            self.buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.key(field) {
            self.buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            write_bool(self.buf, value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            write_str(self.buf, value);
        }
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        // Bytes are not text; a lossless JSON form is an array of numbers.
        if self.key(field) {
            let _ = serde_json::to_writer(&mut *self.buf, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.buf.push(b'"');
            let _ = write!(Escaper(self.buf), "{}", ErrorChain(value));
            self.buf.push(b'"');
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.buf.push(b'"');
            let _ = write!(Escaper(self.buf), "{value:?}");
            self.buf.push(b'"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_json() {
        for s in ["plain", "quote\"", "back\\slash", "nl\n", "\u{0}\u{1f}\u{7f}", "é ✓ 🚀", "</script>"] {
            let mut buf = Vec::new();
            write_str(&mut buf, s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(back, s);
            let mut contents = b"\"".to_vec();
            write_str_contents(&mut contents, s);
            contents.push(b'"');
            assert_eq!(serde_json::from_slice::<String>(&contents).unwrap(), s);
        }
    }

    #[test]
    fn numbers_are_valid_json() {
        for v in [0.0, -1.5, 1e300, f64::MIN_POSITIVE] {
            let mut buf = Vec::new();
            write_f64(&mut buf, v);
            assert_eq!(serde_json::from_slice::<f64>(&buf).unwrap(), v);
        }
        let mut buf = Vec::new();
        write_f64(&mut buf, f64::NAN);
        assert_eq!(buf, b"null");
    }

    #[test]
    fn collision_check_covers_every_key_length() {
        let keys = JsonKeys::new(&FieldNames::default());
        let mut buf = Vec::new();
        keys.field(&mut buf, "rate_limit_remaining");
        assert_eq!(buf, b",\"fields.rate_limit_remaining\":");
        buf.clear();
        keys.field(&mut buf, "rows");
        assert_eq!(buf, b",\"rows\":");
        buf.clear();
        keys.field(&mut buf, &"x".repeat(300));
        assert!(buf.starts_with(b",\"xxx"));
    }
}
