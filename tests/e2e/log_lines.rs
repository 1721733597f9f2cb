//! What a log line holds: unique keys, span fields, `log` records, and no request stamped
//! after it ended.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use reqscope::{RequestContext, RequestContextLayer};
use serde_json::Value;

use crate::support::{access_lines_of, fetch, lines_where, logs, serve};

/// The one line with `marker`, waiting for it to be written.
async fn line_with(marker: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = lines_where(|l| l["marker"] == marker);
        if let [line] = &found[..] {
            return line.clone();
        }
        assert!(found.len() < 2 && Instant::now() < deadline, "want one line with marker {marker}: {found:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The raw text of the one line that contains `marker`.
fn raw_line_with(marker: &str) -> String {
    let found: Vec<String> = logs().lines().into_iter().filter(|l| l.contains(marker)).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

async fn duplicate_names() -> &'static str {
    RequestContext::with(|ctx| ctx.set_field("tenant", "acme"));
    tracing::info!(tenant = "from-the-event", request_id = "forged", marker = "log-lines-dup-1", "same names");
    "ok"
}

#[tokio::test]
async fn a_context_field_and_an_event_field_of_one_name_give_two_keys() {
    let app = Router::new().route("/dup", get(duplicate_names)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    fetch(addr, "/dup", &[("x-request-id", b"log-lines-dup-1")]).await;
    // `lines_where` parses with a parser that refuses a key given twice.
    let line = line_with("log-lines-dup-1").await;
    assert_eq!(line["request_id"], "log-lines-dup-1");
    assert_eq!(line["tenant"], "acme", "the stamped context field keeps its name");
    assert_eq!(line["fields.tenant"], "from-the-event");
    assert_eq!(line["fields.request_id"], "forged");
    let raw = raw_line_with("\"marker\":\"log-lines-dup-1\"");
    assert_eq!(raw.matches("\"tenant\":").count(), 1, "{raw}");
    assert_eq!(raw.matches("\"request_id\":").count(), 1, "{raw}");
}

async fn sets_status() -> &'static str {
    reqscope::RequestContext::with(|ctx| ctx.set_field("status", "gold-customer"));
    "ok"
}

#[tokio::test]
async fn a_context_field_cannot_take_the_access_lines_own_keys() {
    let app = Router::new().route("/status", get(sets_status)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    fetch(addr, "/status", &[("x-request-id", b"log-lines-status-1")]).await;
    let access = crate::support::access_lines_of("log-lines-status-1").await;
    assert_eq!(access[0]["status"], 200, "the response's status: {}", access[0]);
    assert_eq!(access[0]["fields.status"], "gold-customer");
}

#[tracing::instrument(fields(order_id = 7))]
async fn load_order() {
    tracing::info!(marker = "log-lines-instrument-1", "loading the order");
}

async fn instrumented() -> &'static str {
    load_order().await;
    "ok"
}

#[tokio::test]
async fn instrument_fields_reach_the_line() {
    let app = Router::new().route("/order", get(instrumented)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    fetch(addr, "/order", &[("x-request-id", b"log-lines-instrument-1")]).await;
    let line = line_with("log-lines-instrument-1").await;
    assert_eq!(line["order_id"], 7, "{line}");
    assert_eq!(line["request_id"], "log-lines-instrument-1", "{line}");
}

async fn legacy_log() -> &'static str {
    log::info!(target: "legacy::client", "legacy call log-lines-log-1");
    "ok"
}

#[tokio::test]
async fn log_records_are_stamped_with_the_request() {
    let app = Router::new().route("/legacy", get(legacy_log)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    // What `init_from_env` does; the test capture installs its subscriber by hand. Another
    // test may have installed it already. At INFO, as `init_from_env` with the default
    // `RUST_LOG`: the TLS and HTTP clients of other tests log at DEBUG through `log`.
    if reqscope::logging::install_log_bridge().is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    fetch(addr, "/legacy", &[("x-request-id", b"log-lines-log-1")]).await;
    access_lines_of("log-lines-log-1").await;
    let found = lines_where(|l| l["message"] == "legacy call log-lines-log-1");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["request_id"], "log-lines-log-1");
    assert_eq!(found[0]["target"], "legacy::client", "the record's own target, not `log`");
    assert_eq!(found[0]["level"], "INFO");
}

/// A span created inside the request that lives on, and the request's context, handed to the
/// test as a connection pool would keep them.
static KEPT: Mutex<Option<(tracing::Span, Weak<RequestContext>)>> = Mutex::new(None);

async fn keeps_a_span() -> &'static str {
    let span = tracing::info_span!("pool_connection");
    let ctx = RequestContext::current().expect("inside the request");
    *KEPT.lock().unwrap() = Some((span, Arc::downgrade(&ctx)));
    "ok"
}

#[tokio::test]
async fn a_span_that_outlives_its_request_does_not_stamp_it_nor_keep_it_alive() {
    let app = Router::new().route("/keep", get(keeps_a_span)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    fetch(addr, "/keep", &[("x-request-id", b"log-lines-leak-1")]).await;
    assert_eq!(access_lines_of("log-lines-leak-1").await.len(), 1);
    let (span, weak) = KEPT.lock().unwrap().take().expect("the handler ran");
    // The server drops the body (and its hold on the context) just after the access line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "the request's context is kept alive by a span created in it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::spawn(async move {
        let _entered = span.enter();
        tracing::info!(marker = "log-lines-leak-probe-1", "pool work long after the request");
    })
    .await
    .unwrap();
    let line = line_with("log-lines-leak-probe-1").await;
    assert!(line.get("request_id").is_none(), "stamped with a finished request: {line}");
}
