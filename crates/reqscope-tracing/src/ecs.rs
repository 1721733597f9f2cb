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
}
