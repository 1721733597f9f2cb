//! Every place code runs on behalf of a request writes lines stamped with its id.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqscope::{FutureExt, RequestContextLayer};
use serde_json::Value;
use tracing::Span;

use crate::support::{access_lines_of, fetch, lines_of, lines_where, serve};

async fn everywhere() -> &'static str {
    tracing::info!(site = "handler", "in the handler");
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    tracing::info!(site = "after_await", "after awaits");

    reqscope::spawn(async { tracing::info!(site = "spawn", "in reqscope::spawn") }).await.unwrap();
    reqscope::spawn_blocking(|| tracing::info!(site = "spawn_blocking", "in reqscope::spawn_blocking")).await.unwrap();
    std::thread::spawn(reqscope::bind(|| tracing::info!(site = "bind_thread", "on a std thread via bind")))
        .join()
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async { tracing::info!(site = "join_set", "in a JoinSet task") }.in_current_context());
    set.join_next().await.unwrap().unwrap();

    // A thread that knows nothing of reqscope, only the tracing span (as sqlx-sqlite's worker).
    let span = Span::current();
    std::thread::spawn(move || {
        let _entered = span.enter();
        tracing::info!(site = "foreign_span", "on a thread that only entered the span");
    })
    .join()
    .unwrap();

    // The pitfall: plain tokio::spawn does not carry task-locals.
    tokio::spawn(async { tracing::info!(site = "plain_spawn", probe = "plain-spawn-probe", "lost context") })
        .await
        .unwrap();
    "done"
}

fn sites(lines: &[Value]) -> BTreeSet<String> {
    lines.iter().filter_map(|l| l["site"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_helper_and_thread_carries_the_request_id() {
    let app = Router::new().route("/everywhere", get(everywhere)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let reply = fetch(addr, "/everywhere", &[("x-request-id", b"stamp-everywhere-1")]).await;
    assert_eq!(reply.body, "done");
    access_lines_of("stamp-everywhere-1").await;
    let expected: BTreeSet<String> =
        ["handler", "after_await", "spawn", "spawn_blocking", "bind_thread", "join_set", "foreign_span"]
            .map(String::from)
            .into();
    assert_eq!(sites(&lines_of("stamp-everywhere-1")), expected);
    for line in lines_of("stamp-everywhere-1") {
        assert_eq!(line["path"], "/everywhere");
        assert_eq!(line["method"], "GET");
    }

    let lost = lines_where(|l| l["probe"] == "plain-spawn-probe");
    assert_eq!(lost.len(), 1);
    assert!(lost[0].get("request_id").is_none(), "plain tokio::spawn must lose the context: {}", lost[0]);
}

#[tokio::test]
async fn the_example_fanout_stamps_every_task() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(addr, "/fanout", &[("x-request-id", b"stamp-fanout-1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["request_id"], "stamp-fanout-1");
    access_lines_of("stamp-fanout-1").await;
    let tasks: BTreeSet<u64> = lines_of("stamp-fanout-1").iter().filter_map(|l| l["task"].as_u64()).collect();
    assert_eq!(tasks, BTreeSet::from([0, 1, 2, 3]));
    for line in lines_of("stamp-fanout-1") {
        assert_eq!(line["route"], "/fanout", "{line}");
    }
}

#[tokio::test]
async fn the_example_stream_stamps_every_chunk() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(addr, "/stream", &[("x-request-id", b"stamp-stream-1")]).await;
    assert_eq!(reply.body, "chunk 0\nchunk 1\nchunk 2\n");
    let access = access_lines_of("stamp-stream-1").await;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["bytes"], 24);
    let chunks: Vec<u64> = lines_of("stamp-stream-1").iter().filter_map(|l| l["chunk"].as_u64()).collect();
    assert_eq!(chunks, [0, 1, 2]);
}

#[tokio::test]
async fn unknown_routes_answer_404_json_with_the_id() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(addr, "/nowhere", &[("x-request-id", b"stamp-404-1")]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    assert_eq!(body["error"], "not_found");
    assert_eq!(body["message"], "no route for GET /nowhere");
    assert_eq!(body["request_id"], "stamp-404-1");
    let access = access_lines_of("stamp-404-1").await;
    assert_eq!(access[0]["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_query_lines_carry_the_request_and_the_user() {
    let addr = serve(crate::support::example_app().await).await;
    let token = crate::support::hs256(crate::support::TEST_SECRET, &crate::support::claims("1"));
    let bearer = format!("Bearer {token}");
    let reply =
        fetch(addr, "/users/me", &[("x-request-id", b"db-stamp-1"), ("authorization", bearer.as_bytes())]).await;
    assert_eq!(reply.json()["email"], "ada@example.com");
    access_lines_of("db-stamp-1").await;
    let queries: Vec<Value> = lines_of("db-stamp-1").into_iter().filter(|l| l["target"] == "sqlx::query").collect();
    assert_eq!(queries.len(), 1, "one line per statement");
    assert_eq!(queries[0]["user_id"], "1");
    assert_eq!(queries[0]["rows_returned"], 1);
    assert!(queries[0]["db.statement"].as_str().unwrap().contains("SELECT id, name, email FROM users WHERE id = $1"));

    let reply = fetch(addr, "/users/2", &[("x-request-id", b"db-stamp-2")]).await;
    assert_eq!(reply.json()["name"], "Grace Hopper");
    assert_eq!(fetch(addr, "/users/x", &[]).await.status, 400);
    let missing = fetch(addr, "/users/99", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["request_id"], missing.request_id());
}
