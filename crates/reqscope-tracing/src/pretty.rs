//! The human-readable line: `time LEVEL target: message key=value …`.
//!
//! It reads like logfmt, and no content can make it lie: keys are unique (see
//! [`crate::keys`]) and bare only when made of `[A-Za-z0-9_.:@/-]` (any other key is quoted);
//! string values are quoted and escaped; a message, `%display` or `?debug` value is written
//! as is only when it contains neither `=` nor `"` (or is one well-formed quoted string), and
//! quoted otherwise. So a value can never look like a `request_id=…` pair of its own, and
//! control characters are escaped, so it can never start a new line.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use reqscope_core::redact::Redaction;
use reqscope_core::{FieldValue, RequestContext};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};

use crate::keys::{KeyStyle, Reserved, Seen, write_baggage, write_key};
use crate::names::FieldNames;
use crate::redact::{ACCESS_TARGET, HeaderKey, REDACTED_VALUE, redacts_field, with_text, write_headers};
use crate::spans::Fragment;

/// Pretty keys: ` key=`.
pub(crate) struct PrettyStyle;

impl KeyStyle for PrettyStyle {
    const OPEN: &'static [u8] = b" ";
    const CLOSE: &'static [u8] = b"=";
    fn render(buf: &mut Vec<u8>, name: &str) {
        if Self::is_plain(name) {
            buf.extend_from_slice(name.as_bytes());
        } else {
            let _ = write!(Escaped(buf), "{name:?}");
        }
    }
    fn is_plain(name: &str) -> bool {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@/-".contains(&b))
    }
}

/// Writes one human-readable line into `buf`: `time LEVEL target: message key=value …`.
/// `meta` is the event's metadata, or that of the `log` record it stands for.
#[allow(clippy::too_many_arguments)] // one call site: no struct to build per line
pub(crate) fn pretty_line(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    names: &FieldNames,
    reserved: &Reserved,
    redaction: &Redaction,
    timestamp: &[u8],
    event: &Event<'_>,
    meta: &Metadata<'_>,
    ctx: Option<&RequestContext>,
    spans: &mut dyn FnMut(&mut Vec<u8>, &mut Seen),
) {
    seen.clear();
    buf.extend_from_slice(timestamp);
    let _ = write!(buf, " {:>5} ", meta.level().as_str());
    let _ = write!(Escaped(buf), "{}:", meta.target());
    event.record(&mut EventFields { buf, seen, reserved, redaction, only_message: true });
    if let Some(ctx) = ctx {
        stamp(buf, names.request_id, &ctx.id().as_str());
        if let Some(trace) = ctx.trace() {
            stamp(buf, names.trace_id, &trace.trace_id().as_str());
            stamp(buf, names.span_id, &trace.span_id().as_str());
        }
        ctx.read_patch(|patch| {
            if let Some(user) = &patch.user_id {
                stamp(buf, names.user_id, &&**user);
            }
            if let Some(org) = &patch.org_id {
                stamp(buf, names.org_id, &&**org);
            }
            if let Some(method) = ctx.method() {
                stamp(buf, names.method, &method.as_str());
            }
            if let Some(path) = ctx.path() {
                stamp(buf, names.path, &path);
            }
            if let Some(route) = &patch.route {
                stamp(buf, names.route, &&**route);
            }
            if let Some(ip) = ctx.client_ip() {
                stamp(buf, names.client_ip, &format_args!("{ip}"));
            }
            if !patch.roles.is_empty() {
                stamp(buf, names.roles, &patch.roles);
            }
            if let Some(remaining) = patch.rate_limit_remaining {
                stamp(buf, names.rate_limit_remaining, &remaining);
            }
            if let Some(reset) = patch.rate_limit_reset {
                stamp(buf, names.rate_limit_reset, &reset);
            }
            if let Some(job) = ctx.job() {
                stamp(buf, names.job, &job.name());
                if let Some(id) = job.id() {
                    stamp(buf, names.job_id, &id);
                }
                stamp(buf, names.attempt, &job.attempt());
            }
            for (key, value) in &patch.fields {
                write_key::<PrettyStyle>(buf, seen, key, PrettyStyle::FIELD_PREFIX, |k| {
                    crate::keys::taken_by_context_field::<PrettyStyle>(reserved, k)
                });
                if redacts_field(redaction, key, value) {
                    buf.extend_from_slice(REDACTED_VALUE);
                    continue;
                }
                let _ = match value {
                    FieldValue::Str(v) => write!(Escaped(buf), "{:?}", &**v),
                    FieldValue::I64(v) => write!(Escaped(buf), "{v}"),
                    FieldValue::U64(v) => write!(Escaped(buf), "{v}"),
                    FieldValue::F64(v) => write!(Escaped(buf), "{v:?}"),
                    FieldValue::Bool(v) => write!(Escaped(buf), "{v}"),
                };
            }
            write_baggage::<PrettyStyle>(buf, seen, reserved, redaction, &patch.baggage, |buf, value| {
                let _ = write!(Escaped(buf), "{value:?}");
            });
        });
        if !ctx.logged_headers().is_empty() && meta.target() == ACCESS_TARGET {
            let quoted = |buf: &mut Vec<u8>, value: &str| {
                let _ = write!(Escaped(buf), "{value:?}");
            };
            let headers = ctx.logged_headers();
            write_headers::<PrettyStyle>(buf, seen, reserved, redaction, headers, |_| HeaderKey::Header, quoted);
        }
    }
    spans(buf, seen);
    event.record(&mut EventFields { buf, seen, reserved, redaction, only_message: false });
    buf.push(b'\n');
}

/// Writes ` key=value` for a stamped key (reserved: never taken by another field).
fn stamp(buf: &mut Vec<u8>, key: &str, value: &dyn fmt::Debug) {
    buf.push(b' ');
    PrettyStyle::render(buf, key);
    buf.push(b'=');
    let _ = write!(Escaped(buf), "{value:?}");
}

/// Visits an event's fields twice: the message first, then the rest after the context.
struct EventFields<'a> {
    buf: &'a mut Vec<u8>,
    seen: &'a mut Seen,
    reserved: &'a Reserved,
    redaction: &'a Redaction,
    only_message: bool,
}

impl Visit for EventFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if self.key(field) {
            if self.redaction.redacts(field.name(), value) {
                self.buf.extend_from_slice(REDACTED_VALUE);
            } else {
                let _ = write!(Escaped(self.buf), "{value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            if self.only_message {
                self.buf.push(b' ');
                // The message is reqscope's own key: only the value hook judges it.
                write_judged(self.buf, self.redaction, field, value, false, false);
            }
        } else if self.key(field) {
            write_judged(self.buf, self.redaction, field, value, true, true);
        }
    }
}

/// Writes `value` as [`write_unambiguous`] does, or `"[redacted]"` when `redaction` says so
/// (by the field's key when `keyed`, by the value hook); formatted once either way.
fn write_judged(
    buf: &mut Vec<u8>,
    redaction: &Redaction,
    field: &Field,
    value: &dyn fmt::Debug,
    literal: bool,
    keyed: bool,
) {
    if keyed && redaction.is_sensitive_key(field.name()) {
        buf.extend_from_slice(REDACTED_VALUE);
    } else if !redaction.has_value_hook() {
        write_unambiguous(buf, value, literal);
    } else {
        with_text(
            |text| {
                let _ = write!(text, "{value:?}");
            },
            |text| {
                if redaction.redacts_value(field.name(), text) {
                    buf.extend_from_slice(REDACTED_VALUE);
                } else {
                    write_unambiguous(buf, &format_args!("{text}"), literal);
                }
            },
        );
    }
}

impl EventFields<'_> {
    /// Writes the key of a field other than the message if this pass takes it.
    fn key(&mut self, field: &Field) -> bool {
        if self.only_message || field.name().starts_with("log.") {
            return false;
        }
        write_key::<PrettyStyle>(self.buf, self.seen, field.name(), PrettyStyle::FIELD_PREFIX, |k| {
            self.reserved.contains(k)
        });
        true
    }
}

/// Renders a span's fields into its [`Fragment`], as the event's are.
pub(crate) struct SpanValues<'a> {
    pub(crate) fragment: &'a mut Fragment,
    pub(crate) redaction: &'a Redaction,
}

impl Visit for SpanValues<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !field.name().starts_with("log.") {
            let start = self.fragment.bytes_len();
            let buf = self.fragment.bytes_mut();
            if self.redaction.redacts(field.name(), value) {
                buf.extend_from_slice(REDACTED_VALUE);
            } else {
                let _ = write!(Escaped(buf), "{value:?}");
            }
            self.fragment.commit(field.name(), start);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !field.name().starts_with("log.") {
            let start = self.fragment.bytes_len();
            write_judged(self.fragment.bytes_mut(), self.redaction, field, value, true, true);
            self.fragment.commit(field.name(), start);
        }
    }
}

/// Writes `value`'s `Debug` text as is when it cannot be mistaken for a pair of its own or
/// the end of a value (no `=` and no `"`, or — with `literal` — one well-formed quoted
/// string), quoted and escaped otherwise.
fn write_unambiguous(buf: &mut Vec<u8>, value: &dyn fmt::Debug, literal: bool) {
    let start = buf.len();
    let _ = write!(Escaped(buf), "{value:?}");
    let text = &buf[start..];
    if (literal && is_quoted_string(text)) || !text.iter().any(|&b| b == b'=' || b == b'"') {
        return;
    }
    let raw = String::from_utf8_lossy(text).into_owned();
    buf.truncate(start);
    let _ = write!(Escaped(buf), "{raw:?}");
}

/// `"…"` with every inner `"` escaped.
fn is_quoted_string(text: &[u8]) -> bool {
    let [b'"', inner @ .., b'"'] = text else {
        return false;
    };
    let mut escaped = false;
    for &b in inner {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return false,
            _ => {}
        }
    }
    !escaped
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_are_recognised() {
        assert!(is_quoted_string(br#""a \"b\" = c""#));
        assert!(!is_quoted_string(br#""a" x="b""#));
        assert!(!is_quoted_string(br#""a\""#));
        assert!(!is_quoted_string(b"\""));
    }
}
