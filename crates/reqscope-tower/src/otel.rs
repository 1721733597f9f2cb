//! OpenTelemetry interop (feature `otel`): the request's trace is the trace of its
//! OpenTelemetry span, and each outgoing call's client span is an OpenTelemetry span of kind
//! `client`, so OTLP-exported spans and reqscope's log lines agree.

use opentelemetry::Context as OtelContext;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState as OtelTraceState};
use reqscope_core::trace::{SpanId, TraceContext, TraceId, TraceParent, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::request_context::plain_trace;

/// The trace of the request whose `request` span is `span`.
///
/// When a `tracing-opentelemetry` layer is installed, `span` has an OpenTelemetry span: it
/// continues an OpenTelemetry context that is already active (an outer layer extracted it),
/// else the incoming `traceparent`, else it starts a trace — and its ids are the ones logged.
/// Without such a layer, the incoming `traceparent` is continued as usual.
pub(crate) fn request_trace(
    span: &Span,
    incoming: Option<(TraceParent, Option<TraceState>)>,
    root_sampled: bool,
) -> TraceContext {
    if span.is_disabled() {
        // No subscriber wants the span, so no OpenTelemetry span exists for it.
        return plain_trace(incoming, root_sampled);
    }
    let outer = active_span_context();
    if let (None, Some((parent, state))) = (&outer, &incoming) {
        let remote = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(hex_bytes(parent.trace_id.as_bytes())),
            opentelemetry::trace::SpanId::from_bytes(hex_bytes(parent.parent_id.as_bytes())),
            TraceFlags::new(parent.flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state.as_ref().and_then(|s| s.as_str().parse::<OtelTraceState>().ok()).unwrap_or_default(),
        );
        if span.set_parent(OtelContext::new().with_remote_span_context(remote)).is_err() {
            // No OpenTelemetry layer (or the span is already started or disabled): the span
            // cannot continue the caller's trace, so the plain W3C handling decides.
            return plain_trace(incoming, root_sampled);
        }
    }
    let otel = span.context().span().span_context().clone();
    if otel.is_valid()
        && let (Ok(trace_id), Some(span_id)) =
            (TraceId::parse(&otel.trace_id().to_string()), parse_span_id(otel.span_id()))
    {
        // The caller's span and tracestate belong to the trace only if the span continued it.
        let (parent_id, state) = match (&outer, incoming) {
            (Some(outer), _) => (parse_span_id(outer.span_id()), None),
            (None, Some((parent, state))) if parent.trace_id == trace_id => (Some(parent.parent_id), state),
            (None, _) => (None, None),
        };
        return TraceContext::from_parts(trace_id, span_id, parent_id, otel.is_sampled()).with_state(state);
    }
    plain_trace(incoming, root_sampled)
}

/// The client span of an outgoing call made in the request whose trace is `request`.
///
/// With a `tracing-opentelemetry` layer, an OpenTelemetry span of kind `client` whose parent is
/// the current OpenTelemetry span (a handler's span, else the request's); its ids are the ones
/// sent and logged, and it is exported when the call ends. Otherwise (no such layer, the span
/// filtered out, or a span in another trace) a child of the request's span in ids only.
pub(crate) fn client_span(request: &TraceContext, method: &http::Method, url: &str) -> (Span, TraceContext) {
    let parent = Span::current().context().span().span_context().clone();
    let span = tracing::info_span!(
        target: "reqscope::outgoing",
        "outgoing",
        otel.kind = "client",
        otel.name = method.as_str(),
        http.request.method = method.as_str(),
        url.full = url,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return (Span::none(), request.child());
    }
    let otel = span.context().span().span_context().clone();
    if otel.is_valid()
        && let (Ok(trace_id), Some(span_id)) =
            (TraceId::parse(&otel.trace_id().to_string()), parse_span_id(otel.span_id()))
        && trace_id == *request.trace_id()
    {
        let parent_id = match parent.is_valid() && parent.trace_id() == otel.trace_id() {
            true => parse_span_id(parent.span_id()),
            false => Some(*request.span_id()),
        };
        let trace = TraceContext::from_parts(trace_id, span_id, parent_id, otel.is_sampled())
            .with_state(request.state().cloned());
        return (span, trace);
    }
    (Span::none(), request.child())
}

/// The OpenTelemetry span context active around the request layer, if any: attached by an
/// outer layer, or the context of the current `tracing` span.
fn active_span_context() -> Option<SpanContext> {
    let attached = OtelContext::current().span().span_context().clone();
    if attached.is_valid() {
        return Some(attached);
    }
    let current = Span::current();
    if current.is_none() {
        return None;
    }
    let of_span = current.context().span().span_context().clone();
    of_span.is_valid().then_some(of_span)
}

fn parse_span_id(id: opentelemetry::trace::SpanId) -> Option<SpanId> {
    SpanId::parse(&id.to_string()).ok()
}

/// Lowercase hex (already validated) to bytes.
fn hex_bytes<const N: usize>(hex: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |b: u8| if b.is_ascii_digit() { b - b'0' } else { b - b'a' + 10 };
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    out
}
