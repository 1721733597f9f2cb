//! A filter that lets one request log more than the others; see [`RequestLevelFilter`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use reqscope_core::{RaisedLevel, RequestContext};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::{Interest, LevelFilter};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::buffer;
use crate::layer::{remember_request, request_of_span};

/// Wraps a filter (an `EnvFilter`, usually) so that one request can log more than it allows:
/// a request [raised](RequestContext::raised_level) to DEBUG or TRACE gets its events at that
/// level written while every other request stays at the filter's level; and, with
/// [`keep_until_error`](Self::keep_until_error), every request's DEBUG lines are kept — not
/// written — until the request fails, and dropped when it does not.
///
/// ```
/// use reqscope_core::{RaisedLevel, RequestContext, RequestId};
/// use reqscope_tracing::{LogLayer, MemoryWriter, RequestLevelFilter};
/// use tracing_subscriber::EnvFilter;
/// use tracing_subscriber::prelude::*;
///
/// let logs = MemoryWriter::new();
/// let subscriber = tracing_subscriber::registry()
///     .with(RequestLevelFilter::new(EnvFilter::new("info")))
///     .with(LogLayer::new().with_writer(logs.clone()));
/// tracing::subscriber::with_default(subscriber, || {
///     let chased = RequestContext::new(RequestId::parse("chased").unwrap());
///     // `RequestContextLayer` does this for `x-log-level: debug` from a user with the role.
///     chased.raise_level(Some(RaisedLevel::Debug));
///     RequestContext::scope_sync(chased, || tracing::debug!("cache miss"));
///     let other = RequestContext::new(RequestId::parse("other").unwrap());
///     RequestContext::scope_sync(other, || tracing::debug!("cache miss"));
/// });
/// let lines = logs.json_lines();
/// assert_eq!(lines.len(), 1);
/// assert_eq!(lines[0]["request_id"], "chased");
/// ```
///
/// Compose it as the global filter, in place of the filter it wraps:
/// `registry().with(RequestLevelFilter::new(env_filter)).with(LogLayer::new())` — which is
/// what [`init_from_env`](crate::init_from_env) installs. The request an event belongs to is
/// found as the [`LogLayer`](crate::LogLayer) finds it: the task-local, or the request span on
/// a thread that only entered that span (sqlx-sqlite's worker); so spawned tasks, streaming
/// bodies and jobs of a raised request are raised too.
///
/// **Raising.** The wrapped filter decides first; an event or span it turns away passes when
/// its request is raised to its level (at most to [`max_raise`](Self::max_raise), TRACE by
/// default). Callsites the wrapped filter never enables stay *sometimes* enabled, so the
/// filter is asked each time; while no request alive is raised, that costs a few nanoseconds
/// per such event and looks for no request. The max level hint is the wrapped filter's or the
/// raise's, whichever is more verbose, and so is the `log` bridge's
/// ([`install_log_bridge`](crate::install_log_bridge)) when it is installed after the
/// subscriber.
///
/// **Kept until an error.** With [`keep_until_error`](Self::keep_until_error), the DEBUG (and
/// with `TRACE`, TRACE) events of a request that the wrapped filter turns away reach the log
/// layers too, which keep them in the request's buffer instead of writing them: formatted and
/// stamped as usual, plus `"buffered":true`. A [`LogLayer`](crate::LogLayer) writes them, in
/// order, just before the request's first ERROR line — an `error!` in the request, a panic's
/// line, the access line of a failed request (HTTP 5xx, a gRPC server error) — and drops them
/// when the request ends otherwise (its access line, or a job's end line). After that first
/// ERROR line, the request's later DEBUG lines are written as they come, still marked. The
/// buffers are bounded ([`HoldLimits`](crate::HoldLimits): 256 lines or 256 KiB per request,
/// 64 MiB in all by default; the oldest lines go first, and the ERROR line that writes the
/// rest carries `"buffered_dropped":<count>`), and live in the request's context: nothing
/// kept outlives its request. Other layers of the subscriber see those events too (a
/// Sentry layer ignores DEBUG events).
///
/// As a per-layer filter (`layer.with_filter(filter)`) it raises the one layer it filters;
/// for it to keep lines too, tell that layer whose verdicts to follow:
/// `LogLayer::new().held_by(&filter).with_filter(filter)`.
pub struct RequestLevelFilter<F = EnvFilter> {
    inner: F,
    raise: Option<RaisedLevel>,
    hold: Option<RaisedLevel>,
    shared: Arc<Shared>,
}

/// What a [`LogLayer`](crate::LogLayer) that follows this filter's verdicts needs to know.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The owner of this filter's verdicts as a per-layer filter (never 0: that is a global
    /// filter's).
    pub(crate) id: u64,
    /// Whether a log layer follows them: until one does, a per-layer filter keeps nothing
    /// (the layer would write what was meant to be kept).
    pub(crate) followed: AtomicBool,
}

impl<F: std::fmt::Debug> std::fmt::Debug for RequestLevelFilter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLevelFilter")
            .field("inner", &self.inner)
            .field("max_raise", &self.raise)
            .field("keep_until_error", &self.hold)
            .finish()
    }
}

/// How verbose a level is: ERROR 1 … TRACE 5.
fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

fn raised_rank(level: RaisedLevel) -> u8 {
    match level {
        RaisedLevel::Debug => 4,
        RaisedLevel::Trace => 5,
    }
}

fn level_filter(level: RaisedLevel) -> LevelFilter {
    match level {
        RaisedLevel::Debug => LevelFilter::DEBUG,
        RaisedLevel::Trace => LevelFilter::TRACE,
    }
}

/// The request an event or span belongs to: whether it is raised, and whether it is over.
fn request_of<S>(cx: &Context<'_, S>) -> Option<(Option<RaisedLevel>, bool)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let Some(found) = RequestContext::with(|ctx| (ctx.raised_level(), ctx.is_finished())) {
        return Some(found);
    }
    let span = cx.lookup_current()?;
    // The nearest request span decides, as for the log layer.
    let request = span.scope().find_map(|span| request_of_span(&span))??;
    Some((request.raised_level(), false))
}

impl<F> RequestLevelFilter<F> {
    /// `inner` decides, and a raised request may log down to TRACE; nothing is kept.
    pub fn new(inner: F) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RequestLevelFilter {
            inner,
            raise: Some(RaisedLevel::Trace),
            hold: None,
            shared: Arc::new(Shared { id: NEXT.fetch_add(1, Ordering::Relaxed), followed: AtomicBool::new(false) }),
        }
    }

    /// The most a request can be raised to (a request raised further gets this much);
    /// `None`: raised requests log like the others.
    pub fn max_raise(mut self, level: Option<RaisedLevel>) -> Self {
        self.raise = level;
        self
    }

    /// Keeps the DEBUG lines (with `Some(RaisedLevel::Trace)`, the TRACE lines too) that
    /// `inner` turns away, per request, until the request fails; see the
    /// [type docs](Self). `None` (the default): they are dropped as `inner` says.
    pub fn keep_until_error(mut self, level: Option<RaisedLevel>) -> Self {
        self.hold = level;
        self
    }

    /// The filter this one wraps.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether a raised request can make `meta` pass.
    fn raises(&self, meta: &Metadata<'_>) -> bool {
        self.raise.is_some_and(|max| rank(meta.level()) <= raised_rank(max))
    }

    /// Whether `meta` is an event whose line may be kept.
    fn holds(&self, meta: &Metadata<'_>) -> bool {
        let level = rank(meta.level());
        meta.is_event() && self.hold.is_some_and(|hold| level >= rank(&Level::DEBUG) && level <= raised_rank(hold))
    }

    fn interest(&self, meta: &'static Metadata<'static>, inner: Interest) -> Interest {
        if inner.is_always() || !(self.raises(meta) || self.holds(meta)) { inner } else { Interest::sometimes() }
    }

    fn max_level_hint_over(&self, inner: Option<LevelFilter>) -> Option<LevelFilter> {
        let mut hint = inner?;
        for level in [self.raise, self.hold].into_iter().flatten() {
            hint = hint.max(level_filter(level));
        }
        Some(hint)
    }

    /// Whether `meta`, which `inner` turned away, passes for its request's sake.
    fn passes<S>(&self, meta: &Metadata<'_>, cx: &Context<'_, S>, can_keep: bool) -> bool
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let raises = self.raises(meta) && RequestContext::any_raised_level();
        let keeps = can_keep && self.holds(meta);
        if !raises && !keeps {
            return false;
        }
        let Some((raised, finished)) = request_of(cx) else {
            return false;
        };
        (raises && raised.is_some_and(|level| rank(meta.level()) <= raised_rank(level))) || (keeps && !finished)
    }

    /// Marks `event` as kept, for the log layers of `owner`, when only keeping lets it pass.
    fn judge<S>(
        &self,
        event: &Event<'_>,
        cx: &Context<'_, S>,
        owner: u64,
        inner_enabled: impl FnOnce(&Metadata<'_>) -> bool,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        // Whatever this event is, no verdict left at its address may be taken for it.
        buffer::forget(event, owner);
        // A `log` record has the level of its callsite, but is judged by its own target, as
        // `enabled` judged it.
        if !self.holds(event.metadata()) {
            return;
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if inner_enabled(meta) {
            return;
        }
        match request_of(cx) {
            Some((raised, _))
                if self.raises(meta) && raised.is_some_and(|level| rank(meta.level()) <= raised_rank(level)) => {}
            Some((_, false)) => buffer::keep(event, owner),
            _ => {}
        }
    }

    fn can_keep_per_layer(&self) -> bool {
        self.hold.is_some() && self.shared.followed.load(Ordering::Relaxed)
    }
}

/// As a global filter: in place of the filter it wraps.
impl<S, F> Layer<S> for RequestLevelFilter<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.interest(meta, self.inner.register_callsite(meta))
    }

    fn enabled(&self, meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        self.inner.enabled(meta, cx.clone()) || self.passes(meta, &cx, self.hold.is_some())
    }

    fn event_enabled(&self, event: &Event<'_>, cx: Context<'_, S>) -> bool {
        if !self.inner.event_enabled(event, cx.clone()) {
            return false;
        }
        if self.hold.is_some() {
            self.judge(event, &cx, 0, |meta| self.inner.enabled(meta, cx.clone()));
        }
        true
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.max_level_hint_over(self.inner.max_level_hint())
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        if attrs.metadata().target() == reqscope_core::REQUEST_SPAN_TARGET
            && let Some(span) = cx.span(id)
        {
            remember_request(&span);
        }
        self.inner.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        self.inner.on_record(id, values, cx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, cx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, cx);
    }

    fn on_event(&self, event: &Event<'_>, cx: Context<'_, S>) {
        self.inner.on_event(event, cx);
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        self.inner.on_enter(id, cx);
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        self.inner.on_exit(id, cx);
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        self.inner.on_close(id, cx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, cx: Context<'_, S>) {
        self.inner.on_id_change(old, new, cx);
    }
}

/// As a per-layer filter: for the one layer it filters.
impl<S, F> Filter<S> for RequestLevelFilter<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Filter<S>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.inner.enabled(meta, cx) || self.passes(meta, cx, self.can_keep_per_layer())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        self.interest(meta, self.inner.callsite_enabled(meta))
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        if !self.inner.event_enabled(event, cx) {
            return false;
        }
        if self.can_keep_per_layer() {
            self.judge(event, cx, self.shared.id, |meta| self.inner.enabled(meta, cx));
        }
        true
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.max_level_hint_over(self.inner.max_level_hint())
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        if attrs.metadata().target() == reqscope_core::REQUEST_SPAN_TARGET
            && let Some(span) = cx.span(id)
        {
            remember_request(&span);
        }
        self.inner.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        self.inner.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        self.inner.on_enter(id, cx);
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        self.inner.on_exit(id, cx);
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        self.inner.on_close(id, cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, HoldLimits, LogLayer, MemoryWriter};
    use reqscope_core::{REQUEST_SPAN_TARGET, RequestId};
    use tracing_subscriber::prelude::*;

    fn request(id: &str) -> Arc<RequestContext> {
        Arc::new(RequestContext::new(RequestId::parse(id).unwrap()))
    }

    fn raised(id: &str, level: RaisedLevel) -> Arc<RequestContext> {
        let ctx = request(id);
        ctx.raise_level(Some(level));
        ctx
    }

    /// Lines written under `filter` (global) and a JSON `LogLayer`.
    fn capture(filter: RequestLevelFilter, f: impl FnOnce()) -> MemoryWriter {
        capture_with(filter, LogLayer::new(), f)
    }

    fn capture_with(filter: RequestLevelFilter, layer: LogLayer, f: impl FnOnce()) -> MemoryWriter {
        let logs = MemoryWriter::new();
        let subscriber = tracing_subscriber::registry().with(filter).with(layer.with_writer(logs.clone()));
        tracing::subscriber::with_default(subscriber, f);
        logs
    }

    fn info() -> RequestLevelFilter {
        RequestLevelFilter::new(EnvFilter::new("info"))
    }

    fn messages(logs: &MemoryWriter) -> Vec<String> {
        logs.json_lines().iter().map(|l| l["message"].as_str().unwrap_or_default().to_owned()).collect()
    }

    #[test]
    fn only_the_raised_request_logs_below_the_filter() {
        let logs = capture(info(), || {
            RequestContext::scope_sync(raised("debug-1", RaisedLevel::Debug), || {
                tracing::debug!("debug of the raised");
                tracing::trace!("trace of the raised");
                let span = tracing::debug_span!("step", step = 2);
                span.in_scope(|| tracing::info!("in a debug span"));
            });
            RequestContext::scope_sync(request("calm-1"), || {
                tracing::debug!("debug of another");
                tracing::info!("info of another");
            });
            tracing::debug!("outside any request");
        });
        let lines = logs.json_lines();
        assert_eq!(messages(&logs), ["debug of the raised", "in a debug span", "info of another"]);
        assert_eq!(lines[0]["level"], "DEBUG");
        assert_eq!(lines[0]["request_id"], "debug-1");
        assert_eq!(lines[1]["step"], 2, "a raised request's DEBUG spans are kept too: {}", lines[1]);
        assert!(lines.iter().all(|l| l.get("buffered").is_none()));
    }

    #[test]
    fn trace_is_raised_up_to_the_ceiling() {
        let during = |filter| {
            let logs = capture(filter, || {
                RequestContext::scope_sync(raised("trace-1", RaisedLevel::Trace), || {
                    tracing::trace!("t");
                    tracing::debug!("d");
                })
            });
            messages(&logs)
        };
        assert_eq!(during(info()), ["t", "d"]);
        assert_eq!(during(info().max_raise(Some(RaisedLevel::Debug))), ["d"]);
        assert!(during(info().max_raise(None)).is_empty());
    }

    #[test]
    fn a_role_grants_the_request_later() {
        let ctx = request("role-1");
        ctx.raise_level_for_role(RaisedLevel::Debug, "log-debug");
        let logs = capture(info(), || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::debug!("before the token");
                ctx.set_roles(["log-debug"]);
                tracing::debug!("after the token");
            })
        });
        assert_eq!(messages(&logs), ["after the token"]);
    }

    #[test]
    fn a_thread_inside_the_request_span_is_raised_while_the_request_lasts() {
        let ctx = raised("thread-1", RaisedLevel::Debug);
        let other = request("thread-2");
        let logs = capture(info(), || {
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let span_of = |ctx: &Arc<RequestContext>| {
                RequestContext::scope_sync(
                    Arc::clone(ctx),
                    || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"),
                )
            };
            let (raised_span, other_span) = (span_of(&ctx), span_of(&other));
            let on_a_thread = |span: &tracing::Span, message: &'static str| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        tracing::dispatcher::with_default(&dispatch, || {
                            let _entered = span.enter();
                            tracing::debug!("{message}");
                        })
                    });
                });
            };
            on_a_thread(&raised_span, "raised, on a worker thread");
            on_a_thread(&other_span, "not raised, on a worker thread");
            ctx.mark_finished();
            on_a_thread(&raised_span, "after the request");
        });
        let lines = logs.json_lines();
        assert_eq!(messages(&logs), ["raised, on a worker thread"]);
        assert_eq!(lines[0]["request_id"], "thread-1");
    }

    #[test]
    fn the_wrapped_filter_still_decides_first() {
        let filter = RequestLevelFilter::new(EnvFilter::new("info,chatty=off,verbose=debug"));
        let logs = capture(filter, || {
            RequestContext::scope_sync(raised("first-1", RaisedLevel::Debug), || {
                tracing::info!(target: "chatty", "off for everyone but raised requests");
            });
            RequestContext::scope_sync(request("first-2"), || {
                tracing::debug!(target: "verbose", "on for everyone");
                tracing::info!(target: "chatty", "off");
            });
        });
        assert_eq!(messages(&logs), ["off for everyone but raised requests", "on for everyone"]);
    }

    #[test]
    fn the_hint_is_the_more_verbose() {
        let hint = |filter: RequestLevelFilter| Layer::<tracing_subscriber::Registry>::max_level_hint(&filter);
        assert_eq!(hint(info()), Some(LevelFilter::TRACE));
        assert_eq!(hint(info().max_raise(None)), Some(LevelFilter::INFO));
        assert_eq!(hint(info().max_raise(None).keep_until_error(Some(RaisedLevel::Debug))), Some(LevelFilter::DEBUG));
        assert_eq!(
            hint(RequestLevelFilter::new(EnvFilter::new("trace")).max_raise(Some(RaisedLevel::Debug))),
            Some(LevelFilter::TRACE)
        );
    }

    fn keeping() -> RequestLevelFilter {
        info().keep_until_error(Some(RaisedLevel::Debug))
    }

    /// What `RequestContextLayer` writes when a request ends.
    fn access_line(ctx: &Arc<RequestContext>, failed: bool) {
        ctx.mark_finished();
        RequestContext::scope_sync(Arc::clone(ctx), || {
            if failed {
                tracing::error!(target: "reqscope::access", status = 500, "request completed");
            } else {
                tracing::info!(target: "reqscope::access", status = 200, "request completed");
            }
        });
    }

    #[test]
    fn kept_lines_are_written_once_in_order_before_the_first_error() {
        let failed = request("fail-1");
        let fine = request("fine-1");
        let logs = capture(keeping(), || {
            RequestContext::scope_sync(Arc::clone(&fine), || tracing::debug!("fine: step"));
            RequestContext::scope_sync(Arc::clone(&failed), || {
                tracing::debug!(n = 1, "step one");
                tracing::info!("written at once");
                tracing::debug!(n = 2, "step two");
                tracing::trace!("never: below what is kept");
                tracing::error!("it broke");
                tracing::debug!(n = 3, "after the error");
            });
            access_line(&failed, true);
            access_line(&fine, false);
            RequestContext::scope_sync(Arc::clone(&fine), || tracing::debug!("fine: after its end"));
        });
        let lines = logs.json_lines();
        assert_eq!(
            messages(&logs),
            [
                "written at once",
                "step one",
                "step two",
                "it broke",
                "after the error",
                "request completed",
                "request completed"
            ]
        );
        for (i, n) in [(1, 1), (2, 2), (4, 3)] {
            assert_eq!(lines[i]["buffered"], true, "{}", lines[i]);
            assert_eq!(lines[i]["n"], n);
            assert_eq!(lines[i]["level"], "DEBUG");
            assert_eq!(lines[i]["request_id"], "fail-1");
        }
        // Stamped when they happened, not when they were written.
        assert!(lines[1]["timestamp"].as_str() <= lines[0]["timestamp"].as_str());
        for i in [0, 3, 5, 6] {
            assert!(lines[i].get("buffered").is_none(), "{}", lines[i]);
        }
        assert!(lines[3].get("buffered_dropped").is_none());
        assert_eq!(lines[6]["request_id"], "fine-1");
        assert_eq!(buffer::total_bytes_of(&failed) + buffer::total_bytes_of(&fine), 0);
    }

    #[test]
    fn a_failed_access_line_writes_them_and_a_fine_one_drops_them() {
        let failed = request("fail-2");
        let fine = request("fine-2");
        let logs = capture(keeping(), || {
            for ctx in [&failed, &fine] {
                RequestContext::scope_sync(Arc::clone(ctx), || tracing::debug!("kept"));
            }
            assert!(buffer::total_bytes_of(&fine) > 0);
            access_line(&fine, false);
            assert_eq!(buffer::total_bytes_of(&fine), 0, "dropped at the access line, not with the context");
            access_line(&failed, true);
        });
        let lines = logs.json_lines();
        let of =
            |id: &str| lines.iter().filter(|l| l["request_id"] == id).map(|l| l["message"].clone()).collect::<Vec<_>>();
        assert_eq!(of("fail-2"), ["kept", "request completed"]);
        assert_eq!(of("fine-2"), ["request completed"]);
    }

    #[test]
    fn the_oldest_go_first_and_the_error_line_counts_them() {
        let ctx = request("bound-1");
        let layer = LogLayer::new().hold_limits(HoldLimits::default().per_request_lines(3));
        let logs = capture_with(keeping(), layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                for n in 0..10u64 {
                    tracing::debug!(n, "step");
                }
                tracing::error!("failed");
            });
        });
        let lines = logs.json_lines();
        let kept: Vec<u64> = lines.iter().filter_map(|l| l["n"].as_u64()).collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(lines[3]["message"], "failed");
        assert_eq!(lines[3]["buffered_dropped"], 7);

        let ctx = request("bound-2");
        let layer = LogLayer::new().hold_limits(HoldLimits::default().per_request_bytes(1000));
        let logs = capture_with(keeping(), layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::debug!(big = "x".repeat(2000), "too big to keep");
                for n in 0..20u64 {
                    tracing::debug!(n, "step");
                }
                tracing::error!("failed");
            });
        });
        let raw = logs.contents();
        assert!(raw.len() < 1000 + 400, "{raw}");
        let lines = logs.json_lines();
        let error = lines.last().unwrap();
        let kept = lines.len() as u64 - 1;
        assert_eq!(error["buffered_dropped"].as_u64(), Some(21 - kept), "{raw}");
        assert!(kept >= 3, "{raw}");
    }

    #[test]
    fn lines_over_many_blocks_come_back_whole_and_in_order() {
        let ctx = request("blocks-1");
        let logs = capture(keeping(), || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                for n in 0..1000u64 {
                    tracing::debug!(n, pad = %"p".repeat((n % 7 * 60) as usize), "step");
                }
                tracing::error!("failed");
            });
        });
        let lines = logs.json_lines();
        let kept: Vec<u64> = lines.iter().filter_map(|l| l["n"].as_u64()).collect();
        assert_eq!(kept, (744..1000).collect::<Vec<u64>>());
        assert!(
            lines
                .iter()
                .filter(|l| l["n"].is_u64())
                .all(|l| l["pad"].as_str().unwrap().len() as u64 == l["n"].as_u64().unwrap() % 7 * 60)
        );
        assert_eq!(lines.last().unwrap()["buffered_dropped"], 744);
    }

    #[test]
    fn beyond_the_total_nothing_more_is_kept() {
        let ctx = request("total-1");
        let layer = LogLayer::new().hold_limits(HoldLimits::default().total_bytes(0));
        let logs = capture_with(keeping(), layer, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::debug!("one");
                tracing::debug!("two");
                tracing::error!("failed");
            });
        });
        assert_eq!(messages(&logs), ["failed"]);
        assert_eq!(logs.json_lines()[0]["buffered_dropped"], 2);
    }

    #[test]
    fn a_raised_request_writes_its_debug_lines_at_once() {
        let ctx = raised("raised-keep", RaisedLevel::Debug);
        let logs = capture(keeping(), || {
            RequestContext::scope_sync(Arc::clone(&ctx), || tracing::debug!("at once"));
            assert_eq!(buffer::total_bytes_of(&ctx), 0);
        });
        assert_eq!(messages(&logs), ["at once"]);
        assert!(logs.json_lines()[0].get("buffered").is_none());
    }

    #[test]
    fn pretty_lines_are_marked_too() {
        let ctx = request("pretty-keep");
        let logs = capture_with(keeping(), LogLayer::new().with_format(Format::Pretty), || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::debug!("kept");
                tracing::error!("failed");
            });
        });
        let lines = logs.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains(" DEBUG ") && lines[0].ends_with(" buffered=true"), "{}", lines[0]);
        assert!(!lines[1].contains("buffered"), "{}", lines[1]);
    }

    #[test]
    fn ecs_and_gcp_lines_are_marked_too() {
        for (format, buffered, dropped) in [
            (Format::Ecs, "reqscope.buffered", "reqscope.buffered_dropped"),
            (Format::Gcp, "buffered", "buffered_dropped"),
        ] {
            let ctx = request("formats-keep");
            let layer = LogLayer::new().with_format(format).hold_limits(HoldLimits::default().per_request_lines(2));
            let logs = capture_with(keeping(), layer, || {
                RequestContext::scope_sync(Arc::clone(&ctx), || {
                    for i in 0..3 {
                        tracing::debug!(i, "kept");
                    }
                    tracing::error!("failed");
                });
            });
            let lines = logs.json_lines();
            assert_eq!(lines.len(), 3, "{format:?}: {lines:?}");
            for line in &lines[..2] {
                assert_eq!(line[buffered], true, "{format:?}: {line}");
            }
            if format == Format::Ecs {
                for line in logs.lines() {
                    crate::test_support::check_ecs_line(&line);
                }
                assert_eq!(lines[0]["labels.i"], "1", "the oldest went");
            } else {
                assert_eq!(lines[0]["severity"], "DEBUG");
                assert_eq!(lines[0]["i"], 1, "the oldest went");
            }
            assert!(lines[2].get(buffered).is_none(), "{format:?}: {}", lines[2]);
            assert_eq!(lines[2][dropped], 1, "{format:?}: {}", lines[2]);
        }
    }

    #[test]
    fn a_fork_keeps_its_own_lines() {
        let parent = request("fork-parent");
        let logs = capture(keeping(), || {
            RequestContext::scope_sync(Arc::clone(&parent), || tracing::debug!("parent's"));
            let fork = Arc::new(parent.fork());
            RequestContext::scope_sync(Arc::clone(&fork), || tracing::debug!("fork's"));
            access_line(&parent, false);
            RequestContext::scope_sync(Arc::clone(&fork), || tracing::error!("the fork failed"));
        });
        assert_eq!(messages(&logs), ["request completed", "fork's", "the fork failed"]);
    }

    #[test]
    fn a_kept_log_record_is_judged_by_its_own_target() {
        let record = |target: &str, message: &str| {
            tracing_log::format_trace(
                &tracing_log::log::Record::builder()
                    .args(format_args!("{message}"))
                    .level(tracing_log::log::Level::Debug)
                    .target(target)
                    .build(),
            )
            .unwrap();
        };
        let ctx = request("log-keep");
        let filter =
            RequestLevelFilter::new(EnvFilter::new("info,legacy=debug")).keep_until_error(Some(RaisedLevel::Debug));
        let logs = capture(filter, || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                record("legacy::db", "written");
                record("other", "kept");
            });
            assert!(buffer::total_bytes_of(&ctx) > 0);
            access_line(&ctx, false);
        });
        let lines = logs.json_lines();
        assert_eq!(messages(&logs), ["written", "request completed"]);
        assert!(lines[0].get("buffered").is_none());
    }

    #[test]
    fn as_a_per_layer_filter_only_a_following_layer_keeps() {
        let ctx = request("per-layer");
        let run = |follow: bool| {
            let (kept_logs, all_logs) = (MemoryWriter::new(), MemoryWriter::new());
            let filter = keeping();
            let layer = if follow { LogLayer::new().held_by(&filter) } else { LogLayer::new() };
            let subscriber = tracing_subscriber::registry()
                .with(LogLayer::new().with_writer(all_logs.clone()).with_filter(LevelFilter::TRACE))
                .with(layer.with_writer(kept_logs.clone()).with_filter(filter));
            let ctx = Arc::new(ctx.fork());
            tracing::subscriber::with_default(subscriber, || {
                RequestContext::scope_sync(Arc::clone(&ctx), || {
                    tracing::debug!("debug");
                    tracing::error!("failed");
                })
            });
            (messages(&kept_logs), messages(&all_logs), all_logs.contents())
        };
        let (kept, all, raw) = run(true);
        assert_eq!(kept, ["debug", "failed"]);
        assert_eq!(all, ["debug", "failed"], "the other layer keeps nothing");
        assert!(!raw.contains("buffered"), "{raw}");
        let (kept, _, _) = run(false);
        assert_eq!(kept, ["failed"], "without held_by: no keeping, and no DEBUG line either");
    }
}
