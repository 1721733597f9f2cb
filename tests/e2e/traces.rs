//! W3C trace context: incoming `traceparent` continued or replaced, `trace_id` / `span_id` on
//! every line, and outgoing calls that carry the request id and a child `traceparent`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::HeaderMap;
use serde_json::Value;

use crate::support::{TEST_SECRET, access_lines_of, default_limit, fetch, lines_of, serve};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn is_hex(value: &Value, len: usize) -> bool {
    value.as_str().is_some_and(|s| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The one `reqscope::outgoing` line among `lines`.
fn outgoing_line(lines: &[Value]) -> Value {
    let calls: Vec<&Value> = lines.iter().filter(|l| l["target"] == "reqscope::outgoing").collect();
    assert_eq!(calls.len(), 1, "one line for the one outgoing call: {lines:?}");
    calls[0].clone()
}

/// A downstream service that records the headers of every request and answers like a last hop.
async fn recording_downstream() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/chain",
        get(move |headers: HeaderMap| {
            record.lock().unwrap().push(headers);
            async { axum::Json(serde_json::json!({ "hops": 0 })) }
        }),
    );
    (serve(app).await, seen)
}

/// The example app whose `/chain` calls `next` (or, with `None`, the app itself).
async fn example_with_next_hop(next: Option<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next_hop = crate::chain::Chain::new(&format!("http://{}", next.unwrap_or(addr))).unwrap();
    let pool = crate::db::connect("sqlite::memory:", Duration::from_millis(100)).await.unwrap();
    let app = crate::app::app(crate::app::auth_layer(TEST_SECRET), default_limit(), pool, next_hop);
    crate::support::logs();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_on_every_line_with_a_span_of_our_own() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(addr, "/fanout", &[("x-request-id", b"trace-valid-1"), ("traceparent", VALID.as_bytes())]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("traceparent").is_none(), "the trace is not echoed to the client");
    access_lines_of("trace-valid-1").await;
    let lines = lines_of("trace-valid-1");
    assert_eq!(lines.len(), 5, "four task lines and the access line: {lines:?}");
    let span = lines[0]["span_id"].clone();
    assert!(is_hex(&span, 16) && span != PARENT, "our own span, not the caller's: {span}");
    for line in &lines {
        assert_eq!(line["trace_id"], TRACE, "{line}");
        assert_eq!(line["span_id"], span, "one span per request, spawned tasks included: {line}");
    }
}

#[tokio::test]
async fn without_a_traceparent_each_request_starts_its_own_trace() {
    let addr = serve(crate::support::example_app().await).await;
    fetch(addr, "/health", &[("x-request-id", b"trace-new-1")]).await;
    fetch(addr, "/health", &[("x-request-id", b"trace-new-2")]).await;
    let first = access_lines_of("trace-new-1").await.remove(0);
    let second = access_lines_of("trace-new-2").await.remove(0);
    assert!(is_hex(&first["trace_id"], 32) && is_hex(&first["span_id"], 16), "{first}");
    assert_ne!(first["trace_id"], second["trace_id"]);
}

#[tokio::test]
async fn malformed_traceparents_start_a_new_trace_without_an_error_or_an_echo() {
    let (downstream, seen) = recording_downstream().await;
    let addr = example_with_next_hop(Some(downstream)).await;
    let long_state = format!("vendor={}", "x".repeat(600));
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("version-ff", vec![("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())]),
        ("uppercase", vec![("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".into())]),
        ("zero-trace", vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into())]),
        ("zero-parent", vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into())]),
        ("short", vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".into())]),
        ("extra-fields", vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-beef".into())]),
        ("future-no-dash", vec![("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.x".into())]),
        ("separators", vec![("traceparent", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01".into())]),
        ("not-hex", vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01".into())]),
        ("twice", vec![("traceparent", VALID.into()), ("traceparent", VALID.into())]),
        ("injection", vec![("traceparent", "00-\"},{\"forged\":1}-x".into())]),
    ];
    for (name, headers) in &cases {
        let id = format!("trace-bad-{name}");
        let mut raw: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        raw.extend(headers.iter().map(|(k, v)| (*k, v.as_bytes())));
        raw.push(("tracestate", b"rojo=00f067aa0ba902b7"));
        let reply = fetch(addr, "/chain?hops=1", &raw).await;
        assert_eq!(reply.status, 200, "{name}: a bad traceparent is never an error: {}", reply.body);
        assert!(reply.headers.get("traceparent").is_none(), "{name}");

        access_lines_of(&id).await;
        let lines = lines_of(&id);
        let trace = lines[0]["trace_id"].clone();
        assert!(is_hex(&trace, 32) && trace != TRACE, "{name}: a new trace: {trace}");
        assert!(lines.iter().all(|l| l["trace_id"] == trace), "{name}");
        for line in &lines {
            let text = line.to_string();
            assert!(!text.contains(&headers[0].1) && !text.contains("forged"), "{name}: bad value logged: {text}");
        }
        let ignored: Vec<&Value> = lines.iter().filter(|l| l["target"] == "reqscope::trace").collect();
        assert_eq!(ignored.len(), 1, "{name}: one DEBUG line naming the reason: {lines:?}");
        assert!(ignored[0]["reason"].as_str().is_some_and(|r| r.contains("traceparent")), "{name}");

        // The next hop joins the new trace, without the tracestate of the rejected parent.
        let sent = seen.lock().unwrap().pop().expect("the next hop was called");
        let sent_parent = sent["traceparent"].to_str().unwrap();
        let call = outgoing_line(&lines);
        assert_eq!(sent_parent, format!("00-{}-{}-01", trace.as_str().unwrap(), call["span_id"].as_str().unwrap()));
        assert_eq!(call["parent_span_id"], lines[0]["span_id"], "{name}");
        assert!(sent.get("tracestate").is_none(), "{name}");
        assert_eq!(sent["x-request-id"], id.as_str());
    }

    // A tracestate over 512 bytes does not spoil a valid traceparent (W3C: tracestate
    // failures never affect traceparent); it is dropped whole and never logged.
    let raw: Vec<(&str, &[u8])> = vec![
        ("x-request-id", b"trace-long-state"),
        ("traceparent", VALID.as_bytes()),
        ("tracestate", long_state.as_bytes()),
    ];
    assert_eq!(fetch(addr, "/chain?hops=1", &raw).await.status, 200);
    access_lines_of("trace-long-state").await;
    let lines = lines_of("trace-long-state");
    assert!(lines.iter().all(|l| l["trace_id"] == TRACE && !l.to_string().contains("xxxxxxxx")), "{lines:?}");
    let sent = seen.lock().unwrap().pop().unwrap();
    assert!(sent["traceparent"].to_str().unwrap().starts_with(&format!("00-{TRACE}-")));
    assert!(sent.get("tracestate").is_none());
}

#[tokio::test]
async fn the_next_hop_gets_the_request_id_a_child_traceparent_and_the_tracestate() {
    let (downstream, seen) = recording_downstream().await;
    let addr = example_with_next_hop(Some(downstream)).await;
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let reply = fetch(
        addr,
        "/chain?hops=1",
        &[("x-request-id", b"trace-out-1"), ("traceparent", VALID.as_bytes()), ("tracestate", state.as_bytes())],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["downstream"], serde_json::json!({ "hops": 0 }));
    let sent = seen.lock().unwrap().pop().unwrap();
    assert_eq!(sent["x-request-id"], "trace-out-1");
    access_lines_of("trace-out-1").await;
    let call = outgoing_line(&lines_of("trace-out-1"));
    assert_eq!(call["parent_span_id"], body["span_id"], "the call's span is a child of the request's");
    assert_eq!(sent["traceparent"].to_str().unwrap(), format!("00-{TRACE}-{}-01", call["span_id"].as_str().unwrap()));
    assert_eq!(sent["tracestate"], state);
    let calling = lines_of("trace-out-1").into_iter().find(|l| l["message"] == "calling the next hop").unwrap();
    assert_eq!(calling["trace_id"], TRACE);
}

#[tokio::test]
async fn a_chain_of_hops_shares_one_trace_and_one_request_id_with_a_span_per_hop() {
    let addr = example_with_next_hop(None).await;
    let reply =
        fetch(addr, "/chain?hops=3", &[("x-request-id", b"trace-chain-1"), ("traceparent", VALID.as_bytes())]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The response nests each hop's view: same trace and id, each hop's parent is the one above.
    let mut hop = reply.json();
    let mut spans = Vec::new();
    for expected in (0..=3).rev() {
        assert_eq!(hop["hops"], expected);
        assert_eq!(hop["request_id"], "trace-chain-1");
        assert_eq!(hop["trace_id"], TRACE);
        spans.push(hop["span_id"].as_str().unwrap().to_owned());
        hop = hop["downstream"].clone();
    }
    assert!(hop.is_null());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let access = loop {
        let access: Vec<Value> =
            lines_of("trace-chain-1").into_iter().filter(|l| l["target"] == "reqscope::access").collect();
        if access.len() == 4 || std::time::Instant::now() > deadline {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(access.len(), 4, "one access line per hop: {access:?}");
    let mut logged: Vec<String> = access.iter().map(|l| l["span_id"].as_str().unwrap().to_owned()).collect();
    logged.sort();
    spans.sort();
    assert_eq!(logged, spans, "each hop logs its own span");
    assert!(access.iter().all(|l| l["trace_id"] == TRACE));
}

#[tokio::test]
async fn bad_hops_and_a_dead_next_hop_are_json_errors() {
    let addr = serve(crate::support::example_app().await).await;
    for (path, status, error) in [
        ("/chain?hops=abc", 400, "bad_request"),
        ("/chain?hops=99", 400, "bad_request"),
        ("/chain?hops=1", 502, "bad_gateway"),
    ] {
        let reply = fetch(addr, path, &[]).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"], error, "{path}");
        assert_eq!(body["request_id"], reply.request_id(), "{path}");
    }
}

/// A tower client (hyper-util's) with `PropagateContextLayer`: inside a context it sends the
/// id and the trace; outside any context it sends neither.
#[tokio::test]
async fn the_tower_layer_propagates_from_a_hyper_client() {
    use http_body_util::Empty;
    use reqscope::{RequestContext, RequestId};
    use tower::{Service, ServiceExt};

    let (downstream, seen) = recording_downstream().await;
    let mut client = crate::support::propagating_client();
    let uri: http::Uri = format!("http://{downstream}/chain").parse().unwrap();
    let get = || http::Request::get(uri.clone()).body(Empty::new()).unwrap();

    let job = RequestContext::new(RequestId::parse("nightly-job-7").unwrap());
    let trace = RequestContext::scope(job, async {
        let response = client.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(response.status(), 200);
        RequestContext::with(|ctx| ctx.trace().cloned()).flatten().expect("the call started a trace")
    })
    .await;
    let sent = seen.lock().unwrap().pop().unwrap();
    assert_eq!(sent["x-request-id"], "nightly-job-7");
    let sent_parent = reqscope::trace::TraceParent::parse(sent["traceparent"].as_bytes()).unwrap();
    assert_eq!(&sent_parent.trace_id, trace.trace_id(), "the job's trace");
    assert_ne!(&sent_parent.parent_id, trace.span_id(), "a client span of the call's own");

    let response = client.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(response.status(), 200);
    let sent = seen.lock().unwrap().pop().unwrap();
    assert!(sent.get("x-request-id").is_none() && sent.get("traceparent").is_none(), "{sent:?}");
}

/// Inner services see this service's own `traceparent`, never the caller's or a rejected one.
#[tokio::test]
async fn handlers_see_this_services_traceparent_in_place_of_the_callers() {
    let app = Router::new()
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                axum::Json(serde_json::json!({ "traceparent": get("traceparent"), "tracestate": get("tracestate") }))
            }),
        )
        .layer(reqscope::RequestContextLayer::new());
    let addr = serve(app).await;
    // The third sends a `tracestate` alone, which means nothing without its `traceparent`.
    for (id, traceparent) in [("trace-inner-valid", VALID), ("trace-inner-bad", "00-ZZZ"), ("trace-inner-none", "")] {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes()), ("tracestate", b"rojo=1")];
        if !traceparent.is_empty() {
            headers.push(("traceparent", traceparent.as_bytes()));
        }
        let reply = fetch(addr, "/headers", &headers).await;
        let seen = reply.json();
        let access = access_lines_of(id).await.remove(0);
        let expected =
            format!("00-{}-{}-01", access["trace_id"].as_str().unwrap(), access["span_id"].as_str().unwrap());
        assert_eq!(seen["traceparent"], expected, "{id}");
        let state = if traceparent == VALID { "rojo=1" } else { "" };
        assert_eq!(seen["tracestate"], state, "{id}: a tracestate only with its own traceparent");
    }
}

/// A service whose `GET /call` makes one call to `downstream`'s `/chain` through a hyper
/// client with `PropagateContextLayer`, behind `layer`.
async fn service_calling(downstream: SocketAddr, layer: reqscope::RequestContextLayer) -> SocketAddr {
    use http_body_util::Empty;
    use tower::ServiceExt;

    let client = crate::support::propagating_client();
    let app = Router::new()
        .route(
            "/call",
            get(move || async move {
                let request = http::Request::get(format!("http://{downstream}/chain")).body(Empty::new()).unwrap();
                client.oneshot(request).await.unwrap().status().as_u16().to_string()
            }),
        )
        .layer(layer);
    serve(app).await
}

#[tokio::test]
async fn a_higher_version_traceparent_is_continued_and_sent_on_as_version_00() {
    let (downstream, seen) = recording_downstream().await;
    let addr = example_with_next_hop(Some(downstream)).await;
    for (id, version) in [("trace-v-cc", "cc"), ("trace-v-01-future", "01")] {
        let traceparent = format!("{version}-{TRACE}-{PARENT}-01-what-the-future-will-be-like");
        let raw: Vec<(&str, &[u8])> =
            vec![("x-request-id", id.as_bytes()), ("traceparent", traceparent.as_bytes()), ("tracestate", b"rojo=1")];
        assert_eq!(fetch(addr, "/chain?hops=1", &raw).await.status, 200);
        access_lines_of(id).await;
        let lines = lines_of(id);
        assert!(lines.iter().all(|l| l["trace_id"] == TRACE), "{id}: the caller's trace is continued: {lines:?}");
        assert!(lines.iter().all(|l| l["target"] != "reqscope::trace"), "{id}: nothing was ignored");
        let sent = seen.lock().unwrap().pop().unwrap();
        let sent_parent = sent["traceparent"].to_str().unwrap();
        let call = outgoing_line(&lines);
        assert_eq!(sent_parent, format!("00-{TRACE}-{}-01", call["span_id"].as_str().unwrap()), "{id}: version 00");
        assert_eq!(sent["tracestate"], "rojo=1", "{id}");
    }
}

#[tokio::test]
async fn tracestate_is_validated_member_by_member_and_truncated_by_whole_entries() {
    let (downstream, seen) = recording_downstream().await;
    let addr = example_with_next_hop(Some(downstream)).await;
    let members = |n: usize| (1..=n).map(|i| format!("k{i:02}={i:02}")).collect::<Vec<_>>().join(",");
    let long = format!("big={}", "x".repeat(250));
    let medium: Vec<String> = (0..10).map(|i| format!("m{i}={}", "v".repeat(40))).collect();
    let over_512 = format!("{},{long},{}", medium[0], medium[1..].join(","));
    let cases: Vec<(&str, Vec<String>, Option<String>)> = vec![
        ("ows", vec!["foo=1 \t , \t bar=2,\t baz=3 \t".into()], Some("foo=1,bar=2,baz=3".into())),
        ("headers", vec!["foo=1".into(), "".into(), "bar=2".into()], Some("foo=1,bar=2".into())),
        ("tenant", vec!["tenant@acme=1,foo@=2,x@y@z=3".into()], Some("tenant@acme=1,foo@=2,x@y@z=3".into())),
        ("bad-key", vec!["foo=1,@bad=2".into()], None),
        ("uppercase-key", vec!["FOO=1".into(), "bar=2".into()], None),
        ("empty-value", vec!["foo=,bar=3".into()], None),
        ("bad-value", vec!["foo=bar=baz".into()], None),
        ("long-key", vec!["foo=1".into(), format!("{}=1", "z".repeat(257))], None),
        ("32-members", vec![members(32)], Some(members(32))),
        ("33-members", vec![members(33)], None),
        ("duplicate", vec!["foo=1,foo=2".into(), "bar=3".into()], Some("foo=1,bar=3".into())),
        ("over-512", vec![over_512], Some(medium.join(","))),
    ];
    for (name, states, expected) in cases {
        let id = format!("trace-state-{name}");
        let mut raw: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes()), ("traceparent", VALID.as_bytes())];
        raw.extend(states.iter().map(|s| ("tracestate", s.as_bytes())));
        assert_eq!(fetch(addr, "/chain?hops=1", &raw).await.status, 200, "{name}");
        access_lines_of(&id).await;
        assert!(lines_of(&id).iter().all(|l| l["trace_id"] == TRACE), "{name}: the traceparent still holds");
        let sent = seen.lock().unwrap().pop().unwrap();
        let sent_state = sent.get("tracestate").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(sent_state, expected, "{name}");
    }
}

/// Each call a request makes is a client span of its own with one line, through the tower
/// layer and the reqwest middleware alike; a trace can be rebuilt from the lines alone.
#[tokio::test]
async fn each_outgoing_call_is_a_client_span_of_its_own_with_one_line() {
    use http_body_util::Empty;
    use tower::ServiceExt;

    let (downstream, seen) = recording_downstream().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hyper_client = crate::support::propagating_client();
    let reqwest_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::builder().no_proxy().build().unwrap())
        .with(reqscope::outgoing::PropagateContextMiddleware::new())
        .build();
    let app = Router::new()
        .route(
            "/two",
            get(move || async move {
                let uri = format!("http://{downstream}/chain?token=secret-in-query");
                let request = http::Request::get(uri).body(Empty::new()).unwrap();
                assert_eq!(hyper_client.oneshot(request).await.unwrap().status(), 200);
                let url = format!("http://user:secret-password@{downstream}/chain?token=secret-in-query#frag");
                assert_eq!(reqwest_client.get(url).send().await.unwrap().status(), 200);
                assert!(reqwest_client.get(format!("http://{dead}/gone")).send().await.is_err());
                "ok"
            }),
        )
        .layer(reqscope::RequestContextLayer::new());
    let addr = serve(app).await;
    let reply = fetch(addr, "/two", &[("x-request-id", b"trace-two-calls"), ("traceparent", VALID.as_bytes())]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let access = access_lines_of("trace-two-calls").await.remove(0);
    let request_span = access["span_id"].as_str().unwrap().to_owned();
    let sent: Vec<reqscope::trace::TraceParent> = {
        let mut seen = seen.lock().unwrap();
        let at = seen.len() - 2;
        let calls = seen.split_off(at);
        calls.iter().map(|h| reqscope::trace::TraceParent::parse(h["traceparent"].as_bytes()).unwrap()).collect()
    };
    assert!(sent.iter().all(|p| p.trace_id.as_str() == TRACE));
    assert_ne!(sent[0].parent_id, sent[1].parent_id, "two calls, two client spans");
    assert!(sent.iter().all(|p| p.parent_id.as_str() != request_span && p.parent_id.as_str() != PARENT));

    let lines = lines_of("trace-two-calls");
    let calls: Vec<&Value> = lines.iter().filter(|l| l["target"] == "reqscope::outgoing").collect();
    assert_eq!(calls.len(), 3, "one line per call: {lines:?}");
    for (call, parent) in calls.iter().zip(&sent) {
        assert_eq!(call["level"], "INFO");
        assert_eq!(call["span_id"], parent.parent_id.as_str(), "the line names the span the next hop got");
        assert_eq!(call["parent_span_id"], request_span.as_str());
        assert_eq!(call["trace_id"], TRACE);
        assert_eq!(call["method"], "GET");
        assert_eq!(call["path"], "/chain");
        assert_eq!(call["url"], format!("http://{downstream}/chain"));
        assert_eq!(call["status"], 200);
        assert!(call["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{call}");
    }
    let failed = calls[2];
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["error"], "connect");
    assert_eq!(failed["url"], format!("http://{dead}/gone"));
    assert_eq!(failed["parent_span_id"], request_span.as_str());
    assert!(failed.get("status").is_none());
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains("secret"), "no query or user info on a line: {text}");
    }
    // Every key once on the raw lines too (serde_json would hide a duplicate).
    let raw = crate::support::logs().lines();
    for text in raw.iter().filter(|l| l.contains("\"trace-two-calls\"") && l.contains("reqscope::outgoing")) {
        for key in ["\"span_id\":", "\"method\":", "\"path\":", "\"parent_span_id\":"] {
            assert_eq!(text.matches(key).count(), 1, "{key} in {text}");
        }
    }
}

#[tokio::test]
async fn a_service_puts_its_own_tracestate_entry_first() {
    let (downstream, seen) = recording_downstream().await;
    let entry = reqscope::trace::TraceStateEntry::new("acme", "s1").unwrap();
    let addr = service_calling(downstream, reqscope::RequestContextLayer::new().tracestate_entry(entry)).await;
    for (id, incoming, expected) in [
        ("trace-entry-continued", Some("rojo=1,acme=old,congo=2"), "acme=s1,rojo=1,congo=2"),
        ("trace-entry-root", None, "acme=s1"),
    ] {
        let mut raw: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        if let Some(state) = incoming {
            raw.extend([("traceparent", VALID.as_bytes()), ("tracestate", state.as_bytes())]);
        }
        assert_eq!(fetch(addr, "/call", &raw).await.body, "200");
        let sent = seen.lock().unwrap().pop().unwrap();
        assert_eq!(sent["tracestate"], expected, "{id}");
    }
}

#[tokio::test]
async fn new_root_traces_can_be_sent_on_unsampled() {
    let (downstream, seen) = recording_downstream().await;
    let addr = service_calling(downstream, reqscope::RequestContextLayer::new().sample_new_traces(false)).await;
    for (id, incoming, flags) in
        [("trace-unsampled-root", None, "-00"), ("trace-unsampled-continued", Some(VALID), "-01")]
    {
        let mut raw: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        if let Some(traceparent) = incoming {
            raw.push(("traceparent", traceparent.as_bytes()));
        }
        assert_eq!(fetch(addr, "/call", &raw).await.body, "200");
        let sent = seen.lock().unwrap().pop().unwrap();
        assert!(sent["traceparent"].to_str().unwrap().ends_with(flags), "{id}: {:?}", sent["traceparent"]);
    }
}
