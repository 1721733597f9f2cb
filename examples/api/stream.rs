//! `GET /stream`: a body produced after the handler returned, chunk by chunk, over time.
//!
//! The body is polled by the server outside the handler; reqscope re-enters the request
//! context on every poll, so each chunk's log line carries the request id.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};

const CHUNKS: u64 = 3;

pub async fn stream() -> Response {
    let chunks = futures_util::stream::unfold(0u64, |chunk| async move {
        if chunk == CHUNKS {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tracing::info!(chunk, "chunk sent");
        Some((Ok::<_, Infallible>(format!("chunk {chunk}\n")), chunk + 1))
    });
    ([("content-type", "text/plain; charset=utf-8")], Body::from_stream(chunks)).into_response()
}
