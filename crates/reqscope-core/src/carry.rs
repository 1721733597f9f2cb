//! Carrying a request's context out of the process and back: into a queued job, a message, a
//! worker on another machine.
//!
//! ```
//! use reqscope_core::carry::Carried;
//! use reqscope_core::trace::TraceContext;
//! use reqscope_core::{RequestContext, RequestId};
//!
//! let request = RequestContext::builder(RequestId::parse("req-7").unwrap()).trace(TraceContext::new_root()).build();
//! request.set_user_id("42");
//! request.set_field("tenant", "acme");
//! request.set_hidden_field("device_id", "d-1");
//!
//! // The producer puts these headers on the message (AMQP headers, Kafka headers, a row…).
//! let headers = request.carry().to_headers();
//! assert_eq!(headers["x-request-id"], "req-7");
//!
//! // The consumer, maybe in another process, validates them and works inside the result.
//! let restored = Carried::from_headers(&headers).unwrap().into_context();
//! assert_eq!(restored.id().as_str(), "req-7");
//! assert_eq!(restored.user_id().as_deref(), Some("42"));
//! assert_eq!(restored.hidden_field("device_id"), Some("d-1".into()));
//! // The same trace, a span of its own whose parent is the request's span.
//! let (sent, got) = (request.trace().unwrap(), restored.trace().unwrap());
//! assert_eq!(got.trace_id(), sent.trace_id());
//! assert_eq!(got.parent_id(), Some(sent.span_id()));
//! assert_ne!(got.span_id(), sent.span_id());
//! ```
//!
//! A snapshot ([`RequestContext::carry`]) holds the request id, the trace (the request's span
//! becomes the parent of the consumer's), the user, org and roles, the custom and hidden
//! fields, the baggage, the raised log level and the time it was taken. It travels as headers,
//! so that consumers which know nothing of reqscope still see the standard ones:
//!
//! | header | holds |
//! | --- | --- |
//! | `x-request-id` | the request id |
//! | `traceparent`, `tracestate` | the trace, the request's span as the parent |
//! | `baggage` | the W3C baggage |
//! | `reqscope-context` ([`CONTEXT_HEADER`]) | the rest, see below |
//!
//! `reqscope-context` is a list in the `baggage` header's syntax — `key=value` members joined
//! by `,`, values percent-encoded — with the members `v` (the format version, `1`), `at` (when
//! the snapshot was taken, Unix milliseconds, at most the year 9999), `user_id`, `org_id`, one `role` per role,
//! `f.<name>` per custom field and `h.<name>` per hidden field (the name percent-encoded; the
//! value typed by a prefix: `s:` text, `i:` / `u:` integers, `f:` a float, `b:` `true` or
//! `false`), and `log` (`debug` or `trace`) when the request's log level was
//! [raised](crate::RaisedLevel): the job runs at that level too, as the request would have.
//! Unknown members are ignored, so that newer producers can add some.
//!
//! **Restoring parses untrusted bytes** ([`Carried::from_headers`]): every part is checked as
//! the request layer checks incoming headers — the id's grammar, the `traceparent` and
//! `tracestate` rules, the baggage rules and limits, at most [`MAX_CONTEXT_BYTES`] bytes and
//! [`MAX_CONTEXT_ENTRIES`] members of `reqscope-context`, at most [`MAX_VALUE_BYTES`] bytes in
//! any of its values, no control character in a user, org, role or field name, no field name
//! twice. Any violation rejects the whole snapshot with an [`InvalidCarriedContext`] that names
//! the part, never the value. When taking a snapshot, what would break those rules is left out
//! — a value too long or with a control character, a repeated field name, the members that no
//! longer fit in the header's limits —, so that every snapshot taken here restores.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

use crate::baggage::{BAGGAGE, Baggage, InvalidBaggage, decode_value, is_token, percent_encode, trim_ows};
use crate::context::{FieldValue, Patch, RequestContext};
use crate::error::InvalidRequestId;
use crate::id::RequestId;
use crate::level::RaisedLevel;
use crate::trace::{
    InvalidTraceParent, InvalidTraceState, TRACEPARENT, TRACESTATE, TraceContext, TraceParent, TraceState,
};

/// The header that carries what the standard headers cannot: user, org, roles, custom and
/// hidden fields, and the time of the snapshot.
pub const CONTEXT_HEADER: HeaderName = HeaderName::from_static("reqscope-context");

/// The header that carries the request id.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The name of every header a snapshot may use, for transports that copy them one by one.
pub const HEADERS: [&str; 5] = ["x-request-id", "traceparent", "tracestate", "baggage", "reqscope-context"];

/// The longest `reqscope-context` header accepted, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// The most members a `reqscope-context` header may have.
pub const MAX_CONTEXT_ENTRIES: usize = 256;

/// The longest value (user, org, role, field name or field value, decoded) in a
/// `reqscope-context` header, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The latest time `at` may name: the last millisecond of the year 9999.
const LATEST_MILLIS: u64 = 253_402_300_799_999;

/// The format version written in `v`.
const VERSION: &str = "1";

/// Why a carried context was rejected. The message names the part, never its value: it comes
/// from outside and ends up in a log line.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidCarriedContext {
    /// There is no `x-request-id`: the message was not sent with a carried context.
    #[error("no carried context: the message has no x-request-id")]
    MissingRequestId,
    /// A header that is not text (a transport whose headers are typed gave it another type, or
    /// bytes that cannot be a header value).
    #[error("the carried {0} header is not text")]
    NotText(&'static str),
    /// A header that may appear once appears more than once.
    #[error("the carried {0} header appears more than once")]
    Repeated(&'static str),
    /// The request id breaks the id grammar.
    #[error("the carried request id is invalid: {0}")]
    RequestId(InvalidRequestId),
    /// The `traceparent` breaks the W3C rules.
    #[error("the carried traceparent is invalid: {0}")]
    TraceParent(InvalidTraceParent),
    /// The `tracestate` breaks the W3C rules.
    #[error("the carried tracestate is invalid: {0}")]
    TraceState(InvalidTraceState),
    /// A `tracestate` without a `traceparent`.
    #[error("the carried tracestate comes without a traceparent")]
    TraceStateWithoutParent,
    /// The baggage breaks the W3C rules or limits.
    #[error("the carried baggage is invalid: {0}")]
    Baggage(InvalidBaggage),
    /// `reqscope-context` is longer than [`MAX_CONTEXT_BYTES`].
    #[error("the carried reqscope-context is longer than 16384 bytes")]
    ContextTooLong,
    /// `reqscope-context` has more than [`MAX_CONTEXT_ENTRIES`] members.
    #[error("the carried reqscope-context has more than 256 members")]
    ContextTooManyEntries,
    /// A member that is not `key=value` with a token key and a percent-encoded UTF-8 value.
    #[error("a member of the carried reqscope-context is not key=value with a token key and a percent-encoded value")]
    ContextMalformed,
    /// No `v`, or a version this release does not read.
    #[error("the carried reqscope-context has no supported version (v=1)")]
    ContextVersion,
    /// The member named is invalid: repeated, too long, or not of its type.
    #[error("the carried reqscope-context member '{0}' is invalid")]
    ContextValue(&'static str),
}

/// A serializable snapshot of a request context; see the [module docs](self). Its `Debug`
/// shows the keys of hidden fields and baggage, never their values.
#[derive(Clone, PartialEq)]
pub struct Carried {
    id: RequestId,
    parent: Option<(TraceParent, Option<TraceState>)>,
    user_id: Option<Arc<str>>,
    org_id: Option<Arc<str>>,
    roles: Vec<Arc<str>>,
    fields: Vec<(Arc<str>, FieldValue)>,
    hidden: Vec<(Arc<str>, FieldValue)>,
    baggage: Arc<Baggage>,
    carried_at: Option<SystemTime>,
    raised: Option<RaisedLevel>,
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::context::KeysOnly;
        f.debug_struct("Carried")
            .field("id", &self.id)
            .field("parent", &self.parent)
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("roles", &self.roles)
            .field("fields", &self.fields)
            .field("hidden", &KeysOnly(self.hidden.iter().map(|(k, _)| &**k)))
            .field("baggage", &KeysOnly(self.baggage.iter().map(|e| e.key())))
            .field("carried_at", &self.carried_at)
            .field("raised", &self.raised)
            .finish()
    }
}

impl RequestContext {
    /// A snapshot of this context to carry into a job or message: see [`carry`](crate::carry).
    pub fn carry(&self) -> Carried {
        // A context without a trace starts one here, so that the job and this context's later
        // outgoing calls share it.
        let trace = self.trace_or_start();
        let parent =
            TraceParent { trace_id: *trace.trace_id(), parent_id: *trace.span_id(), flags: u8::from(trace.sampled()) };
        let parent = Some((parent, trace.state().cloned()));
        self.read_patch(|patch| Carried {
            id: self.id().clone(),
            parent,
            user_id: patch.user_id.clone(),
            org_id: patch.org_id.clone(),
            roles: patch.roles.to_vec(),
            fields: patch.fields.clone(),
            hidden: patch.hidden.clone(),
            baggage: Arc::clone(&patch.baggage),
            carried_at: Some(SystemTime::now()),
            raised: self.raised_level(),
        })
    }
}

impl Carried {
    /// The request id.
    pub fn request_id(&self) -> &RequestId {
        &self.id
    }

    /// The carrying request's trace and span (the parent of the consumer's span), if it had one.
    pub fn parent(&self) -> Option<&TraceParent> {
        self.parent.as_ref().map(|(parent, _)| parent)
    }

    /// The user.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The organisation.
    pub fn org_id(&self) -> Option<&str> {
        self.org_id.as_deref()
    }

    /// When the snapshot was taken, if the producer said.
    pub fn carried_at(&self) -> Option<SystemTime> {
        self.carried_at
    }

    /// The log level the carrying request was raised to, which the restored context keeps.
    pub fn raised_level(&self) -> Option<RaisedLevel> {
        self.raised
    }

    /// How long ago the snapshot was taken (zero when the clocks disagree), if known.
    pub fn age(&self) -> Option<Duration> {
        self.carried_at.map(|at| SystemTime::now().duration_since(at).unwrap_or_default())
    }

    /// The headers that carry this snapshot: see the [module docs](self).
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(REQUEST_ID_HEADER, self.id.to_header_value());
        if let Some((parent, state)) = &self.parent {
            let trace = TraceContext::from_parts(parent.trace_id, parent.parent_id, None, parent.flags & 1 == 1);
            headers.insert(TRACEPARENT, trace.traceparent());
            if let Some(state) = state {
                headers.insert(TRACESTATE, state.header_value().clone());
            }
        }
        if let Some(baggage) = self.baggage.to_header_value() {
            headers.insert(BAGGAGE, baggage);
        }
        // Percent-encoded tokens and values: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&self.context_header()) {
            headers.insert(CONTEXT_HEADER, value);
        }
        headers
    }

    /// The `reqscope-context` value, within the limits that restoring checks.
    fn context_header(&self) -> String {
        let mut out = String::with_capacity(64);
        let mut entries = 0;
        let mut push = |out: &mut String, key: &str, value: &str| {
            let mut member = String::with_capacity(key.len() + 1 + value.len());
            member.push_str(key);
            member.push('=');
            percent_encode(&mut member, value);
            if entries < MAX_CONTEXT_ENTRIES && out.len() + 1 + member.len() <= MAX_CONTEXT_BYTES {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&member);
                entries += 1;
            }
        };
        push(&mut out, "v", VERSION);
        if let Some(at) = self.carried_at {
            let millis = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
            push(&mut out, "at", &millis.to_string());
        }
        // The rules restoring applies, so that every snapshot taken here restores.
        if let Some(user) = self.user_id.as_deref().filter(|v| is_valid_name(v)) {
            push(&mut out, "user_id", user);
        }
        if let Some(org) = self.org_id.as_deref().filter(|v| is_valid_name(v)) {
            push(&mut out, "org_id", org);
        }
        for role in self.roles.iter().filter(|v| is_valid_name(v)) {
            push(&mut out, "role", role);
        }
        if let Some(level) = self.raised {
            push(&mut out, "log", level.as_str());
        }
        for (prefix, fields) in [("f.", &self.fields), ("h.", &self.hidden)] {
            for (i, (name, value)) in fields.iter().enumerate() {
                let value = encode_field(value);
                // A name given twice (possible through `Patch`'s public lists) goes once: the first.
                let repeated = fields[..i].iter().any(|(earlier, _)| earlier == name);
                if !is_valid_name(name) || !is_valid_value(&value) || repeated {
                    continue;
                }
                let mut key = String::from(prefix);
                encode_name(&mut key, name);
                push(&mut out, &key, &value);
            }
        }
        out
    }

    /// Reads and validates a carried context; see the [module docs](self) for the rules.
    pub fn from_headers(headers: &HeaderMap) -> Result<Carried, InvalidCarriedContext> {
        let id = once(headers, &REQUEST_ID_HEADER, "x-request-id")?.ok_or(InvalidCarriedContext::MissingRequestId)?;
        let id = RequestId::from_bytes(id.as_bytes()).map_err(InvalidCarriedContext::RequestId)?;
        let parent = match TraceParent::from_headers(headers) {
            Ok(parent) => parent,
            Err(InvalidTraceParent::Repeated) => return Err(InvalidCarriedContext::Repeated("traceparent")),
            Err(invalid) => return Err(InvalidCarriedContext::TraceParent(invalid)),
        };
        let state = TraceState::parse_headers(headers).map_err(InvalidCarriedContext::TraceState)?;
        let parent = match (parent, state) {
            (Some(parent), state) => Some((parent, state)),
            (None, None) => None,
            (None, Some(_)) => return Err(InvalidCarriedContext::TraceStateWithoutParent),
        };
        let baggage = Baggage::from_headers(headers).map_err(InvalidCarriedContext::Baggage)?.unwrap_or_default();
        let mut carried = Carried {
            id,
            parent,
            user_id: None,
            org_id: None,
            roles: Vec::new(),
            fields: Vec::new(),
            hidden: Vec::new(),
            baggage: Arc::new(baggage),
            carried_at: None,
            raised: None,
        };
        if let Some(rest) = once(headers, &CONTEXT_HEADER, "reqscope-context")? {
            carried.read_context_header(rest.as_bytes())?;
        }
        Ok(carried)
    }

    fn read_context_header(&mut self, value: &[u8]) -> Result<(), InvalidCarriedContext> {
        use InvalidCarriedContext::{
            ContextMalformed, ContextTooLong, ContextTooManyEntries, ContextValue, ContextVersion,
        };
        if value.len() > MAX_CONTEXT_BYTES {
            return Err(ContextTooLong);
        }
        let mut version = None;
        for (count, member) in value.split(|&b| b == b',').enumerate() {
            if count >= MAX_CONTEXT_ENTRIES {
                return Err(ContextTooManyEntries);
            }
            let member = trim_ows(member);
            let eq = member.iter().position(|&b| b == b'=').ok_or(ContextMalformed)?;
            let key = trim_ows(&member[..eq]);
            if !is_token(key) {
                return Err(ContextMalformed);
            }
            let value = decode_value(trim_ows(&member[eq + 1..])).map_err(|_| ContextMalformed)?;
            let checked = |name: &'static str| -> Result<Arc<str>, InvalidCarriedContext> {
                if !is_valid_name(&value) {
                    return Err(ContextValue(name));
                }
                Ok(Arc::from(value.as_str()))
            };
            match key {
                b"v" => set_once(&mut version, value.clone(), "v")?,
                b"at" => {
                    let millis: u64 = value.parse().map_err(|_| ContextValue("at"))?;
                    if millis > LATEST_MILLIS {
                        return Err(ContextValue("at"));
                    }
                    let at = UNIX_EPOCH + Duration::from_millis(millis);
                    set_once(&mut self.carried_at, at, "at")?;
                }
                b"user_id" => set_once(&mut self.user_id, checked("user_id")?, "user_id")?,
                b"org_id" => set_once(&mut self.org_id, checked("org_id")?, "org_id")?,
                b"role" => self.roles.push(checked("role")?),
                b"log" => {
                    let level = RaisedLevel::parse(value.as_bytes()).ok_or(ContextValue("log"))?;
                    set_once(&mut self.raised, level, "log")?;
                }
                [b'f' | b'h', b'.', name @ ..] => {
                    let field = if key[0] == b'f' { "f" } else { "h" };
                    let name = decode_value(name).map_err(|_| ContextMalformed)?;
                    if !is_valid_name(&name) || !is_valid_value(&value) {
                        return Err(ContextValue(field));
                    }
                    let value = decode_field(&value).ok_or(ContextValue(field))?;
                    let list = if key[0] == b'f' { &mut self.fields } else { &mut self.hidden };
                    if list.iter().any(|(k, _)| **k == *name) {
                        return Err(ContextValue(field));
                    }
                    list.push((Arc::from(name), value));
                }
                // A member of a later minor version: not ours to judge.
                _ => {}
            }
        }
        match version.as_deref() {
            Some(VERSION) => Ok(()),
            _ => Err(ContextVersion),
        }
    }

    /// A context for the work this snapshot was carried to: the same request id, user, org,
    /// roles, fields, baggage and raised log level, and a span of its own in the same trace
    /// (its parent the carrying request's span).
    pub fn into_context(self) -> RequestContext {
        self.into_builder().build()
    }

    /// Where [`into_context`](Self::into_context) and jobs start from.
    pub(crate) fn into_builder(self) -> crate::context::RequestContextBuilder {
        let trace = match self.parent {
            Some((parent, state)) => TraceContext::child_of(parent, state),
            None => TraceContext::new_root(),
        };
        let patch = Patch {
            user_id: self.user_id,
            org_id: self.org_id,
            roles: self.roles.into(),
            fields: self.fields,
            hidden: self.hidden,
            baggage: self.baggage,
            ..Patch::default()
        };
        let builder = RequestContext::builder(self.id).trace(trace).patch(patch);
        match self.raised {
            Some(level) => builder.raised_level(level),
            None => builder,
        }
    }
}

/// A user, org, role or field name that travels: 1 to [`MAX_VALUE_BYTES`] bytes (a user, org
/// or role may not be empty either way: it is `None` or absent then), no control character.
fn is_valid_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_VALUE_BYTES && !text.chars().any(char::is_control)
}

/// A field value that travels, as written (`s:text`, `i:-3`, …): at most [`MAX_VALUE_BYTES`].
fn is_valid_value(encoded: &str) -> bool {
    encoded.len() <= MAX_VALUE_BYTES
}

/// The one value of a header that may appear once.
fn once<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'h HeaderValue>, InvalidCarriedContext> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(InvalidCarriedContext::Repeated(label));
    }
    Ok(first)
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), InvalidCarriedContext> {
    if slot.is_some() {
        return Err(InvalidCarriedContext::ContextValue(name));
    }
    *slot = Some(value);
    Ok(())
}

/// A field name as a token: every byte that is not a token character other than `%` as `%XX`.
fn encode_name(out: &mut String, name: &str) {
    for &byte in name.as_bytes() {
        if byte != b'%' && is_token(&[byte]) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

fn encode_field(value: &FieldValue) -> String {
    match value {
        FieldValue::Str(v) => format!("s:{v}"),
        FieldValue::I64(v) => format!("i:{v}"),
        FieldValue::U64(v) => format!("u:{v}"),
        FieldValue::F64(v) => format!("f:{v}"),
        FieldValue::Bool(v) => format!("b:{v}"),
    }
}

fn decode_field(value: &str) -> Option<FieldValue> {
    let (kind, rest) = value.split_once(':')?;
    Some(match kind {
        "s" => FieldValue::Str(Arc::from(rest)),
        "i" => FieldValue::I64(rest.parse().ok()?),
        "u" => FieldValue::U64(rest.parse().ok()?),
        "f" => FieldValue::F64(rest.parse().ok()?),
        "b" => FieldValue::Bool(rest.parse().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> RequestContext {
        let ctx = RequestContext::builder(RequestId::parse("req-1").unwrap()).trace(TraceContext::new_root()).build();
        ctx.set_user_id("u,1 é");
        ctx.set_org_id("org=7");
        ctx.set_roles(["admin", "a,b"]);
        ctx.set_field("tenant", "acme");
        ctx.set_field("weird key%", -3i64);
        ctx.set_field("n", 7u64);
        ctx.set_field("ratio", 0.5);
        ctx.set_field("flag", true);
        ctx.set_hidden_field("device_id", "d\r\n1");
        ctx.set_baggage("session", "s 1").unwrap();
        ctx.raise_level(Some(RaisedLevel::Debug));
        ctx
    }

    #[test]
    fn every_part_round_trips() {
        let ctx = full();
        let carried = ctx.carry();
        let back = Carried::from_headers(&carried.to_headers()).unwrap();
        // Milliseconds on the wire.
        let at = carried.carried_at().unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(back.carried_at().unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis(), at);
        assert_eq!(Carried { carried_at: carried.carried_at, ..back.clone() }, carried);
        let restored = back.into_context();
        assert_eq!(restored.read_patch(|p| p.clone()), Patch { route: None, ..Patch::clone(&ctx.patch()) });
        assert_eq!(restored.trace().unwrap().parent_id(), Some(ctx.trace().unwrap().span_id()));
        assert_eq!(restored.raised_level(), Some(RaisedLevel::Debug));
    }

    #[test]
    fn an_unraised_request_carries_no_level() {
        let ctx = RequestContext::new(RequestId::parse("calm").unwrap());
        let headers = ctx.carry().to_headers();
        assert!(!headers[CONTEXT_HEADER].to_str().unwrap().contains("log="));
        assert_eq!(Carried::from_headers(&headers).unwrap().into_context().raised_level(), None);
    }

    #[test]
    fn a_context_without_a_trace_starts_the_one_its_job_continues() {
        let ctx = RequestContext::new(RequestId::parse("bare").unwrap());
        let headers = ctx.carry().to_headers();
        assert!(headers.get(BAGGAGE).is_none());
        let restored = Carried::from_headers(&headers).unwrap().into_context();
        assert_eq!(restored.id().as_str(), "bare");
        let (started, continued) = (ctx.trace().expect("started by carry"), restored.trace().unwrap());
        assert_eq!(continued.trace_id(), started.trace_id());
        assert_eq!(continued.parent_id(), Some(started.span_id()));
    }

    #[test]
    fn what_would_not_restore_is_left_out_when_carrying() {
        let ctx = RequestContext::new(RequestId::parse("odd").unwrap());
        ctx.set_user_id("line\nbreak");
        ctx.set_field("", "no name");
        ctx.set_field("long", "x".repeat(MAX_VALUE_BYTES));
        ctx.set_field("kept", 1u64);
        ctx.update(|p| p.hidden.extend([("twice".into(), 1u64.into()), ("twice".into(), 2u64.into())]));
        let restored = Carried::from_headers(&ctx.carry().to_headers()).unwrap();
        assert_eq!(restored.user_id(), None);
        assert_eq!(restored.fields, [(Arc::from("kept"), FieldValue::U64(1))]);
        assert_eq!(restored.hidden, [(Arc::from("twice"), FieldValue::U64(1))]);
    }

    #[test]
    fn debug_shows_no_hidden_value_and_no_baggage_value() {
        let ctx = full();
        let shown = format!("{:?} {:?}", ctx.carry(), ctx);
        assert!(shown.contains("device_id") && shown.contains("session"), "{shown}");
        assert!(!shown.contains("d\\r\\n1") && !shown.contains("s 1"), "{shown}");
    }

    #[test]
    fn only_standard_headers_are_enough() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, "abc".parse().unwrap());
        headers.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let carried = Carried::from_headers(&headers).unwrap();
        assert_eq!(carried.parent().unwrap().parent_id.as_str(), "00f067aa0ba902b7");
        assert_eq!(carried.carried_at(), None);
    }

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, "abc".parse().unwrap());
        headers.append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn every_bad_part_has_its_error() {
        use InvalidCarriedContext as E;
        let long_field = format!("v=1,f.x=s:{}", "a".repeat(MAX_VALUE_BYTES));
        let cases: &[(&str, &str, E)] = &[
            ("traceparent", "00-zz", E::TraceParent(InvalidTraceParent::Length)),
            ("tracestate", "a=1", E::TraceStateWithoutParent),
            ("baggage", "a", E::Baggage(InvalidBaggage::NoValue)),
            ("reqscope-context", "user_id=1", E::ContextVersion),
            ("reqscope-context", "v=2", E::ContextVersion),
            ("reqscope-context", "v=1,v=1", E::ContextValue("v")),
            ("reqscope-context", "v=1,junk", E::ContextMalformed),
            ("reqscope-context", "v=1,a b=1", E::ContextMalformed),
            ("reqscope-context", "v=1,x=%zz", E::ContextMalformed),
            ("reqscope-context", "v=1,at=soon", E::ContextValue("at")),
            ("reqscope-context", "v=1,at=18446744073709551615", E::ContextValue("at")),
            ("reqscope-context", "v=1,user_id=1,user_id=2", E::ContextValue("user_id")),
            ("reqscope-context", "v=1,org_id=%0A", E::ContextValue("org_id")),
            ("reqscope-context", "v=1,f.x=q:1", E::ContextValue("f")),
            ("reqscope-context", "v=1,log=info", E::ContextValue("log")),
            ("reqscope-context", "v=1,log=debug,log=trace", E::ContextValue("log")),
            ("reqscope-context", "v=1,f.x=i:1.5", E::ContextValue("f")),
            ("reqscope-context", "v=1,f.=s:1", E::ContextValue("f")),
            ("reqscope-context", "v=1,h.x=s:1,h.x=s:2", E::ContextValue("h")),
            ("reqscope-context", "v=1,f.a%0Ab=s:1", E::ContextValue("f")),
            ("reqscope-context", &long_field, E::ContextValue("f")),
        ];
        for (header, value, expected) in cases {
            assert_eq!(Carried::from_headers(&with(header, value)), Err(*expected), "{header}: {value}");
        }
        let mut bad_id = HeaderMap::new();
        bad_id.insert(REQUEST_ID_HEADER, "a b".parse().unwrap());
        assert_eq!(Carried::from_headers(&bad_id), Err(E::RequestId(InvalidRequestId::ForbiddenByte)));
        assert_eq!(Carried::from_headers(&HeaderMap::new()), Err(E::MissingRequestId));
        let mut twice = with("x-request-id", "def");
        assert_eq!(Carried::from_headers(&twice), Err(E::Repeated("x-request-id")));
        twice.remove(REQUEST_ID_HEADER);
        twice.insert(REQUEST_ID_HEADER, "abc".parse().unwrap());
        twice.append(CONTEXT_HEADER, "v=1".parse().unwrap());
        twice.append(CONTEXT_HEADER, "v=1".parse().unwrap());
        assert_eq!(Carried::from_headers(&twice), Err(E::Repeated("reqscope-context")));
    }

    #[test]
    fn limits_are_kept_on_both_sides() {
        let too_many = format!("v=1{}", ",role=r".repeat(MAX_CONTEXT_ENTRIES));
        assert_eq!(
            Carried::from_headers(&with("reqscope-context", &too_many)),
            Err(InvalidCarriedContext::ContextTooManyEntries)
        );
        let too_long = format!("v=1,x={}", "a".repeat(MAX_CONTEXT_BYTES));
        assert_eq!(
            Carried::from_headers(&with("reqscope-context", &too_long)),
            Err(InvalidCarriedContext::ContextTooLong)
        );
        let long_user = format!("v=1,user_id={}", "a".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(
            Carried::from_headers(&with("reqscope-context", &long_user)),
            Err(InvalidCarriedContext::ContextValue("user_id"))
        );

        // What does not fit is left out when carrying, so the snapshot always restores.
        let ctx = RequestContext::new(RequestId::parse("big").unwrap());
        ctx.set_user_id("u".repeat(MAX_VALUE_BYTES + 1));
        ctx.set_roles((0..400).map(|i| format!("role-{i}")));
        for i in 0..100 {
            ctx.set_hidden_field(format!("h{i}"), "x".repeat(300));
        }
        let restored = Carried::from_headers(&ctx.carry().to_headers()).unwrap();
        assert_eq!(restored.user_id(), None);
        assert!(restored.roles.len() < 400 && restored.roles.len() >= 250);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn headers_from(parts: &[(&'static str, Vec<u8>)]) -> HeaderMap {
            let mut headers = HeaderMap::new();
            for (name, bytes) in parts {
                if let Ok(value) = HeaderValue::from_bytes(bytes) {
                    headers.append(HeaderName::from_static(name), value);
                }
            }
            headers
        }

        /// Text with now and then a control character.
        const TEXT: &str = "(\\PC|[\\x00-\\x1f]){0,24}";

        proptest! {
            #[test]
            fn arbitrary_headers_never_panic(
                id in proptest::collection::vec(any::<u8>(), 0..40),
                parent in proptest::collection::vec(any::<u8>(), 0..64),
                state in proptest::collection::vec(any::<u8>(), 0..64),
                baggage in proptest::collection::vec(any::<u8>(), 0..128),
                rest in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let headers = headers_from(&[
                    ("x-request-id", id),
                    ("traceparent", parent),
                    ("tracestate", state),
                    ("baggage", baggage),
                    ("reqscope-context", rest),
                ]);
                if let Ok(carried) = Carried::from_headers(&headers) {
                    // Whatever restores carries on unchanged.
                    let again = Carried::from_headers(&carried.to_headers()).unwrap();
                    prop_assert_eq!(again.request_id(), carried.request_id());
                    let _ = carried.into_context();
                }
            }

            #[test]
            fn mutated_snapshots_never_panic_and_what_restores_carries_on(
                header in 0usize..5,
                edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            ) {
                let mut headers = full().carry().to_headers();
                let name = HeaderName::from_static(HEADERS[header]);
                let mut bytes = headers.get(&name).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
                for (index, byte) in edits {
                    if bytes.is_empty() {
                        bytes.push(byte);
                    } else {
                        let at = index % bytes.len();
                        bytes[at] = byte;
                    }
                }
                match HeaderValue::from_bytes(&bytes) {
                    Ok(value) => { headers.insert(name, value); }
                    Err(_) => { headers.remove(name); }
                }
                if let Ok(carried) = Carried::from_headers(&headers) {
                    let again = Carried::from_headers(&carried.to_headers());
                    prop_assert!(again.is_ok(), "{:?}", again);
                    let again = again.unwrap();
                    prop_assert_eq!(&again.fields, &carried.fields);
                    prop_assert_eq!(&again.hidden, &carried.hidden);
                    prop_assert_eq!(again.user_id(), carried.user_id());
                }
            }

            #[test]
            fn any_context_round_trips(
                user in TEXT,
                roles in proptest::collection::vec(TEXT, 0..5),
                fields in proptest::collection::vec((TEXT, TEXT), 0..5),
                number in any::<i64>(),
            ) {
                let ctx = RequestContext::new(RequestId::parse("p").unwrap());
                ctx.set_user_id(user.as_str());
                ctx.set_roles(roles.iter().map(String::as_str));
                for (name, value) in &fields {
                    ctx.set_field(name.as_str(), value.as_str());
                    ctx.set_hidden_field(name.as_str(), number);
                }
                let restored = Carried::from_headers(&ctx.carry().to_headers()).unwrap().into_context();
                let (sent, got) = (ctx.patch(), restored.patch());
                // A user, role or field name that is empty or has a control character is left
                // out; everything else comes back.
                let valid = |text: &str| !text.is_empty() && !text.chars().any(char::is_control);
                let user_sent = sent.user_id.as_deref().filter(|u| valid(u));
                prop_assert_eq!(user_sent, got.user_id.as_deref());
                let roles_sent: Vec<_> = sent.roles.iter().filter(|r| valid(r)).collect();
                prop_assert_eq!(roles_sent, got.roles.iter().collect::<Vec<_>>());
                let named = |list: &[(Arc<str>, FieldValue)]| -> Vec<(Arc<str>, FieldValue)> {
                    list.iter().filter(|(name, _)| valid(name)).cloned().collect()
                };
                prop_assert_eq!(named(&sent.fields), got.fields.clone());
                prop_assert_eq!(named(&sent.hidden), got.hidden.clone());
            }
        }
    }
}
