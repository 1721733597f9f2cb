//! Any unknown route: 404 JSON carrying the request id, like every error of this API.

use axum::http::{Method, Uri};
use reqscope::ApiError;

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}
