//! Any unknown route: 404 JSON carrying the request id, like every error of this API; an
//! unknown gRPC method is UNIMPLEMENTED, as gRPC clients expect.

use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use reqscope::ApiError;

pub async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    // `application/grpc`, `application/grpc+proto`, …; not gRPC-Web, whose clients read JSON errors here.
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')));
    if grpc {
        return tonic::Status::unimplemented(format!("no method {}", uri.path()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    ApiError::not_found(format!("no route for {method} {}", uri.path())).into_response()
}
