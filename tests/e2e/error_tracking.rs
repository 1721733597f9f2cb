//! Sentry events carry the request and the user: panics, `error!` events, captured errors,
//! from spawned tasks and streaming bodies, and never another request's user.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use reqscope::{ApiError, CatchPanicLayer, MatchedRouteLayer, RequestContextLayer};
use sentry::protocol::{Event, Level};
use sentry::test::TestTransport;

use crate::support::{TEST_SECRET, claims, example_app, fetch, hs256, lines_of, serve};

/// Every event the process's Sentry client has sent so far. The client is bound to the main
/// hub once, before the runtime of the first test that asks, so that the hubs of that
/// runtime's worker and blocking threads — made from the main hub — all send to it.
fn sentry_events() -> Vec<Event<'static>> {
    static SENT: OnceLock<(Arc<TestTransport>, Mutex<Vec<Event<'static>>>)> = OnceLock::new();
    let (transport, sent) = SENT.get_or_init(|| {
        let transport = TestTransport::new();
        let options = sentry::ClientOptions::new()
            .dsn("https://public@sentry.invalid/1")
            .transport(transport.clone())
            .add_integration(sentry::integrations::panic::PanicIntegration::new())
            .add_integration(reqscope::sentry::RequestContextIntegration::new());
        sentry::Hub::main().bind_client(Some(Arc::new(options.into())));
        (transport, Mutex::new(Vec::new()))
    });
    // Tests run in parallel: collect into one list instead of letting one test clear another's.
    let mut sent = sent.lock().unwrap();
    sent.extend(transport.fetch_and_clear_events());
    sent.clone()
}

/// The events of one request, waiting briefly for late ones (a streaming body's).
pub(crate) async fn events_of(request_id: &str, at_least: usize) -> Vec<Event<'static>> {
    let pick = || -> Vec<Event<'static>> {
        sentry_events()
            .into_iter()
            .filter(|e| e.tags.get("request_id").map(String::as_str) == Some(request_id))
            .collect()
    };
    for _ in 0..200 {
        if pick().len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pick()
}

fn user_of<'a>(event: &'a Event<'static>) -> Option<&'a str> {
    event.user.as_ref().and_then(|u| u.id.as_deref())
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", hs256(TEST_SECRET, &claims(user)))
}

/// Runs `test` on a fresh multi-thread runtime made after the Sentry client is bound.
pub(crate) fn with_sentry<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    sentry_events();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test());
}

async fn fails() -> Result<&'static str, ApiError> {
    tracing::info!("charging the card");
    let cause = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "payment provider hung up");
    tracing::error!(error = &cause as &dyn std::error::Error, "payment failed");
    Err(ApiError::internal(cause))
}

async fn conflicts() -> Result<&'static str, ApiError> {
    Err(ApiError::conflict("already there"))
}

async fn in_a_task() -> &'static str {
    reqscope::spawn(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::error!("the background job failed");
    })
    .await
    .expect("the task ran");
    "done"
}

async fn streams() -> Body {
    let chunks = futures_util::stream::unfold(0, |n| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        match n {
            0 => Some((Ok::<_, std::io::Error>("first ".to_owned()), 1)),
            1 => {
                // Polled by the server after the handler returned, still inside the request.
                tracing::error!("the stream lost its source");
                Some((Ok("second".to_owned()), 2))
            }
            _ => None,
        }
    });
    Body::from_stream(chunks)
}

async fn by_user() -> String {
    let id = reqscope::RequestContext::with(|ctx| ctx.id().to_string()).unwrap_or_default();
    let user = reqscope::RequestContext::with(|ctx| ctx.user_id()).flatten().unwrap_or_default();
    tracing::info!(marker = %id, "step one");
    for _ in 0..fastrand::usize(1..4) {
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2_000))).await;
        tokio::task::yield_now().await;
    }
    tracing::error!("failure for request {id} of user {user}");
    id
}

fn app() -> Router {
    Router::new()
        .route("/fails", get(fails))
        .route("/conflicts", get(conflicts))
        .route("/task", get(in_a_task))
        .route("/stream", get(streams))
        .route("/by-user", get(by_user))
        .route_layer(crate::app::auth_layer(TEST_SECRET))
        .route_layer(MatchedRouteLayer)
        .layer(CatchPanicLayer::new())
        .layer(RequestContextLayer::new())
}

#[test]
fn a_panic_is_sent_once_with_the_user_the_request_id_and_the_route() {
    with_sentry(|| async {
        let addr = serve(example_app().await).await;
        let reply =
            fetch(addr, "/boom", &[("x-request-id", b"sentry-boom-1"), ("authorization", bearer("3").as_bytes())])
                .await;
        assert_eq!(reply.status, 500);

        let events = events_of("sentry-boom-1", 1).await;
        assert_eq!(events.len(), 1, "the panic hook's event only, not also the ERROR line: {events:#?}");
        let event = &events[0];
        assert_eq!(event.level, Level::Fatal);
        assert_eq!(user_of(event), Some("3"));
        assert_eq!(event.tags.get("org_id").map(String::as_str), Some("acme"));
        assert_eq!(event.transaction.as_deref(), Some("GET /boom"));
        let exception = &event.exception.values[0];
        assert_eq!(exception.value.as_deref(), Some("the /boom route panics on purpose"));
        assert_eq!(exception.mechanism.as_ref().map(|m| m.ty.as_str()), Some("panic"));
        // The stamped log line for the same panic is still written (and the ERROR access
        // line of the 500, which is not sent as an event of its own).
        let lines = lines_of("sentry-boom-1");
        assert_eq!(lines.iter().filter(|l| l["level"] == "ERROR" && l["target"] == "reqscope::panic").count(), 1);
        assert_eq!(lines.iter().filter(|l| l["level"] == "ERROR").count(), 2, "{lines:?}");
        assert_eq!(fetch(addr, "/health", &[]).await.status, 200);
    });
}

#[test]
fn error_events_and_5xx_api_errors_are_sent_with_the_user_and_the_requests_own_breadcrumbs() {
    with_sentry(|| async {
        let addr = serve(app()).await;
        let reply =
            fetch(addr, "/fails", &[("x-request-id", b"sentry-fail-1"), ("authorization", bearer("7").as_bytes())])
                .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.json()["request_id"], "sentry-fail-1");

        let events = events_of("sentry-fail-1", 2).await;
        assert_eq!(events.len(), 2, "the error! event and the 500 ApiError: {events:#?}");
        for event in &events {
            assert_eq!(event.level, Level::Error);
            assert_eq!(user_of(event), Some("7"));
            assert_eq!(event.tags.get("org_id").map(String::as_str), Some("acme"));
            assert_eq!(event.transaction.as_deref(), Some("GET /fails"));
            let sentry::protocol::Context::Other(request) = &event.contexts["request"] else {
                panic!("the request context is a map: {:?}", event.contexts)
            };
            assert_eq!(request["path"], "/fails");
            assert_eq!(request["roles"], serde_json::json!(["reader"]));
            // The breadcrumbs are this request's: its INFO line, nothing of other requests.
            let crumbs: Vec<_> = event.breadcrumbs.values.iter().filter_map(|b| b.message.as_deref()).collect();
            assert!(crumbs.contains(&"charging the card"), "{crumbs:?}");
            assert!(!crumbs.iter().any(|c| c.contains("step one")), "{crumbs:?}");
        }
        // Both recorded the cause as an exception (its text goes to Sentry, not to the client).
        for event in &events {
            assert!(
                event.exception.values.iter().any(|x| x.value.as_deref() == Some("payment provider hung up")),
                "{event:#?}"
            );
        }

        // A 4xx is the client's doing: no Sentry event.
        let reply =
            fetch(addr, "/conflicts", &[("x-request-id", b"sentry-409-1"), ("authorization", bearer("7").as_bytes())])
                .await;
        assert_eq!(reply.status, 409);
        // Its access line is written after anything the request reported: then look.
        crate::support::access_lines_of("sentry-409-1").await;
        assert!(events_of("sentry-409-1", 0).await.is_empty());
    });
}

#[test]
fn events_from_spawned_tasks_and_streaming_bodies_carry_their_requests_user() {
    with_sentry(|| async {
        let addr = serve(app()).await;
        let reply =
            fetch(addr, "/task", &[("x-request-id", b"sentry-task-1"), ("authorization", bearer("11").as_bytes())])
                .await;
        assert_eq!(reply.body, "done");
        let events = events_of("sentry-task-1", 1).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(user_of(&events[0]), Some("11"));
        assert_eq!(events[0].message.as_deref(), Some("the background job failed"));

        let reply =
            fetch(addr, "/stream", &[("x-request-id", b"sentry-stream-1"), ("authorization", bearer("12").as_bytes())])
                .await;
        assert_eq!(reply.body, "first second");
        let events = events_of("sentry-stream-1", 1).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(user_of(&events[0]), Some("12"));
        assert_eq!(events[0].transaction.as_deref(), Some("GET /stream"));
    });
}

#[test]
fn concurrent_requests_of_different_users_never_swap_users() {
    with_sentry(|| async {
        let addr = serve(app()).await;
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..200 {
            let user = if n % 2 == 0 { "ann" } else { "bob" };
            let id = format!("sentry-swap-{n}");
            requests.spawn(async move {
                let reply = fetch(
                    addr,
                    "/by-user",
                    &[("x-request-id", id.as_bytes()), ("authorization", bearer(user).as_bytes())],
                )
                .await;
                assert_eq!(reply.body, id);
                (id, user)
            });
        }
        let mut checked = 0;
        while let Some(done) = requests.join_next().await {
            let (id, user) = done.expect("request task");
            let events = events_of(&id, 1).await;
            assert_eq!(events.len(), 1, "{id}: {events:#?}");
            let event = &events[0];
            assert_eq!(event.message.as_deref(), Some(format!("failure for request {id} of user {user}").as_str()));
            assert_eq!(user_of(event), Some(user), "{id}");
            let markers: Vec<_> =
                event.breadcrumbs.values.iter().filter_map(|b| b.data.get("marker").and_then(|m| m.as_str())).collect();
            assert_eq!(markers, [id.as_str()], "{id}: only its own breadcrumb");
            checked += 1;
        }
        assert_eq!(checked, 200);
    });
}
