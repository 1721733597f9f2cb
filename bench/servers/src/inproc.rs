//! In-process drivers for instruction counting (`bench/instructions.sh`): no sockets, no
//! scheduler noise, so that callgrind's counts depend on the stack alone.
//!
//! `requests` sends GET /hello through a stack's router with `oneshot`, as `axum::serve` would
//! hand it over (with `ConnectInfo`, the token the full stacks check); `events` writes one
//! stamped event inside a request context. Each prints what it did, so a count is never taken
//! of a run that failed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use reqscope::logging::NonBlocking;
use reqscope::{RequestContext, RequestId};
use tower::ServiceExt;
use tracing_subscriber::prelude::*;

use crate::stacks::{self, Stack};

/// Sends `count` requests through `stack`; every answer must be 200 with the hello body.
pub fn requests(stack: Stack, count: u64, writer: NonBlocking) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    let token = format!("Bearer {}", stacks::token());
    let peer: SocketAddr = "127.0.0.1:50000".parse().map_err(|_| "bad peer address")?;
    runtime.block_on(async move {
        // `axum::serve` turns the router's handlers into services once, before the first
        // request (`into_make_service*` calls `with_state`); without it, each request would
        // build its route and apply every layer anew.
        let app = stack.router(writer)?.with_state::<()>(());
        // The request target in shared bytes, as hyper parses it from a slice of its read
        // buffer: cloning the URI is a count increment, not a first copy of an owned buffer
        // (made shared by the first clone, the same in every run, so it cancels out).
        let target = bytes::Bytes::from(b"/hello".to_vec());
        for _ in 0..count {
            let uri = Uri::from_maybe_shared(target.clone()).map_err(|e| e.to_string())?;
            let mut request =
                Request::get(uri).header("authorization", &token).body(Body::empty()).map_err(|e| e.to_string())?;
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = app.clone().oneshot(request).await.map_err(|e| e.to_string())?;
            if response.status() != StatusCode::OK {
                return Err(format!("{} answered {}", stack.name(), response.status()));
            }
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if body.as_ref() != br#"{"message":"hello"}"# {
                return Err(format!("{} answered {body:?}", stack.name()));
            }
        }
        println!("{} requests through {}", count, stack.name());
        Ok(())
    })
}

/// The event writers compared per stamped event.
#[derive(Clone, Copy, Debug)]
pub enum EventWriter {
    /// reqscope's `LogLayer` (JSON), the event inside a request context.
    Reqscope,
    /// `tracing_subscriber::fmt().json()`, the same fields on a span.
    FmtJson,
}

impl std::str::FromStr for EventWriter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reqscope" => Ok(EventWriter::Reqscope),
            "fmt-json" => Ok(EventWriter::FmtJson),
            _ => Err(format!("unknown event writer {s:?} (reqscope|fmt-json)")),
        }
    }
}

/// Writes `count` events with `writer`, each carrying the same request fields.
pub fn events(kind: EventWriter, count: u64, writer: NonBlocking) -> Result<(), String> {
    match kind {
        EventWriter::Reqscope => {
            tracing_subscriber::registry().with(reqscope::logging::LogLayer::new().with_writer(writer)).init();
            let ctx = Arc::new(
                RequestContext::builder(RequestId::new_v4())
                    .method(axum::http::Method::GET)
                    .path("/hello")
                    .client_ip([127, 0, 0, 1].into())
                    .build(),
            );
            ctx.set_user_id("42");
            RequestContext::scope_sync(ctx, || {
                for n in 0..count {
                    tracing::info!(greeting = "hello", n, "saying hello");
                }
            });
        }
        EventWriter::FmtJson => {
            tracing_subscriber::fmt().json().with_writer(writer).init();
            let id = RequestId::new_v4();
            let span = tracing::info_span!(
                "request",
                request_id = id.as_str(),
                method = "GET",
                path = "/hello",
                client_ip = "127.0.0.1",
                user_id = "42"
            );
            span.in_scope(|| {
                for n in 0..count {
                    tracing::info!(greeting = "hello", n, "saying hello");
                }
            });
        }
    }
    println!("{count} events through {kind:?}");
    Ok(())
}
