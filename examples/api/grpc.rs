//! gRPC on the same address as HTTP: `reqscope.example.v1.Users` (`proto/users.proto`).
//!
//! The same layers as the HTTP routes serve it: the context layer gives each call its request
//! id (honouring a valid `x-request-id` / `traceparent` metadata entry), the auth layer guards
//! `WhoAmI`, the rate limit spends the same per-user budget as `/users/…`, and refusals and
//! panics are answered as gRPC statuses. Handlers read the user from the context, as HTTP
//! handlers do, and every line they write (sqlx's included) is stamped.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use reqscope::RequestContext;
use reqscope_example_proto::users_server::{Users, UsersServer};
use reqscope_example_proto::{CountUpRequest, GetUserRequest, Tick, User, WhoAmIRequest};
use sqlx::AnyPool;
use tonic::{Request, Response, Status};

use crate::users;

/// The path of each method: a gRPC method is routed, and logged as `route`, by its full name.
pub const GET_USER: &str = "/reqscope.example.v1.Users/GetUser";
pub const WHO_AM_I: &str = "/reqscope.example.v1.Users/WhoAmI";
pub const COUNT_UP: &str = "/reqscope.example.v1.Users/CountUp";
/// Server reflection (`grpc.reflection.v1`, and `v1alpha` for older clients).
pub const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
pub const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// `GetUser` of this id panics on purpose, the gRPC twin of `GET /boom`.
pub const PANIC_ID: i64 = i64::MAX;
/// The most ticks one `CountUp` sends.
pub const MAX_TICKS: u32 = 100;
/// The pause before each tick: a stream long enough to watch, or to cancel.
const TICK_INTERVAL: Duration = Duration::from_millis(10);

/// The service, as a tower service for the router.
pub fn service(pool: AnyPool) -> UsersServer<UsersService> {
    UsersServer::new(UsersService { pool })
}

pub struct UsersService {
    pool: AnyPool,
}

#[tonic::async_trait]
impl Users for UsersService {
    /// Any user, by id: INVALID_ARGUMENT for an id ≤ 0, NOT_FOUND for an unknown one.
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.into_inner().id;
        if id == PANIC_ID {
            panic!("GetUser({PANIC_ID}) panics on purpose");
        }
        if id <= 0 {
            return Err(Status::invalid_argument("the user id must be a positive number"));
        }
        self.find(id).await?.ok_or_else(|| Status::not_found(format!("no user {id}"))).map(Response::new)
    }

    /// The token's user (the auth layer in front of this method refuses calls without one).
    async fn who_am_i(&self, _request: Request<WhoAmIRequest>) -> Result<Response<User>, Status> {
        tracing::info!("loading the current user");
        let not_found = || Status::not_found("no user with the token's subject");
        let id = RequestContext::with(|ctx| ctx.user_id()).flatten().and_then(|id| id.parse::<i64>().ok());
        let id = id.ok_or_else(not_found)?;
        self.find(id).await?.ok_or_else(not_found).map(Response::new)
    }

    type CountUpStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

    /// Ticks 1 to `n` (at most 100), one stamped line each, written as the stream is sent.
    async fn count_up(&self, request: Request<CountUpRequest>) -> Result<Response<Self::CountUpStream>, Status> {
        let n = request.into_inner().n;
        if n > MAX_TICKS {
            return Err(Status::invalid_argument(format!("n must be at most {MAX_TICKS}")));
        }
        // Polled by the server after this method returned, inside the request's context.
        let ticks = futures_util::stream::unfold(1, move |tick| async move {
            if tick > n {
                return None;
            }
            tokio::time::sleep(TICK_INTERVAL).await;
            tracing::info!(tick, "tick sent");
            Some((Ok(Tick { i: tick }), tick + 1))
        });
        Ok(Response::new(Box::pin(ticks)))
    }
}

impl UsersService {
    async fn find(&self, id: i64) -> Result<Option<User>, Status> {
        match users::find_user(&self.pool, id).await {
            Ok(user) => Ok(user.map(|user| User { id: user.id, name: user.name, email: user.email })),
            Err(error) => {
                tracing::error!(error = %error, "the database is unavailable");
                Err(Status::unavailable("the database is unavailable; try again later"))
            }
        }
    }
}

/// The reflection services, from the descriptors the code was generated from.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(reqscope_example_proto::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(|e| format!("cannot build gRPC reflection: {e}"))?;
    let v1alpha = builder().build_v1alpha().map_err(|e| format!("cannot build gRPC reflection: {e}"))?;
    Ok((v1, v1alpha))
}
