//! gRPC through `RequestContextLayer` on a real tonic server: the access line judges the
//! request by its `grpc-status` (trailers, or the headers of a trailers-only answer), the
//! client's address comes from tonic's connection info, and the request id goes both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use http::{HeaderMap, StatusCode};
use reqscope::RequestContextLayer;
use reqscope::classify::{Classification, ClassifyFailure, DefaultClassifier};
use reqscope_example_proto::users_client::UsersClient;
use reqscope_example_proto::users_server::{Users, UsersServer};
use reqscope_example_proto::{CountUpRequest, GetUserRequest, Tick, User, WhoAmIRequest};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::support::{access_lines_of, lines_of, logs};

/// `CountUp` with this `n` fails with `UNAVAILABLE` after three ticks.
const FAILS_MID_STREAM: u32 = 13;
/// `CountUp` of this many sends two ticks, then never ends: only the client can end it.
const NEVER_ENDS: u32 = 99;

/// The example's `Users` service, answering by id: 1 is a user, 404 is missing, 500 breaks.
struct TestUsers;

#[tonic::async_trait]
impl Users for TestUsers {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.into_inner().id;
        tracing::info!(id, "looking the user up");
        match id {
            1 => Ok(Response::new(User { id, name: "Ada Lovelace".into(), email: "ada@example.com".into() })),
            7 => {
                // A context field of the access line's own name.
                reqscope::RequestContext::with(|ctx| ctx.set_field("grpc_status", "gold-customer"));
                Ok(Response::new(User { id, name: "Grace Hopper".into(), email: "grace@example.com".into() }))
            }
            500 => Err(Status::internal("the user store broke")),
            // Never answers: only a deadline (or the client) ends the call.
            408 => std::future::pending().await,
            _ => Err(Status::not_found(format!("no user {id}"))),
        }
    }

    async fn who_am_i(&self, _request: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type CountUpStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

    async fn count_up(&self, request: Request<CountUpRequest>) -> Result<Response<Self::CountUpStream>, Status> {
        let n = request.into_inner().n;
        if n > 100 {
            return Err(Status::invalid_argument("n must be at most 100"));
        }
        let ticks = futures_util::stream::unfold(0u32, move |i| async move {
            if i == n || i > 3 && n == FAILS_MID_STREAM {
                return None;
            }
            if i == 2 && n == NEVER_ENDS {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            if i == 3 && n == FAILS_MID_STREAM {
                tracing::info!(i, "giving up");
                return Some((Err(Status::unavailable("the counter went away")), i + 1));
            }
            tracing::info!(i, "tick");
            Some((Ok(Tick { i }), i + 1))
        });
        Ok(Response::new(Box::pin(ticks)))
    }
}

/// Serves `TestUsers` behind `layer` on a fresh port of 127.0.0.1.
async fn serve_grpc(layer: RequestContextLayer) -> SocketAddr {
    serve_grpc_seeing(layer).await.0
}

/// [`serve_grpc`], with a tower layer inside `layer` that records the `RequestId` each
/// request carries in its extensions ("none" for none).
async fn serve_grpc_seeing(layer: RequestContextLayer) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    serve_grpc_with(tonic::transport::Server::builder(), layer).await
}

/// [`serve_grpc_seeing`] on a server built as the test needs.
async fn serve_grpc_with(
    builder: tonic::transport::Server,
    layer: RequestContextLayer,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    logs();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let seen = Arc::clone(&seen);
        tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
            let id = request.extensions().get::<reqscope::RequestId>().map(|id| id.as_str().to_owned());
            seen.lock().unwrap().push(id.unwrap_or_else(|| "none".to_owned()));
            request
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server =
        builder.layer(layer).layer(record).add_service(UsersServer::new(TestUsers)).serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.expect("gRPC server failed") });
    (addr, seen)
}

async fn client(addr: SocketAddr) -> UsersClient<Channel> {
    UsersClient::connect(format!("http://{addr}")).await.expect("connect to the gRPC server")
}

fn with_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().expect("a valid id"));
    request
}

/// The one access line of `id`.
async fn access_line(id: &str) -> Value {
    let access = access_lines_of(id).await;
    assert_eq!(access.len(), 1, "one access line: {access:?}");
    access.into_iter().next().unwrap()
}

#[tokio::test]
async fn unary_calls_are_judged_by_their_grpc_status() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;

    let ok = users.get_user(with_id(GetUserRequest { id: 1 }, "grpc-ok-1")).await.expect("user 1 exists");
    assert_eq!(ok.metadata().get("x-request-id").unwrap(), "grpc-ok-1", "the id is echoed");
    assert_eq!(ok.get_ref().name, "Ada Lovelace");
    let line = access_line("grpc-ok-1").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["grpc_status"], 0, "read from the trailers: {line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/reqscope.example.v1.Users/GetUser");
    assert_eq!(line["client_ip"], "127.0.0.1", "from tonic's TcpConnectInfo: {line}");
    assert!(line["bytes"].as_u64().unwrap() > 0, "one message was sent: {line}");
    let handler: Vec<Value> =
        lines_of("grpc-ok-1").into_iter().filter(|l| l["message"] == "looking the user up").collect();
    assert_eq!(handler.len(), 1, "the handler's line is stamped with the client's id");
    assert_eq!(handler[0]["client_ip"], "127.0.0.1");

    let missing = users.get_user(with_id(GetUserRequest { id: 404 }, "grpc-missing-1")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.metadata().get("x-request-id").unwrap(), "grpc-missing-1", "echoed on errors too");
    let line = access_line("grpc-missing-1").await;
    assert_eq!(line["level"], "INFO", "NOT_FOUND is the client's business: {line}");
    assert_eq!(line["grpc_status"], 5);

    let broken = users.get_user(with_id(GetUserRequest { id: 500 }, "grpc-internal-1")).await.unwrap_err();
    assert_eq!(broken.code(), Code::Internal);
    assert_eq!(broken.metadata().get("x-request-id").unwrap(), "grpc-internal-1");
    let line = access_line("grpc-internal-1").await;
    assert_eq!(line["level"], "ERROR", "INTERNAL is a failure: {line}");
    assert_eq!(line["grpc_status"], 13, "read from the headers of the trailers-only answer: {line}");
    assert_eq!(line["status"], 200, "gRPC errors travel in a 200");
    assert_eq!(line["bytes"], 0, "trailers-only: no message, no body");
    assert_eq!(line["message"], "request completed");

    let unimplemented = users.who_am_i(with_id(WhoAmIRequest {}, "grpc-unimplemented-1")).await.unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
    let line = access_line("grpc-unimplemented-1").await;
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["grpc_status"], 12);
}

#[tokio::test]
async fn a_stream_is_judged_by_the_status_in_its_trailers() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;

    let response = users.count_up(with_id(CountUpRequest { n: 3 }, "grpc-count-ok-1")).await.expect("a stream");
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "grpc-count-ok-1");
    let mut ticks = response.into_inner();
    let mut seen = Vec::new();
    while let Some(tick) = ticks.message().await.expect("no error") {
        seen.push(tick.i);
    }
    assert_eq!(seen, [0, 1, 2]);
    let line = access_line("grpc-count-ok-1").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert!(line.get("aborted").is_none(), "{line}");
    let stamped = lines_of("grpc-count-ok-1").into_iter().filter(|l| l["message"] == "tick").count();
    assert_eq!(stamped, 3, "every tick, sent after the handler returned, is stamped");

    let response =
        users.count_up(with_id(CountUpRequest { n: FAILS_MID_STREAM }, "grpc-count-fail-1")).await.expect("a stream");
    let mut ticks = response.into_inner();
    let mut seen = Vec::new();
    let status = loop {
        match ticks.message().await {
            Ok(Some(tick)) => seen.push(tick.i),
            Ok(None) => panic!("the stream ended without its error after {seen:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(seen, [0, 1, 2], "messages first, then the status");
    assert_eq!(status.code(), Code::Unavailable);
    let line = access_line("grpc-count-fail-1").await;
    assert_eq!(line["level"], "ERROR", "UNAVAILABLE in the trailers is a failure: {line}");
    assert_eq!(line["grpc_status"], 14, "{line}");
    assert!(line["bytes"].as_u64().unwrap() > 0, "three messages went out first: {line}");
    assert!(line.get("aborted").is_none(), "{line}");

    let refused = users.count_up(with_id(CountUpRequest { n: 1000 }, "grpc-count-invalid-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let line = access_line("grpc-count-invalid-1").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["grpc_status"], 3);
}

#[tokio::test]
async fn a_call_cut_off_at_its_deadline_is_deadline_exceeded_at_error() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;
    let mut call = with_id(GetUserRequest { id: 408 }, "grpc-deadline-1");
    call.set_timeout(std::time::Duration::from_millis(200)); // sent as `grpc-timeout`
    let status = users.get_user(call).await.expect_err("the deadline passes");
    // tonic's client keeps the deadline too: its timer (a reset stream) and the server's
    // (a DEADLINE_EXCEEDED answer) fire together, and either may reach the other side first.
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    let line = access_line("grpc-deadline-1").await;
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["grpc_status"], 4, "{line}");
    assert_eq!(line["aborted"], true, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= 190.0, "{line}");
}

#[tokio::test]
async fn a_call_cut_off_by_the_servers_own_timeout_is_deadline_exceeded_too() {
    let timeout = std::time::Duration::from_millis(100);
    let builder = tonic::transport::Server::builder().timeout(timeout);
    let (addr, _) = serve_grpc_with(builder, RequestContextLayer::new().grpc_server_timeout(timeout)).await;
    // No deadline from the client: only the server's timeout ends the call.
    let status = client(addr).await.get_user(with_id(GetUserRequest { id: 408 }, "grpc-server-timeout-1")).await;
    // tonic's server answers its own timeout CANCELLED ("Timeout expired"); the line names the deadline.
    assert_eq!(status.expect_err("cut off").code(), Code::Cancelled);
    let line = access_line("grpc-server-timeout-1").await;
    assert_eq!(
        (&line["level"], &line["grpc_status"], &line["aborted"]),
        (&"ERROR".into(), &4.into(), &true.into()),
        "{line}"
    );
}

#[tokio::test]
async fn a_grpc_timeout_header_on_a_plain_http_request_means_nothing() {
    use http_body_util::BodyExt;
    let addr = crate::support::serve(crate::support::example_app().await).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get("/stream")
        .header("host", "localhost")
        .header("x-request-id", "http-grpc-timeout-1")
        .header("grpc-timeout", "0n")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    body.frame().await.expect("a first chunk").unwrap();
    // The client leaves after one chunk.
    drop(body);
    drop(sender);
    connection.abort();
    let line = access_line("http-grpc-timeout-1").await;
    assert_eq!((&line["level"], &line["aborted"]), (&"INFO".into(), &true.into()), "{line}");
    assert!(line.get("grpc_status").is_none(), "{line}");
}

#[tokio::test]
async fn a_stream_the_client_cancels_gets_one_aborted_line() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;
    let response = users.count_up(with_id(CountUpRequest { n: NEVER_ENDS }, "grpc-cancel-1")).await.expect("a stream");
    let mut ticks = response.into_inner();
    for expected in 0..2 {
        assert_eq!(ticks.message().await.expect("no error").expect("a tick").i, expected);
    }
    // Dropping the stream resets it (RST_STREAM CANCEL); the connection stays up.
    drop(ticks);

    let line = access_line("grpc-cancel-1").await;
    assert_eq!(line["aborted"], true, "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line.get("grpc_status").is_none(), "no trailers were sent: {line}");
    let sent = lines_of("grpc-cancel-1").into_iter().filter(|l| l["message"] == "tick").count();
    assert_eq!(sent, 2, "the ticks before the cancel");

    // The same connection serves on, and the cancelled call still has its one line.
    let next = users.get_user(with_id(GetUserRequest { id: 1 }, "grpc-cancel-after-1")).await.expect("served");
    assert_eq!(next.metadata().get("x-request-id").unwrap(), "grpc-cancel-after-1");
    access_line("grpc-cancel-after-1").await;
    let access: Vec<Value> =
        lines_of("grpc-cancel-1").into_iter().filter(|l| l["target"] == "reqscope::access").collect();
    assert_eq!(access.len(), 1, "{access:?}");
}

#[tokio::test]
async fn without_an_id_from_the_client_the_server_makes_one_and_sends_it_back() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;
    let ok = users.get_user(GetUserRequest { id: 1 }).await.expect("user 1 exists");
    let id = ok.metadata().get("x-request-id").expect("an id is echoed").to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let line = access_line(&id).await;
    assert_eq!(line["grpc_status"], 0);

    // An id that is no valid request id is replaced, never echoed.
    let mut request = Request::new(GetUserRequest { id: 1 });
    request.metadata_mut().insert("x-request-id", "has spaces in it".parse().unwrap());
    let ok = users.get_user(request).await.expect("user 1 exists");
    let id = ok.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_ne!(id, "has spaces in it");
    assert_eq!(access_line(&id).await["request_id"], id.as_str());
}

#[tokio::test]
async fn a_context_field_cannot_take_grpc_status() {
    let addr = serve_grpc(RequestContextLayer::new()).await;
    let mut users = client(addr).await;
    users.get_user(with_id(GetUserRequest { id: 7 }, "grpc-field-1")).await.expect("user 7 exists");
    let line = access_line("grpc-field-1").await;
    assert_eq!(line["grpc_status"], 0, "the response's status: {line}");
    assert_eq!(line["fields.grpc_status"], "gold-customer", "{line}");
}

#[tokio::test]
async fn the_peer_decides_which_forwarded_id_and_client_ip_are_believed() {
    let loopback = || reqscope::TrustedProxies::parse(["127.0.0.1"]).expect("a valid proxy list");
    let behind_proxy = || {
        RequestContextLayer::new()
            .forwarded_id_policy(reqscope::ForwardedIdPolicy::TrustFrom(loopback()))
            .trusted_proxies(loopback(), reqscope::ClientIpHeader::XForwardedFor)
    };
    let forwarded = |id: &str| {
        let mut request = with_id(GetUserRequest { id: 1 }, id);
        request.metadata_mut().insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
        request
    };

    // The peer tonic reports, 127.0.0.1, is a trusted proxy: its id and its client are kept.
    let mut users = client(serve_grpc(behind_proxy()).await).await;
    let ok = users.get_user(forwarded("grpc-proxied-1")).await.expect("user 1 exists");
    assert_eq!(ok.metadata().get("x-request-id").unwrap(), "grpc-proxied-1");
    assert_eq!(access_line("grpc-proxied-1").await["client_ip"], "203.0.113.5");

    // A reader of our own says the peer is elsewhere: nothing it forwards is believed.
    let elsewhere: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let layer = behind_proxy().peer_addr(move |_: &http::Extensions| Some(elsewhere));
    let mut users = client(serve_grpc(layer).await).await;
    let ok = users.get_user(forwarded("grpc-unproxied-1")).await.expect("user 1 exists");
    let id = ok.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_ne!(id, "grpc-unproxied-1", "an untrusted peer's id is replaced");
    assert_eq!(access_line(&id).await["client_ip"], "192.0.2.1");
    assert!(lines_of("grpc-unproxied-1").is_empty(), "the rejected id is never logged");
}

/// Treats `NOT_FOUND` as a failure as well: a service whose clients only ask for what exists.
struct NotFoundIsAFailure;

impl ClassifyFailure for NotFoundIsAFailure {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification {
        let verdict = DefaultClassifier.classify_response(status, headers);
        verdict.with_failure(verdict.is_failure() || verdict.grpc_status() == Some(Code::NotFound as i32))
    }

    fn classify_trailers(&self, response: Classification, trailers: &HeaderMap) -> Classification {
        let verdict = DefaultClassifier.classify_trailers(response, trailers);
        verdict.with_failure(verdict.is_failure() || verdict.grpc_status() == Some(Code::NotFound as i32))
    }
}

#[tokio::test]
async fn a_classifier_of_your_own_decides_the_level() {
    let layer = RequestContextLayer::new().failure_classifier(NotFoundIsAFailure);
    let addr = serve_grpc(layer).await;
    let mut users = client(addr).await;

    let missing = users.get_user(with_id(GetUserRequest { id: 404 }, "grpc-classified-1")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let line = access_line("grpc-classified-1").await;
    assert_eq!(line["level"], "ERROR", "the classifier counts NOT_FOUND: {line}");
    assert_eq!(line["grpc_status"], 5);

    users.get_user(with_id(GetUserRequest { id: 1 }, "grpc-classified-ok-1")).await.expect("user 1 exists");
    let line = access_line("grpc-classified-ok-1").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["grpc_status"], 0);
}

#[tokio::test]
async fn an_inner_layer_finds_the_request_id_in_the_extensions() {
    let (addr, seen) = serve_grpc_seeing(RequestContextLayer::new()).await;
    let mut users = client(addr).await;

    users.get_user(with_id(GetUserRequest { id: 1 }, "grpc-extension-1")).await.expect("user 1 exists");
    let generated = users.get_user(GetUserRequest { id: 1 }).await.expect("user 1 exists");
    let generated = generated.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_eq!(*seen.lock().unwrap(), ["grpc-extension-1".to_owned(), generated]);
}
