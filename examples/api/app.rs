//! The router: routes, then the reqscope layers. HTTP/1.1, HTTP/2 and gRPC share them.

use axum::Router;
use axum::routing::{get, post, post_service};
use reqscope::auth::AuthLayer;
use reqscope::rate_limit::RateLimitLayer;
use reqscope::{CatchPanicLayer, MatchedRouteLayer, RequestContextLayer};
use sqlx::AnyPool;

use crate::chain::Chain;
use crate::request_fields::{device_id_layer, tenant_layer};
use crate::{boom, chain, fanout, grpc, health, jwt, log_settings, not_found, ready, stream, users, ws};

/// The whole application, ready to serve, as it ships: every access line written, with the
/// default `LOG_HEADERS`.
#[allow(dead_code)] // the server builds its context layer from the environment; the tests use this
pub fn app(auth: AuthLayer, limit: RateLimitLayer, pool: AnyPool, next_hop: Chain) -> Router {
    let headers = log_settings::headers(log_settings::DEFAULT_HEADERS).expect("the default list is valid");
    app_with_context_layer(auth, limit, pool, next_hop, RequestContextLayer::new().log_request_headers(headers))
}

/// [`app`] behind `context`: the request-context layer as configured (its access lines, the
/// request headers they name).
pub fn app_with_context_layer(
    auth: AuthLayer,
    limit: RateLimitLayer,
    pool: AnyPool,
    next_hop: Chain,
    context: RequestContextLayer,
) -> Router {
    let users = grpc::service(pool.clone());
    // Built from descriptors compiled into the binary (and checked by the reflection test).
    let (reflection_v1, reflection_v1alpha) = grpc::reflection().expect("the compiled-in descriptors are valid");
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(ready::ready))
        .route("/fanout", get(fanout::fanout))
        // A token is optional: with one, every chunk's line names the user.
        // Every route with a token sets `tenant` from its org right after the auth layer.
        .route("/stream", get(stream::stream).route_layer(tenant_layer()).route_layer(auth.clone().optional()))
        // Calls the next service (the only route with a state of its own); rate limited, since
        // one request may cost up to nine.
        .merge(Router::new().route("/chain", get(chain::chain).route_layer(limit.clone())).with_state(next_hop))
        // Only this route needs a token; the auth layer puts the user into the context.
        // A token is optional here: with one, the panic report names the user.
        .route("/boom", get(boom::boom).route_layer(tenant_layer()).route_layer(auth.clone().optional()))
        // A WebSocket echo; with a token on the upgrade, every line of the connection names the user.
        .route("/ws", get(ws::ws).route_layer(tenant_layer()).route_layer(auth.clone().optional()))
        // The rate limit sits inside the auth layer, so that it counts per user when there is one.
        .route(
            "/users",
            post(users::create).route_layer(limit.clone()).route_layer(tenant_layer()).route_layer(auth.clone()),
        )
        .route(
            "/users/me",
            get(users::me).route_layer(limit.clone()).route_layer(tenant_layer()).route_layer(auth.clone()),
        )
        .route("/users/{id}", get(users::by_id).route_layer(limit.clone()))
        // gRPC, one route per method so that `route` names the method; the same budget as
        // `/users/…`, and the same token check for `WhoAmI`.
        .route(grpc::GET_USER, post_service(users.clone()).route_layer(limit.clone()))
        .route(grpc::COUNT_UP, post_service(users.clone()).route_layer(limit.clone()))
        .route(grpc::WHO_AM_I, post_service(users).route_layer(limit).route_layer(tenant_layer()).route_layer(auth))
        .route(grpc::REFLECTION_V1, post_service(reflection_v1))
        .route(grpc::REFLECTION_V1ALPHA, post_service(reflection_v1alpha))
        // After routing: puts the route template (`/users/{id}`) on every log line.
        .route_layer(MatchedRouteLayer)
        .fallback(not_found::not_found)
        // Inside the context layer, so that a panic's ERROR line is stamped.
        .layer(CatchPanicLayer::new())
        // Inside the context layer: the hidden `device_id` goes into the request's context.
        .layer(device_id_layer())
        // Outermost: every request, the 404s included, gets its context and request id.
        .layer(context)
        .with_state(pool)
}

/// The example's auth layer: HS256 with `secret`, the example's issuer and audience required.
pub fn auth_layer(secret: &[u8]) -> AuthLayer {
    AuthLayer::hmac(secret).issuer(jwt::ISSUER).audience(jwt::AUDIENCE)
}
