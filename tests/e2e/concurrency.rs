//! Many concurrent requests over real sockets: no line ever carries another request's id or
//! user.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use reqscope::{RequestContext, RequestContextLayer};
use serde::Deserialize;

use crate::support::{fetch, lines_where, serve};

const REQUESTS: u64 = 2_000;

#[derive(Deserialize)]
struct Params {
    n: u64,
}

async fn jitter() {
    match fastrand::u8(0..4) {
        0 => tokio::task::yield_now().await,
        1 => {}
        _ => tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await,
    }
}

async fn busy(Query(Params { n }): Query<Params>) -> Body {
    RequestContext::with(|ctx| ctx.set_user_id(format!("user-{n}")));
    jitter().await;
    tracing::info!(n, site = "handler", "working");
    reqscope::spawn(async move {
        jitter().await;
        tracing::info!(n, site = "task", "task working");
    })
    .await
    .unwrap();
    reqscope::spawn_blocking(move || {
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..500)));
        tracing::info!(n, site = "blocking", "blocking work");
    })
    .await
    .unwrap();
    let chunks = futures_util::stream::unfold(0u8, move |i| async move {
        if i == 2 {
            return None;
        }
        jitter().await;
        tracing::info!(n, site = "chunk", "chunk");
        Some((Ok::<_, Infallible>(format!("{i}")), i + 1))
    });
    Body::from_stream(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_never_cross_talk() {
    let app = Router::new().route("/busy", get(busy)).layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let clients: Vec<_> = (0..REQUESTS)
        .map(|n| {
            tokio::spawn(async move {
                // Half forwarded ids, half generated ones.
                let forwarded = format!("conc-{n}");
                let headers: Vec<(&str, &[u8])> =
                    if n % 2 == 0 { vec![("x-request-id", forwarded.as_bytes())] } else { vec![] };
                let reply = fetch(addr, &format!("/busy?n={n}"), &headers).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body, "01");
                if n % 2 == 0 {
                    assert_eq!(reply.request_id(), forwarded);
                }
                (n, reply.request_id().to_owned())
            })
        })
        .collect();
    let mut ids = HashMap::new();
    for client in clients {
        let (n, id) = client.await.unwrap();
        ids.insert(n, id);
    }
    let distinct: std::collections::HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), REQUESTS as usize, "ids must be distinct");

    let id_set: std::collections::HashSet<String> = ids.values().cloned().collect();
    // Each request's access line, looked up by its id (indexed), then exactly one of each.
    for id in &id_set {
        assert_eq!(crate::support::access_lines_of(id).await.len(), 1, "one access line for {id}");
    }

    let lines = lines_where(|l| l["site"].is_string() && l["n"].is_u64() && l["path"] == "/busy");
    assert_eq!(lines.len(), (REQUESTS * 5) as usize, "handler, task, blocking and two chunks per request");
    let mut traces: HashMap<u64, &serde_json::Value> = HashMap::new();
    for line in &lines {
        let n = line["n"].as_u64().unwrap();
        assert_eq!(line["request_id"], ids[&n].as_str(), "cross-talk: {line}");
        assert_eq!(line["user_id"], format!("user-{n}"), "cross-talk: {line}");
        let trace = traces.entry(n).or_insert(&line["trace_id"]);
        assert_eq!(*trace, &line["trace_id"], "one trace per request: {line}");
    }
    let distinct_traces: std::collections::HashSet<String> = traces.values().map(|t| t.to_string()).collect();
    assert_eq!(distinct_traces.len(), REQUESTS as usize, "every request has a trace of its own");
}
