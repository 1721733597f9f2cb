//! A panicking handler: 500 JSON with the request id, one stamped ERROR line, server alive.

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
    let errors: Vec<serde_json::Value> = lines_of("boom-1").into_iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["user_id"], "3");
    assert_eq!(errors[0]["panic"], "the /boom route panics on purpose");
    assert!(errors[0]["location"].as_str().unwrap().contains("boom.rs:"), "{}", errors[0]);

    // Anonymous panics are reported too, and the server is still there.
    assert_eq!(fetch(addr, "/boom", &[]).await.status, 500);
    assert_eq!(fetch(addr, "/health", &[]).await.status, 200);
}
