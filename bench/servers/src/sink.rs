//! A stand-in OpenTelemetry collector for the `full-otlp` stack: accepts OTLP/HTTP protobuf
//! on `/v1/traces` and `/v1/logs`, counts what it decodes, and tells the counts on `/counts`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    records: AtomicU64,
}

pub async fn run(addr: SocketAddr) -> Result<(), String> {
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/counts", get(report))
        .with_state(counts);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot bind {addr}: {e}"))?;
    println!("ready otlp-sink");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

async fn traces(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum();
    counts.spans.fetch_add(spans, Ordering::Relaxed);
    protobuf(ExportTraceServiceResponse::default().encode_to_vec())
}

async fn logs(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    let Ok(request) = ExportLogsServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let records = request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum();
    counts.records.fetch_add(records, Ordering::Relaxed);
    protobuf(ExportLogsServiceResponse::default().encode_to_vec())
}

async fn report(State(counts): State<Arc<Counts>>) -> String {
    format!("{} {}\n", counts.spans.load(Ordering::Relaxed), counts.records.load(Ordering::Relaxed))
}
