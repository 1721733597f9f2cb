//! A panicking handler: 500 JSON with the request id, one stamped ERROR line for the panic
//! (and an ERROR access line: a 500 is a failure), server alive.

use crate::support::{TEST_SECRET, access_lines_of, claims, example_app, fetch, hs256, lines_of, serve};

#[tokio::test]
async fn boom_reports_the_panic_with_request_and_user_and_keeps_serving() {
    let addr = serve(example_app().await).await;
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("3")));
    let reply = fetch(addr, "/boom", &[("x-request-id", b"boom-1"), ("authorization", bearer.as_bytes())]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": "internal", "message": "internal server error", "request_id": "boom-1"})
    );
    assert!(!reply.body.contains("on purpose"), "the panic text must not reach the client");

    let access = access_lines_of("boom-1").await;
    assert_eq!(access[0]["status"], 500);
    assert_eq!(access[0]["level"], "ERROR", "a 500 is a failed request: {}", access[0]);
    assert_eq!(access[0]["user_id"], "3");
    let errors: Vec<serde_json::Value> =
        lines_of("boom-1").into_iter().filter(|l| l["level"] == "ERROR" && l["target"] != "reqscope::access").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["user_id"], "3");
    assert_eq!(errors[0]["panic"], "the /boom route panics on purpose");
    assert!(errors[0]["location"].as_str().unwrap().contains("boom.rs:"), "{}", errors[0]);

    // Anonymous panics are reported too, and the server is still there.
    let anonymous = fetch(addr, "/boom", &[]).await;
    assert_eq!(anonymous.status, 500);
    let access = access_lines_of(anonymous.request_id()).await;
    assert_eq!(access[0]["level"], "ERROR", "{}", access[0]);
    assert!(access[0].get("user_id").is_none(), "{}", access[0]);
    assert_eq!(fetch(addr, "/health", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_spawned_task_is_reported_stamped_and_still_joins_as_an_error() {
    use axum::Router;
    use axum::routing::get;
    async fn spawns_a_panic() -> &'static str {
        let joined = reqscope::spawn(async { panic!("a task gave up") }).await;
        assert!(joined.unwrap_err().is_panic(), "the JoinHandle still reports the panic");
        "joined"
    }
    let app = Router::new().route("/task", get(spawns_a_panic)).layer(reqscope::RequestContextLayer::new());
    let addr = serve(app).await;
    let reply = fetch(addr, "/task", &[("x-request-id", b"task-panic-1")]).await;
    assert_eq!(reply.body, "joined");
    let access = access_lines_of("task-panic-1").await;
    assert_eq!(access[0]["level"], "INFO", "the handler answered 200: {}", access[0]);
    let errors: Vec<serde_json::Value> =
        lines_of("task-panic-1").into_iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["panic"], "a task gave up");
    assert!(errors[0]["location"].as_str().unwrap().contains("panics.rs:"), "{}", errors[0]);
}
