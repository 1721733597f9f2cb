//! `GET /users/me`: who the token says you are. No parameter tells the handler who is
//! asking: the auth layer put the user id into the request context.

use axum::Json;
use axum::http::StatusCode;
use reqscope::RequestContext;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Clone, Serialize)]
pub struct User {
    pub id: u64,
    pub name: &'static str,
    pub email: &'static str,
}

/// The users that exist from the start.
pub const USERS: [User; 3] = [
    User { id: 1, name: "Ada Lovelace", email: "ada@example.com" },
    User { id: 2, name: "Grace Hopper", email: "grace@example.com" },
    User { id: 3, name: "Alan Turing", email: "alan@example.com" },
];

pub async fn me() -> Result<Json<User>, (StatusCode, Json<Value>)> {
    tracing::info!("loading the current user");
    let ctx = RequestContext::try_current()
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()))?;
    let user_id = ctx.user_id().and_then(|id| id.parse::<u64>().ok());
    match USERS.iter().find(|user| Some(user.id) == user_id) {
        Some(user) => Ok(Json(user.clone())),
        None => Err(error(StatusCode::NOT_FOUND, "not_found", "no user with the token's subject")),
    }
}

fn error(status: StatusCode, error: &str, message: &str) -> (StatusCode, Json<Value>) {
    let request_id = RequestContext::with(|ctx| ctx.id().to_string());
    (status, Json(json!({ "error": error, "message": message, "request_id": request_id })))
}
