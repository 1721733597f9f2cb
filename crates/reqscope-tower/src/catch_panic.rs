//! Turn a panicking handler into a 500 JSON response and one stamped ERROR event.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::{CatchPanicLayer, RequestContextLayer};
//!
//! async fn boom() -> &'static str {
//!     panic!("on purpose")
//! }
//!
//! let app: Router = Router::new()
//!     .route("/boom", get(boom))
//!     .layer(CatchPanicLayer::new()) // inside the context layer: the event is stamped
//!     .layer(RequestContextLayer::new());
//! ```
//!
//! The client gets `500 {"error":"internal","message":"internal server error","request_id":…}`
//! — never the panic text. The server logs one ERROR event (target `reqscope::panic`) with the
//! panic message and its location (`file:line:column`), stamped with the request's context,
//! and keeps serving. The layer records panic locations through a panic hook that it installs
//! once, in front of the hook already there (which still runs).

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use reqscope_core::{install_panic_location_hook, panic_message, take_panic_location};
use tower_layer::Layer;
use tower_service::Service;

/// Catches panics of the inner service; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct CatchPanicLayer(());

impl CatchPanicLayer {
    /// The layer (installs the location hook on first use).
    pub fn new() -> Self {
        install_panic_location_hook();
        CatchPanicLayer(())
    }
}

impl Default for CatchPanicLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, Req, ResBody> Service<Req> for CatchPanic<S>
where
    S: Service<Req, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CatchPanicFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => CatchPanicFuture::Running { future },
            Err(payload) => CatchPanicFuture::Panicked { response: Some(report(payload)) },
        }
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    #[project = CatchPanicProj]
    #[allow(missing_docs)] // the variants say what their one field is
    pub enum CatchPanicFuture<F, B> {
        /// The inner service's future.
        Running { #[pin] future: F },
        /// The service panicked while being called: the 500 response, taken on the first poll.
        Panicked { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for CatchPanicFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<String>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CatchPanicProj::Running { future } => match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                Ok(polled) => polled,
                Err(payload) => Poll::Ready(Ok(report(payload))),
            },
            CatchPanicProj::Panicked { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// Logs the panic (stamped by the current context) and builds the 500 response.
fn report<B: From<String>>(payload: Box<dyn Any + Send>) -> Response<B> {
    let message = panic_message(&*payload);
    let location = take_panic_location().unwrap_or_else(|| "unknown".to_owned());
    tracing::error!(target: "reqscope::panic", panic = %message, location = %location, "handler panicked");
    crate::error_response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
}
