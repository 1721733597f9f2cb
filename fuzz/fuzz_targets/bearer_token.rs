//! Any bytes as a bearer token through `RequestContextLayer` + `AuthLayer`: never a panic, a
//! 401 JSON error with the request id, and every log line one valid JSON object without the
//! token.
#![no_main]

use std::convert::Infallible;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use reqscope::RequestContextLayer;
use reqscope::auth::AuthLayer;
use reqscope::logging::{LogLayer, MemoryWriter};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::prelude::*;

/// Marks both ends of the fuzzed token: a line that logged any end of the token shows one.
/// (The fuzzed bytes alone cannot be searched for: the fuzzer soon learns to send text that
/// every rejection line contains anyway.)
const START: &str = "Qz7tokenStartXv";
const END: &str = "Jw4tokenEndPk";

fuzz_target!(|data: &[u8]| {
    let mut value = format!("Bearer {START}").into_bytes();
    value.extend_from_slice(data);
    value.extend_from_slice(END.as_bytes());
    let Ok(authorization) = HeaderValue::from_bytes(&value) else { return };
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(logs.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let service = ServiceBuilder::new()
        .layer(RequestContextLayer::new())
        .layer(AuthLayer::hmac(b"a fuzzing secret of at least 32 bytes"))
        .service(service_fn(|_: Request<Full<bytes::Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::new())))
        }));
    let request = Request::get("/").header("authorization", authorization).body(Full::default()).unwrap();
    let (status, body) = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            (status, response.into_body().collect().await.unwrap().to_bytes())
        })
    });
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body["request_id"].is_string());
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(&line).expect("every line is one JSON object");
        assert!(!line.contains(START) && !line.contains(END), "the token reached a log line: {line}");
    }
});
