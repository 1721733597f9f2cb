//! Turn a panicking handler into a 500 JSON response (gRPC: `INTERNAL`) and one stamped
//! ERROR event.
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::catch_panic::CatchPanicLayer;
//! use reqscope_tower::request_context::RequestContextLayer;
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
//! — never the panic text; a gRPC client (a request with `content-type: application/grpc…`)
//! gets status `INTERNAL` (13) with the message `internal server error`, as a trailers-only
//! response (see [`error_response`](crate::error_response);
//! [`CatchPanicLayer::error_response`] picks another format). The server logs one ERROR event (target `reqscope::panic`) with the
//! panic message and its location (`file:line:column`), stamped with the request's context,
//! and keeps serving. The layer records panic locations through a panic hook that it installs
//! once, in front of the hook already there (which still runs).

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use reqscope_core::__private::{install_panic_location_hook, panic_message, take_panic_location};
use tower_layer::Layer;
use tower_service::Service;

use crate::error_response::{ByContentType, ErrorCode, ErrorReply, MakeErrorResponse, RespondWithError, ResponseBody};

/// Catches panics of the inner service; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct CatchPanicLayer<M = ByContentType> {
    errors: M,
}

impl CatchPanicLayer {
    /// The layer (installs the location hook on first use), answering as [`ByContentType`]
    /// chooses.
    pub fn new() -> Self {
        install_panic_location_hook();
        CatchPanicLayer { errors: ByContentType }
    }
}

impl Default for CatchPanicLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> CatchPanicLayer<M> {
    /// Answers panics with `errors`' responses instead (e.g.
    /// [`GrpcErrors`](crate::error_response::GrpcErrors) for a service that only speaks gRPC).
    pub fn error_response<N: MakeErrorResponse>(self, errors: N) -> CatchPanicLayer<N> {
        CatchPanicLayer { errors }
    }
}

impl<S, M: Clone> Layer<S> for CatchPanicLayer<M> {
    type Service = CatchPanic<S, M>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner, errors: self.errors.clone() }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Clone, Debug)]
pub struct CatchPanic<S, M = ByContentType> {
    inner: S,
    errors: M,
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for CatchPanic<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: MakeErrorResponse,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = CatchPanicFuture<S::Future, M::Responder>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Chosen now: once the inner service has the request, its headers are gone.
        let responder = self.errors.for_request(&request);
        let kind = match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => Kind::Running { future, responder },
            Err(payload) => Kind::Panicked { response: Some(report(payload, &responder)) },
        };
        CatchPanicFuture { kind }
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    pub struct CatchPanicFuture<F, R> {
        #[pin]
        kind: Kind<F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Running { #[pin] future: F, responder: R },
        // The service panicked while being called: the error response, taken on the first poll.
        Panicked { response: Option<Response<bytes::Bytes>> },
    }
}

impl<F, R, B, E> Future for CatchPanicFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: RespondWithError,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running { future, responder } => match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                Ok(Poll::Ready(result)) => Poll::Ready(result.map(|response| response.map(ResponseBody::inner))),
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => Poll::Ready(Ok(report(payload, responder).map(ResponseBody::reply))),
            },
            KindProj::Panicked { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(ResponseBody::reply))),
                None => Poll::Pending,
            },
        }
    }
}

/// Logs the panic (stamped by the current context) and builds the error response.
fn report<R: RespondWithError>(payload: Box<dyn Any + Send>, responder: &R) -> Response<bytes::Bytes> {
    let message = panic_message(&*payload);
    let location = take_panic_location().unwrap_or_else(|| "unknown".to_owned());
    tracing::error!(target: "reqscope::panic", panic = %message, location = %location, "handler panicked");
    responder.respond(&ErrorReply::new(ErrorCode::Internal, "internal", "internal server error"))
}
