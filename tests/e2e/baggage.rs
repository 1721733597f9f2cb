//! W3C baggage: read from the caller (when trusted and valid), written on lines for the
//! allow-listed keys, sent on with outgoing calls; and the example's `tenant` and hidden
//! `device_id`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::HeaderMap;
use reqscope::baggage::Baggage;
use reqscope::outgoing::{PropagateContextLayer, PropagateContextMiddleware};
use reqscope::{FieldValue, ForwardedIdPolicy, RequestContext, RequestContextLayer};
use serde_json::Value;

use crate::support::{TEST_SECRET, access_lines_of, claims, default_limit, fetch, hs256, lines_of, logs, serve};

/// A service that records the headers of every request it gets and answers like a last hop.
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

/// The `baggage` headers of the one request `seen` has got since the last call.
fn sent_baggage(seen: &Mutex<Vec<HeaderMap>>) -> Vec<String> {
    let sent = seen.lock().unwrap().pop().expect("the downstream was called");
    assert!(seen.lock().unwrap().is_empty());
    sent.get_all("baggage").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// How a service calls the next one: a hyper client behind the tower layer, or reqwest
/// behind the middleware.
#[derive(Clone)]
enum Caller {
    Tower(PropagateContextLayer),
    Reqwest(PropagateContextMiddleware),
}

impl Caller {
    /// `GET url`, with an explicit `baggage` header when given; the status.
    async fn get(&self, url: String, explicit: Option<&'static str>) -> u16 {
        match self {
            Caller::Tower(layer) => {
                use tower::ServiceExt;
                let client = tower::ServiceBuilder::new().layer(layer.clone()).service(
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .build_http::<http_body_util::Empty<Bytes>>(),
                );
                let mut request = http::Request::get(url).body(http_body_util::Empty::new()).unwrap();
                if let Some(value) = explicit {
                    request.headers_mut().insert("baggage", value.parse().unwrap());
                }
                client.oneshot(request).await.unwrap().status().as_u16()
            }
            Caller::Reqwest(middleware) => {
                let client =
                    reqwest_middleware::ClientBuilder::new(reqwest::Client::builder().no_proxy().build().unwrap())
                        .with(middleware.clone())
                        .build();
                let mut request = client.get(url);
                if let Some(value) = explicit {
                    request = request.header("baggage", value);
                }
                request.send().await.unwrap().status().as_u16()
            }
        }
    }
}

/// A service whose `GET /call` adds `note` to the request's baggage (when given), then calls
/// `downstream` with `caller`.
async fn calling_service(
    downstream: SocketAddr,
    caller: Caller,
    note: Option<&'static str>,
    explicit: Option<&'static str>,
) -> SocketAddr {
    let app = Router::new()
        .route(
            "/call",
            get(move || {
                let caller = caller.clone();
                async move {
                    if let Some(note) = note {
                        RequestContext::with(|ctx| ctx.set_baggage("note", note)).unwrap().unwrap();
                    }
                    caller.get(format!("http://{downstream}/chain"), explicit).await.to_string()
                }
            }),
        )
        .layer(RequestContextLayer::new());
    serve(app).await
}

/// The example app whose `/chain` calls the app itself.
async fn example_calling_itself() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next_hop = crate::chain::Chain::new(&format!("http://{addr}")).unwrap();
    let pool = crate::db::connect("sqlite::memory:", Duration::from_millis(100)).await.unwrap();
    let app = crate::app::app(crate::app::auth_layer(TEST_SECRET), default_limit(), pool, next_hop);
    logs();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn incoming_baggage_is_on_every_line_of_the_request_for_the_listed_keys_only() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(
        addr,
        "/fanout",
        &[
            ("x-request-id", b"bag-in-1"),
            ("baggage", b"session = s%20one ;p, secret=hush-b41"),
            ("baggage", b"tier=gold"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    access_lines_of("bag-in-1").await;
    let lines = lines_of("bag-in-1");
    assert_eq!(lines.len(), 5, "four task lines and the access line: {lines:?}");
    for line in &lines {
        assert_eq!(line["baggage.session"], "s one", "decoded, on every line: {line}");
        assert!(line.get("baggage.secret").is_none() && line.get("baggage.tier").is_none(), "{line}");
        assert!(!line.to_string().contains("hush-b41"), "a key outside the allow-list reached a line: {line}");
    }
    assert!(lines.iter().all(|l| l["target"] != "reqscope::baggage"), "nothing was ignored");

    // Without the header: no baggage key, no line about it.
    fetch(addr, "/health", &[("x-request-id", b"bag-in-none")]).await;
    let access = access_lines_of("bag-in-none").await.remove(0);
    assert!(access.get("baggage.session").is_none(), "{access}");
}

#[tokio::test]
async fn malformed_or_oversize_baggage_is_ignored_with_one_debug_line_naming_the_reason() {
    let too_long = format!("session=bagleak5,pad={}", "x".repeat(8200));
    let too_many =
        std::iter::once("session=bagleak6".to_owned()).chain((1..=180).map(|i| format!("k{i}=v"))).collect::<Vec<_>>();
    let too_many = too_many.join(",");
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        ("empty-member", vec!["session=bagleak1,,x=1".into()], "bagleak1", "a baggage list member is empty"),
        ("no-value", vec!["session=ok,bagleak2".into()], "bagleak2", "a baggage list member has no '='"),
        (
            "bad-value",
            vec!["session=bagleak3\"x".into()],
            "bagleak3",
            "a baggage value has a character that is not allowed",
        ),
        (
            "bad-percent",
            vec!["session=bagleak4%zz".into()],
            "bagleak4",
            "a baggage value is not valid percent-encoded UTF-8",
        ),
        ("too-long", vec![too_long.clone()], "bagleak5", "baggage is longer than 8192 bytes"),
        ("too-many", vec![too_many.clone()], "bagleak6", "baggage has more than 180 list members"),
        // A bad second header spoils the one list both make.
        ("second-header", vec!["session=bagleak7".into(), "(x)=1".into()], "bagleak7", "a baggage key is not a token"),
    ];
    assert!(too_long.len() > 8192 && too_many.split(',').count() == 181);
    let addr = serve(crate::support::example_app().await).await;
    for (name, values, marker, reason) in &cases {
        let id = format!("bag-bad-{name}");
        let mut headers: Vec<(&str, &[u8])> = vec![("x-request-id", id.as_bytes())];
        headers.extend(values.iter().map(|v| ("baggage", v.as_bytes())));
        let reply = fetch(addr, "/health", &headers).await;
        assert_eq!(reply.status, 200, "{name}: a bad baggage is never an error: {}", reply.body);
        assert_eq!(reply.json(), serde_json::json!({"status": "ok"}), "{name}");

        access_lines_of(&id).await;
        let lines = lines_of(&id);
        let ignored: Vec<&Value> = lines.iter().filter(|l| l["target"] == "reqscope::baggage").collect();
        assert_eq!(ignored.len(), 1, "{name}: exactly one line about it: {lines:?}");
        assert_eq!(ignored[0]["level"], "DEBUG", "{name}");
        assert_eq!(ignored[0]["reason"], *reason, "{name}");
        assert!(ignored[0]["message"].as_str().unwrap().starts_with("ignored an invalid baggage"), "{name}");
        for line in &lines {
            assert!(line.get("baggage.session").is_none(), "{name}: {line}");
            assert!(!line.to_string().contains(marker), "{name}: the raw value was logged: {line}");
        }
    }
}

#[tokio::test]
async fn an_untrusted_baggage_is_ignored_without_a_line() {
    let app = Router::new()
        .route(
            "/baggage",
            get(|| async {
                tracing::info!("handler");
                RequestContext::with(|ctx| ctx.baggage().len()).unwrap().to_string()
            }),
        )
        .layer(RequestContextLayer::new().baggage_policy(ForwardedIdPolicy::NeverTrust));
    let addr = serve(app).await;
    for (id, value) in [("bag-untrusted-valid", &b"session=untrusted-s"[..]), ("bag-untrusted-bad", b"session=a,,")] {
        let reply = fetch(addr, "/baggage", &[("x-request-id", id.as_bytes()), ("baggage", value)]).await;
        assert_eq!(reply.body, "0", "{id}: the context has no baggage");
        access_lines_of(id).await;
        let lines = lines_of(id);
        assert_eq!(lines.len(), 2, "the handler's line and the access line: {lines:?}");
        assert!(lines.iter().all(|l| l.get("baggage.session").is_none() && l["target"] != "reqscope::baggage"));
    }
}

#[tokio::test]
async fn outgoing_calls_send_the_baggage_normalised_filtered_and_encoded() {
    let incoming: [(&str, &[u8]); 2] =
        [("baggage", b"session = s-1 ;p=1, user.name=Ren%C3%A9"), ("baggage", b"tier=gold")];
    let (downstream, seen) = recording_downstream().await;
    let note = "a\r\nb,c;d é";
    let callers = [
        (
            "tower",
            Caller::Tower(PropagateContextLayer::new()),
            Caller::Tower(PropagateContextLayer::new().baggage_keys(["session", "tier", "absent"])),
        ),
        (
            "reqwest",
            Caller::Reqwest(PropagateContextMiddleware::new()),
            Caller::Reqwest(PropagateContextMiddleware::new().baggage_keys(["session", "tier", "absent"])),
        ),
    ];
    for (name, all, some) in callers {
        // Everything the caller sent, as one header in the writer's form.
        let addr = calling_service(downstream, all.clone(), None, None).await;
        assert_eq!(fetch(addr, "/call", &incoming).await.body, "200", "{name}");
        assert_eq!(sent_baggage(&seen), ["session=s-1;p=1,user.name=Ren%C3%A9,tier=gold"], "{name}");

        // Only the allow-listed keys.
        let addr = calling_service(downstream, some.clone(), None, None).await;
        assert_eq!(fetch(addr, "/call", &incoming).await.body, "200", "{name}");
        assert_eq!(sent_baggage(&seen), ["session=s-1;p=1,tier=gold"], "{name}");
        assert_eq!(fetch(addr, "/call", &[("baggage", b"user.name=x")]).await.body, "200", "{name}");
        assert!(sent_baggage(&seen).is_empty(), "{name}: nothing listed, no header");

        // A value the application set, with CR, LF, `,` and `;`: encoded, and read back as set.
        let addr = calling_service(downstream, all.clone(), Some(note), None).await;
        assert_eq!(fetch(addr, "/call", &incoming).await.body, "200", "{name}");
        let sent = sent_baggage(&seen);
        assert_eq!(sent, ["session=s-1;p=1,user.name=Ren%C3%A9,tier=gold,note=a%0D%0Ab%2Cc%3Bd%20%C3%A9"], "{name}");
        assert_eq!(Baggage::parse(sent[0].as_bytes()).unwrap().get("note"), Some(note), "{name}");

        // A header set on the outgoing request is the caller's choice.
        let addr = calling_service(downstream, all.clone(), Some(note), Some("explicit=1")).await;
        assert_eq!(fetch(addr, "/call", &incoming).await.body, "200", "{name}");
        assert_eq!(sent_baggage(&seen), ["explicit=1"], "{name}");

        // No baggage, no header.
        let addr = calling_service(downstream, all, None, None).await;
        assert_eq!(fetch(addr, "/call", &[]).await.body, "200", "{name}");
        assert!(sent_baggage(&seen).is_empty(), "{name}");
    }
}

#[tokio::test]
async fn every_hop_of_the_example_chain_carries_the_session() {
    let addr = example_calling_itself().await;
    let reply =
        fetch(addr, "/chain?hops=2", &[("x-request-id", b"bag-chain-1"), ("baggage", b"session=chain-s,tier=t")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    crate::support::wait_until("three hops' access lines", || {
        lines_of("bag-chain-1").iter().filter(|l| l["target"] == "reqscope::access").count() == 3
    })
    .await;
    let lines = lines_of("bag-chain-1");
    let spans: std::collections::HashSet<&str> = lines.iter().filter_map(|l| l["span_id"].as_str()).collect();
    assert!(spans.len() >= 5, "three hops' spans and two client spans: {lines:?}");
    for line in &lines {
        assert_eq!(line["baggage.session"], "chain-s", "{line}");
        assert!(line.get("baggage.tier").is_none(), "{line}");
    }
    assert_eq!(lines.iter().filter(|l| l["target"] == "reqscope::outgoing").count(), 2, "{lines:?}");
}

#[tokio::test]
async fn authenticated_requests_carry_their_tenant_on_every_later_line_and_onward() {
    let addr = serve(crate::support::example_app().await).await;
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("1")));
    let reply =
        fetch(addr, "/users/me", &[("x-request-id", b"bag-tenant-1"), ("authorization", bearer.as_bytes())]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    access_lines_of("bag-tenant-1").await;
    let lines = lines_of("bag-tenant-1");
    assert_eq!(lines.len(), 4, "the handler's two lines, the query line and the access line: {lines:?}");
    assert!(lines.iter().all(|l| l["tenant"] == "acme" && l["org_id"] == "acme"), "{lines:?}");

    // A public route has no tenant.
    fetch(addr, "/users/2", &[("x-request-id", b"bag-tenant-public")]).await;
    let access = access_lines_of("bag-tenant-public").await.remove(0);
    assert!(access.get("tenant").is_none(), "{access}");

    // The same step on a route that calls another service: the tenant travels as baggage.
    let (downstream, seen) = recording_downstream().await;
    let caller = Caller::Tower(PropagateContextLayer::new());
    let app = Router::new()
        .route(
            "/call",
            get(move || {
                let caller = caller.clone();
                async move { caller.get(format!("http://{downstream}/chain"), None).await.to_string() }
            })
            .route_layer(crate::request_fields::tenant_layer())
            .route_layer(crate::app::auth_layer(TEST_SECRET)),
        )
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let reply =
        fetch(addr, "/call", &[("x-request-id", b"bag-tenant-call"), ("authorization", bearer.as_bytes())]).await;
    assert_eq!(reply.body, "200");
    assert_eq!(sent_baggage(&seen), ["tenant=acme"]);
    let access = access_lines_of("bag-tenant-call").await.remove(0);
    assert_eq!(access["tenant"], "acme", "{access}");
}

#[tokio::test]
async fn the_device_id_is_kept_hidden_and_written_to_no_line() {
    // What a handler sees: the header's value, when it is at most 128 bytes of UTF-8.
    let app = Router::new()
        .route(
            "/device",
            get(|| async {
                match RequestContext::with(|ctx| ctx.hidden_field("device_id")).flatten() {
                    Some(FieldValue::Str(device)) => device.to_string(),
                    other => format!("{other:?}"),
                }
            }),
        )
        .layer(crate::request_fields::device_id_layer())
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let longest = "d".repeat(128);
    let too_long = "d".repeat(129);
    for (value, seen) in [
        (&b"phone-7"[..], "phone-7"),
        ("téléphone".as_bytes(), "téléphone"),
        (longest.as_bytes(), longest.as_str()),
        (too_long.as_bytes(), "None"),
        (b"\xff\xfe", "None"),
    ] {
        assert_eq!(fetch(addr, "/device", &[("x-device-id", value)]).await.body, seen);
    }
    assert_eq!(fetch(addr, "/device", &[]).await.body, "None");

    // The example's routes: the value reaches no line, in any request.
    let addr = serve(crate::support::example_app().await).await;
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("2")));
    let device = b"dev-b7f3-e2e-hidden";
    for (id, path) in [("bag-device-me", "/users/me"), ("bag-device-404", "/nowhere"), ("bag-device-fanout", "/fanout")]
    {
        let headers: [(&str, &[u8]); 3] =
            [("x-request-id", id.as_bytes()), ("authorization", bearer.as_bytes()), ("x-device-id", device)];
        fetch(addr, path, &headers).await;
        let access = access_lines_of(id).await.remove(0);
        assert!(access.get("device_id").is_none(), "{access}");
    }
    assert!(!logs().contents().contains("dev-b7f3-e2e-hidden"), "the hidden device id reached a line");
}

#[tokio::test]
async fn the_example_binary_writes_the_session_and_the_tenant_and_hides_the_device() {
    use crate::example_binary::{start_example, stop, until_stdout_ends, wait_for, watch_lines};

    let (child, stdout, addr) = start_example(&[]);
    let bearer = format!("Bearer {}", hs256(TEST_SECRET, &claims("3")));
    let reply = fetch(
        addr,
        "/users/me",
        &[
            ("x-request-id", b"bag-bin-1"),
            ("authorization", bearer.as_bytes()),
            ("baggage", b"session=bin-s,other=bin-o"),
            ("x-device-id", b"bin-device-4e1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (lines, reader) = watch_lines(stdout);
    let logged =
        || lines.lock().unwrap().iter().any(|l| l["request_id"] == "bag-bin-1" && l["target"] == "reqscope::access");
    wait_for("the access line", logged).await;
    stop(child).await;
    until_stdout_ends(reader).await;
    let lines = lines.lock().unwrap().clone();
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == "bag-bin-1").collect();
    assert_eq!(mine.len(), 3, "{mine:?}");
    for line in &mine {
        assert_eq!(line["baggage.session"], "bin-s", "LOG_BAGGAGE_KEYS defaults to session: {line}");
        assert_eq!(line["tenant"], "acme", "{line}");
        assert!(line.get("baggage.other").is_none(), "{line}");
    }
    assert!(lines.iter().all(|l| !l.to_string().contains("bin-device-4e1")), "the device id reached stdout");
}

#[test]
fn a_bad_log_baggage_keys_stops_the_start_with_a_clear_error() {
    let stderr = crate::example_binary::failed_start(&[("LOG_BAGGAGE_KEYS", "session, bad key")]);
    assert!(stderr.contains("LOG_BAGGAGE_KEYS must be a comma-separated list of baggage keys"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}
