//! The Elastic Common Schema line (ecs-logging): one JSON object per line, flat dotted keys.
//!
//! `@timestamp`, `log.level` and `message` come first, in that order, then `ecs.version` —
//! the order the ecs-logging spec asks for. The context is written under ECS names where ECS
//! has a field for it (`http.request.id`, `trace.id`, `user.id`, `url.path`, `client.ip`, …),
//! reqscope's own values that ECS lacks under `reqscope.` with their JSON types, and
//! everything a program adds — custom context fields, span fields, event fields, baggage,
//! request headers — under `labels.`, as strings (ECS labels are keywords), with `.`, `*` and
//! `\` in their names replaced by `_` as the spec requires. A label's name is the JSON line's
//! key so rewritten (`fields.request_id` becomes `labels.fields_request_id`), so the same
//! uniqueness rules hold (see [`crate::keys`]), with `fields_` and `span_` as prefixes.
//!
//! Some event fields of reqscope's own lines have ECS names, known by the line's target: an
//! `error` anywhere is `error.message` (its source chain included), a panic's message and
//! location are `error.message` and `error.stack_trace` with `error.type` `panic`, and the
//! access line's `status`, `duration_ms` and `bytes` are `http.response.status_code`,
//! `event.duration` (whole nanoseconds) and `http.response.body.bytes`. Each such key is
//! written once; a second field for it goes to `labels.` like any other.

use std::cell::Cell;
use std::sync::Arc;

use reqscope_core::redact::Redaction;
use reqscope_core::{FieldValue, RequestContext};
use tracing::field::Field;
use tracing::{Event, Metadata};

use crate::json::{
    Message, Mode, Target, Values, write_f64_text, write_ip, write_roles, write_str, write_str_contents,
};
use crate::keys::{BaggageField, KeyStyle, Reserved, Seen, taken_by_context_field, write_baggage, write_key};
use crate::names::FieldNames;
use crate::redact::{ACCESS_TARGET, HeaderKey, REDACTED_VALUE, redacts_field, write_headers};

/// The ECS version the lines conform to (a macro, to be spelled into pre-built keys).
macro_rules! ecs_version {
    () => {
        "8.11.0"
    };
}

/// The ECS version the lines conform to.
pub(crate) const ECS_VERSION: &str = ecs_version!();

/// The outgoing-call line's target (`reqscope-tower`'s `OUTGOING_TARGET`).
pub(crate) const OUTGOING_TARGET: &str = "reqscope::outgoing";
/// The panic line's target.
pub(crate) const PANIC_TARGET: &str = "reqscope::panic";
/// The target of an `ApiError`'s line.
const ERROR_TARGET: &str = "reqscope::error";

/// Keys of ECS labels: `,"labels.<name>":`, the name with `.`, `*` and `\` made `_`.
pub(crate) struct EcsLabelStyle;

/// The bytes a label name may not have (the spec's "de-dotting"): each becomes `_`.
fn replaced(b: u8) -> bool {
    matches!(b, b'.' | b'*' | b'\\')
}

impl KeyStyle for EcsLabelStyle {
    const OPEN: &'static [u8] = b",\"labels.";
    const CLOSE: &'static [u8] = b"\":";
    const FIELD_PREFIX: &'static [u8] = b"fields_";
    const SPAN_PREFIX: &'static [u8] = b"span_";
    const HEADER_PREFIX: &'static [u8] = b"header_";

    fn render(buf: &mut Vec<u8>, name: &str) {
        if Self::is_plain(name) {
            buf.extend_from_slice(name.as_bytes());
            return;
        }
        for (i, part) in name.split(['.', '*', '\\']).enumerate() {
            if i > 0 {
                buf.push(b'_');
            }
            write_str_contents(buf, part);
        }
    }

    fn is_plain(name: &str) -> bool {
        !name.bytes().any(|b| b < 0x20 || b == b'"' || replaced(b))
    }

    fn renders_as(name: &str, rendered: &[u8]) -> bool {
        // Without anything to escape, a name renders byte for byte, dots made `_`: compared
        // without a copy, since most label names have dots.
        if !name.bytes().any(|b| b < 0x20 || b == b'"') {
            return name.len() == rendered.len()
                && name.bytes().map(|b| if replaced(b) { b'_' } else { b }).eq(rendered.iter().copied());
        }
        let mut own = Vec::new();
        Self::render(&mut own, name);
        own == rendered
    }
}

/// What an ECS line needs besides the line itself: the label names that are taken.
#[derive(Debug, Clone)]
pub(crate) struct EcsKeys {
    /// In the label space: the JSON line's stamped names (ECS names are fixed, so the
    /// default ones) and the baggage fields' names.
    reserved: Reserved,
}

impl EcsKeys {
    pub(crate) fn new() -> Self {
        EcsKeys { reserved: Reserved::new::<EcsLabelStyle>(&FieldNames::default()) }
    }

    pub(crate) fn with_baggage(mut self, baggage: Arc<[BaggageField]>) -> Self {
        self.reserved = self.reserved.with_baggage::<EcsLabelStyle>(baggage);
        self
    }

    pub(crate) fn reserved(&self) -> &Reserved {
        &self.reserved
    }
}

/// Which of reqscope's own lines a line is, by its target: it decides which event fields have
/// ECS names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `reqscope::access`: the access line, a WebSocket's close line.
    Access,
    /// `reqscope::outgoing`: an outgoing call's line.
    Outgoing,
    /// `reqscope::panic`: a caught panic.
    Panic,
    /// `reqscope::job`: a job's end line.
    Job,
    /// `reqscope::error`: an `ApiError` answered.
    Error,
    Other,
}

impl Kind {
    fn of(target: &str) -> Self {
        match target {
            ACCESS_TARGET => Kind::Access,
            OUTGOING_TARGET => Kind::Outgoing,
            PANIC_TARGET => Kind::Panic,
            reqscope_core::job::JOB_TARGET => Kind::Job,
            ERROR_TARGET => Kind::Error,
            _ => Kind::Other,
        }
    }
}

/// An ECS (or `reqscope.`) key an event field can be written under: its bit among the keys
/// a line has written, the key as `,"name":`, how the value is written.
struct Own {
    bit: u32,
    key: &'static [u8],
    mode: Mode,
}

macro_rules! own {
    ($($name:ident = $bit:literal, $key:literal, $mode:ident;)*) => {
        $(const $name: Own = Own { bit: 1 << $bit, key: concat!(",\"", $key, "\":").as_bytes(), mode: Mode::$mode };)*
    };
}

own! {
    ERROR_MESSAGE = 0, "error.message", Text;
    ERROR_TYPE = 1, "error.type", Text;
    ERROR_STACK_TRACE = 2, "error.stack_trace", Text;
    ERROR_CODE = 3, "error.code", Text;
    STATUS_CODE = 4, "http.response.status_code", Native;
    DURATION = 5, "event.duration", Nanos;
    BODY_BYTES = 6, "http.response.body.bytes", Native;
    URL_FULL = 7, "url.full", Text;
    GRPC_STATUS = 8, "reqscope.grpc_status", Native;
    SAMPLE_RATE = 9, "reqscope.sample_rate", Native;
    ABORTED = 10, "reqscope.aborted", Native;
    MESSAGES_RECEIVED = 11, "reqscope.messages_received", Native;
    MESSAGES_SENT = 12, "reqscope.messages_sent", Native;
    PARENT_SPAN_ID = 13, "reqscope.parent_span_id", Native;
    OUTCOME = 14, "reqscope.outcome", Native;
    QUEUE_MS = 15, "reqscope.queue_ms", Native;
}

/// The key an event field named `name` takes on a line of `kind`, if it has one of its own.
fn own_key(kind: Kind, name: &str) -> Option<&'static Own> {
    use Kind::{Access, Error, Job, Outgoing, Panic};
    Some(match (name, kind) {
        ("error", _) => &ERROR_MESSAGE,
        ("backtrace", _) => &ERROR_STACK_TRACE,
        ("panic", Panic | Job) => &ERROR_MESSAGE,
        ("location", Panic | Job) => &ERROR_STACK_TRACE,
        ("status", Access | Outgoing | Error) => &STATUS_CODE,
        ("duration_ms", Access | Outgoing | Job) => &DURATION,
        ("bytes", Access) => &BODY_BYTES,
        ("url", Outgoing) => &URL_FULL,
        ("code", Error) => &ERROR_CODE,
        ("grpc_status", Access) => &GRPC_STATUS,
        ("sample_rate", Access) => &SAMPLE_RATE,
        ("aborted", Access | Outgoing) => &ABORTED,
        ("messages_received", Access) => &MESSAGES_RECEIVED,
        ("messages_sent", Access) => &MESSAGES_SENT,
        ("parent_span_id", Outgoing) => &PARENT_SPAN_ID,
        ("outcome", Job) => &OUTCOME,
        ("queue_ms", Job) => &QUEUE_MS,
        _ => return None,
    })
}

/// Writes one ECS JSON object and a newline into `buf`. `meta` is the event's metadata, or
/// that of the `log` record it stands for.
#[allow(clippy::too_many_arguments)] // one call site, in the hot path: no struct to build
pub(crate) fn ecs_line(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &EcsKeys,
    redaction: &Redaction,
    timestamp: &[u8],
    event: &Event<'_>,
    meta: &Metadata<'_>,
    ctx: Option<&RequestContext>,
    spans: &mut dyn FnMut(&mut Vec<u8>, &mut Seen),
) {
    seen.clear();
    buf.extend_from_slice(b"{\"@timestamp\":\"");
    // RFC 3339 digits and punctuation: nothing to escape.
    buf.extend_from_slice(timestamp);
    buf.extend_from_slice(b"\",\"log.level\":\"");
    buf.extend_from_slice(meta.level().as_str().as_bytes());
    buf.push(b'"');
    event.record(&mut Values { target: Message { buf, key: b",\"message\":" }, redaction });
    buf.extend_from_slice(concat!(",\"ecs.version\":\"", ecs_version!(), "\",\"log.logger\":").as_bytes());
    write_str(buf, meta.target());
    let kind = Kind::of(meta.target());
    if let Some(ctx) = ctx {
        write_context(buf, seen, keys, redaction, ctx, kind);
    }
    spans(buf, seen);
    let fields = EventFields { buf, seen, reserved: &keys.reserved, kind, written: 0, mode: Mode::Text, panic: false };
    event.record(&mut Values { target: fields, redaction });
    buf.extend_from_slice(b"}\n");
}

fn write_context(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &EcsKeys,
    redaction: &Redaction,
    ctx: &RequestContext,
    kind: Kind,
) {
    buf.extend_from_slice(b",\"http.request.id\":");
    write_str(buf, ctx.id().as_str());
    if let Some(trace) = ctx.trace() {
        // Lowercase hex: nothing to escape.
        buf.extend_from_slice(b",\"trace.id\":\"");
        buf.extend_from_slice(trace.trace_id().as_bytes());
        buf.extend_from_slice(b"\",\"span.id\":\"");
        buf.extend_from_slice(trace.span_id().as_bytes());
        // The transaction is the request's span: on an outgoing call's line, the span is the
        // call's and the request's is its parent.
        let transaction = match (kind, trace.parent_id()) {
            (Kind::Outgoing, Some(parent)) => parent,
            _ => trace.span_id(),
        };
        buf.extend_from_slice(b"\",\"transaction.id\":\"");
        buf.extend_from_slice(transaction.as_bytes());
        buf.push(b'"');
    }
    ctx.read_patch(|patch| {
        if let Some(user) = &patch.user_id {
            buf.extend_from_slice(b",\"user.id\":");
            write_str(buf, user);
        }
        if let Some(org) = &patch.org_id {
            buf.extend_from_slice(b",\"organization.id\":");
            write_str(buf, org);
        }
        if let Some(method) = ctx.method() {
            buf.extend_from_slice(b",\"http.request.method\":");
            write_str(buf, method.as_str());
        }
        if let Some(path) = ctx.path() {
            buf.extend_from_slice(b",\"url.path\":");
            write_str(buf, path);
        }
        // ECS has no field for the route template: a label, whose name is reserved.
        if let Some(route) = &patch.route {
            buf.extend_from_slice(b",\"labels.route\":");
            write_str(buf, route);
        }
        if let Some(ip) = ctx.client_ip() {
            buf.extend_from_slice(b",\"client.ip\":");
            write_ip(buf, ip);
        }
        if !patch.roles.is_empty() {
            buf.extend_from_slice(b",\"user.roles\":");
            write_roles(buf, &patch.roles);
        }
        let mut digits = itoa::Buffer::new();
        if let Some(remaining) = patch.rate_limit_remaining {
            buf.extend_from_slice(b",\"reqscope.rate_limit_remaining\":");
            buf.extend_from_slice(digits.format(remaining).as_bytes());
        }
        if let Some(reset) = patch.rate_limit_reset {
            buf.extend_from_slice(b",\"reqscope.rate_limit_reset\":");
            buf.extend_from_slice(digits.format(reset).as_bytes());
        }
        if let Some(job) = ctx.job() {
            buf.extend_from_slice(b",\"reqscope.job\":");
            write_str(buf, job.name());
            if let Some(id) = job.id() {
                buf.extend_from_slice(b",\"reqscope.job_id\":");
                write_str(buf, id);
            }
            buf.extend_from_slice(b",\"reqscope.attempt\":");
            buf.extend_from_slice(digits.format(job.attempt()).as_bytes());
        }
        for (name, value) in &patch.fields {
            write_key::<EcsLabelStyle>(buf, seen, name, EcsLabelStyle::FIELD_PREFIX, |key| {
                taken_by_context_field::<EcsLabelStyle>(&keys.reserved, key)
            });
            if redacts_field(redaction, name, value) {
                buf.extend_from_slice(REDACTED_VALUE);
                continue;
            }
            match value {
                FieldValue::Str(v) => write_str(buf, v),
                FieldValue::I64(v) => write_quoted(buf, digits.format(*v)),
                FieldValue::U64(v) => write_quoted(buf, digits.format(*v)),
                FieldValue::F64(v) => write_f64_text(buf, *v),
                FieldValue::Bool(v) => write_quoted(buf, if *v { "true" } else { "false" }),
            }
        }
        write_baggage::<EcsLabelStyle>(buf, seen, &keys.reserved, redaction, &patch.baggage, write_str);
    });
    if !ctx.logged_headers().is_empty() && kind == Kind::Access {
        // The user agent has an ECS field; every other header is a label.
        let agent = Cell::new(false);
        let own = |name: &str| {
            if name == "user-agent" && !agent.replace(true) {
                HeaderKey::Own(b",\"user_agent.original\":")
            } else {
                HeaderKey::Header
            }
        };
        write_headers::<EcsLabelStyle>(buf, seen, &keys.reserved, redaction, ctx.logged_headers(), own, write_str);
    }
}

/// Writes `"text"`; `text` has nothing to escape (digits, `true`).
fn write_quoted(buf: &mut Vec<u8>, text: &str) {
    buf.push(b'"');
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'"');
}

/// An event's fields other than its message: under their ECS key when they have one (and it
/// is still free), as labels otherwise.
struct EventFields<'a> {
    buf: &'a mut Vec<u8>,
    seen: &'a mut Seen,
    reserved: &'a Reserved,
    kind: Kind,
    /// The bits of the ECS keys written so far.
    written: u32,
    mode: Mode,
    /// The field being written is a panic's message: `error.type` follows it.
    panic: bool,
}

impl Target for EventFields<'_> {
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") {
            return false;
        }
        if let Some(own) = own_key(self.kind, name)
            && self.written & own.bit == 0
        {
            self.written |= own.bit;
            self.buf.extend_from_slice(own.key);
            self.mode = own.mode;
            self.panic = name == "panic";
            return true;
        }
        write_key::<EcsLabelStyle>(self.buf, self.seen, name, EcsLabelStyle::FIELD_PREFIX, |key| {
            self.reserved.contains(key)
        });
        self.mode = Mode::Text;
        self.panic = false;
        true
    }
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
    fn finish(&mut self, _field: &Field) {
        if std::mem::take(&mut self.panic) && self.written & ERROR_TYPE.bit == 0 {
            self.written |= ERROR_TYPE.bit;
            self.buf.extend_from_slice(ERROR_TYPE.key);
            self.buf.extend_from_slice(b"\"panic\"");
        }
    }
    fn mode(&self) -> Mode {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{capture, check_ecs_line, request, request_with_headers};
    use crate::{Format, LogLayer, MemoryWriter};
    use reqscope_core::RequestId;
    use serde_json::{Map, Value, json};

    fn rendered(name: &str) -> String {
        let mut buf = Vec::new();
        EcsLabelStyle::render(&mut buf, name);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn label_names_are_de_dotted_and_escaped() {
        assert_eq!(rendered("tenant"), "tenant");
        assert_eq!(rendered("db.statement"), "db_statement");
        assert_eq!(rendered("a*b\\c.d"), "a_b_c_d");
        assert_eq!(rendered("q\"u.o\nte"), "q\\\"u_o\\nte");
        for name in ["tenant", "db.statement", "a*b\\c.d", "q\"u.o\nte", "", "é.✓"] {
            assert!(EcsLabelStyle::renders_as(name, rendered(name).as_bytes()), "{name}");
        }
        assert!(EcsLabelStyle::renders_as("a.b", b"a_b"));
        assert!(!EcsLabelStyle::renders_as("a.b", b"a.b"));
        assert!(!EcsLabelStyle::renders_as("ab", b"a_b"));
    }

    fn ecs(logs: &MemoryWriter) -> Vec<Map<String, Value>> {
        logs.lines().iter().map(|line| check_ecs_line(line)).collect()
    }

    fn layer(w: MemoryWriter) -> LogLayer<MemoryWriter> {
        LogLayer::new().with_format(Format::Ecs).with_writer(w)
    }

    #[test]
    fn lines_outside_a_request_follow_the_spec() {
        let logs = capture(layer, || {
            tracing::info!("starting");
            tracing::warn!(port = 80u16, "no message field below");
            tracing::info!(answer = 42);
        });
        let lines = ecs(&logs);
        assert_eq!(lines[0]["message"], "starting");
        assert_eq!(lines[0]["log.level"], "INFO");
        assert_eq!(lines[0]["ecs.version"], ECS_VERSION);
        assert_eq!(lines[0]["log.logger"], module_path!());
        assert_eq!(lines[1]["labels.port"], "80");
        assert!(lines[2].get("message").is_none(), "{:?}", lines[2]);
        assert_eq!(lines[2]["labels.answer"], "42");
        assert!(lines.iter().all(|l| l.get("http.request.id").is_none() && l.get("trace.id").is_none()));
    }

    #[test]
    fn the_context_is_written_under_ecs_names() {
        let ctx = request("ecs-1");
        ctx.set_user_id("7");
        ctx.set_org_id("acme");
        ctx.set_route("/users/{id}");
        ctx.set_roles(["admin", "log-debug"]);
        ctx.set_rate_limit(4, 30);
        ctx.set_field("tenant", "eu");
        ctx.set_field("retries", 2u64);
        ctx.set_field("ratio", 0.5);
        ctx.set_field("beta", true);
        let logs = capture(layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                let span = tracing::info_span!("checkout", order_id = 7, db.name = "main");
                span.in_scope(|| tracing::info!(rows = 3u64, ok = true, debugged = ?"x", "fetched"));
            })
        });
        let line = &ecs(&logs)[0];
        let span = ctx.trace().unwrap().span_id().as_str().to_owned();
        let expected = json!({
            "log.level": "INFO", "message": "fetched", "ecs.version": ECS_VERSION, "log.logger": module_path!(),
            "http.request.id": "ecs-1", "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736", "span.id": span,
            "transaction.id": span, "user.id": "7", "organization.id": "acme", "http.request.method": "GET",
            "url.path": "/users/7", "labels.route": "/users/{id}", "client.ip": "10.1.2.3",
            "user.roles": ["admin", "log-debug"], "reqscope.rate_limit_remaining": 4, "reqscope.rate_limit_reset": 30,
            "labels.tenant": "eu", "labels.retries": "2", "labels.ratio": "0.5", "labels.beta": "true",
            "labels.order_id": "7", "labels.db_name": "main", "labels.rows": "3", "labels.ok": "true",
            "labels.debugged": "\"x\"",
        });
        let mut without_time = line.clone();
        assert!(without_time.remove("@timestamp").is_some());
        assert_eq!(Value::Object(without_time), expected);
    }

    #[test]
    fn access_lines_carry_the_response_under_ecs_names() {
        let ctx = request_with_headers(
            "ecs-access",
            &[("user-agent", "curl/8.5.0"), ("x-client", "web"), ("authorization", "Bearer v-secret")],
        );
        let logs = capture(layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::info!("handler");
                tracing::info!(
                    target: ACCESS_TARGET,
                    status = 200u16, grpc_status = 5u64, duration_ms = 12.345, bytes = 15u64, sample_rate = 0.25,
                    aborted = true, "request completed"
                );
                tracing::info!(target: ACCESS_TARGET, duration_ms = 3.0, messages_received = 2u64, messages_sent = 1u64, "websocket closed");
            })
        });
        let lines = ecs(&logs);
        assert!(lines[0].keys().all(|k| !k.starts_with("http.response") && !k.starts_with("user_agent")));
        assert!(lines[0].get("labels.header_x-client").is_none(), "headers only on access lines");
        let access = &lines[1];
        assert_eq!(access["http.response.status_code"], 200);
        assert_eq!(access["event.duration"], 12_345_000);
        assert_eq!(access["http.response.body.bytes"], 15);
        assert_eq!(access["reqscope.grpc_status"], 5);
        assert_eq!(access["reqscope.sample_rate"], 0.25);
        assert_eq!(access["reqscope.aborted"], true);
        assert_eq!(access["user_agent.original"], "curl/8.5.0");
        assert_eq!(access["labels.header_x-client"], "web");
        assert_eq!(access["labels.header_authorization"], "[redacted]");
        assert!(!logs.contents().contains("v-secret"));
        assert_eq!(lines[2]["event.duration"], 3_000_000);
        assert_eq!(lines[2]["reqscope.messages_received"], 2);
        assert_eq!(lines[2]["reqscope.messages_sent"], 1);
    }

    #[test]
    fn errors_and_panics_fill_the_error_fields() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("query failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("connection reset"));
        let logs = capture(layer, || {
            tracing::error!(error = &err as &dyn std::error::Error, "boom");
            tracing::warn!(error = %"plain text", backtrace = "at a\nat b", "degraded");
            tracing::error!(target: PANIC_TARGET, panic = "oh no", location = "src/x.rs:10:5", "handler panicked");
            tracing::error!(
                target: reqscope_core::job::JOB_TARGET, outcome = "panic", duration_ms = 1.5, queue_ms = 0.25,
                panic = "job fell", location = "src/job.rs:3:1", "job failed"
            );
            tracing::error!(target: ERROR_TARGET, status = 503u16, code = %"unavailable", error = %"db down", "database unavailable");
        });
        let lines = ecs(&logs);
        assert_eq!(lines[0]["error.message"], "query failed: connection reset");
        assert!(lines[0].get("error.type").is_none(), "no type known: {:?}", lines[0]);
        assert_eq!(lines[1]["error.message"], "plain text");
        assert_eq!(lines[1]["error.stack_trace"], "at a\nat b");
        assert_eq!(lines[1]["log.level"], "WARN");
        for (line, message, at) in [(&lines[2], "oh no", "src/x.rs:10:5"), (&lines[3], "job fell", "src/job.rs:3:1")] {
            assert_eq!(line["error.message"], message);
            assert_eq!(line["error.type"], "panic");
            assert_eq!(line["error.stack_trace"], at);
            assert!(line.get("labels.panic").is_none() && line.get("labels.location").is_none());
        }
        assert_eq!(lines[3]["event.duration"], 1_500_000);
        assert_eq!(lines[3]["reqscope.outcome"], "panic");
        assert_eq!(lines[3]["reqscope.queue_ms"], 0.25);
        assert_eq!(lines[4]["http.response.status_code"], 503);
        assert_eq!(lines[4]["error.code"], "unavailable");
        assert_eq!(lines[4]["error.message"], "db down");
    }

    #[test]
    fn an_outgoing_call_names_the_request_span_as_its_transaction() {
        let request = request("ecs-out");
        let call = request.trace().unwrap().child();
        let line_ctx = Arc::new(
            RequestContext::builder(request.id().clone())
                .method(http::Method::POST)
                .path("/next")
                .trace(call.clone())
                .build(),
        );
        let parent = request.trace().unwrap().span_id().as_str().to_owned();
        let logs = capture(layer, || {
            RequestContext::scope_sync(line_ctx, || {
                tracing::info!(
                    target: OUTGOING_TARGET, url = "http://next/next", status = 201u16, duration_ms = 2.0,
                    parent_span_id = parent.as_str(), "outgoing call"
                )
            })
        });
        let line = &ecs(&logs)[0];
        assert_eq!(line["span.id"], call.span_id().as_str());
        assert_eq!(line["transaction.id"], parent.as_str());
        assert_eq!(line["reqscope.parent_span_id"], parent.as_str());
        assert_eq!(line["url.full"], "http://next/next");
        assert_eq!(line["url.path"], "/next");
        assert_eq!(line["http.request.method"], "POST");
        assert_eq!(line["http.response.status_code"], 201);
    }

    #[test]
    fn a_job_line_carries_the_job() {
        let job = reqscope_core::job::Job::new("welcome_email").with_id("m-1").with_attempt(2);
        let ctx = Arc::new(RequestContext::builder(RequestId::parse("job-req").unwrap()).job(job).build());
        let logs = capture(layer, || RequestContext::scope_sync(ctx, || tracing::info!("sent")));
        let line = &ecs(&logs)[0];
        assert_eq!(line["reqscope.job"], "welcome_email");
        assert_eq!(line["reqscope.job_id"], "m-1");
        assert_eq!(line["reqscope.attempt"], 2);
        assert_eq!(line["http.request.id"], "job-req");
    }

    #[test]
    fn no_field_takes_an_ecs_name_or_another_label() {
        let ctx = request_with_headers("ecs-keys", &[("x-client", "web")]);
        ctx.set_field("tenant", "eu");
        ctx.set_field("status", "ctx");
        ctx.set_field("header.x-client", "forged");
        ctx.set_field("labels.route", "forged");
        ctx.set_baggage("session", "s-1").unwrap();
        let logs = capture(
            |w| layer(w).baggage_fields(["session"]),
            || {
                RequestContext::scope_sync(Arc::clone(&ctx), || {
                    let span = tracing::info_span!("op", tenant = "span", db.name = "outer", request_id = "span");
                    let _entered = span.enter();
                    tracing::info!(
                        target: ACCESS_TARGET,
                        tenant = "event", a.b = 1, a_b = 2, request_id = "forged", route = "forged",
                        http.request.id = "forged", error.message = "forged", labels.tenant = "forged",
                        baggage_session = "forged", db_name = "event", ecs.version = "0", status = 200u16,
                        status_code = 1, "hi"
                    );
                })
            },
        );
        let line = &ecs(&logs)[0];
        let owned = ["@timestamp", "log.level", "message", "ecs.version", "log.logger", "http.request.id", "trace.id"];
        for key in owned {
            assert!(line.contains_key(key), "{key}");
        }
        assert_eq!(line["http.request.id"], "ecs-keys");
        assert_eq!(line["ecs.version"], ECS_VERSION);
        assert!(line.get("labels.route").is_none(), "no route was set: {line:?}");
        assert_eq!(line["labels.tenant"], "eu");
        assert_eq!(line["labels.fields_status"], "ctx", "a context field cannot pass for a line key");
        assert_eq!(line["labels.fields_header_x-client"], "forged");
        assert_eq!(line["labels.header_x-client"], "web");
        assert_eq!(line["labels.labels_route"], "forged");
        assert_eq!(line["labels.baggage_session"], "s-1");
        assert_eq!(line["labels.fields_baggage_session"], "forged");
        assert_eq!(line["labels.span_tenant"], "span");
        assert_eq!(line["labels.span_request_id"], "span");
        assert_eq!(line["labels.span_db_name"], "outer");
        assert_eq!(line["labels.db_name"], "event");
        assert_eq!(line["labels.fields_tenant"], "event");
        assert_eq!(line["labels.a_b"], "1");
        assert_eq!(line["labels.fields_a_b"], "2");
        assert_eq!(line["labels.fields_request_id"], "forged");
        assert_eq!(line["labels.fields_route"], "forged");
        assert_eq!(line["labels.http_request_id"], "forged");
        assert_eq!(line["labels.error_message"], "forged");
        assert_eq!(line["labels.labels_tenant"], "forged");
        assert_eq!(line["labels.ecs_version"], "0");
        assert_eq!(line["http.response.status_code"], 200);
        assert_eq!(line["labels.status_code"], "1");
        // Every key is the format's own or a label.
        let own = |k: &str| {
            k.starts_with("labels.")
                || owned.contains(&k)
                || ["span.id", "transaction.id", "http.request.method", "url.path", "client.ip"].contains(&k)
                || k == "http.response.status_code"
        };
        assert!(line.keys().all(|k| own(k)), "{line:?}");
    }

    #[test]
    fn a_second_field_for_an_ecs_key_is_a_label() {
        let logs = capture(
            layer,
            || tracing::error!(target: PANIC_TARGET, error = "first", panic = "second", location = "a.rs:1:1", "x"),
        );
        let line = &ecs(&logs)[0];
        assert_eq!(line["error.message"], "first");
        assert_eq!(line["labels.panic"], "second");
        assert!(line.get("error.type").is_none(), "the panic is not error.message: {line:?}");
        assert_eq!(line["error.stack_trace"], "a.rs:1:1");
    }

    #[test]
    fn hostile_content_stays_one_valid_line() {
        let nasty = "a\"b\\c\nd\r\u{1b}[31m\u{0}\"}\n{\"forged\":1";
        let ctx = request("ecs-nasty");
        ctx.set_field(nasty, nasty);
        let logs = capture(layer, || {
            RequestContext::scope_sync(
                ctx,
                || tracing::warn!(input = nasty, dbg = ?nasty, error = %nasty, nan = f64::NAN, inf = f64::INFINITY, bytes = &b"\x00\x01"[..], "msg {nasty}"),
            )
        });
        assert_eq!(logs.lines().len(), 1, "{}", logs.contents());
        let line = &ecs(&logs)[0];
        assert_eq!(line["message"], format!("msg {nasty}"));
        assert_eq!(line["labels.input"], nasty);
        assert_eq!(line["error.message"], nasty);
        assert_eq!(line["labels.nan"], "NaN");
        assert_eq!(line["labels.inf"], "inf");
        assert_eq!(line["labels.bytes"], "[0,1]");
        let label = line.keys().find(|k| k.starts_with("labels.a\"b")).expect("the custom field's label");
        assert_eq!(label, "labels.a\"b_c\nd\r\u{1b}[31m\u{0}\"}\n{\"forged\":1");
        assert!(line.get("forged").is_none());
    }

    #[test]
    fn every_source_is_redacted() {
        let ctx = request_with_headers("ecs-redact", &[("x-auth-token", "v-header")]);
        ctx.set_field("api_key", "v-custom");
        ctx.set_baggage("session.token", "v-baggage").unwrap();
        let redaction = Redaction::new().redact_values(|_key: &str, value: &str| value.contains("v-hook"));
        let logs = capture(
            |w| layer(w).baggage_fields(["session.token"]).redaction(redaction),
            || {
                RequestContext::scope_sync(ctx, || {
                    let span = tracing::info_span!("op", db_password = "v-span", memo = %"v-hook span");
                    let _entered = span.enter();
                    tracing::info!(token = "v-event", error = %"v-hook error", note = 7, "said v-hook");
                    tracing::info!(target: ACCESS_TARGET, status = 200u16, "request completed");
                })
            },
        );
        let text = logs.contents();
        assert!(!text.contains("v-"), "{text}");
        let lines = ecs(&logs);
        for key in
            ["labels.api_key", "labels.baggage_session_token", "labels.db_password", "labels.memo", "labels.token"]
        {
            assert_eq!(lines[0][key], "[redacted]", "{key}");
        }
        assert_eq!(lines[0]["error.message"], "[redacted]");
        assert_eq!(lines[0]["message"], "[redacted]");
        assert_eq!(lines[0]["labels.note"], "7");
        assert_eq!(lines[1]["labels.header_x-auth-token"], "[redacted]");
    }

    #[test]
    fn log_records_keep_their_target() {
        let logs = capture(layer, || {
            tracing_log::format_trace(
                &tracing_log::log::Record::builder()
                    .args(format_args!("slow query {}", 1))
                    .level(tracing_log::log::Level::Warn)
                    .target("legacy::db")
                    .build(),
            )
            .unwrap();
        });
        let line = &ecs(&logs)[0];
        assert_eq!(line["log.logger"], "legacy::db");
        assert_eq!(line["message"], "slow query 1");
        assert!(line.keys().all(|k| !k.starts_with("labels.log")), "{line:?}");
    }
}
