//! The gRPC stacks: the example's `Users` service (`examples/api/proto`) on a
//! `tonic::transport::Server`, bare and with reqscope's layers. Only `GetUser` is called.

use http_body_util::BodyExt;
use prost::Message;
use reqscope::RequestContextLayer;
use reqscope::auth::AuthLayer;
use reqscope::logging::{LogLayer, NonBlocking};
use reqscope_example_proto::users_server::{Users, UsersServer};
use reqscope_example_proto::{CountUpRequest, GetUserRequest, Tick, User, WhoAmIRequest};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower::{Layer, ServiceExt};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::stacks::BENCH_SECRET;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcStack {
    /// tonic alone, no output.
    Bare,
    /// `RequestContextLayer` (access line off) and one stamped line from the handler.
    ContextLog,
    /// The same plus `AuthLayer` (HS256; the load client sends the same token every call).
    Auth,
}

impl GrpcStack {
    pub const NAMES: [&'static str; 3] = ["grpc-bare", "grpc-context-log", "grpc-auth"];
    const ALL: [GrpcStack; 3] = [GrpcStack::Bare, GrpcStack::ContextLog, GrpcStack::Auth];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stack| stack.name() == name)
    }

    /// Installs the stack's subscriber (none for the bare stack) and makes its service.
    fn users(self, writer: NonBlocking) -> UsersServer<BenchUsers> {
        if self != GrpcStack::Bare {
            // h2 and tonic emit DEBUG and TRACE events of their own (hyper, under the HTTP
            // stacks, emits none): INFO, as `RUST_LOG=info` would, keeps to the handler's line.
            let log = LogLayer::new().with_writer(writer);
            tracing_subscriber::registry().with(LevelFilter::INFO).with(log).init();
        }
        UsersServer::new(BenchUsers { log: self != GrpcStack::Bare })
    }

    /// Serves the stack on `listener` until the process is stopped.
    pub async fn serve(self, listener: TcpListener, writer: NonBlocking) -> Result<(), String> {
        let incoming = TcpIncoming::from(listener);
        let users = self.users(writer);
        let context = RequestContextLayer::new().access_log(false);
        // Each arm builds its own server: the layers change the service's type.
        let served = match self {
            GrpcStack::Bare => Server::builder().add_service(users).serve_with_incoming(incoming).await,
            GrpcStack::ContextLog => {
                Server::builder().layer(context).add_service(users).serve_with_incoming(incoming).await
            }
            GrpcStack::Auth => {
                let auth = AuthLayer::hmac(BENCH_SECRET);
                Server::builder().layer(context).layer(auth).add_service(users).serve_with_incoming(incoming).await
            }
        };
        served.map_err(|e| e.to_string())
    }

    /// Makes `count` unary `GetUser` calls through the stack in process, as tonic's server
    /// would hand them over (the layers in the order `serve` adds them), for
    /// `bench/instructions.sh`; every answer must carry the user and `grpc-status: 0`. The
    /// service is called directly: tonic's router and transport are the same for every
    /// stack, and not in the counts.
    pub fn calls(self, count: u64, writer: NonBlocking) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start tokio: {e}"))?;
        let users = self.users(writer);
        let context = RequestContextLayer::new().access_log(false);
        runtime.block_on(async move {
            match self {
                GrpcStack::Bare => drive(self, users, count).await,
                GrpcStack::ContextLog => drive(self, context.layer(users), count).await,
                GrpcStack::Auth => drive(self, context.layer(AuthLayer::hmac(BENCH_SECRET).layer(users)), count).await,
            }
        })?;
        println!("{count} calls through {}", self.name());
        Ok(())
    }
}

/// One call after another through `service`, each checked.
async fn drive<S, B>(stack: GrpcStack, service: S, count: u64) -> Result<(), String>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Display,
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    // A length-prefixed, uncompressed message, as a gRPC client sends it.
    let message = GetUserRequest { id: 42 }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let frame = bytes::Bytes::from(frame);
    let token = format!("Bearer {}", crate::stacks::token());
    // The target as h2 hands it over: absolute form, in shared bytes (a clone of the URI is a
    // count increment, as for a served call).
    let target = bytes::Bytes::from(b"http://127.0.0.1:50051/reqscope.example.v1.Users/GetUser".to_vec());
    let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().map_err(|_| "bad peer address")?;
    for _ in 0..count {
        let uri = http::Uri::from_maybe_shared(target.clone()).map_err(|e| e.to_string())?;
        let mut request = http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", &token)
            .body(tonic::body::Body::new(http_body_util::Full::new(frame.clone())))
            .map_err(|e| e.to_string())?;
        // What tonic's server puts on each request it accepts: the peer, for `client_ip`.
        request
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(peer) });
        let response = service.clone().oneshot(request).await.map_err(|e| e.to_string())?;
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?;
        let status = body.trailers().and_then(|t| t.get("grpc-status")).map(|s| s.as_bytes().to_vec());
        let bytes = body.to_bytes();
        if status.as_deref() != Some(b"0") || User::decode(bytes.get(5..).unwrap_or_default()).map(|u| u.id) != Ok(42) {
            return Err(format!("{} answered {status:?} {bytes:?}", stack.name()));
        }
    }
    Ok(())
}

/// `Users` without a database: `GetUser` answers at once, with one line when `log`.
struct BenchUsers {
    log: bool,
}

#[tonic::async_trait]
impl Users for BenchUsers {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.into_inner().id;
        if self.log {
            tracing::info!(user = id, "loading a user");
        }
        Ok(Response::new(User { id, name: "Ada Lovelace".to_owned(), email: "ada@example.com".to_owned() }))
    }

    async fn who_am_i(&self, _: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }

    type CountUpStream = futures_util::stream::Empty<Result<Tick, Status>>;

    async fn count_up(&self, _: Request<CountUpRequest>) -> Result<Response<Self::CountUpStream>, Status> {
        Err(Status::unimplemented("not benchmarked"))
    }
}
