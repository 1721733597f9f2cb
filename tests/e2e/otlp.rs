//! OpenTelemetry export from the example binary (`OTEL_EXPORTER_OTLP_ENDPOINT`) to an OTLP
//! receiver in the test: spans and log records decoded with the official generated types,
//! compared with the stdout lines of the same requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::Value;

use crate::example_binary::{mint_token, start_example, stop, until_stdout_ends, wait_for, watch_lines};
use crate::support::fetch;

/// What the receiver was sent, with each item's `service.name`.
#[derive(Default)]
struct Received {
    spans: Vec<(String, Span)>,
    records: Vec<(String, LogRecord)>,
}

type Shared = Arc<Mutex<Received>>;

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource.and_then(|r| text(&r.attributes, "service.name")).unwrap_or_default()
}

fn keep_traces(received: &Shared, request: ExportTraceServiceRequest) {
    let mut received = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = service_name(resource_spans.resource.as_ref());
        for scope in resource_spans.scope_spans {
            received.spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
        }
    }
}

fn keep_logs(received: &Shared, request: ExportLogsServiceRequest) {
    let mut received = received.lock().unwrap();
    for resource_logs in request.resource_logs {
        let service = service_name(resource_logs.resource.as_ref());
        for scope in resource_logs.scope_logs {
            received.records.extend(scope.log_records.into_iter().map(|record| (service.clone(), record)));
        }
    }
}

/// An OTLP/HTTP receiver (protobuf) on 127.0.0.1, that can be stopped and started again on
/// its port.
struct Receiver {
    addr: SocketAddr,
    received: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn traces(State(received): State<Shared>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep_traces(&received, request);
            protobuf(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(_) => (http::StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response(),
    }
}

async fn logs(State(received): State<Shared>, body: Bytes) -> impl IntoResponse {
    match ExportLogsServiceRequest::decode(body) {
        Ok(request) => {
            keep_logs(&received, request);
            protobuf(ExportLogsServiceResponse::default().encode_to_vec())
        }
        Err(_) => (http::StatusCode::BAD_REQUEST, "not an ExportLogsServiceRequest").into_response(),
    }
}

fn protobuf(body: Vec<u8>) -> axum::response::Response {
    ([(http::header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

impl Receiver {
    async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), Shared::default()).await
    }

    async fn start_on(addr: SocketAddr, received: Shared) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .route("/v1/logs", axum::routing::post(logs))
            .with_state(received.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver { addr, received, stop: Some(stop), task: Some(task) }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.received.lock().unwrap().spans.clone()
    }

    fn records(&self) -> Vec<(String, LogRecord)> {
        self.received.lock().unwrap().records.clone()
    }

    /// The server span of the request `id` (its `request_id` attribute), once it arrived.
    async fn server_span(&self, id: &str) -> Span {
        wait_for(&format!("the server span of {id}"), || self.find_server_span(id).is_some()).await;
        self.find_server_span(id).unwrap()
    }

    fn find_server_span(&self, id: &str) -> Option<Span> {
        self.spans().into_iter().map(|(_, span)| span).find(|span| {
            span.kind == SpanKind::Server as i32 && text(&span.attributes, "request_id").as_deref() == Some(id)
        })
    }

    fn records_of(&self, id: &str) -> Vec<LogRecord> {
        self.records()
            .into_iter()
            .map(|(_, record)| record)
            .filter(|record| text(&record.attributes, "request_id").as_deref() == Some(id))
            .collect()
    }

    async fn stop(mut self) -> Shared {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.received.clone()
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key)? {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key)? {
        Any::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn body(record: &LogRecord) -> Option<String> {
    match record.body.as_ref()?.value.as_ref()? {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The example with export to `endpoint`, batches sent every 50 ms.
fn example_exporting_to(
    endpoint: &str,
    env: &[(&str, &str)],
) -> (crate::example_binary::KillOnDrop, std::io::BufReader<std::process::ChildStdout>, SocketAddr) {
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "50"),
    ];
    all.extend_from_slice(env);
    start_example(&all)
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_server_span_with_the_lines_ids_and_its_lines_are_log_records() {
    let receiver = Receiver::start().await;
    let (child, stdout, addr) = example_exporting_to(&receiver.endpoint(), &[]);
    let (lines, reader) = watch_lines(stdout);
    let bearer = format!("Bearer {}", mint_token("3"));
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let me = fetch(
        addr,
        "/users/me",
        &[
            ("authorization", bearer.as_bytes()),
            ("traceparent", traceparent.as_bytes()),
            ("x-request-id", b"otlp-me-1"),
        ],
    )
    .await;
    assert_eq!(me.status, 200);

    let span = receiver.server_span("otlp-me-1").await;
    assert_eq!(hex(&span.trace_id), CALLER_TRACE, "the caller's trace");
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(span.name, "GET /users/me");
    let a = &span.attributes;
    assert_eq!(text(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(a, "url.path").as_deref(), Some("/users/me"));
    assert_eq!(text(a, "url.scheme").as_deref(), Some("http"));
    assert_eq!(text(a, "http.route").as_deref(), Some("/users/me"));
    assert_eq!(int(a, "http.response.status_code"), Some(200));
    assert_eq!(text(a, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(text(a, "user.id").as_deref(), Some("3"));
    assert_eq!(text(a, "network.protocol.version").as_deref(), Some("1.1"));
    assert_ne!(span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32), "a 200 is no error");
    assert!(span.end_time_unix_nano > span.start_time_unix_nano, "{span:?}");
    let service = receiver.spans().into_iter().find(|(_, s)| s.span_id == span.span_id).unwrap().0;
    assert_eq!(service, "reqscope-example", "the example's default service name");

    // Every stdout line of the request carries the span's ids, and is a log record with them.
    wait_for("the request's log records", || receiver.records_of("otlp-me-1").len() >= 3).await;
    let stdout_lines: Vec<Value> =
        lines.lock().unwrap().iter().filter(|l| l["request_id"] == "otlp-me-1").cloned().collect();
    assert_eq!(stdout_lines.len(), 3, "handler, query and access lines: {stdout_lines:?}");
    for line in &stdout_lines {
        assert_eq!(line["trace_id"], hex(&span.trace_id), "{line}");
        assert_eq!(line["span_id"], hex(&span.span_id), "{line}");
    }
    let records = receiver.records_of("otlp-me-1");
    assert_eq!(records.len(), stdout_lines.len(), "one record per line: {records:?}");
    for record in &records {
        assert_eq!(hex(&record.trace_id), hex(&span.trace_id));
        assert_eq!(hex(&record.span_id), hex(&span.span_id));
        assert_eq!(text(&record.attributes, "user_id").as_deref(), Some("3"));
        assert_eq!(text(&record.attributes, "org_id").as_deref(), Some("acme"));
        assert_eq!(text(&record.attributes, "tenant").as_deref(), Some("acme"), "a custom context field");
    }
    let handler =
        records.iter().find(|r| body(r).as_deref() == Some("loading the current user")).expect("the handler's line");
    assert_eq!(handler.severity_text, "INFO");
    assert_eq!(handler.severity_number, 9);
    let access = records.iter().find(|r| body(r).as_deref() == Some("request completed")).expect("the access line");
    assert_eq!(int(&access.attributes, "status"), Some(200), "the event's own fields");
    assert_eq!(text(&access.attributes, "route").as_deref(), Some("/users/me"));

    stop(child).await;
    until_stdout_ends(reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_an_error_span_and_an_error_record() {
    let receiver = Receiver::start().await;
    // DEBUG lines kept until their request fails are stdout's business only.
    let (child, stdout, addr) = example_exporting_to(&receiver.endpoint(), &[("LOG_ON_ERROR", "debug")]);
    let (lines, reader) = watch_lines(stdout);
    let reply = fetch(addr, "/boom", &[("x-request-id", b"otlp-boom-1")]).await;
    assert_eq!(reply.status, 500);
    let span = receiver.server_span("otlp-boom-1").await;
    let status = span.status.expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32, "{status:?}");
    assert_eq!(int(&span.attributes, "http.response.status_code"), Some(500));
    assert_eq!(text(&span.attributes, "error.type").as_deref(), Some("500"));
    wait_for("the panic's record", || {
        receiver.records_of("otlp-boom-1").iter().any(|r| r.severity_text == "ERROR" && r.severity_number == 17)
    })
    .await;
    wait_for("the access record", || {
        receiver.records_of("otlp-boom-1").iter().any(|r| body_is(r, "request completed"))
    })
    .await;
    assert!(
        lines.lock().unwrap().iter().any(|l| l["message"] == "about to fail" && l["buffered"] == true),
        "the kept DEBUG line is on stdout"
    );
    assert!(
        !receiver.records_of("otlp-boom-1").iter().any(|r| body_is(r, "about to fail")),
        "a kept line is no record"
    );
    // A 404 is the client's business.
    let _ = fetch(addr, "/missing", &[("x-request-id", b"otlp-404-1")]).await;
    let span = receiver.server_span("otlp-404-1").await;
    assert_ne!(span.status.map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(span.name, "GET", "no route: the method alone");
    stop(child).await;
    until_stdout_ends(reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_hops_is_one_trace_of_server_and_client_spans() {
    let receiver = Receiver::start().await;
    let (child, _stdout, addr) = example_exporting_to(&receiver.endpoint(), &[]);
    let reply = fetch(addr, "/chain?hops=2", &[("x-request-id", b"otlp-chain-1")]).await;
    assert_eq!(reply.status, 200);
    // The hops keep the forwarded request id: three server spans and two client spans of it.
    let of_chain = |receiver: &Receiver| -> Vec<Span> {
        receiver
            .spans()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| text(&s.attributes, "request_id").as_deref() == Some("otlp-chain-1"))
            .collect()
    };
    wait_for("five spans", || of_chain(&receiver).len() >= 5).await;
    let spans = of_chain(&receiver);
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let trace = &spans[0].trace_id;
    assert!(spans.iter().all(|s| &s.trace_id == trace), "one trace");
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Server as i32).collect();
    let clients: Vec<&Span> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    assert_eq!((servers.len(), clients.len()), (3, 2));
    let root = servers.iter().find(|s| s.parent_span_id.is_empty()).expect("the first hop starts the trace");
    // Root → its client → the next hop's server → its client → the last hop.
    let mut current = *root;
    for hop in 0..2 {
        let client = clients
            .iter()
            .find(|c| c.parent_span_id == current.span_id)
            .unwrap_or_else(|| panic!("hop {hop}'s client span"));
        assert_eq!(client.name, "GET");
        assert!(text(&client.attributes, "url.full").is_some_and(|u| u.ends_with("/chain")), "{client:?}");
        assert_eq!(int(&client.attributes, "http.response.status_code"), Some(200));
        current = servers
            .iter()
            .find(|s| s.parent_span_id == client.span_id)
            .unwrap_or_else(|| panic!("hop {}'s server span", hop + 1));
        assert_eq!(current.name, "GET /chain");
    }
    // The reply names the first hop's ids: what its lines said.
    let body = reply.json();
    assert_eq!(body["trace_id"], hex(trace));
    assert_eq!(body["span_id"], hex(&root.span_id));
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_redacted_without_hidden_fields_and_a_job_is_a_consumer_span_of_the_trace() {
    let receiver = Receiver::start().await;
    let (child, stdout, addr) = example_exporting_to(&receiver.endpoint(), &[]);
    let (lines, reader) = watch_lines(stdout);
    let bearer = format!("Bearer {}", mint_token("3"));
    let body = serde_json::json!({"name": "Grace", "email": "otlp-grace@example.org"}).to_string();
    let reply = crate::support::send(
        http::Method::POST,
        addr,
        "/users",
        &[
            ("authorization", bearer.as_bytes()),
            ("content-type", b"application/json"),
            ("x-request-id", b"otlp-job-1"),
            ("x-device-id", b"device-secret-42"),
        ],
        Bytes::from(body),
    )
    .await;
    assert_eq!(reply.status, 201);
    let server = receiver.server_span("otlp-job-1").await;

    wait_for("the job's consumer span", || {
        receiver.spans().iter().any(|(_, s)| {
            s.kind == SpanKind::Consumer as i32 && text(&s.attributes, "request_id").as_deref() == Some("otlp-job-1")
        })
    })
    .await;
    let job = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| {
            s.kind == SpanKind::Consumer as i32 && text(&s.attributes, "request_id").as_deref() == Some("otlp-job-1")
        })
        .unwrap();
    assert_eq!(job.trace_id, server.trace_id, "the request's trace");
    assert_eq!(job.parent_span_id, server.span_id, "the request's span is the parent");
    assert_eq!(job.name, "process welcome_email");
    assert_eq!(text(&job.attributes, "job.name").as_deref(), Some("welcome_email"));
    assert_eq!(text(&job.attributes, "messaging.operation.type").as_deref(), Some("process"));
    assert_ne!(job.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));

    wait_for("the job's end record", || receiver.records_of("otlp-job-1").iter().any(|r| body_is(r, "job completed")))
        .await;
    let records = receiver.records_of("otlp-job-1");
    let created = records.iter().find(|r| body_is(r, "user created")).expect("the handler's record");
    assert_eq!(text(&created.attributes, "email").as_deref(), Some("[redacted]"), "redacted as on the line");
    assert!(int(&created.attributes, "new_user_id").is_some());
    let job_end = records.iter().find(|r| body_is(r, "job completed")).unwrap();
    assert_eq!(hex(&job_end.span_id), hex(&job.span_id), "the job's lines carry the job's span");
    assert_eq!(text(&job_end.attributes, "job").as_deref(), Some("welcome_email"));
    for record in &records {
        let all = format!("{record:?}");
        assert!(!all.contains("otlp-grace@example.org"), "the email reached a record: {all}");
        assert!(
            !all.contains("device-secret-42") && attr(&record.attributes, "device_id").is_none(),
            "a hidden field: {all}"
        );
    }
    // The stdout lines say the same.
    let line = lines.lock().unwrap().iter().find(|l| l["message"] == "user created").cloned().unwrap();
    assert_eq!(line["email"], "[redacted]");
    assert_eq!(line["span_id"], hex(&created.span_id));
    stop(child).await;
    until_stdout_ends(reader).await;
}

fn body_is(record: &LogRecord, message: &str) -> bool {
    body(record).as_deref() == Some(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_a_server_span_with_rpc_attributes() {
    use reqscope_example_proto::GetUserRequest;
    use reqscope_example_proto::users_client::UsersClient;

    let receiver = Receiver::start().await;
    let (child, _stdout, addr) = example_exporting_to(&receiver.endpoint(), &[]);
    let mut client = UsersClient::connect(format!("http://{addr}")).await.unwrap();
    let mut request = tonic::Request::new(GetUserRequest { id: 1 });
    request.metadata_mut().insert("x-request-id", "otlp-grpc-1".parse().unwrap());
    client.get_user(request).await.unwrap();
    let mut missing = tonic::Request::new(GetUserRequest { id: 999_999 });
    missing.metadata_mut().insert("x-request-id", "otlp-grpc-2".parse().unwrap());
    assert_eq!(client.get_user(missing).await.unwrap_err().code(), tonic::Code::NotFound);

    let span = receiver.server_span("otlp-grpc-1").await;
    assert_eq!(span.name, "reqscope.example.v1.Users/GetUser");
    let a = &span.attributes;
    assert_eq!(text(a, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(text(a, "rpc.service").as_deref(), Some("reqscope.example.v1.Users"));
    assert_eq!(text(a, "rpc.method").as_deref(), Some("GetUser"));
    assert_eq!(int(a, "rpc.grpc.status_code"), Some(0));
    assert_eq!(text(a, "network.protocol.version").as_deref(), Some("2"));
    let missing = receiver.server_span("otlp-grpc-2").await;
    assert_eq!(int(&missing.attributes, "rpc.grpc.status_code"), Some(5));
    assert_ne!(missing.status.map(|s| s.code), Some(StatusCode::Error as i32), "NOT_FOUND is the client's business");
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing_is_reported_and_export_recovers() {
    // A port nobody listens on, until the receiver starts there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (child, stdout, addr) = example_exporting_to(&format!("http://{port}"), &[]);
    let (lines, reader) = watch_lines(stdout);
    for i in 0..3 {
        let started = Instant::now();
        let id = format!("otlp-down-{i}");
        let reply = fetch(addr, "/users/1", &[("x-request-id", id.as_bytes())]).await;
        assert_eq!(reply.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a request waited for the collector: {:?}",
            started.elapsed()
        );
    }
    let warned = |message: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["target"] == "reqscope::otlp" && l["message"].as_str().is_some_and(|m| m.starts_with(message)))
            .cloned()
    };
    wait_for("the WARN that export fails", || warned("OpenTelemetry export failing").is_some()).await;
    assert_eq!(warned("OpenTelemetry export failing").unwrap()["level"], "WARN");

    let receiver = Receiver::start_on(port, Shared::default()).await;
    let reply = fetch(addr, "/users/1", &[("x-request-id", b"otlp-up-1")]).await;
    assert_eq!(reply.status, 200);
    receiver.server_span("otlp-up-1").await;
    wait_for("the WARN that export works again", || warned("OpenTelemetry export works again").is_some()).await;
    let recovered = warned("OpenTelemetry export works again").unwrap();
    let lost_spans = recovered["lost_spans"].as_u64().unwrap();
    let lost_records = recovered["lost_log_records"].as_u64().unwrap();
    let exported_down =
        (0..3).filter(|i| receiver.find_server_span(&format!("otlp-down-{i}")).is_some()).count() as u64;
    assert!(lost_spans >= 1 && lost_records >= 1, "{recovered}");
    assert!(
        lost_spans + exported_down >= 3,
        "every span of the requests while down is lost and counted, or sent: {recovered}"
    );
    // The reports themselves are no records: they would feed the failure they report.
    assert!(receiver.records().iter().all(|(_, r)| !body(r).is_some_and(|b| b.starts_with("OpenTelemetry export"))));
    stop(child).await;
    until_stdout_ends(reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_every_span_and_record_of_the_answered_requests() {
    let receiver = Receiver::start().await;
    // Batches every minute: only the shutdown can send these.
    let (child, stdout, addr) = start_example(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "60000"),
        ("OTEL_SERVICE_NAME", "flush-test"),
    ]);
    let (lines, reader) = watch_lines(stdout);
    let ids: Vec<String> = (0..6).map(|i| format!("otlp-flush-{i}")).collect();
    for id in &ids {
        assert_eq!(fetch(addr, "/users/1", &[("x-request-id", id.as_bytes())]).await.status, 200);
    }
    wait_for("the access lines", || {
        ids.iter().all(|id| {
            lines.lock().unwrap().iter().any(|l| l["request_id"] == id.as_str() && l["target"] == "reqscope::access")
        })
    })
    .await;
    assert!(receiver.spans().is_empty(), "nothing sent before the shutdown");
    stop(child).await;
    until_stdout_ends(reader).await;
    let received = receiver.stop().await;
    let received = received.lock().unwrap();
    let lines = lines.lock().unwrap();
    for id in &ids {
        let span = received.spans.iter().find(|(_, s)| {
            s.kind == SpanKind::Server as i32 && text(&s.attributes, "request_id").as_deref() == Some(id)
        });
        let (service, _) = span.unwrap_or_else(|| panic!("the span of {id} was lost"));
        assert_eq!(service, "flush-test", "OTEL_SERVICE_NAME names the service");
        let records =
            received.records.iter().filter(|(_, r)| text(&r.attributes, "request_id").as_deref() == Some(id)).count();
        let written = lines.iter().filter(|l| l["request_id"] == id.as_str()).count();
        assert_eq!(records, written, "every line of {id} is a record");
    }
    assert!(received.records.iter().any(|(_, r)| body_is(r, "stopped")), "the last line too");
}

#[test]
fn a_bad_otel_variable_stops_the_example_with_its_name() {
    let stderr = crate::example_binary::failed_start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ]);
    assert!(stderr.contains("OTEL_TRACES_SAMPLER must be"), "{stderr}");
    let stderr = crate::example_binary::failed_start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT must be"), "{stderr}");
}

mod grpc_receiver {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};

    use super::*;

    #[derive(Clone)]
    struct Collector(Shared);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            keep_traces(&self.0, request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[tonic::async_trait]
    impl LogsService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            keep_logs(&self.0, request.into_inner());
            Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_grpc_protocol_spans_and_records_reach_a_tonic_collector() {
        let received = Shared::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector_addr = listener.local_addr().unwrap();
        let collector = Collector(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(LogsServiceServer::new(collector))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let endpoint = format!("http://{collector_addr}");
        let (child, _stdout, addr) = example_exporting_to(&endpoint, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        let reply =
            fetch(addr, "/users/1", &[("x-request-id", b"otlp-grpc-proto-1"), ("traceparent", traceparent.as_bytes())])
                .await;
        assert_eq!(reply.status, 200);
        let span_of = || {
            received
                .lock()
                .unwrap()
                .spans
                .iter()
                .map(|(_, s)| s.clone())
                .find(|s| text(&s.attributes, "request_id").as_deref() == Some("otlp-grpc-proto-1"))
        };
        wait_for("the span over gRPC", || span_of().is_some()).await;
        let span = span_of().unwrap();
        assert_eq!(hex(&span.trace_id), CALLER_TRACE);
        assert_eq!(hex(&span.parent_span_id), CALLER_SPAN);
        wait_for("the records over gRPC", || {
            received.lock().unwrap().records.iter().any(|(_, r)| {
                text(&r.attributes, "request_id").as_deref() == Some("otlp-grpc-proto-1") && r.span_id == span.span_id
            })
        })
        .await;
        stop(child).await;
    }
}
