//! The gRPC stacks: the example's `Users` service (`examples/api/proto`) on a
//! `tonic::transport::Server`, bare and with reqscope's layers. Only `GetUser` is called.

use reqscope::RequestContextLayer;
use reqscope::auth::AuthLayer;
use reqscope::logging::{LogLayer, NonBlocking};
use reqscope_example_proto::users_server::{Users, UsersServer};
use reqscope_example_proto::{CountUpRequest, GetUserRequest, Tick, User, WhoAmIRequest};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
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

    /// Serves the stack on `listener` until the process is stopped.
    pub async fn serve(self, listener: TcpListener, writer: NonBlocking) -> Result<(), String> {
        let incoming = TcpIncoming::from(listener);
        let users = UsersServer::new(BenchUsers { log: self != GrpcStack::Bare });
        if self != GrpcStack::Bare {
            // h2 and tonic emit DEBUG and TRACE events of their own (hyper, under the HTTP
            // stacks, emits none): INFO, as `RUST_LOG=info` would, keeps to the handler's line.
            let log = LogLayer::new().with_writer(writer);
            tracing_subscriber::registry().with(LevelFilter::INFO).with(log).init();
        }
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
