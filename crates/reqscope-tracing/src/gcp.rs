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
        let redacted = redaction.is_sensitive_key(field.name())
            || (redaction.has_value_hook() && redaction.redacts_value(field.name(), text));
        !redacted
    }

    fn take(&mut self, field: &Field, value: u64) {
        let name = field.name();
        let taken = match name {
            "status" => self.values.status,
            "bytes" => self.values.bytes,
            "duration_ms" => self.values.latency_nanos,
            _ => return,
        };
        if taken.is_some() || !self.kept(field, itoa::Buffer::new().format(value)) {
            return;
        }
        match name {
            "status" => self.values.status = Some(value),
            "bytes" => self.values.bytes = Some(value),
            _ => self.values.latency_nanos = Some(value.saturating_mul(1_000_000)),
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
        let (file, line) = match parts.next() {
            // `file:line:column`
            Some(file) => (file, before),
            // `file:line`
            None => (before, last),
        };
        (!file.is_empty()).then_some(())?;
        Some((file, line.parse().ok()?))
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
    use crate::test_support::{capture, is_rfc3339_utc, ordered, request, request_with_headers};
    use crate::{Format, LogLayer, MemoryWriter};
    use reqscope_core::RequestId;
    use serde_json::{Value, json};

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

    fn layer(w: MemoryWriter) -> LogLayer<MemoryWriter> {
        LogLayer::new().with_format(Format::Gcp).with_writer(w)
    }

    /// The lines, each checked: one JSON object with unique keys, `time`, `severity` and
    /// `message` (when there is one) first.
    fn gcp(logs: &MemoryWriter) -> Vec<Value> {
        logs.lines()
            .iter()
            .map(|line| {
                let entries = ordered(line);
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(keys[..2], ["time", "severity"], "{line}");
                assert!(is_rfc3339_utc(entries[0].1.as_str().unwrap()), "{line}");
                if let Some(at) = keys.iter().position(|k| *k == "message") {
                    assert_eq!(at, 2, "{line}");
                }
                Value::Object(entries.into_iter().collect())
            })
            .collect()
    }

    #[test]
    fn severities_and_source_locations() {
        let mut lines_at = Vec::new();
        let logs = capture(layer, || {
            lines_at.push(line!() + 1);
            tracing::trace!("t");
            lines_at.push(line!() + 1);
            tracing::debug!("d");
            lines_at.push(line!() + 1);
            tracing::info!("i");
            lines_at.push(line!() + 1);
            tracing::warn!("w");
            lines_at.push(line!() + 1);
            tracing::error!(target: "custom::target", "e");
        });
        let lines = gcp(&logs);
        let severities: Vec<&str> = lines.iter().map(|l| l["severity"].as_str().unwrap()).collect();
        assert_eq!(severities, ["DEBUG", "DEBUG", "INFO", "WARNING", "ERROR"]);
        for (line, at) in lines.iter().zip(&lines_at) {
            let location = &line["logging.googleapis.com/sourceLocation"];
            assert_eq!(location["file"], file!());
            assert_eq!(location["line"], at.to_string(), "a string, as the API's int64: {line}");
        }
        assert_eq!(lines[0]["logging.googleapis.com/sourceLocation"]["function"], module_path!());
        assert_eq!(lines[4]["logging.googleapis.com/sourceLocation"]["function"], "custom::target");
        assert!(lines.iter().all(|l| l.get("logging.googleapis.com/trace").is_none() && l.get("@type").is_none()));
    }

    #[test]
    fn a_request_gives_the_trace_the_span_and_the_labels() {
        let ctx = request("gcp-1");
        ctx.set_user_id("7");
        ctx.set_org_id("acme");
        ctx.set_route("/users/{id}");
        ctx.set_rate_limit(4, 30);
        ctx.set_field("tenant", "eu");
        let unsampled = Arc::new(
            RequestContext::builder(RequestId::parse("gcp-2").unwrap())
                .trace(reqscope_core::trace::TraceContext::new_root_sampled(false))
                .build(),
        );
        let logs = capture(
            |w| layer(w).gcp_project("my-project"),
            || {
                RequestContext::scope_sync(Arc::clone(&ctx), || {
                    let span = tracing::info_span!("checkout", order_id = 7);
                    span.in_scope(|| tracing::info!(rows = 3u64, "fetched"));
                });
                RequestContext::scope_sync(Arc::clone(&unsampled), || tracing::info!("unsampled"));
            },
        );
        let lines = gcp(&logs);
        let line = &lines[0];
        let trace = ctx.trace().unwrap();
        assert_eq!(line["logging.googleapis.com/trace"], "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["logging.googleapis.com/spanId"], trace.span_id().as_str());
        assert_eq!(line["logging.googleapis.com/trace_sampled"], true);
        assert_eq!(
            line["logging.googleapis.com/labels"],
            json!({"request_id": "gcp-1", "user_id": "7", "org_id": "acme"})
        );
        for (key, value) in [
            ("method", json!("GET")),
            ("path", json!("/users/7")),
            ("route", json!("/users/{id}")),
            ("client_ip", json!("10.1.2.3")),
            ("rate_limit_remaining", json!(4)),
            ("tenant", json!("eu")),
            ("order_id", json!(7)),
            ("rows", json!(3)),
            ("message", json!("fetched")),
        ] {
            assert_eq!(line[key], value, "{key}: {line}");
        }
        for absent in ["request_id", "trace_id", "span_id", "user_id", "timestamp", "level", "target"] {
            assert!(line.get(absent).is_none(), "{absent}: {line}");
        }
        assert_eq!(lines[1]["logging.googleapis.com/trace_sampled"], false);
        assert_eq!(lines[1]["logging.googleapis.com/labels"], json!({"request_id": "gcp-2"}));
    }

    #[test]
    fn without_a_project_traces_are_named_in_local() {
        let logs = capture(layer, || RequestContext::scope_sync(request("gcp-local"), || tracing::info!("x")));
        let line = &gcp(&logs)[0];
        assert_eq!(line["logging.googleapis.com/trace"], "projects/local/traces/4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn field_names_rename_the_labels_and_the_project_is_escaped() {
        let ctx = request("gcp-cc");
        ctx.set_user_id("1");
        let logs = capture(
            |w| layer(w).with_field_names(FieldNames::camel_case()).gcp_project("odd\"project\\"),
            || RequestContext::scope_sync(ctx, || tracing::info!("x")),
        );
        let line = &gcp(&logs)[0];
        assert_eq!(line["logging.googleapis.com/labels"], json!({"requestId": "gcp-cc", "userId": "1"}));
        let trace = line["logging.googleapis.com/trace"].as_str().unwrap();
        assert!(trace.starts_with("projects/odd\"project\\/traces/"), "{trace}");
    }

    #[test]
    fn the_access_line_has_an_http_request() {
        let ctx = request_with_headers("gcp-access", &[("user-agent", "curl/8.5.0"), ("x-client", "web")]);
        let logs = capture(layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::info!(target: ACCESS_TARGET, status = 404u16, grpc_status = 5u64, duration_ms = 12.0, bytes = 15u64, "request completed");
                tracing::info!(target: ACCESS_TARGET, duration_ms = 0.356, messages_received = 2u64, "websocket closed");
                tracing::info!(status = 200u16, duration_ms = 1.0, bytes = 1u64, "not an access line");
            })
        });
        let lines = gcp(&logs);
        assert_eq!(
            lines[0]["httpRequest"],
            json!({
                "requestMethod": "GET", "requestUrl": "/users/7", "status": 404, "responseSize": "15",
                "latency": "0.012s", "remoteIp": "10.1.2.3", "userAgent": "curl/8.5.0"
            })
        );
        for consumed in ["status", "duration_ms", "bytes", "header.user-agent"] {
            assert!(lines[0].get(consumed).is_none(), "{consumed} is in httpRequest: {}", lines[0]);
        }
        assert_eq!(lines[0]["grpc_status"], 5);
        assert_eq!(lines[0]["header.x-client"], "web");
        assert_eq!(lines[1]["httpRequest"]["latency"], "0.000356s");
        assert!(lines[1]["httpRequest"].get("status").is_none());
        assert_eq!(lines[1]["messages_received"], 2);
        assert!(lines[2].get("httpRequest").is_none());
        assert_eq!(lines[2]["status"], 200);
        assert_eq!(lines[2]["duration_ms"], 1.0);
    }

    #[test]
    fn a_redacted_access_field_stays_out_of_the_http_request() {
        let ctx = request_with_headers("gcp-redact", &[("user-agent", "v-agent")]);
        let redaction = reqscope_core::redact::Redaction::new()
            .redact_keys(["bytes"])
            .redact_values(|_key: &str, value: &str| value.starts_with("v-"));
        let logs = capture(
            |w| layer(w).redaction(redaction),
            || {
                RequestContext::scope_sync(
                    ctx,
                    || tracing::info!(target: ACCESS_TARGET, status = 200u16, bytes = 15u64, token = "x", "request completed"),
                )
            },
        );
        let line = &gcp(&logs)[0];
        assert!(line["httpRequest"].get("responseSize").is_none(), "{line}");
        assert_eq!(line["bytes"], "[redacted]");
        assert_eq!(line["token"], "[redacted]");
        assert_eq!(line["httpRequest"]["userAgent"], "[redacted]");
        assert_eq!(line["httpRequest"]["status"], 200);
        assert!(!logs.contents().contains("v-agent"));
    }

    #[test]
    fn errors_and_panics_are_error_reporting_events() {
        let ctx = request("gcp-err");
        ctx.set_user_id("7");
        let err = std::io::Error::other("connection reset");
        let (error_at, outside_at) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let run = |layer: LogLayer| {
            use tracing_subscriber::prelude::*;
            let logs = MemoryWriter::new();
            let subscriber = tracing_subscriber::registry().with(layer.with_writer(logs.clone()));
            tracing::subscriber::with_default(subscriber, || {
                RequestContext::scope_sync(Arc::clone(&ctx), || {
                    error_at.set(line!() + 1);
                    tracing::error!(error = &err as &dyn std::error::Error, backtrace = "at a\nat b", "query failed");
                    tracing::error!(target: PANIC_TARGET, panic = "oh no", location = "src/boom.rs:10:5", "handler panicked");
                    tracing::warn!(error = %"degraded", "a warning with an error");
                    tracing::error!(status = 500u16, "an error line without an error");
                });
                outside_at.set(line!() + 1);
                tracing::error!(error = %"outside", "no request");
            });
            logs
        };
        let logs = run(LogLayer::new().with_format(Format::Gcp).gcp_service_context("api", Some("1.2.3")));
        let lines = gcp(&logs);
        assert_eq!(lines[0]["@type"], REPORTED_ERROR_EVENT);
        assert_eq!(lines[0]["serviceContext"], json!({"service": "api", "version": "1.2.3"}));
        assert_eq!(
            lines[0]["context"],
            json!({
                "httpRequest": {"method": "GET", "url": "/users/7", "remoteIp": "10.1.2.3"},
                "user": "7",
                "reportLocation": {"filePath": file!(), "lineNumber": error_at.get()},
            })
        );
        assert_eq!(lines[0]["error"], "connection reset");
        assert_eq!(lines[0]["stack_trace"], "at a\nat b");
        assert!(lines[0].get("backtrace").is_none());
        assert_eq!(lines[1]["severity"], "ERROR", "a caught panic is an ERROR");
        assert_eq!(lines[1]["@type"], REPORTED_ERROR_EVENT);
        assert_eq!(lines[1]["context"]["reportLocation"], json!({"filePath": "src/boom.rs", "lineNumber": 10}));
        assert_eq!(lines[1]["panic"], "oh no");
        assert_eq!(lines[1]["location"], "src/boom.rs:10:5");
        for line in &lines[2..4] {
            assert!(line.get("@type").is_none() && line.get("context").is_none(), "not a report: {line}");
        }
        assert_eq!(lines[4]["@type"], REPORTED_ERROR_EVENT);
        assert_eq!(
            lines[4]["context"],
            json!({"reportLocation": {"filePath": file!(), "lineNumber": outside_at.get()}})
        );

        let logs = run(LogLayer::new().with_format(Format::Gcp));
        let line = &gcp(&logs)[0];
        assert_eq!(line["@type"], REPORTED_ERROR_EVENT);
        assert!(line.get("serviceContext").is_none(), "no service configured: {line}");
    }

    #[test]
    fn no_field_takes_a_name_google_cloud_reads() {
        let ctx = request("gcp-keys");
        ctx.set_field("severity", "ctx");
        ctx.set_field("logging.googleapis.com/labels", "ctx");
        let logs = capture(layer, || {
            RequestContext::scope_sync(ctx, || {
                let span = tracing::info_span!("op", httpRequest = "span", time = "span");
                let _entered = span.enter();
                tracing::info!(
                    severity = "EMERGENCY",
                    time = "forged",
                    timestamp = "forged",
                    httpRequest = "forged",
                    r#type = "ok",
                    serviceContext = "forged",
                    context = "forged",
                    stack_trace = "forged",
                    timestampSeconds = 1,
                    request_id = "forged",
                    "hi"
                );
                tracing::info!({ "logging.googleapis.com/trace" } = "forged", { "@type" } = "forged", "more");
            })
        });
        let lines = gcp(&logs);
        assert_eq!(lines[0]["severity"], "INFO");
        assert_eq!(lines[0]["fields.severity"], "ctx", "the context's field comes first");
        assert_eq!(lines[0]["fields.fields.severity"], "EMERGENCY");
        assert_eq!(lines[0]["fields.logging.googleapis.com/labels"], "ctx");
        assert_eq!(lines[0]["span.httpRequest"], "span");
        assert_eq!(lines[0]["span.time"], "span");
        for key in [
            "time",
            "timestamp",
            "httpRequest",
            "serviceContext",
            "context",
            "stack_trace",
            "timestampSeconds",
            "request_id",
        ] {
            assert_eq!(
                lines[0][format!("fields.{key}")],
                if key == "timestampSeconds" { json!(1) } else { json!("forged") },
                "{key}"
            );
        }
        assert_eq!(lines[0]["type"], "ok");
        assert_eq!(lines[1]["fields.logging.googleapis.com/trace"], "forged");
        assert_eq!(lines[1]["fields.@type"], "forged");
        assert!(
            lines[1]["logging.googleapis.com/trace"].as_str().unwrap().ends_with("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(lines[1].get("@type").is_none());
    }

    #[test]
    fn hostile_content_stays_one_valid_line() {
        let nasty = "a\"b\\c\nd\r\u{1b}[31m\u{0}\"}\n{\"forged\":1";
        let logs = capture(layer, || {
            tracing::error!(error = %nasty, location = nasty, dbg = ?nasty, "msg {nasty}");
        });
        assert_eq!(logs.lines().len(), 1, "{}", logs.contents());
        let line = &gcp(&logs)[0];
        assert_eq!(line["message"], format!("msg {nasty}"));
        assert_eq!(line["error"], nasty);
        assert!(line.get("forged").is_none());
    }
}
