//! A tonic service behind the same layers as the HTTP routes: each refusal and each panic
//! reaches a gRPC client as a gRPC status (trailers-only), with the request id in its
//! metadata, while an HTTP client of the same stack still gets JSON.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use reqscope::auth::{AuthLayer, RequireRoleLayer};
use reqscope::rate_limit::{Quota, RateLimitLayer};
use reqscope::{CatchPanicLayer, RequestContext, RequestContextLayer};
use reqscope_example_proto::users_client::UsersClient;
use reqscope_example_proto::users_server::{Users, UsersServer};
use reqscope_example_proto::{CountUpRequest, GetUserRequest, Tick, User, WhoAmIRequest};
use tokio_stream::{Stream, StreamExt};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceBuilder};

use crate::support::{TEST_SECRET, access_lines_of, claims, hs256, lines_of, logs, now, send};

/// The example's `Users` service, with a user id that panics.
struct TestUsers;

#[tonic::async_trait]
impl Users for TestUsers {
    async fn get_user(&self, request: tonic::Request<GetUserRequest>) -> Result<tonic::Response<User>, Status> {
        let id = request.into_inner().id;
        if id < 0 {
            panic!("user {id} does not exist, on purpose");
        }
        Ok(tonic::Response::new(User { id, name: format!("user {id}"), email: format!("user{id}@example.com") }))
    }

    async fn who_am_i(&self, _request: tonic::Request<WhoAmIRequest>) -> Result<tonic::Response<User>, Status> {
        // No request parameter needed: the auth layer put the user into the context.
        let user = RequestContext::with(|ctx| ctx.user_id())
            .flatten()
            .ok_or_else(|| Status::internal("no user in the request context"))?;
        let org =
            RequestContext::with(|ctx| ctx.read_patch(|patch| patch.org_id.clone())).flatten().unwrap_or_default();
        Ok(tonic::Response::new(User { id: 0, name: user.to_string(), email: format!("{user}@{org}") }))
    }

    type CountUpStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

    async fn count_up(
        &self,
        request: tonic::Request<CountUpRequest>,
    ) -> Result<tonic::Response<Self::CountUpStream>, Status> {
        let n = request.into_inner().n.min(100);
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter((1..=n).map(|i| Ok(Tick { i }))))))
    }
}

/// Serves [`TestUsers`] behind `stack` with tonic's own server on 127.0.0.1 (HTTP/2, and
/// HTTP/1.1 for the JSON checks); returns its address.
async fn serve_grpc<L, ResBody>(stack: L) -> SocketAddr
where
    L: Layer<Routes> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Error: Into<tower::BoxError> + Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tower::BoxError>,
{
    logs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let router = Server::builder().accept_http1(true).layer(stack).add_service(UsersServer::new(TestUsers));
    tokio::spawn(async move {
        router.serve_with_incoming(TcpIncoming::from(listener)).await.expect("gRPC server failed");
    });
    addr
}

async fn client(addr: SocketAddr) -> UsersClient<Channel> {
    UsersClient::connect(format!("http://{addr}")).await.expect("connect to the gRPC server")
}

/// A call with our request id and, if given, a bearer token.
fn call<T>(message: T, request_id: &str, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", request_id.parse().expect("an ASCII id"));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("an ASCII token"));
    }
    request
}

/// Asserts a gRPC error: its code, its message, and the request id in its metadata.
fn assert_status(status: &Status, code: Code, message: &str, request_id: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
    assert_eq!(
        status.metadata().get("x-request-id").and_then(|v| v.to_str().ok()),
        Some(request_id),
        "every error carries the request id: {status:?}"
    );
}

fn token(sub: &str) -> String {
    hs256(TEST_SECRET, &claims(sub))
}

fn auth() -> AuthLayer {
    crate::app::auth_layer(TEST_SECRET)
}

#[tokio::test]
async fn auth_refuses_grpc_calls_with_unauthenticated_and_lets_the_user_through() {
    let addr = serve_grpc(ServiceBuilder::new().layer(RequestContextLayer::new()).layer(auth())).await;
    let mut users = client(addr).await;

    let missing = users.who_am_i(call(WhoAmIRequest {}, "grpc-auth-missing", None)).await.unwrap_err();
    assert_status(&missing, Code::Unauthenticated, "missing", "grpc-auth-missing");
    assert_eq!(missing.metadata().get("www-authenticate").unwrap(), "Bearer realm=\"api\"");

    let forged = hs256(b"another secret that is at least 32 bytes", &claims("7"));
    let bad = users.who_am_i(call(WhoAmIRequest {}, "grpc-auth-bad", Some(&forged))).await.unwrap_err();
    assert_status(&bad, Code::Unauthenticated, "invalid_signature", "grpc-auth-bad");
    assert_eq!(
        bad.metadata().get("www-authenticate").unwrap(),
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"invalid_signature\""
    );

    let mut stale = claims("7");
    stale["exp"] = serde_json::json!(now() - 3600);
    let expired = users.who_am_i(call(WhoAmIRequest {}, "grpc-auth-expired", Some(&hs256(TEST_SECRET, &stale))));
    assert_status(&expired.await.unwrap_err(), Code::Unauthenticated, "expired", "grpc-auth-expired");

    // The WARN lines are those of HTTP refusals: the reason class, stamped, no token.
    for (id, reason) in [("grpc-auth-missing", "missing"), ("grpc-auth-bad", "invalid_signature")] {
        access_lines_of(id).await;
        let warns: Vec<_> = lines_of(id).into_iter().filter(|l| l["target"] == "reqscope::auth").collect();
        assert_eq!(warns.len(), 1, "{warns:?}");
        assert_eq!(warns[0]["level"], "WARN");
        assert_eq!(warns[0]["message"], "bearer token rejected");
        assert_eq!(warns[0]["reason"], reason);
    }
    assert!(!logs().contents().contains(&forged), "the token never reaches a log line");

    let me = users.who_am_i(call(WhoAmIRequest {}, "grpc-auth-good", Some(&token("42")))).await.expect("admitted");
    assert_eq!(me.get_ref().name, "42", "the handler sees the verified user in the context");
    assert_eq!(me.get_ref().email, "42@acme");
    assert_eq!(me.metadata().get("x-request-id").unwrap(), "grpc-auth-good");
    assert_eq!(access_lines_of("grpc-auth-good").await[0]["user_id"], "42");
}

#[tokio::test]
async fn optional_auth_lets_anonymous_grpc_calls_through_and_still_refuses_bad_tokens() {
    let addr = serve_grpc(ServiceBuilder::new().layer(RequestContextLayer::new()).layer(auth().optional())).await;
    let mut users = client(addr).await;

    let user = users.get_user(call(GetUserRequest { id: 5 }, "grpc-optional-anon", None)).await.expect("anonymous");
    assert_eq!(user.get_ref().name, "user 5");

    let refused = users.get_user(call(GetUserRequest { id: 5 }, "grpc-optional-bad", Some("not-a-jwt"))).await;
    assert_status(&refused.unwrap_err(), Code::Unauthenticated, "malformed", "grpc-optional-bad");
}

#[tokio::test]
async fn require_role_answers_grpc_calls_with_permission_denied() {
    let stack = ServiceBuilder::new()
        .layer(RequestContextLayer::new())
        .layer(auth().optional())
        .layer(RequireRoleLayer::new("admin"));
    let addr = serve_grpc(stack).await;
    let mut users = client(addr).await;

    let reader = users.who_am_i(call(WhoAmIRequest {}, "grpc-role-reader", Some(&token("8")))).await.unwrap_err();
    assert_status(&reader, Code::PermissionDenied, "requires role admin", "grpc-role-reader");
    access_lines_of("grpc-role-reader").await;
    let warns: Vec<_> = lines_of("grpc-role-reader").into_iter().filter(|l| l["target"] == "reqscope::auth").collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert_eq!(warns[0]["message"], "required role missing");
    assert_eq!(warns[0]["role"], "admin");

    // Without a token, the optional auth layer lets the call through and the role check refuses it.
    let anonymous = users.who_am_i(call(WhoAmIRequest {}, "grpc-role-anon", None)).await.unwrap_err();
    assert_status(&anonymous, Code::Unauthenticated, "missing", "grpc-role-anon");

    let mut admin = claims("9");
    admin["roles"] = serde_json::json!(["admin"]);
    let me = users.who_am_i(call(WhoAmIRequest {}, "grpc-role-admin", Some(&hs256(TEST_SECRET, &admin)))).await;
    assert_eq!(me.expect("an admin is let through").get_ref().name, "9");
}

#[tokio::test]
async fn rate_limit_answers_grpc_calls_with_resource_exhausted_and_its_headers() {
    let quota = Quota::per_hour(2).expect("a valid quota");
    let stack = ServiceBuilder::new().layer(RequestContextLayer::new()).layer(auth()).layer(RateLimitLayer::new(quota));
    let addr = serve_grpc(stack).await;
    let mut users = client(addr).await;
    let bearer = token("grpc-limited");

    for (n, expected) in [(1, r#""default";r=1;t=1800"#), (2, r#""default";r=0;t=3600"#)] {
        let me = users.who_am_i(call(WhoAmIRequest {}, &format!("grpc-rate-{n}"), Some(&bearer))).await;
        let me = me.unwrap_or_else(|status| panic!("call {n} is within the quota: {status:?}"));
        assert_eq!(me.metadata().get("ratelimit").unwrap(), expected, "allowed calls carry the headers too");
    }
    let spent = users.who_am_i(call(WhoAmIRequest {}, "grpc-rate-3", Some(&bearer))).await.unwrap_err();
    assert_status(&spent, Code::ResourceExhausted, "too many requests; retry in 1800 s", "grpc-rate-3");
    assert_eq!(spent.metadata().get("retry-after").unwrap(), "1800", "one interval, rounded up");
    assert_eq!(spent.metadata().get("ratelimit-policy").unwrap(), r#""default";q=2;w=3600"#);
    assert_eq!(spent.metadata().get("ratelimit").unwrap(), r#""default";r=0;t=3600"#);

    let access = access_lines_of("grpc-rate-3").await;
    assert_eq!(access[0]["rate_limit_remaining"], 0);
    let info: Vec<_> = lines_of("grpc-rate-3").into_iter().filter(|l| l["target"] == "reqscope::rate_limit").collect();
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["message"], "rate limited");
    assert_eq!(info[0]["retry_after"], 1800);
}

#[tokio::test]
async fn a_panicking_grpc_handler_is_internal_and_the_server_keeps_serving() {
    let addr = serve_grpc(ServiceBuilder::new().layer(RequestContextLayer::new()).layer(CatchPanicLayer::new())).await;
    let mut users = client(addr).await;

    let panicked = users.get_user(call(GetUserRequest { id: -1 }, "grpc-panic-1", None)).await.unwrap_err();
    assert_status(&panicked, Code::Internal, "internal server error", "grpc-panic-1");
    assert!(!format!("{panicked:?}").contains("on purpose"), "the panic text must not reach the client");

    let access = access_lines_of("grpc-panic-1").await;
    assert_eq!((&access[0]["level"], &access[0]["grpc_status"]), (&"ERROR".into(), &13.into()), "{access:?}");
    let errors: Vec<_> = lines_of("grpc-panic-1")
        .into_iter()
        .filter(|l| l["level"] == "ERROR" && l["target"] != "reqscope::access")
        .collect();
    assert_eq!(errors.len(), 1, "one report besides the access line: {errors:?}");
    assert_eq!(errors[0]["target"], "reqscope::panic");
    assert_eq!(errors[0]["panic"], "user -1 does not exist, on purpose");
    assert!(errors[0]["location"].as_str().unwrap().contains("grpc_layers.rs:"), "{}", errors[0]);

    // The same connection still serves, unary and streaming.
    let user = users.get_user(call(GetUserRequest { id: 3 }, "grpc-panic-after", None)).await.expect("still serving");
    assert_eq!(user.get_ref().name, "user 3");
    let ticks = users.count_up(call(CountUpRequest { n: 3 }, "grpc-panic-stream", None)).await.expect("a stream");
    let ticks: Vec<u32> = ticks.into_inner().map(|tick| tick.expect("a tick").i).collect().await;
    assert_eq!(ticks, [1, 2, 3]);
}

#[tokio::test]
async fn the_same_stack_answers_http_clients_with_json() {
    let quota = Quota::per_minute(1).expect("a valid quota");
    let stack = ServiceBuilder::new()
        .layer(RequestContextLayer::new())
        .layer(CatchPanicLayer::new())
        .layer(auth())
        .layer(RateLimitLayer::new(quota));
    let addr = serve_grpc(stack).await;
    let path = "/reqscope.example.v1.Users/WhoAmI";

    let missing = send(http::Method::POST, addr, path, &[("x-request-id", b"grpc-http-missing")], Bytes::new()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["content-type"], "application/json");
    assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"api\"");
    assert!(missing.headers.get("grpc-status").is_none());
    assert_eq!(
        missing.json(),
        serde_json::json!({"error": "unauthorized", "message": "missing", "request_id": "grpc-http-missing"})
    );

    // The rate limit's 429 too, for the budget's second request.
    let bearer = format!("Bearer {}", token("grpc-http-limited"));
    let headers: [(&str, &[u8]); 2] = [("authorization", bearer.as_bytes()), ("content-type", b"application/json")];
    send(http::Method::POST, addr, path, &headers, Bytes::new()).await;
    let spent = send(http::Method::POST, addr, path, &headers, Bytes::new()).await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.headers["content-type"], "application/json");
    assert!(spent.headers.contains_key("retry-after"));
    assert_eq!(spent.json()["error"], "rate_limited");
    assert_eq!(spent.json()["request_id"], spent.request_id());
}
