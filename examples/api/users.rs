//! `/users/…`: users from the database. No parameter tells a handler who is asking: the auth
//! layer put the user id into the request context, and the query log lines carry it too.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use reqscope::RequestContext;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::AnyPool;

#[derive(Serialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<Value>)>;

/// `GET /users/me`: the token's user.
pub async fn me(State(pool): State<AnyPool>) -> ApiResult<User> {
    tracing::info!("loading the current user");
    let id = RequestContext::with(|ctx| ctx.user_id()).flatten().and_then(|id| id.parse::<i64>().ok());
    let Some(id) = id else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "no user with the token's subject"));
    };
    find(&pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", "no user with the token's subject"))
}

/// `GET /users/{id}`: any user, by id.
pub async fn by_id(State(pool): State<AnyPool>, Path(id): Path<String>) -> ApiResult<User> {
    let id: i64 =
        id.parse().map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "the user id must be a number"))?;
    find(&pool, id).await?.map(Json).ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", &format!("no user {id}")))
}

async fn find(pool: &AnyPool, id: i64) -> Result<Option<User>, (StatusCode, Json<Value>)> {
    sqlx::query_as::<_, User>("SELECT id, name, email FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)
}

/// A database failure: one stamped ERROR line, 503 JSON to the client (no internals).
fn unavailable(err: sqlx::Error) -> (StatusCode, Json<Value>) {
    tracing::error!(error = %err, "database query failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is unavailable; try again later")
}

fn error(status: StatusCode, error: &str, message: &str) -> (StatusCode, Json<Value>) {
    let request_id = RequestContext::with(|ctx| ctx.id().to_string());
    (status, Json(json!({ "error": error, "message": message, "request_id": request_id })))
}
