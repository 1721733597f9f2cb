//! `GET /fanout`: work split over tasks and a blocking thread, every log line still stamped.
//!
//! Plain `tokio::spawn` would lose the request context (task-locals do not cross task
//! boundaries); `reqscope::spawn` and `reqscope::spawn_blocking` carry it.

use std::time::Duration;

use axum::Json;
use reqscope::RequestContext;
use serde_json::{Value, json};

pub async fn fanout() -> Json<Value> {
    let mut tasks = Vec::new();
    for task in 0..3u64 {
        tasks.push(reqscope::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * (3 - task))).await;
            tracing::info!(task, "async task finished");
            task
        }));
    }
    let blocking = reqscope::spawn_blocking(|| {
        // Stands in for CPU-bound or blocking work (hashing, compression, a sync client).
        std::thread::sleep(Duration::from_millis(5));
        tracing::info!(task = 3u64, "blocking task finished");
        3
    });

    let mut finished = Vec::new();
    for task in tasks {
        finished.extend(task.await.ok());
    }
    finished.extend(blocking.await.ok());

    let request_id = RequestContext::with(|ctx| ctx.id().to_string());
    Json(json!({ "tasks": finished, "request_id": request_id }))
}
