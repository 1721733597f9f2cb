//! `/users/…`: users from the database. No parameter tells a handler who is asking: the auth
//! layer put the user id into the request context, and the query log lines carry it too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use reqscope::{ApiError, RequestContext};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

use crate::jobs::{Jobs, WelcomeEmail};

#[derive(Serialize, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

/// `GET /users/me`: the token's user.
pub async fn me(State(pool): State<AnyPool>) -> Result<Json<User>, ApiError> {
    tracing::info!("loading the current user");
    let not_found = || ApiError::not_found("no user with the token's subject");
    let id = RequestContext::with(|ctx| ctx.user_id()).flatten().and_then(|id| id.parse::<i64>().ok());
    let id = id.ok_or_else(not_found)?;
    let user = find(&pool, id).await?;
    // Written for a request raised to DEBUG (`x-log-level: debug`, role `log-debug`), or kept
    // until the request fails with `LOG_ON_ERROR=debug`.
    tracing::debug!(found = user.is_some(), "user row fetched");
    user.map(Json).ok_or_else(not_found)
}

/// `GET /users/{id}`: any user, by id.
pub async fn by_id(State(pool): State<AnyPool>, Path(id): Path<String>) -> Result<Json<User>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::bad_request("the user id must be a number"))?;
    find(&pool, id).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("no user {id}")))
}

/// The body of `POST /users`.
#[derive(Deserialize)]
pub struct NewUser {
    pub name: String,
    pub email: String,
}

/// `POST /users` (token required): stores a user and queues its welcome email, 201 with the
/// stored record. Malformed JSON → 400; missing or invalid fields → 422; an email already
/// taken → 409; a queue that does not take the job in time → 503 `queue_unavailable`.
pub async fn create(
    State(pool): State<AnyPool>,
    Extension(jobs): Extension<Jobs>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let Json(new) = body.map_err(|rejection| match rejection {
        JsonRejection::JsonDataError(_) => ApiError::invalid("the body needs string fields `name` and `email`"),
        _ => ApiError::bad_request("the body must be JSON: {\"name\":…,\"email\":…}"),
    })?;
    let name = new.name.trim();
    let email = new.email.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("`name` must be 1 to 100 characters"));
    }
    let plausible = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !plausible {
        return Err(ApiError::invalid("`email` must be an email address"));
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
            // `email` is a redacted key: the line says that there is one, never which.
            tracing::info!(new_user_id = user.id, email = %user.email, "user created");
            // The 201 promises the welcome email, so it waits for the queue; without the job the
            // user is removed again, and the client can simply retry. Removed rather than held in
            // an open transaction: that would keep a pool connection (SQLite's only one) for as
            // long as the queue takes to answer.
            let welcome = WelcomeEmail { user_id: user.id, email: user.email.clone() };
            if let Err(error) = jobs.welcome_email(&welcome).await {
                remove(&pool, user.id).await;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the job queue is unavailable; try again later",
                )
                .with_source(error));
            }
            Ok((StatusCode::CREATED, Json(user)))
        }
        Err(err) if err.as_database_error().is_some_and(|e| e.is_unique_violation()) => {
            Err(ApiError::conflict("a user with this email exists"))
        }
        Err(err) => Err(unavailable(err)),
    }
}

/// Takes back a user whose welcome email could not be queued.
async fn remove(pool: &AnyPool, id: i64) {
    if let Err(error) = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(pool).await {
        tracing::error!(user = id, %error, "a user whose welcome email was not queued could not be removed");
    }
}

async fn find(pool: &AnyPool, id: i64) -> Result<Option<User>, ApiError> {
    find_user(pool, id).await.map_err(unavailable)
}

/// One user by id; the gRPC service shares it.
pub async fn find_user(pool: &AnyPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>("SELECT id, name, email FROM users WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// A database failure: 503 to the client (no internals), one stamped ERROR line with the cause.
fn unavailable(err: sqlx::Error) -> ApiError {
    ApiError::unavailable("the database is unavailable; try again later").with_source(err)
}
