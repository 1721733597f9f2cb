//! Forwarded request ids: kept when valid and trusted, replaced otherwise, never echoed or
//! logged when rejected.

use axum::Router;
use axum::routing::get;
use reqscope::{ClientIpHeader, ForwardedIdPolicy, IdGenerator, RequestContext, RequestContextLayer, TrustedProxies};

use crate::support::{access_lines_of, fetch, logs, serve};

fn is_uuid_v4(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'4' && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[tokio::test]
async fn a_valid_forwarded_id_is_echoed_and_logged() {
    let addr = serve(crate::support::example_app().await).await;
    let reply = fetch(addr, "/health", &[("x-request-id", b"fwd-valid.1:a+b/c=d@e_f")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.request_id(), "fwd-valid.1:a+b/c=d@e_f");
    let access = access_lines_of("fwd-valid.1:a+b/c=d@e_f").await;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["status"], 200);
}

#[tokio::test]
async fn every_invalid_class_is_replaced_and_never_logged() {
    let addr = serve(crate::support::example_app().await).await;
    let too_long = format!("MARKlong{}", "x".repeat(121)); // 129 bytes
    let cases: [(&str, &[u8]); 5] = [
        ("too long", too_long.as_bytes()),
        ("forbidden characters", b"MARKforbid <script>"),
        ("quote and backslash", b"MARKquote\"\\"),
        ("empty", b""),
        ("non-ASCII bytes", b"MARKnonascii\xc3\xa9\xff"),
    ];
    for (class, bad) in cases {
        let reply = fetch(addr, "/does-not-exist", &[("x-request-id", bad)]).await;
        let id = reply.request_id().to_owned();
        assert!(is_uuid_v4(&id), "{class}: the replacement must be a generated id, got {id:?}");
        assert_eq!(reply.status, 404, "{class}");
        assert_eq!(reply.json()["request_id"], id.as_str(), "{class}: the error body carries the final id");
        assert_eq!(access_lines_of(&id).await.len(), 1, "{class}");
    }
    let written = logs().contents();
    for marker in ["MARKlong", "MARKforbid", "MARKquote", "MARKnonascii"] {
        assert!(!written.contains(marker), "a rejected id reached the logs: {marker}");
    }
}

fn echo_app(layer: RequestContextLayer) -> Router {
    Router::new()
        .route("/id", get(|| async { RequestContext::with(|c| c.id().to_string()).unwrap_or_default() }))
        .route("/ip", get(|| async { RequestContext::with(|c| format!("{:?}", c.client_ip())).unwrap_or_default() }))
        .layer(layer)
}

#[tokio::test]
async fn never_trust_always_generates() {
    let addr = serve(echo_app(RequestContextLayer::new().forwarded_id_policy(ForwardedIdPolicy::NeverTrust))).await;
    let reply = fetch(addr, "/id", &[("x-request-id", b"policy-never-1")]).await;
    assert_ne!(reply.request_id(), "policy-never-1");
    assert!(is_uuid_v4(reply.request_id()));
    assert_eq!(reply.body, reply.request_id(), "the handler sees the final id");
    access_lines_of(reply.request_id()).await;
    assert!(!logs().contents().contains("policy-never-1"));
}

#[tokio::test]
async fn trust_from_proxies_checks_the_peer() {
    let loopback = TrustedProxies::parse(["127.0.0.0/8"]).unwrap();
    let addr =
        serve(echo_app(RequestContextLayer::new().forwarded_id_policy(ForwardedIdPolicy::TrustFrom(loopback)))).await;
    assert_eq!(fetch(addr, "/id", &[("x-request-id", b"policy-proxy-1")]).await.request_id(), "policy-proxy-1");

    let elsewhere = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
    let addr =
        serve(echo_app(RequestContextLayer::new().forwarded_id_policy(ForwardedIdPolicy::TrustFrom(elsewhere)))).await;
    let reply = fetch(addr, "/id", &[("x-request-id", b"policy-proxy-2")]).await;
    assert!(is_uuid_v4(reply.request_id()), "{}", reply.request_id());
}

#[tokio::test]
async fn header_name_and_generator_are_configurable() {
    let layer = RequestContextLayer::new()
        .header_name(http::HeaderName::from_static("x-correlation-id"))
        .id_generator(IdGenerator::UuidV7);
    let addr = serve(echo_app(layer)).await;
    let reply = fetch(addr, "/id", &[]).await;
    let id = reply.headers["x-correlation-id"].to_str().unwrap();
    assert_eq!(id.as_bytes()[14], b'7', "{id}");
    assert!(!reply.headers.contains_key("x-request-id"));
    let reply = fetch(addr, "/id", &[("x-correlation-id", b"corr-1")]).await;
    assert_eq!(reply.body, "corr-1");
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let addr = serve(echo_app(RequestContextLayer::new())).await;
    let reply = fetch(addr, "/ip", &[("x-forwarded-for", b"203.0.113.9")]).await;
    assert_eq!(reply.body, "Some(127.0.0.1)", "no trusted proxies: the header is ignored");

    let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
    let layer = RequestContextLayer::new().trusted_proxies(trusted.clone(), ClientIpHeader::XForwardedFor);
    let addr = serve(echo_app(layer)).await;
    let reply = fetch(addr, "/ip", &[("x-forwarded-for", b"198.51.100.1, 203.0.113.9")]).await;
    assert_eq!(reply.body, "Some(203.0.113.9)", "the nearest untrusted hop is the client");

    // Behind a proxy that appends to X-Forwarded-For, a `Forwarded` header reaches the server
    // exactly as the client wrote it: it must not pick the client ip.
    let reply =
        fetch(addr, "/ip", &[("forwarded", b"for=\"[2001:db8::6]\""), ("x-forwarded-for", b"203.0.113.10")]).await;
    assert_eq!(reply.body, "Some(203.0.113.10)", "the client-sent Forwarded header is ignored");
    let reply = fetch(addr, "/ip", &[("forwarded", b"for=198.51.100.66")]).await;
    assert_eq!(reply.body, "Some(127.0.0.1)", "only Forwarded, no XFF: the proxy itself is the client");

    // Proxies that append to `Forwarded` are believed when it is named.
    let layer = RequestContextLayer::new().trusted_proxies(trusted, ClientIpHeader::Forwarded);
    let addr = serve(echo_app(layer)).await;
    let reply =
        fetch(addr, "/ip", &[("forwarded", b"for=\"[2001:db8::7]:443\""), ("x-forwarded-for", b"9.9.9.9")]).await;
    assert_eq!(reply.body, "Some(2001:db8::7)");
}

#[tokio::test]
async fn an_id_sent_twice_is_replaced_and_neither_copy_is_logged() {
    let addr = serve(echo_app(RequestContextLayer::new())).await;
    let reply = fetch(addr, "/id", &[("x-request-id", b"twice-first-1"), ("x-request-id", b"twice-second-1")]).await;
    let id = reply.request_id().to_owned();
    assert!(is_uuid_v4(&id), "an ambiguous id is replaced: {id}");
    assert_eq!(reply.headers.get_all("x-request-id").iter().count(), 1, "one id echoed");
    assert_eq!(reply.body, id, "the handler sees the one final id");
    assert_eq!(access_lines_of(&id).await.len(), 1);
    let written = logs().contents();
    assert!(!written.contains("twice-first-1") && !written.contains("twice-second-1"));
}
