//! One error type for handlers: status, JSON body with the request id, and the right log line.
//!
//! ```
//! use reqscope_tower::api_error::ApiError;
//!
//! async fn get_user(id: String) -> Result<String, ApiError> {
//!     let id: u64 = id.parse().map_err(|_| ApiError::bad_request("the user id must be a number"))?;
//!     Err(ApiError::not_found(format!("no user {id}")))
//! }
//! ```
//!
//! The response is `{"error":<code>,"message":<message>,"request_id":…}` with the status.
//! Server errors (5xx) write one ERROR event (target `reqscope::error`) with the error chain
//! of their source (recorded as a `&dyn Error` field, so error trackers get the chain too),
//! stamped with the request's context; client errors (4xx) write one INFO
//! event, since they are the client's doing and not worth waking anyone for. The source's
//! text goes to the log only, never to the client.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};

/// A handler error; see the [module docs](self).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl ApiError {
    /// Any status, with a machine-readable `code` and a human `message`.
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, code: code.into(), message: message.into(), source: None }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `invalid`.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 503 `unavailable`: a dependency (the database) is down.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal` with the generic message; `source` goes to the log only.
    pub fn internal(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error").with_source(source)
    }

    /// Attaches the underlying error, logged (with its chain) for server errors.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.as_u16();
        if self.status.is_server_error() {
            match self.source.as_deref() {
                Some(source) => tracing::error!(
                    target: "reqscope::error", status, code = %self.code, error = source as &(dyn StdError + 'static), "{}", self.message
                ),
                None => tracing::error!(target: "reqscope::error", status, code = %self.code, "{}", self.message),
            }
        } else {
            tracing::info!(target: "reqscope::error", status, code = %self.code, "{}", self.message);
        }
        let mut response = Response::new(Body::from(crate::error_response::json_body(&self.code, &self.message)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
