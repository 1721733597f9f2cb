//! Feature `otel`: with a `tracing-opentelemetry` layer, the ids on reqscope's log lines are
//! those of the exported OpenTelemetry spans.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqscope::RequestContextLayer;
use reqscope::logging::{LogLayer, MemoryWriter};
use serde_json::Value;
use tracing_subscriber::prelude::*;

use crate::support::fetch;

/// A subscriber of a test's own: OpenTelemetry spans into the returned exporter, reqscope's
/// JSON lines into the returned writer.
fn otel_subscriber() -> (InMemorySpanExporter, MemoryWriter, impl tracing::Subscriber + Send + Sync) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("reqscope-test")))
        .with(LogLayer::new().with_writer(logs.clone()));
    (exporter, logs, subscriber)
}

/// Serves a small app under a subscriber of its own (OpenTelemetry + reqscope's JSON lines),
/// sends one request, and returns the exported spans and the log lines.
async fn one_request(headers: &[(&str, &[u8])]) -> (Vec<SpanData>, Vec<Value>) {
    let (exporter, logs, subscriber) = otel_subscriber();
    // This test's runtime is single-threaded: the server, its spans and its events all run on
    // this thread, under this subscriber, apart from the other tests' global one.
    let _default = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                tracing::info!("working");
                "done"
            }),
        )
        .layer(RequestContextLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let reply = fetch(addr, "/work", headers).await;
    assert_eq!(reply.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exporter.get_finished_spans().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.abort();
    (exporter.get_finished_spans().unwrap(), logs.json_lines())
}

#[tokio::test(flavor = "current_thread")]
async fn log_lines_carry_the_ids_of_the_exported_span() {
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (spans, lines) = one_request(&[("traceparent", incoming.as_bytes())]).await;
    let request = spans.iter().find(|s| s.name == "request").expect("the request span is exported");
    assert_eq!(request.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7", "the caller's span is the parent");
    assert!(request.parent_span_is_remote);

    let stamped: Vec<&Value> = lines.iter().filter(|l| l.get("request_id").is_some()).collect();
    assert_eq!(stamped.len(), 2, "the handler line and the access line: {lines:?}");
    for line in stamped {
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
        assert_eq!(line["span_id"], request.span_context.span_id().to_string(), "{line}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_traceparent_the_new_trace_is_the_exported_one() {
    let (spans, lines) = one_request(&[]).await;
    let request = spans.iter().find(|s| s.name == "request").expect("the request span is exported");
    let access = lines.iter().find(|l| l["target"] == "reqscope::access").expect("an access line");
    assert_eq!(access["trace_id"], request.span_context.trace_id().to_string());
    assert_eq!(access["span_id"], request.span_context.span_id().to_string());
}

/// With `otel`, an outgoing call is an exported OpenTelemetry client span whose parent is the
/// current OpenTelemetry span (here the handler's), and that span is the parent sent onward.
#[tokio::test(flavor = "current_thread")]
async fn an_outgoing_call_is_an_exported_client_span_under_the_current_span() {
    use std::sync::{Arc, Mutex};

    use http_body_util::Empty;
    use opentelemetry::trace::SpanKind;
    use tower::ServiceExt;
    use tracing::Instrument;

    let (exporter, logs, subscriber) = otel_subscriber();
    let _default = tracing::subscriber::set_default(subscriber);

    // The next hop: records what it was sent.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let downstream = Router::new().route(
        "/next",
        get(move |headers: http::HeaderMap| {
            record.lock().unwrap().push(headers);
            async { "next" }
        }),
    );
    let next = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let next_addr = next.local_addr().unwrap();
    let next_server = tokio::spawn(async move { axum::serve(next, downstream).await.unwrap() });

    let client = crate::support::propagating_client();
    let app = Router::new()
        .route(
            "/call",
            get(move || {
                async move {
                    let request = http::Request::get(format!("http://{next_addr}/next")).body(Empty::new()).unwrap();
                    client.oneshot(request).await.unwrap().status().as_u16().to_string()
                }
                .instrument(tracing::info_span!("handler"))
            }),
        )
        .layer(RequestContextLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = fetch(addr, "/call", &[("traceparent", incoming.as_bytes())]).await;
    assert_eq!(reply.body, "200");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exporter.get_finished_spans().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.abort();
    next_server.abort();

    let spans = exporter.get_finished_spans().unwrap();
    let handler = spans.iter().find(|s| s.name == "handler").expect("the handler span is exported");
    let client_span = spans.iter().find(|s| s.span_kind == SpanKind::Client).expect("a client span is exported");
    assert_eq!(client_span.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(client_span.parent_span_id, handler.span_context.span_id(), "the current span is the parent");
    assert_eq!(client_span.name, "GET");

    let sent = seen.lock().unwrap().pop().expect("the next hop was called");
    let client_id = client_span.span_context.span_id().to_string();
    assert_eq!(sent["traceparent"], format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{client_id}-01"));
    let lines = logs.json_lines();
    let call = lines.iter().find(|l| l["target"] == "reqscope::outgoing").expect("the call's line");
    assert_eq!(call["span_id"], client_id);
    assert_eq!(call["parent_span_id"], handler.span_context.span_id().to_string());
}
