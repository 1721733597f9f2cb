//! Exactly one access line per request: when the body ends, or when it is dropped early.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt;
use reqscope::RequestContextLayer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{access_lines_of, fetch, fetch_with, serve};

fn app() -> Router {
    Router::new()
        .route("/text", get(|| async { "fifteen bytes!!" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "late"
            }),
        )
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/download",
            get(|| async {
                // A streamed body whose length is declared up front: hyper stops polling once
                // the declared bytes are out and drops the body without seeing its end.
                let chunks =
                    futures_util::stream::iter(["part one, ", "part two, ", "part three"]).map(Ok::<_, Infallible>);
                ([(http::header::CONTENT_LENGTH, "30")], Body::from_stream(chunks))
            }),
        )
        .route(
            "/endless",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Ok::<_, Infallible>(format!("chunk {n}\n")), n + 1))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(RequestContextLayer::new())
}

#[tokio::test]
async fn an_empty_body_gets_one_completed_line() {
    let addr = serve(app()).await;
    let reply = fetch(addr, "/empty", &[("x-request-id", b"access-empty-1")]).await;
    assert_eq!(reply.status, 204);
    let access = access_lines_of("access-empty-1").await;
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["status"], 204);
    assert_eq!(access[0]["message"], "request completed");
    assert_eq!(access[0]["level"], "INFO");
    assert!(access[0].get("aborted").is_none());
    assert!(access[0]["duration_ms"].is_f64(), "{}", access[0]);
}

#[tokio::test]
async fn the_body_keeps_its_length_and_the_line_its_duration() {
    let addr = serve(app()).await;
    let reply = fetch(addr, "/text", &[("x-request-id", b"access-length-1")]).await;
    // The wrapped body must pass its size hint on, or hyper would switch to chunked encoding.
    assert_eq!(reply.headers["content-length"], "15");
    assert!(!reply.headers.contains_key("transfer-encoding"));
    let access = access_lines_of("access-length-1").await;
    assert_eq!(access[0]["bytes"], 15);

    let reply = fetch(addr, "/slow", &[("x-request-id", b"access-sleepy-1")]).await;
    assert_eq!(reply.body, "late");
    let access = access_lines_of("access-sleepy-1").await;
    let duration = access[0]["duration_ms"].as_f64().unwrap();
    assert!((50.0..10_000.0).contains(&duration), "the handler slept 50 ms: {duration}");
}

#[tokio::test]
async fn a_streamed_download_with_a_content_length_is_completed_not_aborted() {
    let addr = serve(app()).await;
    let reply = fetch(addr, "/download", &[("x-request-id", b"access-download-1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-length"], "30");
    assert_eq!(reply.body, "part one, part two, part three");
    let access = access_lines_of("access-download-1").await;
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["message"], "request completed", "{}", access[0]);
    assert!(access[0].get("aborted").is_none(), "{}", access[0]);
    assert_eq!(access[0]["bytes"], 30);
}

#[tokio::test]
async fn responses_made_by_inner_layers_carry_the_id() {
    async fn refuse(_request: axum::extract::Request, _next: axum::middleware::Next) -> axum::response::Response {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    }
    let app = Router::new()
        .route("/guarded", get(|| async { "never" }))
        .layer(axum::middleware::from_fn(refuse))
        .layer(RequestContextLayer::new());
    let addr = serve(app).await;
    let reply = fetch(addr, "/guarded", &[("x-request-id", b"access-inner-1")]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.request_id(), "access-inner-1");
    let access = access_lines_of("access-inner-1").await;
    assert_eq!(access[0]["status"], 503);
    assert_eq!(access[0]["level"], "ERROR", "a 503 is a failed request: {}", access[0]);
    assert!(access[0].get("grpc_status").is_none(), "not gRPC: {}", access[0]);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_gets_one_aborted_line() {
    let addr = serve(app()).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /endless HTTP/1.1\r\nhost: test\r\nx-request-id: access-abort-1\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk 1") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    let access = access_lines_of("access-abort-1").await;
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["aborted"], true);
    assert_eq!(access[0]["status"], 200);
    assert!(access[0]["bytes"].as_u64().unwrap() >= 16, "{}", access[0]);
}

#[tokio::test]
async fn a_head_request_is_completed_not_aborted() {
    let addr = serve(app()).await;
    let reply = fetch_with(http::Method::HEAD, addr, "/text", &[("x-request-id", b"access-head-1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "");
    let access = access_lines_of("access-head-1").await;
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["message"], "request completed");
    assert!(access[0].get("aborted").is_none(), "{}", access[0]);
}

#[tokio::test]
async fn a_slow_client_holds_up_no_one_and_gets_one_complete_line() {
    let addr = serve(crate::support::example_app().await).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = b"GET /stream HTTP/1.1\r\nhost: test\r\nx-request-id: access-slow-1\r\nconnection: close\r\n\r\n";
    // The request trickles in a few bytes at a time while others are served in full.
    for (i, piece) in request.chunks(4).enumerate() {
        slow.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        if i % 5 == 0 {
            assert_eq!(fetch(addr, "/health", &[]).await.status, 200, "served while a client is slow");
        }
    }
    // The answer is read one byte at a time.
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while slow.read(&mut byte).await.unwrap() == 1 {
        response.push(byte[0]);
        if response.len() % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("chunk 2"), "{text}");
    let access = access_lines_of("access-slow-1").await;
    assert_eq!(access.len(), 1, "{access:?}");
    assert!(access[0].get("aborted").is_none(), "{}", access[0]);
    assert_eq!(access[0]["bytes"], 24);
}
