//! Record axum's matched route template (`/users/{id}`) into the request context.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::route::MatchedRouteLayer;
//! use reqscope_tower::request_context::RequestContextLayer;
//!
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     // `route_layer` runs after routing, where axum knows the matched route.
//!     .route_layer(MatchedRouteLayer)
//!     .layer(RequestContextLayer::new());
//! ```
//!
//! From then on every log line of the request, and its access line, carries `route`. The
//! route template is better than the path for grouping: it has no ids in it.

use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::Request;
use reqscope_core::RequestContext;
use tower_layer::Layer;
use tower_service::Service;

/// Records the matched route into the context; add it with axum's `Router::route_layer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchedRouteLayer;

impl<S> Layer<S> for MatchedRouteLayer {
    type Service = MatchedRoute<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MatchedRoute { inner }
    }
}

/// The service made by [`MatchedRouteLayer`].
#[derive(Clone, Debug)]
pub struct MatchedRoute<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for MatchedRoute<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(route) = req.extensions().get::<MatchedPath>() {
            RequestContext::with(|ctx| ctx.set_route(route.as_str()));
        }
        self.inner.call(req)
    }
}
