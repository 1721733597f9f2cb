//! The router: routes, then the reqscope layers.

use axum::Router;
use axum::routing::get;
use reqscope::{MatchedRouteLayer, RequestContextLayer};

use crate::{fanout, health, not_found, stream};

/// The whole application, ready to serve.
pub fn app() -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/fanout", get(fanout::fanout))
        .route("/stream", get(stream::stream))
        // After routing: puts the route template (`/users/{id}`) on every log line.
        .route_layer(MatchedRouteLayer)
        .fallback(not_found::not_found)
        // Outermost: every request, the 404s included, gets its context and request id.
        .layer(RequestContextLayer::new())
}
