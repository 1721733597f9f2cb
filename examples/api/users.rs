//! `/users/…`: users from the database. No parameter tells a handler who is asking: the auth
//! layer put the user id into the request context, and the query log lines carry it too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use reqscope::RequestContext;
use serde::{Deserialize, Serialize};
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

/// The body of `POST /users`.
#[derive(Deserialize)]
pub struct NewUser {
    pub name: String,
    pub email: String,
}

/// `POST /users` (token required): stores a user, 201 with the stored record. Malformed JSON
/// → 400; missing or invalid fields → 422; an email already taken → 409.
pub async fn create(
    State(pool): State<AnyPool>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), (StatusCode, Json<Value>)> {
    let Json(new) = body.map_err(|rejection| match rejection {
        JsonRejection::JsonDataError(_) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "the body needs string fields `name` and `email`")
        }
        _ => error(StatusCode::BAD_REQUEST, "bad_request", "the body must be JSON: {\"name\":…,\"email\":…}"),
    })?;
    let name = new.name.trim();
    let email = new.email.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "`name` must be 1 to 100 characters"));
    }
    let plausible = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !plausible {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "`email` must be an email address"));
    }
    // Bound values never reach the logs: sqlx logs the statement text only.
    let inserted =
        sqlx::query_as::<_, User>("INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id, name, email")
            .bind(name)
            .bind(email)
            .fetch_one(&pool)
            .await;
    match inserted {
        Ok(user) => {
            tracing::info!(user = user.id, "user created");
            Ok((StatusCode::CREATED, Json(user)))
        }
        Err(err) if err.as_database_error().is_some_and(|e| e.is_unique_violation()) => {
            Err(error(StatusCode::CONFLICT, "conflict", "a user with this email exists"))
        }
        Err(err) => Err(unavailable(err)),
    }
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
