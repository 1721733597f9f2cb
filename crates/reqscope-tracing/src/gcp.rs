//! The Google Cloud Logging line: structured logging on stdout, as the logging agents of
//! Cloud Run, GKE and Compute Engine read it.
//!
//! One JSON object per line. The keys Google Cloud gives meaning to come first: `time`,
//! `severity` (`DEBUG` for TRACE and DEBUG, `INFO`, `WARNING`, `ERROR`), `message`,
//! `logging.googleapis.com/sourceLocation` (`file`, `line` as a string, `function`: the
//! target), and in a request `logging.googleapis.com/trace` (`projects/<project>/traces/<id>`),
//! `logging.googleapis.com/spanId`, `logging.googleapis.com/trace_sampled` and
//! `logging.googleapis.com/labels` (the request id, user and org, as strings). The rest is the
//! JSON line's (`method`, `path`, `route`, …, custom context fields, baggage, span and event
//! fields), with the JSON line's uniqueness rules: every name above, `httpRequest`, `@type`,
//! `serviceContext`, `context`, `stack_trace`, `timestamp*` and every
//! `logging.googleapis.com/…` key are taken, so an event field so named gets `fields.`.
//!
//! The access line carries an `httpRequest` (`requestMethod`, `requestUrl` — the path —,
//! `status`, `responseSize` as a string, `latency` as a Duration such as `"0.012s"`,
//! `remoteIp`, `userAgent` from the logged `user-agent` header) made of its own `status`,
//! `duration_ms` and `bytes` and of the context; those three are not repeated. The HTTP
//! version is not in the context, so there is no `protocol`.
//!
//! An ERROR line with an `error` field or a panic is an Error Reporting event: it carries
//! `"@type":"…ReportedErrorEvent"`, the `serviceContext` when one is configured, and a
//! `context` with the request (`httpRequest`: `method`, `url`, `remoteIp`), the `user`, and
//! the `reportLocation` — the panic's location, or where the error was logged. An event
//! field `backtrace` on such a line is its `stack_trace`. A panic is `ERROR`, not `CRITICAL`:
//! it was caught, one request failed, and the service goes on serving.

use std::fmt;
use std::sync::Arc;

use reqscope_core::RequestContext;
use reqscope_core::redact::Redaction;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};

use crate::ecs::PANIC_TARGET;
use crate::json::{
    self, JsonKeys, JsonStyle, Message, Target, Values, write_ip, write_str, write_str_contents, write_u64,
};
use crate::keys::{BaggageField, Reserved, Seen};
use crate::names::FieldNames;
use crate::redact::{ACCESS_TARGET, HeaderKey, write_header_value, write_headers};

/// The `@type` that makes a line an Error Reporting event.
pub(crate) const REPORTED_ERROR_EVENT: &str =
    "type.googleapis.com/google.devtools.clouderrorreporting.v1beta1.ReportedErrorEvent";

/// The names Google Cloud gives meaning to in a structured line, and those this format
/// writes: taken, whatever the field names.
const OWN_NAMES: [&str; 11] = [
    "message",
    "severity",
    "time",
    "timestamp",
    "timestampSeconds",
    "timestampNanos",
    "httpRequest",
    "@type",
    "serviceContext",
    "context",
    "stack_trace",
];

/// Every key that starts with this is Google Cloud's.
const OWN_PREFIX: &[u8] = b"logging.googleapis.com/";

/// The project and the service of Google Cloud lines.
#[derive(Debug, Clone)]
pub(crate) struct GcpSettings {
    pub(crate) project: Box<str>,
    pub(crate) service: Option<(Box<str>, Option<Box<str>>)>,
}

impl Default for GcpSettings {
    fn default() -> Self {
        GcpSettings { project: "local".into(), service: None }
    }
}

/// The keys of a Google Cloud line, pre-escaped.
#[derive(Debug, Clone)]
pub(crate) struct GcpKeys {
    /// The JSON line's keys, with Google Cloud's names taken too.
    json: JsonKeys,
    /// `"request_id":`, the first of the labels.
    request_id: Box<[u8]>,
    /// `,"user_id":` and `,"org_id":`, the other labels.
    user_id: Box<[u8]>,
    org_id: Box<[u8]>,
    /// `,"logging.googleapis.com/trace":"projects/<project>/traces/`.
    trace: Box<[u8]>,
    /// `,"serviceContext":{…}`, when a service is configured.
    service_context: Option<Box<[u8]>>,
    settings: GcpSettings,
}

fn member(name: &str) -> Box<[u8]> {
    let mut out = Vec::new();
    write_str(&mut out, name);
    out.push(b':');
    out.into_boxed_slice()
}

impl GcpKeys {
    pub(crate) fn new(names: &FieldNames, baggage: Arc<[BaggageField]>, settings: GcpSettings) -> Self {
        let reserved = Reserved::with_names::<JsonStyle>(names.all().into_iter().chain(OWN_NAMES), Some(OWN_PREFIX))
            .with_baggage::<JsonStyle>(baggage);
        let mut trace = b",\"logging.googleapis.com/trace\":\"projects/".to_vec();
        write_str_contents(&mut trace, &settings.project);
        trace.extend_from_slice(b"/traces/");
        let service_context = settings.service.as_ref().map(|(service, version)| {
            let mut out = b",\"serviceContext\":{\"service\":".to_vec();
            write_str(&mut out, service);
            if let Some(version) = version {
                out.extend_from_slice(b",\"version\":");
                write_str(&mut out, version);
            }
            out.push(b'}');
            out.into_boxed_slice()
        });
        let comma = |name: &str| [&b","[..], &member(name)].concat().into_boxed_slice();
        GcpKeys {
            json: JsonKeys::with_reserved(names, reserved),
            request_id: member(names.request_id),
            user_id: comma(names.user_id),
            org_id: comma(names.org_id),
            trace: trace.into_boxed_slice(),
            service_context,
            settings,
        }
    }

    pub(crate) fn reserved(&self) -> &Reserved {
        self.json.reserved()
    }

    pub(crate) fn settings(&self) -> &GcpSettings {
        &self.settings
    }
}

fn severity(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"ERROR",
        Level::WARN => b"WARNING",
        Level::INFO => b"INFO",
        _ => b"DEBUG",
    }
}

/// Writes one Google Cloud JSON object and a newline into `buf`. `meta` is the event's
/// metadata, or that of the `log` record it stands for.
#[allow(clippy::too_many_arguments)] // one call site, in the hot path: no struct to build
pub(crate) fn gcp_line(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &GcpKeys,
    redaction: &Redaction,
    timestamp: &[u8],
    event: &Event<'_>,
    meta: &Metadata<'_>,
    ctx: Option<&RequestContext>,
    spans: &mut dyn FnMut(&mut Vec<u8>, &mut Seen),
) {
    seen.clear();
    let target = meta.target();
    let access = ctx.is_some() && target == ACCESS_TARGET;
    let mut values = AccessValues::default();
    if access {
        event.record(&mut AccessFields { values: &mut values, redaction });
    }
    let fields = meta.fields();
    let report = *meta.level() == Level::ERROR
        && (target == PANIC_TARGET || fields.field("error").is_some() || fields.field("panic").is_some());

    buf.extend_from_slice(b"{\"time\":\"");
    // RFC 3339 digits and punctuation: nothing to escape.
    buf.extend_from_slice(timestamp);
    buf.extend_from_slice(b"\",\"severity\":\"");
    buf.extend_from_slice(severity(meta.level()));
    buf.push(b'"');
    event.record(&mut Values { target: Message { buf, key: b",\"message\":" }, redaction });
    buf.extend_from_slice(b",\"logging.googleapis.com/sourceLocation\":{");
    if let Some(file) = meta.file() {
        buf.extend_from_slice(b"\"file\":");
        write_str(buf, file);
        buf.push(b',');
    }
    if let Some(line) = meta.line() {
        // A string, as the API's int64 fields are in JSON.
        buf.extend_from_slice(b"\"line\":\"");
        buf.extend_from_slice(itoa::Buffer::new().format(line).as_bytes());
        buf.extend_from_slice(b"\",");
    }
    buf.extend_from_slice(b"\"function\":");
    write_str(buf, target);
    buf.push(b'}');

    if let Some(ctx) = ctx {
        if let Some(trace) = ctx.trace() {
            // Lowercase hex: nothing to escape.
            buf.extend_from_slice(&keys.trace);
            buf.extend_from_slice(trace.trace_id().as_bytes());
            buf.extend_from_slice(b"\",\"logging.googleapis.com/spanId\":\"");
            buf.extend_from_slice(trace.span_id().as_bytes());
            buf.extend_from_slice(b"\",\"logging.googleapis.com/trace_sampled\":");
            buf.extend_from_slice(if trace.sampled() { b"true" } else { b"false" });
        }
        ctx.read_patch(|patch| {
            buf.extend_from_slice(b",\"logging.googleapis.com/labels\":{");
            buf.extend_from_slice(&keys.request_id);
            write_str(buf, ctx.id().as_str());
            if let Some(user) = &patch.user_id {
                buf.extend_from_slice(&keys.user_id);
                write_str(buf, user);
            }
            if let Some(org) = &patch.org_id {
                buf.extend_from_slice(&keys.org_id);
                write_str(buf, org);
            }
            buf.push(b'}');
            json::write_request(buf, seen, &keys.json, redaction, ctx, patch);
        });
        if access {
            // The user agent goes into `httpRequest`.
            let key_of = |name: &str| if name == "user-agent" { HeaderKey::Skip } else { HeaderKey::Header };
            let headers = ctx.logged_headers();
            write_headers::<JsonStyle>(buf, seen, keys.reserved(), redaction, headers, key_of, write_str);
            write_http_request(buf, ctx, &values, redaction);
        }
    }
    if report {
        write_report(buf, keys, event, meta, ctx);
    }
    spans(buf, seen);
    let fields = EventFields { buf, seen, keys: &keys.json, skip: values, report, stack_trace: false };
    event.record(&mut Values { target: fields, redaction });
    buf.extend_from_slice(b"}\n");
}

/// What an access line's own fields give its `httpRequest`: each taken only when no
/// redaction touches it (a redacted one stays a field of its own, `"[redacted]"`).
#[derive(Default, Clone, Copy)]
struct AccessValues {
    status: Option<u64>,
    bytes: Option<u64>,
    latency_nanos: Option<u64>,
}

struct AccessFields<'a> {
    values: &'a mut AccessValues,
    redaction: &'a Redaction,
}

impl AccessFields<'_> {
    /// Whether no redaction touches `field` with the value `text`.
    fn kept(&self, field: &Field, text: &str) -> bool {
        let redaction = self.redaction;
        !redaction.is_sensitive_key(field.name())
            && !(redaction.has_value_hook() && redaction.redacts_value(field.name(), text))
    }

    fn take(&mut self, field: &Field, value: u64) {
        let name = field.name();
        let slot = match name {
            "status" => &mut self.values.status,
            "bytes" => &mut self.values.bytes,
            "duration_ms" => &mut self.values.latency_nanos,
            _ => return,
        };
        if slot.is_none() {
            let redaction = self.redaction;
            let kept = !redaction.is_sensitive_key(name)
                && !(redaction.has_value_hook() && redaction.redacts_value(name, itoa::Buffer::new().format(value)));
            if kept {
                *slot = Some(if name == "duration_ms" { value.saturating_mul(1_000_000) } else { value });
            }
        }
    }
}

impl Visit for AccessFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.take(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.take(field, value);
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let nanos = (value * 1e6).round();
        if field.name() == "duration_ms"
            && self.values.latency_nanos.is_none()
            && (0.0..1.8e19).contains(&nanos)
            && self.kept(field, ryu::Buffer::new().format(value))
        {
            self.values.latency_nanos = Some(nanos as u64);
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// Starts a member of an object being written: a comma unless it is the first.
fn member_key(buf: &mut Vec<u8>, first: &mut bool, key: &[u8]) {
    if !std::mem::take(first) {
        buf.push(b',');
    }
    buf.extend_from_slice(key);
}

/// Writes `key{…}` with `members` — `key` a member of an enclosing object whose `first` it
/// updates, or, without one, a key with its comma — or nothing when the members write none.
fn object(buf: &mut Vec<u8>, first: Option<&mut bool>, key: &[u8], members: impl FnOnce(&mut Vec<u8>, &mut bool)) {
    let start = buf.len();
    if first.as_ref().is_some_and(|first| !**first) {
        buf.push(b',');
    }
    buf.extend_from_slice(key);
    buf.push(b'{');
    let mut empty = true;
    members(buf, &mut empty);
    if empty {
        buf.truncate(start);
        return;
    }
    buf.push(b'}');
    if let Some(first) = first {
        *first = false;
    }
}

/// The access line's `httpRequest`.
fn write_http_request(buf: &mut Vec<u8>, ctx: &RequestContext, values: &AccessValues, redaction: &Redaction) {
    object(buf, None, b",\"httpRequest\":", |buf, first| {
        if let Some(method) = ctx.method() {
            member_key(buf, first, b"\"requestMethod\":");
            write_str(buf, method.as_str());
        }
        if let Some(path) = ctx.path() {
            member_key(buf, first, b"\"requestUrl\":");
            write_str(buf, path);
        }
        if let Some(status) = values.status {
            member_key(buf, first, b"\"status\":");
            write_u64(buf, status);
        }
        if let Some(bytes) = values.bytes {
            // int64 in JSON: a string.
            member_key(buf, first, b"\"responseSize\":\"");
            write_u64(buf, bytes);
            buf.push(b'"');
        }
        if let Some(nanos) = values.latency_nanos {
            member_key(buf, first, b"\"latency\":");
            write_duration(buf, nanos);
        }
        if let Some(ip) = ctx.client_ip() {
            member_key(buf, first, b"\"remoteIp\":");
            write_ip(buf, ip);
        }
        if let Some(agent) = ctx.logged_headers().iter().find(|h| h.name().as_str() == "user-agent") {
            member_key(buf, first, b"\"userAgent\":");
            write_header_value(buf, redaction, agent, &write_str);
        }
    });
}

/// Writes a protobuf `Duration` in its JSON form: seconds with 0, 3, 6 or 9 decimals and `s`.
fn write_duration(buf: &mut Vec<u8>, nanos: u64) {
    buf.push(b'"');
    write_u64(buf, nanos / 1_000_000_000);
    let fraction = nanos % 1_000_000_000;
    let (digits, value) = match fraction {
        0 => (0, 0),
        f if f % 1_000_000 == 0 => (3, f / 1_000_000),
        f if f % 1_000 == 0 => (6, f / 1_000),
        f => (9, f),
    };
    if digits > 0 {
        buf.push(b'.');
        let mut padded = [b'0'; 9];
        let mut rest = value;
        for slot in padded[..digits].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        buf.extend_from_slice(&padded[..digits]);
    }
    buf.extend_from_slice(b"s\"");
}

/// The Error Reporting part of an ERROR line with an error or a panic.
fn write_report(
    buf: &mut Vec<u8>,
    keys: &GcpKeys,
    event: &Event<'_>,
    meta: &Metadata<'_>,
    ctx: Option<&RequestContext>,
) {
    buf.extend_from_slice(b",\"@type\":\"");
    buf.extend_from_slice(REPORTED_ERROR_EVENT.as_bytes());
    buf.push(b'"');
    if let Some(service) = &keys.service_context {
        buf.extend_from_slice(service);
    }
    // A panic's own location, not that of the code that caught it.
    let panic = meta.target() == PANIC_TARGET || meta.fields().field("panic").is_some();
    let mut location = Location::default();
    if meta.fields().field("location").is_some() {
        event.record(&mut location);
    }
    object(buf, None, b",\"context\":", |buf, first| {
        if let Some(ctx) = ctx {
            object(buf, Some(&mut *first), b"\"httpRequest\":", |buf, inner| {
                if let Some(method) = ctx.method() {
                    member_key(buf, inner, b"\"method\":");
                    write_str(buf, method.as_str());
                }
                if let Some(path) = ctx.path() {
                    member_key(buf, inner, b"\"url\":");
                    write_str(buf, path);
                }
                if let Some(ip) = ctx.client_ip() {
                    member_key(buf, inner, b"\"remoteIp\":");
                    write_ip(buf, ip);
                }
            });
            ctx.read_patch(|patch| {
                if let Some(user) = &patch.user_id {
                    member_key(buf, first, b"\"user\":");
                    write_str(buf, user);
                }
            });
        }
        let at = match location.file_and_line() {
            Some((file, line)) => Some((file, line)),
            None if !panic => meta.file().zip(meta.line()),
            None => None,
        };
        if let Some((file, line)) = at {
            member_key(buf, first, b"\"reportLocation\":{\"filePath\":");
            write_str(buf, file);
            buf.extend_from_slice(b",\"lineNumber\":");
            write_u64(buf, u64::from(line));
            buf.push(b'}');
        }
    });
}

/// A panic's `location` field (`file:line:column`), formatted on the stack.
struct Location {
    text: [u8; 512],
    len: usize,
    whole: bool,
}

impl Default for Location {
    fn default() -> Self {
        Location { text: [0; 512], len: 0, whole: true }
    }
}

impl fmt::Write for Location {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.text.len() - self.len;
        if s.len() > room {
            self.whole = false;
            return Err(fmt::Error);
        }
        self.text[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

impl Location {
    /// The file and line of `file:line` or `file:line:column`.
    fn file_and_line(&self) -> Option<(&str, u32)> {
        if !self.whole {
            return None;
        }
        let text = std::str::from_utf8(&self.text[..self.len]).ok()?;
        let mut parts = text.rsplitn(3, ':');
        let last = parts.next()?;
        let before = parts.next()?;
        match parts.next() {
            // `file:line:column`
            Some(file) if !file.is_empty() => Some((file, before.parse().ok()?)),
            // `file:line`
            _ if !before.is_empty() => Some((before, last.parse().ok()?)),
            _ => None,
        }
    }
}

impl Visit for Location {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "location" && self.len == 0 {
            let _ = fmt::Write::write_str(self, value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "location" && self.len == 0 {
            let _ = fmt::write(self, format_args!("{value:?}"));
        }
    }
}

/// An event's fields other than its message, as in a JSON line — but for the access line's
/// fields its `httpRequest` holds, and a report's `backtrace`, written as its `stack_trace`.
struct EventFields<'a> {
    buf: &'a mut Vec<u8>,
    seen: &'a mut Seen,
    keys: &'a JsonKeys,
    /// What `httpRequest` already says.
    skip: AccessValues,
    report: bool,
    stack_trace: bool,
}

impl Target for EventFields<'_> {
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") {
            return false;
        }
        let written = match name {
            "status" => self.skip.status.is_some(),
            "bytes" => self.skip.bytes.is_some(),
            "duration_ms" => self.skip.latency_nanos.is_some(),
            _ => false,
        };
        if written {
            return false;
        }
        if self.report && name == "backtrace" && !std::mem::replace(&mut self.stack_trace, true) {
            self.buf.extend_from_slice(b",\"stack_trace\":");
            return true;
        }
        self.keys.field(self.buf, self.seen, name);
        true
    }
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(nanos: u64) -> String {
        let mut buf = Vec::new();
        write_duration(&mut buf, nanos);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn durations_have_0_3_6_or_9_decimals() {
        assert_eq!(duration(0), "\"0s\"");
        assert_eq!(duration(12_000_000), "\"0.012s\"");
        assert_eq!(duration(356_000), "\"0.000356s\"");
        assert_eq!(duration(1_000_000_001), "\"1.000000001s\"");
        assert_eq!(duration(3_000_000_000), "\"3s\"");
        assert_eq!(duration(61_500_000_000), "\"61.500s\"");
    }

    fn location(text: &str) -> Option<(String, u32)> {
        let mut location = Location::default();
        fmt::Write::write_str(&mut location, text).ok()?;
        location.file_and_line().map(|(file, line)| (file.to_owned(), line))
    }

    #[test]
    fn panic_locations_parse() {
        assert_eq!(location("examples/api/boom.rs:10:5"), Some(("examples/api/boom.rs".into(), 10)));
        assert_eq!(location("src/a.rs:7"), Some(("src/a.rs".into(), 7)));
        assert_eq!(location("C:\\src\\a.rs:7:1"), Some(("C:\\src\\a.rs".into(), 7)));
        assert_eq!(location("unknown"), None);
        assert_eq!(location(":1:2"), None);
        assert_eq!(location(&"x".repeat(600)), None);
    }
}
