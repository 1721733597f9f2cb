//! Any unknown route: 404 JSON carrying the request id, like every error of this API; an
//! unknown gRPC method is UNIMPLEMENTED, as gRPC clients expect.

use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use reqscope::ApiError;

pub async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let grpc = headers.get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no method {}", uri.path()))
            .into_http::<axum::body::Body>()
            .into_response();
    }
    ApiError::not_found(format!("no route for {method} {}", uri.path())).into_response()
}
