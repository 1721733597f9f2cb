//! The context API as a handler sees it: outside a request, forks, late patches.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use reqscope::{FutureExt, RequestContext, RequestContextLayer};

use crate::support::{access_lines_of, fetch, lines_of, serve};

#[test]
fn outside_a_request_there_is_no_context() {
    assert!(RequestContext::current().is_none());
    let message = RequestContext::try_current().unwrap_err().to_string();
    assert!(message.contains("RequestContextLayer"), "{message}");
}

/// Stands in for an auth layer: runs inside the context layer and patches the user in.
async fn fake_auth(request: Request, next: Next) -> Response {
    RequestContext::with(|ctx| {
        ctx.set_user_id("user-late-1");
        ctx.set_roles(["reader"]);
    });
    next.run(request).await
}

async fn handler() -> axum::body::Body {
    tracing::info!(step = "before_field", "handler starts");
    let parent = RequestContext::try_current().expect("inside a request");
    let child = parent.fork();
    child.set_user_id("batch-job");
    reqscope::spawn(async { tracing::info!(step = "forked", "in a forked context") }.in_context(child)).await.unwrap();
    // Patched after the last handler line: it must still reach the access line.
    parent.set_field("plan", "pro");
    // Patched from the body, after the handler has returned and the response has started.
    let chunks = futures_util::stream::once(async {
        RequestContext::with(|ctx| ctx.set_field("streamed", true));
        Ok::<_, std::convert::Infallible>("ok")
    });
    axum::body::Body::from_stream(chunks)
}

#[tokio::test]
async fn late_patches_reach_later_lines_and_the_access_line_and_forks_stay_apart() {
    let app = Router::new()
        .route("/patched", get(handler))
        .layer(middleware::from_fn(fake_auth))
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    fetch(addr, "/patched", &[("x-request-id", b"ctx-late-1")]).await;
    let access = access_lines_of("ctx-late-1").await;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["user_id"], "user-late-1");
    assert_eq!(access[0]["roles"], serde_json::json!(["reader"]));
    assert_eq!(access[0]["plan"], "pro");
    assert_eq!(access[0]["streamed"], true);

    let lines = lines_of("ctx-late-1");
    let first = lines.iter().find(|l| l["step"] == "before_field").unwrap();
    assert_eq!(first["user_id"], "user-late-1");
    assert!(first.get("plan").is_none());
    let forked = lines.iter().find(|l| l["step"] == "forked").unwrap();
    assert_eq!(forked["user_id"], "batch-job");
}

#[tokio::test]
async fn jobs_and_tests_can_open_their_own_scope() {
    // The capture must be installed before the job logs, whichever test runs first.
    crate::support::logs();
    let ctx = Arc::new(RequestContext::new(reqscope::RequestId::parse("job-nightly-1").unwrap()));
    RequestContext::scope(ctx, async { tracing::info!("nightly job ran") }).await;
    assert_eq!(lines_of("job-nightly-1").len(), 1);
}

/// Sets a hidden field and a visible one, logs, and reads the hidden one back in a spawned task.
async fn hidden_handler() -> &'static str {
    RequestContext::with(|ctx| {
        ctx.set_hidden_field("session_token", "hidden-value-7f3a");
        ctx.set_field("tenant", "acme");
    });
    tracing::info!("after the patch");
    let seen = reqscope::spawn(async {
        let value = RequestContext::with(|ctx| ctx.hidden_field("session_token")).flatten();
        let seen = value.is_some_and(|v| v == reqscope::FieldValue::from("hidden-value-7f3a"));
        tracing::info!(seen, "spawned task read the hidden field");
        seen
    })
    .await
    .unwrap_or(false);
    if seen { "seen" } else { "lost" }
}

#[tokio::test]
async fn hidden_fields_travel_with_the_context_and_reach_no_line() {
    let addr = serve(Router::new().route("/hidden", get(hidden_handler)).layer(RequestContextLayer::new())).await;
    let reply = fetch(addr, "/hidden", &[("x-request-id", b"hidden-1")]).await;
    assert_eq!(reply.body, "seen", "readable in code, and in a spawned task");
    access_lines_of("hidden-1").await;
    let lines = lines_of("hidden-1");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["tenant"], "acme", "visible fields are stamped: {line}");
        assert!(line.get("session_token").is_none(), "{line}");
    }
    assert!(!crate::support::logs().contents().contains("hidden-value-7f3a"), "the hidden value is on no line");
}

/// A job for the shared worker: its number and where to say it is done.
type Job = reqscope::Envelope<(u32, tokio::sync::oneshot::Sender<()>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_sent_through_a_channel_logs_with_the_request_that_sent_it() {
    let (jobs, mut inbox) = tokio::sync::mpsc::channel::<Job>(64);
    // One worker task for every request, spawned bare, outside any of them.
    tokio::spawn(async move {
        while let Some(job) = inbox.recv().await {
            job.open_async(|(n, done)| async move {
                tokio::task::yield_now().await;
                tracing::info!(order = n, "worker ran the job");
                let _ = done.send(());
            })
            .await;
        }
    });
    let handler = move |axum::extract::Path(n): axum::extract::Path<u32>| {
        let jobs = jobs.clone();
        async move {
            let (done, finished) = tokio::sync::oneshot::channel();
            jobs.send(reqscope::Envelope::new((n, done))).await.expect("the worker runs");
            finished.await.expect("the worker answers");
            "done"
        }
    };
    let addr = serve(Router::new().route("/jobs/{n}", get(handler)).layer(RequestContextLayer::new())).await;
    let requests: Vec<_> = (0..50u32)
        .map(|n| {
            tokio::spawn(async move {
                let id = format!("envelope-{n}");
                let reply = fetch(addr, &format!("/jobs/{n}"), &[("x-request-id", id.as_bytes())]).await;
                assert_eq!(reply.body, "done");
                (n, id)
            })
        })
        .collect();
    for request in requests {
        let (n, id) = request.await.unwrap();
        let access = access_lines_of(&id).await;
        let worker: Vec<_> = lines_of(&id).into_iter().filter(|l| l["message"] == "worker ran the job").collect();
        assert_eq!(worker.len(), 1, "{id}: {worker:?}");
        assert_eq!(worker[0]["order"], n, "{id}: the job this request sent, no other");
        assert_eq!(worker[0]["trace_id"], access[0]["trace_id"], "{id}");
    }
}
