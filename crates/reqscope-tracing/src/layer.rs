use std::cell::RefCell;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arrayvec::ArrayVec;
use reqscope_core::redact::Redaction;
use reqscope_core::{REQUEST_SPAN_TARGET, RequestContext};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::InitError;
use crate::buffer::{self, HoldLimits};
use crate::ecs::{EcsKeys, EcsLabelStyle, ecs_line};
use crate::gcp::{GcpKeys, GcpSettings, gcp_line};
use crate::json::{self, JsonKeys, JsonStyle, Mode, json_line};
use crate::keys::{BaggageField, Reserved, Seen, baggage_fields, write_span_fields};
use crate::names::FieldNames;
use crate::pretty::{self, PrettyStyle, pretty_line};
use crate::spans::{EMPTY, Fragment, LIVE_ECS, LIVE_JSON, LIVE_PRETTY, SpanFields};
use crate::time::rfc3339_now;

/// How lines are written. Every format writes one line per event, stamped with the same
/// context, redacted alike, with every key once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the default), keys as in the [crate docs](crate).
    #[default]
    Json,
    /// `time LEVEL target: message key=value …`, for people at a terminal. Stamped with the
    /// same context fields as JSON.
    Pretty,
    /// One JSON object per line in the Elastic Common Schema, as the ecs-logging spec lays it
    /// out: `@timestamp`, `log.level`, `message`, `ecs.version` (`8.11.0`) first, then
    /// `log.logger` (the target), `trace.id`, `span.id`, `transaction.id` (the request's
    /// span), `http.request.id`, `user.id`, `organization.id`, `http.request.method`,
    /// `url.path`, `client.ip`, `user.roles`; on access lines `http.response.status_code`,
    /// `event.duration` (nanoseconds), `http.response.body.bytes` and `user_agent.original`;
    /// an `error` is `error.message`, a panic `error.message`, `error.type` (`panic`) and
    /// `error.stack_trace` (its location). reqscope's values without an ECS field are
    /// `reqscope.<key>` (`reqscope.rate_limit_remaining`, `reqscope.job`, …), everything else
    /// — the route, custom context, baggage, span and event fields, other request headers — is
    /// `labels.<key>`, a string, its key with `.`, `*` and `\` made `_`
    /// (`labels.db_statement`). Field names ([`FieldNames`]) do not apply: ECS names are fixed.
    Ecs,
    /// One JSON object per line for Google Cloud Logging's structured logging:
    /// `time`, `severity` (`DEBUG`, `INFO`, `WARNING`, `ERROR`), `message`,
    /// `logging.googleapis.com/sourceLocation`, `…/trace` (`projects/<project>/traces/<id>`,
    /// see [`LogLayer::gcp_project`]), `…/spanId`, `…/trace_sampled`, `…/labels` (request id,
    /// user, org), then the JSON line's other keys; the access line's `status`, `duration_ms`
    /// and `bytes` are in its `httpRequest`, with the method, path, client ip and user agent;
    /// an ERROR line with an error or a panic is an Error Reporting event (`@type`,
    /// [`serviceContext`](LogLayer::gcp_service_context), `context`).
    Gcp,
}

impl FromStr for Format {
    type Err = InitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "pretty" => Ok(Format::Pretty),
            "ecs" => Ok(Format::Ecs),
            "gcp" => Ok(Format::Gcp),
            _ => Err(InitError::Format(s.to_owned())),
        }
    }
}

/// The request context of a request span, for events on threads without the task-local.
///
/// Weak: a span created during the request that lives on (a pool's connection task) keeps
/// its parent, the request span, and so this, alive — but not the context, which is freed
/// with the request; and a finished context is not stamped even while something else still
/// holds it.
struct SpanContext(Weak<RequestContext>);

/// Keeps the current request in `span` (a request span) for threads without the task-local;
/// another layer of the subscriber doing it too stores the same request again.
pub(crate) fn remember_request<S>(span: &SpanRef<'_, S>)
where
    S: for<'a> LookupSpan<'a>,
{
    if let Some(request) = reqscope_core::__private::downgrade_current() {
        // `replace`, not a look-up then an insert: one map operation. Another layer that
        // remembered it first stored the same request.
        span.extensions_mut().replace(SpanContext(request));
    }
}

/// For a request span: `Some` of its request while that is on (`Some(None)` once it is
/// over). `None` for any other span.
pub(crate) fn request_of_span<S>(span: &SpanRef<'_, S>) -> Option<Option<Arc<RequestContext>>>
where
    S: for<'a> LookupSpan<'a>,
{
    let request = span.extensions().get::<SpanContext>().map(|c| c.0.upgrade())?;
    Some(request.filter(|request| !request.is_finished()))
}

/// The spans in scope whose fields are written: the innermost ones, when there are more.
const MAX_SPANS: usize = 16;

/// A `tracing_subscriber::Layer` that writes each event as one line stamped with the current
/// request context. See the [crate docs](crate) for the line format.
///
/// Compose it like any layer: `registry().with(EnvFilter::…).with(LogLayer::new())`.
#[derive(Debug)]
pub struct LogLayer<W = fn() -> std::io::Stdout> {
    names: FieldNames,
    keys: JsonKeys,
    pretty_reserved: Reserved,
    ecs: EcsKeys,
    gcp: GcpKeys,
    redaction: Redaction,
    format: Format,
    hold: Hold,
    writer: W,
}

/// Where a [`LogLayer`] keeps lines until their request fails, and whose verdicts it follows.
#[derive(Debug)]
struct Hold {
    /// This layer, among the buffers of a request.
    layer: u64,
    /// The filter whose verdicts this layer follows: 0, a global one.
    owner: u64,
    limits: HoldLimits,
}

impl Default for Hold {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Hold { layer: NEXT.fetch_add(1, Ordering::Relaxed), owner: 0, limits: HoldLimits::default() }
    }
}

/// Where a formatted line goes.
enum Route<'a> {
    Write,
    /// Into its request's buffer: only its request's failure writes it.
    Keep(&'a RequestContext),
    /// An ERROR line of a request: the request's kept lines first.
    Fail(&'a RequestContext),
}

impl LogLayer {
    /// JSON lines with the default key names and the default [`Redaction`], written to
    /// stdout (blocking; pass a [`non_blocking`](crate::non_blocking) writer in production).
    pub fn new() -> Self {
        let names = FieldNames::default();
        LogLayer {
            keys: JsonKeys::new(&names),
            pretty_reserved: Reserved::new::<PrettyStyle>(&names),
            ecs: EcsKeys::new(),
            gcp: GcpKeys::new(&names, Arc::new([]), GcpSettings::default()),
            redaction: Redaction::new(),
            names,
            format: Format::Json,
            hold: Hold::default(),
            writer: std::io::stdout,
        }
    }
}

impl Default for LogLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// What a line is built in, reused by each thread.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    seen: Seen,
}

impl<W> LogLayer<W> {
    /// Writes lines through `writer`: any tracing-subscriber `MakeWriter`, such as
    /// [`NonBlocking`](crate::NonBlocking), [`MemoryWriter`](crate::MemoryWriter) or
    /// `std::io::stderr`.
    pub fn with_writer<W2>(self, writer: W2) -> LogLayer<W2>
    where
        W2: for<'w> MakeWriter<'w> + 'static,
    {
        LogLayer {
            names: self.names,
            keys: self.keys,
            pretty_reserved: self.pretty_reserved,
            ecs: self.ecs,
            gcp: self.gcp,
            redaction: self.redaction,
            format: self.format,
            hold: self.hold,
            writer,
        }
    }

    /// Writes the values `redaction` judges sensitive as `"[redacted]"`, in every format:
    /// event fields, span fields, custom context fields, [baggage](Self::baggage_fields)
    /// entries and the request headers of access lines — never the stamped keys, which are
    /// reqscope's own. The default is [`Redaction::new`] (passwords, tokens, API keys,
    /// cookies, …, see [`DEFAULT_KEYS`](reqscope_core::redact::DEFAULT_KEYS));
    /// [`Redaction::none`] turns it off. Only what is written changes: the program's values
    /// are left as they are.
    ///
    /// ```
    /// use reqscope_core::redact::Redaction;
    ///
    /// let logs = reqscope_tracing::MemoryWriter::new();
    /// let layer = reqscope_tracing::LogLayer::new()
    ///     .redaction(Redaction::new().redact_keys(["email"]))
    ///     .with_writer(logs.clone());
    /// # use tracing_subscriber::prelude::*;
    /// tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
    ///     tracing::info!(email = "ann@example.com", db_password = "hunter2", rows = 3, "signed up");
    /// });
    /// let line = &logs.json_lines()[0];
    /// assert_eq!(line["email"], "[redacted]");
    /// assert_eq!(line["db_password"], "[redacted]");
    /// assert_eq!(line["rows"], 3);
    /// ```
    pub fn redaction(mut self, redaction: Redaction) -> Self {
        self.redaction = redaction;
        self
    }

    /// The bounds of the lines kept per request until it fails (see
    /// [`RequestLevelFilter::keep_until_error`](crate::RequestLevelFilter::keep_until_error)):
    /// 256 lines or 256 KiB per request and 64 MiB in all, by default.
    pub fn hold_limits(mut self, limits: HoldLimits) -> Self {
        self.hold.limits = limits;
        self
    }

    /// Follows the verdicts of `filter` used as this layer's per-layer filter
    /// (`LogLayer::new().held_by(&filter).with_filter(filter)`), so that it keeps the lines
    /// `filter` keeps; without it such a filter keeps none. Not needed with a global
    /// [`RequestLevelFilter`](crate::RequestLevelFilter), whose verdicts every layer follows.
    pub fn held_by<F>(mut self, filter: &crate::RequestLevelFilter<F>) -> Self {
        let shared = filter.shared();
        self.hold.owner = shared.id;
        shared.followed.store(true, Ordering::Relaxed);
        self
    }

    /// Uses other key names, in JSON, pretty and Google Cloud lines (ECS names are the
    /// schema's).
    pub fn with_field_names(mut self, names: FieldNames) -> Self {
        // The baggage fields stay as they were set.
        let baggage = Arc::clone(self.pretty_reserved.baggage());
        self.names = names;
        self.set_keys(baggage);
        self
    }

    /// Builds every format's keys for the current names and settings, with `baggage`.
    fn set_keys(&mut self, baggage: Arc<[BaggageField]>) {
        let names = &self.names;
        self.keys = JsonKeys::new(names).with_baggage(Arc::clone(&baggage));
        self.pretty_reserved = Reserved::new::<PrettyStyle>(names).with_baggage::<PrettyStyle>(Arc::clone(&baggage));
        self.ecs = EcsKeys::new().with_baggage(Arc::clone(&baggage));
        self.gcp = GcpKeys::new(names, baggage, self.gcp.settings().clone());
    }

    /// The Google Cloud project of [`Format::Gcp`] lines: their trace is
    /// `projects/<project>/traces/<trace id>`, which links each line to its trace in Cloud
    /// Trace. `local` by default (`init_from_env` reads `GOOGLE_CLOUD_PROJECT`).
    pub fn gcp_project(mut self, project: impl Into<String>) -> Self {
        let mut settings = self.gcp.settings().clone();
        settings.project = project.into().into_boxed_str();
        self.gcp = GcpKeys::new(&self.names, Arc::clone(self.keys.reserved().baggage()), settings);
        self
    }

    /// The service (and its version) that [`Format::Gcp`] lines report errors for: their
    /// Error Reporting events carry `"serviceContext":{"service":…,"version":…}`. None by
    /// default: Google Cloud then names the service after the resource that wrote the line
    /// (the Cloud Run service, the GKE container).
    ///
    /// ```
    /// let layer = reqscope_tracing::LogLayer::new()
    ///     .with_format(reqscope_tracing::Format::Gcp)
    ///     .gcp_project("my-project")
    ///     .gcp_service_context("checkout", Some(env!("CARGO_PKG_VERSION")));
    /// # drop(layer);
    /// ```
    pub fn gcp_service_context(mut self, service: impl Into<String>, version: Option<&str>) -> Self {
        let mut settings = self.gcp.settings().clone();
        settings.service = Some((service.into().into_boxed_str(), version.map(Box::from)));
        self.gcp = GcpKeys::new(&self.names, Arc::clone(self.keys.reserved().baggage()), settings);
        self
    }

    /// Writes these baggage entries on every line where the request's
    /// [baggage](reqscope_core::Patch::baggage) has them, as `"baggage.<key>":"<decoded value>"`
    /// right after the custom context fields, in every format. Empty by default: baggage
    /// comes from callers and travels to other services, so only keys you name reach a line.
    /// No other field can take a `baggage.<key>` name of the list, on any line (an event field
    /// so named is written `fields.baggage.<key>`). Keys that are not baggage keys (tokens,
    /// see [`is_valid_key`](reqscope_core::baggage::is_valid_key)) can never match and are
    /// left out. Replaces an earlier list.
    pub fn baggage_fields<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        self.set_keys(baggage_fields(keys));
        self
    }

    /// Chooses the format of the lines: JSON (the default), pretty, ECS or Google Cloud.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The format of the lines.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Human-readable lines instead of JSON.
    pub fn pretty(self) -> Self {
        self.with_format(Format::Pretty)
    }

    /// This layer's rendering of a span's fields.
    fn fragment<'a>(&self, fields: &'a SpanFields) -> Option<&'a Fragment> {
        match self.format {
            Format::Json | Format::Gcp => fields.json.as_ref(),
            Format::Pretty => fields.pretty.as_ref(),
            Format::Ecs => fields.ecs.as_ref(),
        }
    }

    fn fragment_mut<'a>(&self, fields: &'a mut SpanFields) -> &'a mut Option<Fragment> {
        match self.format {
            Format::Json | Format::Gcp => &mut fields.json,
            Format::Pretty => &mut fields.pretty,
            Format::Ecs => &mut fields.ecs,
        }
    }

    /// How many spans have fields rendered in this layer's format, in any subscriber.
    fn live(&self) -> &'static AtomicUsize {
        match self.format {
            Format::Json | Format::Gcp => &LIVE_JSON,
            Format::Pretty => &LIVE_PRETTY,
            Format::Ecs => &LIVE_ECS,
        }
    }

    /// Renders span field values in this layer's format.
    fn render(&self, values: &impl RecordFields) -> Fragment {
        let mut fragment = Fragment::default();
        match self.format {
            Format::Json | Format::Gcp => {
                values.record_into(&mut json::span_values(&mut fragment, &self.redaction, Mode::Native))
            }
            Format::Ecs => values.record_into(&mut json::span_values(&mut fragment, &self.redaction, Mode::Text)),
            Format::Pretty => {
                values.record_into(&mut pretty::SpanValues { fragment: &mut fragment, redaction: &self.redaction })
            }
        }
        fragment
    }

    /// Writes the fields of `spans` (innermost first, as a scope lists them) root first. The
    /// extensions are read only here, while no user code runs (a `Debug` impl that logs
    /// cannot meet its own span's lock).
    fn write_spans<S>(&self, spans: &[SpanRef<'_, S>], event: &Event<'_>, buf: &mut Vec<u8>, seen: &mut Seen)
    where
        S: for<'a> LookupSpan<'a>,
    {
        if spans.is_empty() {
            return;
        }
        // The request span has no fields of its own: no lock to take for it.
        let guards: [_; MAX_SPANS] = std::array::from_fn(|i| {
            spans.get(i).filter(|span| span.metadata().target() != REQUEST_SPAN_TARGET).map(|span| span.extensions())
        });
        let mut fragments: [&Fragment; MAX_SPANS] = [&EMPTY; MAX_SPANS];
        let mut count = 0;
        for guard in guards.iter().rev().flatten() {
            if let Some(fragment) = guard.get::<SpanFields>().and_then(|f| self.fragment(f))
                && !fragment.is_empty()
            {
                fragments[count] = fragment;
                count += 1;
            }
        }
        match self.format {
            Format::Json => write_span_fields::<JsonStyle>(
                buf,
                seen,
                self.keys.reserved(),
                &self.redaction,
                event,
                &fragments[..count],
            ),
            Format::Pretty => write_span_fields::<PrettyStyle>(
                buf,
                seen,
                &self.pretty_reserved,
                &self.redaction,
                event,
                &fragments[..count],
            ),
            Format::Ecs => write_span_fields::<EcsLabelStyle>(
                buf,
                seen,
                self.ecs.reserved(),
                &self.redaction,
                event,
                &fragments[..count],
            ),
            Format::Gcp => write_span_fields::<JsonStyle>(
                buf,
                seen,
                self.gcp.reserved(),
                &self.redaction,
                event,
                &fragments[..count],
            ),
        }
    }

    /// The keys of `buffered` and `buffered_dropped` in this layer's format.
    fn held_keys(&self) -> (&'static str, &'static str) {
        match self.format {
            Format::Ecs => ("reqscope.buffered", "reqscope.buffered_dropped"),
            _ => (self.names.buffered, self.names.buffered_dropped),
        }
    }

    /// Where the line of `event` goes: `kept` says a filter keeps it until its request fails.
    fn route<'a>(
        &self,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        ctx: Option<&'a RequestContext>,
        kept: bool,
    ) -> Option<Route<'a>> {
        let Some(request) = ctx else {
            // Kept for a request that cannot be found any more: below the level, dropped.
            return (!kept).then_some(Route::Write);
        };
        if kept {
            return Some(Route::Keep(request));
        }
        if !buffer::holding() {
            return Some(Route::Write);
        }
        if *meta.level() == tracing::Level::ERROR {
            return Some(Route::Fail(request));
        }
        if buffer::ends_request(event) {
            buffer::discard(request, self.hold.layer);
        }
        Some(Route::Write)
    }

    fn write_line(
        &self,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        ctx: Option<&RequestContext>,
        kept: bool,
        spans: &mut dyn FnMut(&mut Vec<u8>, &mut Seen),
    ) where
        W: for<'w> MakeWriter<'w>,
    {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        }
        let Some(route) = self.route(event, meta, ctx, kept) else {
            return;
        };
        let timestamp = rfc3339_now();
        let mut emit = |scratch: &mut Scratch| {
            let Scratch { buf, seen } = scratch;
            buf.clear();
            match self.format {
                Format::Json => json_line(buf, seen, &self.keys, &self.redaction, &timestamp, event, meta, ctx, spans),
                Format::Pretty => pretty_line(
                    buf,
                    seen,
                    &self.names,
                    &self.pretty_reserved,
                    &self.redaction,
                    &timestamp,
                    event,
                    meta,
                    ctx,
                    spans,
                ),
                Format::Ecs => ecs_line(buf, seen, &self.ecs, &self.redaction, &timestamp, event, meta, ctx, spans),
                Format::Gcp => gcp_line(buf, seen, &self.gcp, &self.redaction, &timestamp, event, meta, ctx, spans),
            }
            let (buffered, buffered_dropped) = self.held_keys();
            match route {
                Route::Write => {
                    let _ = self.writer.make_writer_for(meta).write_all(buf);
                }
                Route::Keep(request) => {
                    buffer::append_field(buf, self.format, buffered, b"true");
                    buffer::keep_line(request, self.hold.layer, &self.hold.limits, event.metadata(), buf, |line| {
                        let _ = self.writer.make_writer_for(meta).write_all(line);
                    });
                }
                Route::Fail(request) => buffer::write_kept(
                    request,
                    self.hold.layer,
                    |kept, line| {
                        let _ = self.writer.make_writer_for(kept).write_all(line);
                    },
                    |dropped| {
                        if dropped > 0 {
                            let count = itoa::Buffer::new().format(dropped).as_bytes().to_vec();
                            buffer::append_field(buf, self.format, buffered_dropped, &count);
                        }
                        let _ = self.writer.make_writer_for(meta).write_all(buf);
                    },
                ),
            }
            // Keep a burst's big line from pinning memory in every thread forever.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
        };
        // An event raised while formatting (by a Debug impl) finds the buffer borrowed and
        // gets a fresh one instead of panicking.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => emit(&mut scratch),
            Err(_) => emit(&mut Scratch::default()),
        });
    }
}

/// Span field values as `on_new_span` and `on_record` get them.
trait RecordFields {
    fn record_into(&self, visitor: &mut dyn tracing::field::Visit);
}

impl RecordFields for Attributes<'_> {
    fn record_into(&self, visitor: &mut dyn tracing::field::Visit) {
        self.record(visitor);
    }
}

impl RecordFields for Record<'_> {
    fn record_into(&self, visitor: &mut dyn tracing::field::Visit) {
        self.record(visitor);
    }
}

impl<S, W> Layer<S> for LogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        if attrs.metadata().target() == REQUEST_SPAN_TARGET {
            // Only the request span itself carries the context: a long-lived span created
            // during a request (a pool's connection task) finds it through its parent, for as
            // long as the request lasts (see `SpanContext`).
            remember_request(&span);
            // Its fields (it has none) are not written: the context is.
            return;
        }
        // Rendered before the lock is taken: `Debug` impls may log.
        let fragment = self.render(attrs);
        if fragment.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(SpanFields::default());
        }
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            let slot = self.fragment_mut(fields);
            if slot.is_none() {
                *slot = Some(fragment);
                self.live().fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        if span.metadata().target() == REQUEST_SPAN_TARGET {
            return;
        }
        let newer = self.render(values);
        if newer.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(SpanFields::default());
        }
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            match self.fragment_mut(fields) {
                Some(fragment) => fragment.update(newer),
                slot @ None => {
                    *slot = Some(newer);
                    self.live().fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        // No span has fields of this format (a request span never does): none to take, and
        // the span is not looked up. A span with fields was counted before it could close.
        if self.live().load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if span.extensions().get::<SpanFields>().is_none() {
            return;
        }
        // Taken, not just counted: another `LogLayer` of this format sees it gone and does not
        // count it twice.
        if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
            && self.fragment_mut(fields).take().is_some()
        {
            self.live().fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Taken first: nothing this layer does may dispatch another event before.
        let kept = buffer::take(event, self.hold.owner);
        // A `log` record bridged by `tracing-log`: its own target and module, not "log". The
        // target is compared first: the bridge's callsites all have that one.
        let normalized = if event.metadata().target() == "log" { event.normalized_metadata() } else { None };
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // Only the slots in use are dropped again, not all of them.
        let mut scope: ArrayVec<SpanRef<'_, S>, MAX_SPANS> = ArrayVec::new();
        // The spans are looked up only when one of them may have fields to write, or to find
        // the context: with the task-local and no span fields anywhere, an event costs what
        // it did before span fields were written.
        let in_request = RequestContext::with(|_| ()).is_some();
        let span_fields = self.live().load(Ordering::Relaxed) > 0;
        if (span_fields || !in_request)
            && let Some(spans) = ctx.event_scope(event)
        {
            scope.extend(spans.take(MAX_SPANS));
        }
        let spans = &scope[..];
        let mut write_spans = |buf: &mut Vec<u8>, seen: &mut Seen| {
            if span_fields {
                self.write_spans(spans, event, buf, seen);
            }
        };
        let written =
            RequestContext::with(|request| self.write_line(event, meta, Some(request), kept, &mut write_spans));
        if written.is_some() {
            return;
        }
        // No task-local: the nearest request span decides, if its request is still on.
        let from_span = spans.iter().find_map(request_of_span).flatten();
        self.write_line(event, meta, from_span.as_deref(), kept, &mut write_spans);
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

    /// The count of spans with fields is process-wide, and other tests open such spans in
    /// parallel: this one runs alone, in a child process of the test binary.
    #[test]
    fn a_span_with_fields_is_counted_while_open_and_given_back_when_it_closes() {
        const NAME: &str = "layer::tests::a_span_with_fields_is_counted_while_open_and_given_back_when_it_closes";
        if std::env::var_os("REQSCOPE_ALONE").is_none() {
            let exe = std::env::current_exe().expect("the test binary's path");
            let run = std::process::Command::new(exe)
                .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
                .env("REQSCOPE_ALONE", "1")
                .output()
                .expect("the test binary runs");
            let out = String::from_utf8_lossy(&run.stdout);
            assert!(run.status.success() && out.contains("1 passed"), "{out}{}", String::from_utf8_lossy(&run.stderr));
            return;
        }
        let counted = || LIVE_JSON.load(Ordering::Relaxed);
        let lines = json(|| {
            let before = counted();
            let span = tracing::info_span!("query", table = "users");
            assert_eq!(counted(), before + 1, "an open span with fields is counted");
            span.in_scope(|| tracing::info!("inside"));
            drop(span);
            // Closed: its fields are taken back, and events stop looking up spans.
            assert_eq!(counted(), before, "a closed span gives its count back");
        });
        assert_eq!(lines[0]["table"], "users");
    }

    fn request(id: &str) -> Arc<RequestContext> {
        Arc::new(
            RequestContext::builder(RequestId::parse(id).unwrap())
                .method(http::Method::GET)
                .path("/users/7")
                .client_ip("10.1.2.3".parse().unwrap())
                .trace(reqscope_core::trace::TraceContext::child_of(
                    reqscope_core::trace::TraceParent::parse(
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    )
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
        // The request's own state holds the context for as long as the request runs.
        let ctx = request("span-only");
        let lines = json(|| {
            let span = RequestContext::scope_sync(
                Arc::clone(&ctx),
                || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"),
            );
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
        assert_eq!(" ECS ".parse::<Format>().unwrap(), Format::Ecs);
        assert_eq!("Gcp".parse::<Format>().unwrap(), Format::Gcp);
        let error = "xml".parse::<Format>().unwrap_err().to_string();
        for name in ["`json`", "`pretty`", "`ecs`", "`gcp`", "\"xml\""] {
            assert!(error.contains(name), "{error}");
        }
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
    fn listed_baggage_entries_follow_the_context_fields_and_own_their_keys() {
        let ctx = request("bag-json");
        ctx.set_field("tenant", "eu");
        ctx.set_field("baggage.session", "forged-by-context");
        ctx.set_baggage("session", "s 1\n\"x\"").unwrap();
        ctx.set_baggage("secret", "hidden").unwrap();
        let layer = |w| LogLayer::new().baggage_fields(["session", "absent", "session"]).with_writer(w);
        let logs = capture(layer, || {
            RequestContext::scope_sync(ctx, || {
                let span = tracing::info_span!("op", baggage.session = "span");
                let _entered = span.enter();
                tracing::info!(baggage.session = "event", baggage.absent = "event", "hi");
            })
        });
        let raw = &logs.lines()[0];
        let line = &logs.json_lines()[0];
        assert_eq!(line["baggage.session"], "s 1\n\"x\"", "{raw}");
        assert_eq!(raw.matches("\"baggage.session\":").count(), 1, "{raw}");
        assert_eq!(line["fields.baggage.session"], "forged-by-context", "{raw}");
        assert_eq!(line["span.baggage.session"], "span", "{raw}");
        assert_eq!(line["fields.fields.baggage.session"], "event", "{raw}");
        // Absent from the baggage, a listed name still belongs to it.
        assert!(line.get("baggage.absent").is_none(), "{raw}");
        assert_eq!(line["fields.baggage.absent"], "event", "{raw}");
        assert!(!raw.contains("hidden") && line.get("baggage.secret").is_none(), "not listed: {raw}");
        let order = ["\"tenant\":", "\"baggage.session\":", "\"span.baggage.session\":"];
        let positions: Vec<usize> = order.iter().map(|k| raw.find(k).unwrap()).collect();
        assert!(positions.is_sorted(), "after the custom context fields: {raw}");
    }

    #[test]
    fn baggage_entries_are_written_in_pretty_lines_and_kept_across_field_names() {
        let ctx = request("bag-pretty");
        ctx.set_baggage("session", "s=1 \"x\"\r\nforged=1").unwrap();
        let logs = capture(
            |w| LogLayer::new().baggage_fields(["session"]).pretty().with_writer(w),
            || RequestContext::scope_sync(ctx.clone(), || tracing::info!(baggage.session = "event", "hi")),
        );
        let line = &logs.lines()[0];
        assert_eq!(logs.lines().len(), 1, "{line}");
        let pairs = pretty_pairs(line);
        assert!(pairs.contains(&("baggage.session".into(), r#""s=1 \"x\"\r\nforged=1""#.into())), "{line}");
        assert!(pairs.contains(&("fields.baggage.session".into(), "\"event\"".into())), "{line}");
        assert!(!pairs.iter().any(|(k, _)| k == "forged"), "{line}");

        let logs = capture(
            |w| {
                LogLayer::new()
                    .baggage_fields(["session"])
                    .with_field_names(crate::FieldNames::camel_case())
                    .with_writer(w)
            },
            || RequestContext::scope_sync(ctx, || tracing::info!("x")),
        );
        assert_eq!(logs.json_lines()[0]["baggage.session"], "s=1 \"x\"\r\nforged=1");
    }

    #[test]
    fn without_a_list_no_baggage_is_written() {
        let ctx = request("bag-none");
        ctx.set_baggage("session", "s-1").unwrap();
        let logs =
            capture(|w| LogLayer::new().with_writer(w), || RequestContext::scope_sync(ctx, || tracing::info!("x")));
        assert!(!logs.contents().contains("s-1"), "{}", logs.contents());
        assert_eq!(logs.json_lines()[0]["request_id"], "bag-none");
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

    /// The `key=value` pairs of a pretty line, read like logfmt: tokens split at spaces
    /// outside quotes; a token with `=` outside quotes starts a pair, any other continues the
    /// value before it.
    fn pretty_pairs(line: &str) -> Vec<(String, String)> {
        let mut tokens = Vec::new();
        let (mut token, mut quoted, mut escaped) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    tokens.push(std::mem::take(&mut token));
                    continue;
                }
                _ => {}
            }
            token.push(c);
        }
        tokens.push(token);
        let mut pairs: Vec<(String, String)> = Vec::new();
        for token in tokens.into_iter().filter(|t| !t.is_empty()) {
            let mut quoted = false;
            let eq = token.char_indices().find_map(|(i, c)| match c {
                '"' => {
                    quoted = !quoted;
                    None
                }
                '=' if !quoted => Some(i),
                _ => None,
            });
            match (eq, pairs.last_mut()) {
                (Some(i), _) => pairs.push((token[..i].to_owned(), token[i + 1..].to_owned())),
                (None, Some(last)) => {
                    last.1.push(' ');
                    last.1.push_str(&token);
                }
                (None, None) => {}
            }
        }
        pairs
    }

    #[test]
    fn no_field_repeats_or_forges_a_key_in_json() {
        let ctx = request("real-json");
        ctx.set_field("tenant", "eu");
        // The patch's field list is public: a duplicate can get in.
        ctx.update(|p| p.fields.push(("tenant".into(), "again".into())));
        let logs = capture(
            |w| LogLayer::new().with_writer(w),
            || {
                RequestContext::scope_sync(ctx, || {
                    let span = tracing::info_span!("op", tenant = "span", request_id = "span-forged");
                    let _entered = span.enter();
                    tracing::info!(tenant = "event", request_id = "forged", fields.tenant = "literal", "hi")
                })
            },
        );
        // Panics on a duplicate key.
        let line = &logs.json_lines()[0];
        assert_eq!(line["request_id"], "real-json");
        assert_eq!(line["tenant"], "eu");
        assert_eq!(line["fields.tenant"], "again");
        assert_eq!(line["span.tenant"], "span");
        assert_eq!(line["span.request_id"], "span-forged");
        assert_eq!(line["fields.request_id"], "forged");
        assert_eq!(line["fields.fields.tenant"], "event");
        assert_eq!(line["fields.fields.fields.tenant"], "literal");
        assert_eq!(logs.lines()[0].matches("\"request_id\":").count(), 1);
    }

    #[test]
    fn no_field_repeats_or_forges_a_key_in_pretty_lines() {
        let ctx = request("real-pretty");
        ctx.set_field("tenant", "eu");
        let logs = capture(
            |w| LogLayer::new().pretty().with_writer(w),
            || {
                RequestContext::scope_sync(ctx, || {
                    let span = tracing::info_span!("op", request_id = "span-forged", order_id = 7);
                    let _entered = span.enter();
                    let input = "a request_id=\"evil\" b";
                    tracing::info!(
                        request_id = "forged",
                        tenant = "x",
                        shown = %input,
                        debugged = ?input,
                        "said {input}"
                    )
                })
            },
        );
        let line = &logs.lines()[0];
        let pairs = pretty_pairs(line);
        let ids: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k == "request_id").collect();
        assert_eq!(ids, [&("request_id".to_owned(), "\"real-pretty\"".to_owned())], "{line}");
        let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let count = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), count, "a key twice: {line}");
        for key in ["fields.request_id", "span.request_id", "tenant", "fields.tenant", "order_id", "shown", "debugged"]
        {
            assert!(keys.contains(&key), "{key} missing: {line}");
        }
        assert!(line.contains(" order_id=7"), "{line}");
    }

    #[test]
    fn span_fields_are_written_root_to_leaf_and_the_nearer_wins() {
        let logs = capture(
            |w| LogLayer::new().with_writer(w),
            || {
                let outer =
                    tracing::info_span!("outer", order_id = 7u64, shared = "outer", late = tracing::field::Empty);
                let _outer = outer.enter();
                let inner = tracing::info_span!("inner", shared = "inner", step = "pay");
                let _inner = inner.enter();
                outer.record("late", 3);
                outer.record("order_id", 8u64);
                tracing::info!(step = "event", "x");
            },
        );
        let line = &logs.lines()[0];
        let v = &logs.json_lines()[0];
        assert_eq!(v["order_id"], 8, "{line}");
        assert_eq!(v["late"], 3, "{line}");
        assert_eq!(v["shared"], "inner", "{line}");
        assert_eq!(v["span.shared"], "outer", "{line}");
        assert_eq!(v["step"], "event", "{line}");
        assert_eq!(v["span.step"], "pay", "{line}");
        let order = ["\"order_id\":", "\"span.shared\":", "\"late\":", "\"shared\":", "\"span.step\":", "\"step\":"];
        let positions: Vec<usize> = order.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(positions.is_sorted(), "root to leaf, then the event: {line}");
    }

    #[test]
    fn span_fields_come_after_the_context() {
        let ctx = request("spans-ctx");
        ctx.set_field("tenant", "eu");
        let lines = json(|| {
            RequestContext::scope_sync(ctx, || {
                let span = tracing::info_span!("checkout", order_id = 7);
                span.in_scope(|| tracing::info!(rows = 1, "x"));
            })
        });
        assert_eq!(lines[0]["order_id"], 7);
        assert_eq!(lines[0]["request_id"], "spans-ctx");
    }

    #[test]
    fn two_layers_share_a_span_without_panicking() {
        let json_logs = MemoryWriter::new();
        let pretty_logs = MemoryWriter::new();
        let subscriber = tracing_subscriber::registry()
            .with(LogLayer::new().with_writer(json_logs.clone()))
            .with(LogLayer::new().pretty().with_writer(pretty_logs.clone()))
            .with(LogLayer::new().with_writer(json_logs.clone()));
        let ctx = request("two-layers");
        tracing::subscriber::with_default(subscriber, || {
            let request = RequestContext::scope_sync(
                Arc::clone(&ctx),
                || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"),
            );
            let span = request.in_scope(|| tracing::info_span!("op", order_id = 7));
            span.record("order_id", 8);
            span.in_scope(|| tracing::info!("x"));
        });
        let lines = json_logs.json_lines();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l["order_id"] == 8 && l["request_id"] == "two-layers"));
        assert!(pretty_logs.contents().contains(" order_id=8"), "{}", pretty_logs.contents());
    }

    #[test]
    fn a_span_that_outlives_its_request_stops_stamping_it_and_lets_it_go() {
        let ctx = request("finished-1");
        let weak = Arc::downgrade(&ctx);
        let lines = json(move || {
            let request_span = RequestContext::scope_sync(
                Arc::clone(&ctx),
                || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"),
            );
            // A connection or pool span created inside the request, living on after it.
            let pool = request_span.in_scope(|| tracing::info_span!("pool"));
            drop(request_span);
            pool.in_scope(|| tracing::info!("while the request runs"));
            ctx.mark_finished();
            pool.in_scope(|| tracing::info!("after the request finished"));
            drop(ctx);
            assert!(weak.upgrade().is_none(), "a span that outlives the request keeps its context alive");
            pool.in_scope(|| tracing::info!("after the context is gone"));
        });
        assert_eq!(lines[0]["request_id"], "finished-1");
        assert!(lines[1].get("request_id").is_none(), "{}", lines[1]);
        assert!(lines[2].get("request_id").is_none(), "{}", lines[2]);
    }

    #[test]
    fn log_records_are_bridged_and_stamped() {
        // What the installed bridge does with each record (`LogTracer::log`), without installing
        // a process-wide `log` logger in a binary whose other tests use scoped subscribers.
        let ctx = request("log-1");
        let lines = json(|| {
            RequestContext::scope_sync(ctx, || {
                tracing_log::format_trace(
                    &tracing_log::log::Record::builder()
                        .args(format_args!("slow query {}", 1))
                        .level(tracing_log::log::Level::Warn)
                        .target("legacy::db")
                        .module_path(Some("legacy::db::pool"))
                        .build(),
                )
                .unwrap();
            })
        });
        let line = lines.iter().find(|l| l["message"] == "slow query 1").expect("the log record");
        assert_eq!(line["target"], "legacy::db");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["request_id"], "log-1");
        assert!(line.as_object().unwrap().keys().all(|k| !k.starts_with("log.")), "{line}");
    }
}
