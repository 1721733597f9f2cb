//! The human-readable line: `time LEVEL target: message key=value …`.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use reqscope_core::{FieldValue, RequestContext};
use tracing::Event;
use tracing::field::{Field, Visit};

use crate::names::FieldNames;

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
        if let Some(trace) = ctx.trace() {
            line.pair(names.trace_id, &trace.trace_id().as_str());
            line.pair(names.span_id, &trace.span_id().as_str());
        }
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
