//! The JSON line, written straight into a reused buffer.
//!
//! Keys are escaped once, when the layer is built; values are escaped as they are written:
//! text without `"`, `\` or control characters is copied as is, anything else goes through
//! `serde_json`'s string escaping. Numbers use `itoa` / `ryu`, as `serde_json` does. The
//! output is always exactly one valid JSON object and a newline.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::Arc;

use reqscope_core::__private::ErrorChain;
use reqscope_core::redact::Redaction;
use reqscope_core::{FieldValue, RequestContext};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};

use crate::keys::{BaggageField, KeyStyle, Reserved, Seen, write_baggage, write_key};
use crate::names::FieldNames;
use crate::redact::{ACCESS_TARGET, HeaderKey, REDACTED_VALUE, redacts_field, with_text, write_headers};
use crate::spans::Fragment;

/// The keys of a line, pre-escaped as `,"name":`.
#[derive(Debug, Clone)]
pub(crate) struct JsonKeys {
    reserved: Reserved,
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
    job: Box<[u8]>,
    job_id: Box<[u8]>,
    attempt: Box<[u8]>,
}

fn key(name: &str) -> Box<[u8]> {
    let mut out = vec![b','];
    write_str(&mut out, name);
    out.push(b':');
    out.into_boxed_slice()
}

impl JsonKeys {
    pub(crate) fn new(names: &FieldNames) -> Self {
        Self::with_reserved(names, Reserved::new::<JsonStyle>(names))
    }

    /// The keys of `names`, with `reserved` taken (a format that reserves more names).
    pub(crate) fn with_reserved(names: &FieldNames, reserved: Reserved) -> Self {
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
            job: key(names.job),
            job_id: key(names.job_id),
            attempt: key(names.attempt),
            reserved,
        }
    }

    pub(crate) fn reserved(&self) -> &Reserved {
        &self.reserved
    }

    /// The same keys, with `baggage` written on lines (see [`crate::keys`]).
    pub(crate) fn with_baggage(mut self, baggage: Arc<[BaggageField]>) -> Self {
        self.reserved = self.reserved.with_baggage::<JsonStyle>(baggage);
        self
    }

    /// Writes the key of a context or event field (see [`crate::keys`]).
    pub(crate) fn field(&self, buf: &mut Vec<u8>, seen: &mut Seen, name: &str) {
        write_key::<JsonStyle>(buf, seen, name, JsonStyle::FIELD_PREFIX, |key| self.reserved.contains(key));
    }
}

/// JSON keys: `,"escaped":`.
pub(crate) struct JsonStyle;

impl KeyStyle for JsonStyle {
    const OPEN: &'static [u8] = b",\"";
    const CLOSE: &'static [u8] = b"\":";
    fn render(buf: &mut Vec<u8>, name: &str) {
        write_str_contents(buf, name);
    }
    fn is_plain(name: &str) -> bool {
        !needs_escape(name)
    }
}

/// Writes one JSON object and a newline into `buf`. `meta` is the event's metadata, or that of
/// the `log` record it stands for.
#[allow(clippy::too_many_arguments)] // one call site, in the hot path: no struct to build
pub(crate) fn json_line(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &JsonKeys,
    redaction: &Redaction,
    timestamp: &[u8],
    event: &Event<'_>,
    meta: &Metadata<'_>,
    ctx: Option<&RequestContext>,
    spans: &mut dyn FnMut(&mut Vec<u8>, &mut Seen),
) {
    seen.clear();
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
    event.record(&mut Values { target: EventFields { buf, seen, keys, message_pass: true }, redaction });
    if let Some(ctx) = ctx {
        write_context(buf, seen, keys, redaction, ctx, meta);
    }
    spans(buf, seen);
    event.record(&mut Values { target: EventFields { buf, seen, keys, message_pass: false }, redaction });
    buf.extend_from_slice(b"}\n");
}

fn write_context(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &JsonKeys,
    redaction: &Redaction,
    ctx: &RequestContext,
    meta: &Metadata<'_>,
) {
    buf.extend_from_slice(&keys.request_id);
    // Validated id bytes (`[A-Za-z0-9._:+/=@-]`): nothing to escape.
    write_plain(buf, ctx.id().as_str());
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
        write_request(buf, seen, keys, redaction, ctx, patch);
    });
    if !ctx.logged_headers().is_empty() && meta.target() == ACCESS_TARGET {
        write_headers::<JsonStyle>(
            buf,
            seen,
            &keys.reserved,
            redaction,
            ctx.logged_headers(),
            |_| HeaderKey::Header,
            write_str,
        );
    }
}

/// Writes the stamped keys from `method` on — the request, the roles, the rate limit, the job
/// — then the custom context fields and the baggage entries.
pub(crate) fn write_request(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    keys: &JsonKeys,
    redaction: &Redaction,
    ctx: &RequestContext,
    patch: &reqscope_core::Patch,
) {
    if let Some(method) = ctx.method() {
        buf.extend_from_slice(&keys.method);
        // An HTTP token: no quote, backslash or control character.
        write_plain(buf, method.as_str());
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
    if let Some(job) = ctx.job() {
        buf.extend_from_slice(&keys.job);
        write_str(buf, job.name());
        if let Some(id) = job.id() {
            buf.extend_from_slice(&keys.job_id);
            write_str(buf, id);
        }
        buf.extend_from_slice(&keys.attempt);
        write_u64(buf, u64::from(job.attempt()));
    }
    for (name, value) in &patch.fields {
        write_key::<JsonStyle>(buf, seen, name, JsonStyle::FIELD_PREFIX, |key| {
            crate::keys::taken_by_context_field::<JsonStyle>(&keys.reserved, key)
        });
        if redacts_field(redaction, name, value) {
            buf.extend_from_slice(REDACTED_VALUE);
            continue;
        }
        match value {
            FieldValue::Str(v) => write_str(buf, v),
            FieldValue::I64(v) => buf.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
            FieldValue::U64(v) => write_u64(buf, *v),
            FieldValue::F64(v) => write_f64(buf, *v),
            FieldValue::Bool(v) => write_bool(buf, *v),
        }
    }
    write_baggage::<JsonStyle>(buf, seen, &keys.reserved, redaction, &patch.baggage, write_str);
}

pub(crate) fn write_roles(buf: &mut Vec<u8>, roles: &[Arc<str>]) {
    buf.push(b'[');
    for (i, role) in roles.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, role);
    }
    buf.push(b']');
}

pub(crate) fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        // Assembled on the stack from a table and copied once, instead of `Display` (the
        // formatting machinery) or a write per octet.
        IpAddr::V4(v4) => {
            // `"255.255.255.255"` is 17 bytes; 3 spare so that every octet copies 3 bytes.
            let mut text = [0u8; 20];
            text[0] = b'"';
            let mut at = 1;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[at] = b'.';
                    at += 1;
                }
                let (digits, len) = OCTETS[usize::from(octet)];
                text[at..at + 3].copy_from_slice(&digits);
                at += usize::from(len);
            }
            text[at] = b'"';
            buf.extend_from_slice(&text[..=at]);
        }
        IpAddr::V6(_) => {
            buf.push(b'"');
            let _ = write!(Escaper(buf), "{ip}");
            buf.push(b'"');
        }
    }
}

/// The decimal digits of every byte value (left-aligned) and how many there are.
static OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut n = 0;
    while n < 256 {
        let (hundreds, tens, ones) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        table[n] = if n >= 100 {
            ([b'0' + hundreds, b'0' + tens, b'0' + ones], 3)
        } else if n >= 10 {
            ([b'0' + tens, b'0' + ones, 0], 2)
        } else {
            ([b'0' + ones, 0, 0], 1)
        };
        n += 1;
    }
    table
};

pub(crate) fn write_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub(crate) fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if write_thousandths(buf, v) {
        return;
    }
    if v.is_finite() {
        buf.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        // JSON has no NaN or infinity; serde_json writes null too.
        buf.extend_from_slice(b"null");
    }
}

/// Writes `v` as ryu would when it has at most three decimals and is below 10⁹ in magnitude:
/// durations in milliseconds made from microseconds, as on every access line, where ryu's
/// general algorithm costs several times more. `false` (nothing written) for other values.
///
/// The digits are the same: `v` is the double nearest to `n / 1000` (the division of an exact
/// integer is correctly rounded), so `n / 1000` written out reads back as `v`; and below 10⁹
/// half an ulp is under 10⁻⁷, so no decimal with fewer digits reads back as `v` — ryu's
/// shortest is this one, in the same notation (`1.0`, `0.25`, `-0.0`).
fn write_thousandths(buf: &mut Vec<u8>, v: f64) -> bool {
    // NaN is neither below nor above: refused with the rest.
    if v.is_nan() || v.abs() >= 1e9 {
        return false;
    }
    let thousandths = (v.abs() * 1000.0).round();
    if thousandths / 1000.0 != v.abs() {
        return false;
    }
    // Below 10¹², exact in a u64.
    let n = thousandths as u64;
    if v.is_sign_negative() {
        buf.push(b'-');
    }
    buf.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
    buf.push(b'.');
    let fraction = n % 1000;
    if fraction == 0 {
        buf.push(b'0');
    } else {
        let digits = [b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8, b'0' + (fraction % 10) as u8];
        let kept = if fraction.is_multiple_of(100) {
            1
        } else if fraction.is_multiple_of(10) {
            2
        } else {
            3
        };
        buf.extend_from_slice(&digits[..kept]);
    }
    true
}

/// Writes `v` as a JSON string: its shortest digits, or `NaN`, `inf`, `-inf`.
pub(crate) fn write_f64_text(buf: &mut Vec<u8>, v: f64) {
    buf.push(b'"');
    if write_thousandths(buf, v) {
    } else if v.is_finite() {
        buf.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        let _ = write!(Escaper(buf), "{v}");
    }
    buf.push(b'"');
}

pub(crate) fn write_bool(buf: &mut Vec<u8>, v: bool) {
    buf.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Whether `s` has a byte JSON must escape: a control character, `"` or `\\`. Eight bytes at
/// a time (the classic "has a zero / a smaller byte" word tricks, exact for any byte): most
/// values have none, and this runs for every string of every line.
pub(crate) fn needs_escape(s: &str) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const fn has_zero(word: u64) -> bool {
        word.wrapping_sub(ONES) & !word & HIGHS != 0
    }
    let bytes = s.as_bytes();
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_ne_bytes(word);
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
        if below_space || has_zero(word ^ (ONES * u64::from(b'"'))) || has_zero(word ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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

/// Writes `"s"` for text that never needs escaping.
fn write_plain(buf: &mut Vec<u8>, s: &str) {
    debug_assert!(!needs_escape(s), "{s:?} needs escaping");
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

/// Writes `s` escaped, without the surrounding quotes.
pub(crate) fn write_str_contents(buf: &mut Vec<u8>, s: &str) {
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
pub(crate) struct Escaper<'a>(pub(crate) &'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str_contents(self.0, s);
        Ok(())
    }
}

/// How a value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// As JSON: numbers and booleans bare, everything else a string.
    Native,
    /// Always a JSON string: `"3"`, `"true"` (ECS labels are keyword strings).
    Text,
    /// A number of milliseconds, written as whole nanoseconds (ECS `event.duration`).
    Nanos,
}

/// Where a visitor puts the values it renders.
pub(crate) trait Target {
    /// Whether `field` is written; if so, writes what precedes its value.
    fn start(&mut self, field: &Field) -> bool;
    /// The buffer the value goes into.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// Called after the value of `field` is written.
    fn finish(&mut self, _field: &Field) {}
    /// Whether the field just started is redacted by its key too (not only by the value
    /// hook): every field but the message, which is reqscope's own key.
    fn keyed(&self) -> bool {
        true
    }
    /// How the value of the field just started is written.
    fn mode(&self) -> Mode {
        Mode::Native
    }
}

/// Renders each field's value as JSON into its target, or `"[redacted]"`.
pub(crate) struct Values<'r, T> {
    pub(crate) target: T,
    pub(crate) redaction: &'r Redaction,
}

/// Visits an event's fields twice: first for `message` only (its key comes before the
/// context), then for the rest.
struct EventFields<'a> {
    buf: &'a mut Vec<u8>,
    seen: &'a mut Seen,
    keys: &'a JsonKeys,
    message_pass: bool,
}

impl Target for EventFields<'_> {
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        let is_message = name == "message";
        if is_message != self.message_pass || name.starts_with("log.") {
            return false;
        }
        if is_message {
            self.buf.extend_from_slice(&self.keys.message);
        } else {
            self.keys.field(self.buf, self.seen, name);
        }
        true
    }
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
    fn keyed(&self) -> bool {
        !self.message_pass
    }
}

/// Writes an event's message under `key` (pre-escaped `,"message":`), for the formats whose
/// message key is fixed.
pub(crate) struct Message<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
    pub(crate) key: &'a [u8],
}

impl Target for Message<'_> {
    fn start(&mut self, field: &Field) -> bool {
        if field.name() != "message" {
            return false;
        }
        self.buf.extend_from_slice(self.key);
        true
    }
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
    fn keyed(&self) -> bool {
        false
    }
}

/// Renders a span's fields into its [`Fragment`].
pub(crate) struct SpanValues<'a> {
    fragment: &'a mut Fragment,
    start: usize,
    mode: Mode,
}

impl Target for SpanValues<'_> {
    fn start(&mut self, field: &Field) -> bool {
        self.start = self.fragment.bytes_len();
        !field.name().starts_with("log.")
    }
    fn buf(&mut self) -> &mut Vec<u8> {
        self.fragment.bytes_mut()
    }
    fn finish(&mut self, field: &Field) {
        self.fragment.commit(field.name(), self.start);
    }
    fn mode(&self) -> Mode {
        self.mode
    }
}

/// A visitor that renders span fields as JSON values into `fragment` (`Mode::Text`: as
/// strings, for ECS labels).
pub(crate) fn span_values<'a>(fragment: &'a mut Fragment, redaction: &'a Redaction, mode: Mode) -> impl Visit + 'a {
    Values { target: SpanValues { fragment, start: 0, mode }, redaction }
}

impl<T: Target> Values<'_, T> {
    /// Whether `field`'s value is written redacted: its key says so, or the value hook, which
    /// `text` calls with the value as text (only when there is a hook).
    fn redacted(&self, field: &Field, text: impl FnOnce(&dyn Fn(&str) -> bool) -> bool) -> bool {
        let redaction = self.redaction;
        (self.target.keyed() && redaction.is_sensitive_key(field.name()))
            || (redaction.has_value_hook() && text(&|value| redaction.redacts_value(field.name(), value)))
    }

    /// Writes `field`'s value with `write`, or `"[redacted]"`.
    fn write(&mut self, field: &Field, redacted: bool, write: impl FnOnce(&mut Vec<u8>)) {
        let buf = self.target.buf();
        if redacted {
            buf.extend_from_slice(REDACTED_VALUE);
        } else {
            write(buf);
        }
        self.target.finish(field);
    }

    /// Writes a scalar's text (digits, `true`): bare, or quoted in `Mode::Text`.
    fn write_scalar(&mut self, field: &Field, redacted: bool, text: &str) {
        let quoted = self.target.mode() == Mode::Text;
        self.write(field, redacted, |buf| {
            if quoted {
                buf.push(b'"');
                buf.extend_from_slice(text.as_bytes());
                buf.push(b'"');
            } else {
                buf.extend_from_slice(text.as_bytes());
            }
        });
    }

    /// Writes an integer: bare, quoted in `Mode::Text`, in nanoseconds in `Mode::Nanos`.
    fn write_int(&mut self, field: &Field, value: impl itoa::Integer + Copy, as_i128: i128) {
        let redacted = self.redacted(field, |judge| judge(itoa::Buffer::new().format(value)));
        if self.target.mode() == Mode::Nanos {
            let nanos = as_i128.saturating_mul(1_000_000).clamp(i128::from(i64::MIN), i128::from(i64::MAX));
            self.write_scalar(field, redacted, itoa::Buffer::new().format(nanos));
        } else {
            self.write_scalar(field, redacted, itoa::Buffer::new().format(value));
        }
    }

    /// Writes a value as JSON text, formatted by `format`: straight into the line without a
    /// value hook, once into a reused buffer to be judged with one.
    fn write_text(&mut self, field: &Field, format: impl Fn(&mut dyn fmt::Write) -> fmt::Result) {
        if self.target.keyed() && self.redaction.is_sensitive_key(field.name()) {
            return self.write(field, true, |_| ());
        }
        if self.redaction.has_value_hook() {
            write_hooked_text(self.target.buf(), self.redaction, field, &format);
        } else {
            let buf = self.target.buf();
            buf.push(b'"');
            let _ = format(&mut Escaper(buf));
            buf.push(b'"');
        }
        self.target.finish(field);
    }
}

/// Formats a value once, shows it to the value hook, and writes it or `"[redacted]"`. Out of
/// line: without a hook, the hot path stays small.
#[inline(never)]
fn write_hooked_text(
    buf: &mut Vec<u8>,
    redaction: &Redaction,
    field: &Field,
    format: &dyn Fn(&mut dyn fmt::Write) -> fmt::Result,
) {
    with_text(
        |text| {
            let _ = format(text);
        },
        |text| {
            if redaction.redacts_value(field.name(), text) {
                buf.extend_from_slice(REDACTED_VALUE);
            } else {
                write_str(buf, text);
            }
        },
    );
}

impl<T: Target> Visit for Values<'_, T> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.target.start(field) {
            let redacted = self.redacted(field, |judge| judge(ryu::Buffer::new().format(value)));
            match self.target.mode() {
                Mode::Native => self.write(field, redacted, |buf| write_f64(buf, value)),
                // `NaN`, `inf`: a string can say what JSON numbers cannot.
                Mode::Text => self.write(field, redacted, |buf| write_f64_text(buf, value)),
                Mode::Nanos => {
                    let nanos = (value * 1e6).round();
                    if nanos.is_finite() && nanos.abs() < 9.2e18 {
                        self.write_scalar(field, redacted, itoa::Buffer::new().format(nanos as i64));
                    } else {
                        self.write(field, redacted, |buf| buf.extend_from_slice(b"null"));
                    }
                }
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.target.start(field) {
            self.write_int(field, value, i128::from(value));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.target.start(field) {
            self.write_int(field, value, i128::from(value));
        }
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.target.start(field) {
            self.write_int(field, value, value);
        }
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.target.start(field) {
            self.write_int(field, value, i128::try_from(value).unwrap_or(i128::MAX));
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.target.start(field) {
            let text = if value { "true" } else { "false" };
            let redacted = self.redacted(field, |judge| judge(text));
            self.write_scalar(field, redacted, text);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.target.start(field) {
            let redacted = self.redacted(field, |judge| judge(value));
            self.write(field, redacted, |buf| write_str(buf, value));
        }
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        // Bytes are not text; a lossless JSON form is an array of numbers. The hook sees no
        // text of them: only their key decides.
        if self.target.start(field) {
            let redacted = self.redaction.is_sensitive_key(field.name());
            let quoted = self.target.mode() == Mode::Text;
            self.write(field, redacted, |buf| {
                // Digits and commas: a string without anything to escape.
                if quoted {
                    buf.push(b'"');
                }
                let _ = serde_json::to_writer(&mut *buf, value);
                if quoted {
                    buf.push(b'"');
                }
            });
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.target.start(field) {
            self.write_text(field, |out| write!(out, "{}", ErrorChain(value)));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.target.start(field) {
            self.write_text(field, |out| write!(out, "{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_with_three_decimals_are_written_as_ryu_writes_them() {
        let ryu = |v: f64| ryu::Buffer::new().format_finite(v).to_owned();
        let fast = |v: f64| {
            let mut buf = Vec::new();
            write_thousandths(&mut buf, v).then(|| String::from_utf8(buf).unwrap())
        };
        // Every duration up to 2 s, to the microsecond, and spread out up to the bound; both signs.
        let spread = (0..200_000u64).map(|i| i * 4_999_999 + i % 1000);
        for n in (0..2_000_000u64).chain(spread) {
            for v in [n as f64 / 1000.0, -(n as f64 / 1000.0)] {
                if v.abs() < 1e9 {
                    assert_eq!(fast(v).as_deref(), Some(ryu(v).as_str()), "{n}");
                }
            }
        }
        // Anything else is either left to ryu or written as ryu writes it.
        let mut bits = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            // xorshift: every pattern of sign, exponent and mantissa.
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let v = f64::from_bits(bits);
            let scaled = (v.abs() % 1e9 * 1000.0).trunc() / 1000.0;
            for v in [v, scaled, scaled + 1e-4, 1e9, 1e9 - 0.001, f64::NAN, f64::INFINITY] {
                if let Some(text) = fast(v) {
                    assert_eq!(text, ryu(v), "{v:e}");
                }
            }
        }
        assert_eq!(fast(1e9), None);
        assert_eq!(fast(0.0001), None);
        assert_eq!(fast(f64::NAN), None);
    }

    #[test]
    fn the_word_at_a_time_check_finds_every_byte_to_escape() {
        // Every byte value, at every position of strings short and long enough to cover the
        // word loop and the remainder, among plain ASCII and among non-ASCII neighbours.
        for len in 1..=19 {
            for fill in ["a", "é"] {
                for at in 0..len {
                    for byte in 0u8..0x80 {
                        let mut text: Vec<String> = (0..len).map(|_| fill.to_owned()).collect();
                        text[at] = char::from(byte).to_string();
                        let text = text.concat();
                        let expected = text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
                        assert_eq!(needs_escape(&text), expected, "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ip_addresses_are_written_as_displayed() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = Vec::new();
            write_ip(&mut buf, ip);
            assert_eq!(String::from_utf8(buf).unwrap(), format!("\"{ip}\""));
        }
        // Every octet value, in every position (the table's one-, two- and three-digit rows).
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, 255 - n, n / 2, n.wrapping_mul(7)]);
            let mut buf = Vec::new();
            write_ip(&mut buf, ip);
            assert_eq!(String::from_utf8(buf).unwrap(), format!("\"{ip}\""));
        }
    }

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
        let mut seen = Seen::default();
        let mut buf = Vec::new();
        keys.field(&mut buf, &mut seen, "rate_limit_remaining");
        assert_eq!(buf, b",\"fields.rate_limit_remaining\":");
        buf.clear();
        seen.clear();
        keys.field(&mut buf, &mut seen, "rows");
        assert_eq!(buf, b",\"rows\":");
        buf.clear();
        seen.clear();
        keys.field(&mut buf, &mut seen, &"x".repeat(300));
        assert!(buf.starts_with(b",\"xxx"));
    }
}
