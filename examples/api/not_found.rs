//! Any unknown route: 404 JSON carrying the request id, like every error of this API.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
use reqscope::RequestContext;
use serde_json::{Value, json};

pub async fn not_found(method: Method, uri: Uri) -> (StatusCode, Json<Value>) {
    let request_id = RequestContext::with(|ctx| ctx.id().to_string());
    let body = json!({
        "error": "not_found",
        "message": format!("no route for {method} {}", uri.path()),
        "request_id": request_id,
    });
    (StatusCode::NOT_FOUND, Json(body))
}
