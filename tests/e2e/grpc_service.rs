//! The example server's gRPC service on the same port as HTTP: every status of its contract,
//! request ids and traces from metadata, stamped handler, sqlx and stream lines, the access
//! line's level and `grpc_status`, cancelled streams, reflection.

use std::net::SocketAddr;

use reqscope_example_proto::users_client::UsersClient;
use reqscope_example_proto::{CountUpRequest, GetUserRequest, WhoAmIRequest};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, hs256, lines_of, serve};

async fn client(addr: SocketAddr) -> UsersClient<Channel> {
    UsersClient::connect(format!("http://{addr}")).await.expect("connect to the gRPC service")
}

/// `message` with `x-request-id: id` and more metadata.
fn request<T>(message: T, id: &str, metadata: &[(&'static str, String)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

fn bearer(user: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", hs256(TEST_SECRET, &claims(user))))
}

fn echoed_id(metadata: &tonic::metadata::MetadataMap) -> &str {
    metadata.get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id in the response metadata")
}

async fn the_access_line(id: &str) -> Value {
    let lines = access_lines_of(id).await;
    assert_eq!(lines.len(), 1, "one access line: {lines:?}");
    lines.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_answers_with_the_user_and_stamps_every_line_with_the_method_as_route() {
    let addr = serve(example_app().await).await;
    let reply = client(addr).await.get_user(request(GetUserRequest { id: 1 }, "grpc-get-1", &[])).await.unwrap();
    assert_eq!(echoed_id(reply.metadata()), "grpc-get-1", "a valid incoming id is kept and echoed");
    let user = reply.into_inner();
    assert_eq!((user.id, user.name.as_str()), (1, "Ada Lovelace"));

    let access = the_access_line("grpc-get-1").await;
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["grpc_status"], 0);
    assert_eq!(access["route"], "/reqscope.example.v1.Users/GetUser");
    assert_eq!(access["path"], "/reqscope.example.v1.Users/GetUser");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["client_ip"], "127.0.0.1");
    let lines = lines_of("grpc-get-1");
    let query =
        lines.iter().find(|l| l["target"].as_str().is_some_and(|t| t.starts_with("sqlx"))).expect("a query line");
    assert_eq!(query["route"], "/reqscope.example.v1.Users/GetUser", "the sqlx line is stamped: {query}");
    assert!(lines.iter().all(|l| l["trace_id"] == access["trace_id"]), "one trace: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_of_the_contract_carries_the_request_id() {
    let addr = serve(example_app().await).await;
    let mut users = client(addr).await;
    let cases: Vec<(&str, tonic::Status)> = vec![
        ("grpc-err-zero", users.get_user(request(GetUserRequest { id: 0 }, "grpc-err-zero", &[])).await.unwrap_err()),
        ("grpc-err-neg", users.get_user(request(GetUserRequest { id: -4 }, "grpc-err-neg", &[])).await.unwrap_err()),
        (
            "grpc-err-unknown",
            users.get_user(request(GetUserRequest { id: 987_654 }, "grpc-err-unknown", &[])).await.unwrap_err(),
        ),
        (
            "grpc-err-ticks",
            users.count_up(request(CountUpRequest { n: 101 }, "grpc-err-ticks", &[])).await.unwrap_err(),
        ),
        ("grpc-err-anon", users.who_am_i(request(WhoAmIRequest {}, "grpc-err-anon", &[])).await.unwrap_err()),
        (
            "grpc-err-badsig",
            users
                .who_am_i(request(
                    WhoAmIRequest {},
                    "grpc-err-badsig",
                    &[(
                        "authorization",
                        format!("Bearer {}", hs256(b"another secret, also 32 bytes long!", &claims("1"))),
                    )],
                ))
                .await
                .unwrap_err(),
        ),
        (
            "grpc-err-panic",
            users
                .get_user(request(GetUserRequest { id: crate::grpc::PANIC_ID }, "grpc-err-panic", &[]))
                .await
                .unwrap_err(),
        ),
    ];
    let expected = [
        (Code::InvalidArgument, None, "INFO", 3),
        (Code::InvalidArgument, None, "INFO", 3),
        (Code::NotFound, Some("no user 987654"), "INFO", 5),
        (Code::InvalidArgument, Some("n must be at most 100"), "INFO", 3),
        (Code::Unauthenticated, Some("missing"), "INFO", 16),
        (Code::Unauthenticated, Some("invalid_signature"), "INFO", 16),
        (Code::Internal, Some("internal server error"), "ERROR", 13),
    ];
    for ((id, status), (code, message, level, number)) in cases.iter().zip(expected) {
        assert_eq!(status.code(), code, "{id}: {status:?}");
        if let Some(message) = message {
            assert_eq!(status.message(), message, "{id}");
        }
        assert_eq!(echoed_id(status.metadata()), *id, "{id}: errors carry the request id");
        let access = the_access_line(id).await;
        assert_eq!(access["level"], level, "{id}: {access}");
        assert_eq!(access["grpc_status"], number, "{id}: {access}");
    }
    // The panic was reported, stamped, and the server keeps serving.
    let panic =
        lines_of("grpc-err-panic").into_iter().find(|l| l["target"] == "reqscope::panic").expect("a panic line");
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["route"], "/reqscope.example.v1.Users/GetUser");
    assert!(users.get_user(request(GetUserRequest { id: 2 }, "grpc-after-panic", &[])).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_am_i_reads_the_user_from_the_context() {
    let addr = serve(example_app().await).await;
    let reply = client(addr).await.who_am_i(request(WhoAmIRequest {}, "grpc-whoami", &[bearer("2")])).await.unwrap();
    assert_eq!(reply.into_inner().name, "Grace Hopper");
    let lines = lines_of("grpc-whoami");
    let handler = lines.iter().find(|l| l["message"] == "loading the current user").expect("the handler's line");
    assert_eq!(handler["user_id"], "2");
    assert_eq!(the_access_line("grpc-whoami").await["user_id"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_the_budget_of_the_users_routes() {
    let addr = serve(crate::support::example_app_limited(2).await).await;
    // One HTTP request and one gRPC call spend the anonymous client's budget of two.
    assert_eq!(crate::support::fetch(addr, "/users/1", &[]).await.status, 200);
    let mut users = client(addr).await;
    users.get_user(request(GetUserRequest { id: 1 }, "grpc-limit-1", &[])).await.unwrap();
    let spent = users.get_user(request(GetUserRequest { id: 1 }, "grpc-limit-2", &[])).await.unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted, "{spent:?}");
    assert_eq!(echoed_id(spent.metadata()), "grpc-limit-2");
    assert!(
        spent.metadata().get("retry-after").is_some(),
        "the retry hint travels as metadata: {:?}",
        spent.metadata()
    );
    assert_eq!(the_access_line("grpc-limit-2").await["grpc_status"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_am_i_spends_the_budget_of_the_users_http_routes_per_user() {
    let addr = serve(crate::support::example_app_limited(2).await).await;
    let (_, token) = bearer("1");
    let me = crate::support::fetch(addr, "/users/me", &[("authorization", token.as_bytes())]).await;
    assert_eq!(me.status, 200, "{}", me.body);
    let mut users = client(addr).await;
    users.who_am_i(request(WhoAmIRequest {}, "grpc-user-limit-1", &[bearer("1")])).await.unwrap();
    let spent = users.who_am_i(request(WhoAmIRequest {}, "grpc-user-limit-2", &[bearer("1")])).await.unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted, "user 1 spent its two on HTTP and gRPC: {spent:?}");
    // Another user, from the same address, has a budget of its own.
    users.who_am_i(request(WhoAmIRequest {}, "grpc-user-limit-3", &[bearer("2")])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_binary_answers_grpc_on_its_address_to_the_example_client() {
    let (child, stdout, addr) = crate::example_binary::start_example(&[]);
    let (lines, reader) = crate::example_binary::watch_lines(stdout);
    let client = crate::example_binary::example_path("grpc_client");
    assert!(client.exists(), "{} is missing: `cargo test --workspace` builds the examples", client.display());
    let run = |args: &[&str], env: &[(&str, String)]| {
        let mut command = std::process::Command::new(&client);
        command.args(args).env("ADDR", format!("http://{addr}")).env_remove("TOKEN").env_remove("REQUEST_ID");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run grpc_client")
    };
    let found = run(&["get-user", "1"], &[("REQUEST_ID", "bin-grpc-1".to_owned())]);
    let out = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{out} {}", String::from_utf8_lossy(&found.stderr));
    assert!(out.contains("x-request-id: bin-grpc-1") && out.contains("Ada Lovelace"), "{out}");
    let token = hs256(TEST_SECRET, &claims("2"));
    let me = run(&["who-am-i"], &[("TOKEN", token)]);
    assert!(String::from_utf8_lossy(&me.stdout).contains("Grace Hopper"), "{me:?}");
    let refused = run(&["who-am-i"], &[("REQUEST_ID", "bin-grpc-2".to_owned())]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: Unauthenticated: missing (x-request-id: bin-grpc-2)"
    );
    let ticks = run(&["count-up", "2"], &[]);
    assert!(String::from_utf8_lossy(&ticks.stdout).ends_with("Tick { i: 1 }\nTick { i: 2 }\n"), "{ticks:?}");

    let access = |id: &str| {
        let id = id.to_owned();
        let lines = lines.clone();
        move || -> Vec<Value> {
            let lines = lines.lock().unwrap();
            lines
                .iter()
                .filter(|l| l["request_id"] == id.as_str() && l["target"] == "reqscope::access")
                .cloned()
                .collect()
        }
    };
    crate::example_binary::wait_for("the gRPC access lines", || {
        !access("bin-grpc-1")().is_empty() && !access("bin-grpc-2")().is_empty()
    })
    .await;
    crate::example_binary::stop(child).await;
    crate::example_binary::until_stdout_ends(reader).await;
    assert_eq!(access("bin-grpc-1")()[0]["grpc_status"], 0);
    assert_eq!(access("bin-grpc-2")()[0]["grpc_status"], 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_in_the_metadata_is_continued() {
    let addr = serve(example_app().await).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client(addr)
        .await
        .get_user(request(GetUserRequest { id: 1 }, "grpc-trace", &[("traceparent", parent.to_owned())]))
        .await
        .unwrap();
    let access = the_access_line("grpc-trace").await;
    assert_eq!(access["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(access["span_id"], "00f067aa0ba902b7", "a span of this service's own");
    // An invalid id is replaced, as for HTTP.
    let reply = client(addr).await.get_user(request(GetUserRequest { id: 1 }, "not a valid id", &[])).await.unwrap();
    assert_ne!(echoed_id(reply.metadata()), "not a valid id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_of_a_stream_is_stamped_as_it_is_sent() {
    let addr = serve(example_app().await).await;
    let reply = client(addr).await.count_up(request(CountUpRequest { n: 5 }, "grpc-ticks", &[])).await;
    let mut ticks = reply.unwrap().into_inner();
    let mut received = Vec::new();
    while let Some(tick) = ticks.message().await.unwrap() {
        received.push(tick.i);
    }
    assert_eq!(received, [1, 2, 3, 4, 5]);
    let access = the_access_line("grpc-ticks").await;
    assert_eq!((access["level"].as_str(), access["grpc_status"].as_i64()), (Some("INFO"), Some(0)), "{access}");
    let logged: Vec<u64> = lines_of("grpc-ticks")
        .iter()
        .filter(|l| l["message"] == "tick sent")
        .inspect(|l| {
            assert_eq!(l["route"], "/reqscope.example.v1.Users/CountUp", "{l}");
            assert_eq!(l["trace_id"], access["trace_id"], "{l}");
        })
        .map(|l| l["tick"].as_u64().unwrap())
        .collect();
    assert_eq!(logged, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cancelled_mid_way_has_one_aborted_access_line() {
    let addr = serve(example_app().await).await;
    let mut users = client(addr).await;
    let mut ticks = users.count_up(request(CountUpRequest { n: 100 }, "grpc-cancel", &[])).await.unwrap().into_inner();
    assert_eq!(ticks.message().await.unwrap().unwrap().i, 1);
    assert_eq!(ticks.message().await.unwrap().unwrap().i, 2);
    drop(ticks); // resets the stream
    let access = the_access_line("grpc-cancel").await;
    assert_eq!(access["aborted"], true, "{access}");
    // Ticks stop once the stream is gone: the server wrote far fewer than 100.
    let sent = lines_of("grpc-cancel").iter().filter(|l| l["message"] == "tick sent").count();
    assert!(sent < 100, "{sent} ticks logged after a cancel");
    // The connection still serves.
    users.get_user(request(GetUserRequest { id: 1 }, "grpc-after-cancel", &[])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service_and_an_unknown_method_is_unimplemented() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let addr = serve(example_app().await).await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"reqscope.example.v1.Users"), "{names:?}");

    // Older clients ask `v1alpha`; it answers the same.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("reqscope.example.v1.Users".to_owned())),
        };
        let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
        let answer = answers.message().await.unwrap().expect("one answer");
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{answer:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty(), "the descriptor of users.proto");
    }

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/reqscope.example.v1.Users/Nope");
    let codec = tonic_prost::ProstCodec::<WhoAmIRequest, WhoAmIRequest>::default();
    let status = grpc.unary(request(WhoAmIRequest {}, "grpc-nope", &[]), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(echoed_id(status.metadata()), "grpc-nope");
}
