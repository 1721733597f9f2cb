use std::cell::RefCell;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use reqscope_core::{REQUEST_SPAN_TARGET, RequestContext};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::InitError;
use crate::json::{JsonKeys, json_line};
use crate::names::FieldNames;
use crate::pretty::pretty_line;
use crate::time::rfc3339_now;

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// `time LEVEL target: message key=value …`, for people at a terminal. Stamped with the
    /// same context fields as JSON.
    Pretty,
}

impl FromStr for Format {
    type Err = InitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "pretty" => Ok(Format::Pretty),
            _ => Err(InitError::Format(s.to_owned())),
        }
    }
}

/// The request context a span was created in, kept so that events on threads without the
/// task-local still find it.
struct SpanContext(Arc<RequestContext>);

/// A `tracing_subscriber::Layer` that writes each event as one line stamped with the current
/// request context. See the [crate docs](crate) for the line format.
///
/// Compose it like any layer: `registry().with(EnvFilter::…).with(LogLayer::new())`.
#[derive(Debug)]
pub struct LogLayer<W = fn() -> std::io::Stdout> {
    names: FieldNames,
    keys: JsonKeys,
    format: Format,
    writer: W,
}

impl LogLayer {
    /// JSON lines with the default key names, written to stdout (blocking; pass a
    /// [`non_blocking`](crate::non_blocking) writer in production).
    pub fn new() -> Self {
        let names = FieldNames::default();
        LogLayer { keys: JsonKeys::new(&names), names, format: Format::Json, writer: std::io::stdout }
    }
}

impl Default for LogLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> LogLayer<W> {
    /// Writes lines through `writer`: any tracing-subscriber `MakeWriter`, such as
    /// [`NonBlocking`](crate::NonBlocking), [`MemoryWriter`](crate::MemoryWriter) or
    /// `std::io::stderr`.
    pub fn with_writer<W2>(self, writer: W2) -> LogLayer<W2>
    where
        W2: for<'w> MakeWriter<'w> + 'static,
    {
        LogLayer { names: self.names, keys: self.keys, format: self.format, writer }
    }

    /// Uses other key names.
    pub fn with_field_names(mut self, names: FieldNames) -> Self {
        self.keys = JsonKeys::new(&names);
        self.names = names;
        self
    }

    /// Chooses JSON or pretty lines.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Human-readable lines instead of JSON.
    pub fn pretty(self) -> Self {
        self.with_format(Format::Pretty)
    }

    fn write_line(&self, event: &Event<'_>, ctx: Option<&RequestContext>)
    where
        W: for<'w> MakeWriter<'w>,
    {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let timestamp = rfc3339_now();
        let emit = |buf: &mut Vec<u8>| {
            buf.clear();
            match self.format {
                Format::Json => json_line(buf, &self.keys, &timestamp, event, ctx),
                Format::Pretty => pretty_line(buf, &self.names, &timestamp, event, ctx),
            }
            let _ = self.writer.make_writer_for(event.metadata()).write_all(buf);
            // Keep a burst's big line from pinning memory in every thread forever.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        };
        // An event raised while formatting (by a Debug impl) finds the buffer borrowed and
        // gets a fresh one instead of panicking.
        BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => emit(&mut buf),
            Err(_) => emit(&mut Vec::new()),
        });
    }
}

impl<S, W> Layer<S> for LogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Only the request span itself: a long-lived span that happens to be created during
        // a request (a pool's connection task) must not carry that request's context on.
        if attrs.metadata().target() == REQUEST_SPAN_TARGET
            && let Some(request) = RequestContext::current()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(SpanContext(request));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let written = RequestContext::with(|request| self.write_line(event, Some(request)));
        if written.is_some() {
            return;
        }
        let from_span = ctx.event_scope(event).and_then(|scope| {
            scope.into_iter().find_map(|span| span.extensions().get::<SpanContext>().map(|c| Arc::clone(&c.0)))
        });
        self.write_line(event, from_span.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryWriter;
    use reqscope_core::RequestId;
    use tracing_subscriber::prelude::*;

    fn capture(layer: impl FnOnce(MemoryWriter) -> LogLayer<MemoryWriter>, f: impl FnOnce()) -> MemoryWriter {
        let logs = MemoryWriter::new();
        let subscriber = tracing_subscriber::registry().with(layer(logs.clone()));
        tracing::subscriber::with_default(subscriber, f);
        logs
    }

    fn json(f: impl FnOnce()) -> Vec<serde_json::Value> {
        capture(|w| LogLayer::new().with_writer(w), f).json_lines()
    }

    fn request(id: &str) -> Arc<RequestContext> {
        Arc::new(
            RequestContext::builder(RequestId::parse(id).unwrap())
                .method(http::Method::GET)
                .path("/users/7")
                .client_ip("10.1.2.3".parse().unwrap())
                .trace(reqscope_core::TraceContext::child_of(
                    reqscope_core::TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                        .unwrap(),
                    None,
                ))
                .build(),
        )
    }

    #[test]
    fn contract_order_and_values() {
        let ctx = request("r1");
        ctx.set_user_id("7");
        ctx.set_org_id("acme");
        ctx.set_route("/users/{id}");
        ctx.set_roles(["admin"]);
        ctx.set_rate_limit(4, 30);
        ctx.set_field("tenant", "eu");
        let logs = capture(
            |w| LogLayer::new().with_writer(w),
            || RequestContext::scope_sync(ctx, || tracing::info!(rows = 3u64, ok = true, "fetched")),
        );
        let line = logs.lines().remove(0);
        let expected = [
            "timestamp",
            "level",
            "target",
            "message",
            "request_id",
            "trace_id",
            "span_id",
            "user_id",
            "org_id",
            "method",
            "path",
            "route",
            "client_ip",
            "roles",
            "rate_limit_remaining",
            "rate_limit_reset",
            "tenant",
            "rows",
            "ok",
        ];
        let positions: Vec<usize> = expected
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k} missing: {line}")))
            .collect();
        assert!(positions.is_sorted(), "keys out of order: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "fetched");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"].as_str().map(str::len), Some(16));
        assert_eq!(v["client_ip"], "10.1.2.3");
        assert_eq!(v["roles"], serde_json::json!(["admin"]));
        assert_eq!(v["rows"], 3);
        assert_eq!(v["ok"], true);
    }

    #[test]
    fn hostile_content_stays_one_valid_line() {
        let nasty = "a\"b\\c\nd\r\u{1b}[31m\u{0}\"}\n{\"forged\":1";
        let lines = json(|| tracing::warn!(input = nasty, dbg = ?nasty, "msg {nasty}"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["input"], nasty);
        assert!(lines[0].get("forged").is_none());
        assert_eq!(lines[0]["message"], format!("msg {nasty}"));
    }

    #[test]
    fn outside_a_request_there_is_no_request_id() {
        let lines = json(|| tracing::info!("startup"));
        assert!(lines[0].get("request_id").is_none());
    }

    #[test]
    fn foreign_thread_inside_the_request_span_is_stamped() {
        let ctx = request("span-only");
        let lines = json(|| {
            let span = RequestContext::scope_sync(ctx, || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"));
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            std::thread::scope(|s| {
                s.spawn(|| {
                    tracing::dispatcher::with_default(&dispatch, || {
                        assert!(RequestContext::current().is_none());
                        let _entered = span.enter();
                        tracing::info!("from a worker thread");
                    })
                });
            });
        });
        assert_eq!(lines[0]["request_id"], "span-only");
    }

    #[test]
    fn late_patches_show_on_later_lines() {
        let ctx = request("late");
        let lines = json(|| {
            RequestContext::scope_sync(ctx.clone(), || {
                tracing::info!("before auth");
                ctx.set_user_id("42");
                tracing::info!("after auth");
            })
        });
        assert!(lines[0].get("user_id").is_none());
        assert_eq!(lines[1]["user_id"], "42");
    }

    #[test]
    fn camel_case_names() {
        let ctx = request("cc");
        ctx.set_user_id("1");
        let logs = capture(
            |w| LogLayer::new().with_field_names(crate::FieldNames::camel_case()).with_writer(w),
            || RequestContext::scope_sync(ctx, || tracing::info!("x")),
        );
        let line = &logs.json_lines()[0];
        assert_eq!(line["requestId"], "cc");
        assert_eq!(line["userId"], "1");
    }

    #[test]
    fn pretty_lines_are_stamped_and_single() {
        let ctx = request("pretty-1");
        let logs = capture(
            |w| LogLayer::new().pretty().with_writer(w),
            || RequestContext::scope_sync(ctx, || tracing::info!(task = 2, "two\nlines")),
        );
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(" INFO "), "{}", lines[0]);
        assert!(lines[0].contains("request_id=\"pretty-1\""), "{}", lines[0]);
        assert!(lines[0].contains("task=2"), "{}", lines[0]);
        assert!(lines[0].contains("two\\nlines"), "{}", lines[0]);
    }

    #[test]
    fn errors_carry_their_chain() {
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
        let lines = json(|| tracing::error!(error = &err as &dyn std::error::Error, "boom"));
        assert_eq!(lines[0]["error"], "query failed: connection reset");
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("JSON".parse::<Format>().unwrap(), Format::Json);
        assert_eq!("pretty".parse::<Format>().unwrap(), Format::Pretty);
        assert!("xml".parse::<Format>().unwrap_err().to_string().contains("json"));
    }

    #[test]
    fn fields_cannot_overwrite_the_stamp() {
        let ctx = request("real-id");
        ctx.set_field("user_id", "forged-by-context");
        let logs = capture(
            |w| LogLayer::new().with_writer(w),
            || RequestContext::scope_sync(ctx, || tracing::info!(request_id = "forged", level = "x", "hi")),
        );
        let line = &logs.lines()[0];
        assert_eq!(line.matches("\"request_id\":").count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["request_id"], "real-id");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields.request_id"], "forged");
        assert_eq!(v["fields.level"], "x");
        assert_eq!(v["fields.user_id"], "forged-by-context");
    }

    #[test]
    fn pretty_display_fields_cannot_start_a_line() {
        let input = "x\n2026-01-01T00:00:00Z ERROR forged: line";
        let logs =
            capture(|w| LogLayer::new().pretty().with_writer(w), || tracing::info!(input = %input, "m\r\n{input}"));
        assert_eq!(logs.lines().len(), 1, "{:?}", logs.contents());
    }

    #[test]
    fn only_the_request_span_keeps_the_context() {
        let ctx = request("creator");
        let lines = json(|| {
            // Created during the request, but lives on: must not stamp later events as "creator".
            let pool_span = RequestContext::scope_sync(ctx, || tracing::info_span!(parent: None, "pool"));
            let _entered = pool_span.enter();
            tracing::info!("pool work later");
        });
        assert!(lines[0].get("request_id").is_none(), "{}", lines[0]);
    }
}
