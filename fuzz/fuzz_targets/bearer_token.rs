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

fuzz_target!(|data: &[u8]| {
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(data);
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
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        if data.len() >= 16 {
            assert!(!line.to_string().contains(&String::from_utf8_lossy(data).into_owned()));
        }
    }
});
