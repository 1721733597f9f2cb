//! The service the official W3C Trace Context test suite drives (`test/test.py` of
//! <https://github.com/w3c/trace-context>): `POST /test` takes a JSON array of
//! `{"url": …, "arguments": …}` and, for each element in turn, POSTs `arguments` (as JSON) to
//! `url` through a hyper client with reqscope's `PropagateContextLayer` — so each callback
//! carries this service's `traceparent` / `tracestate`, a client span of its own per call.
//!
//! ```text
//! cargo run --example trace_context_service            # listens on 127.0.0.1:5000
//! STRICT_LEVEL=2 python test/test.py http://127.0.0.1:5000/test
//! ```
//!
//! `.ci/w3c-trace-context` builds it, starts it and runs the suite at both strictness levels.
//! `PORT` picks another port; log lines (one per request, one per callback) go to stdout as
//! JSON, with `LOG_FORMAT` and `RUST_LOG` as in the example API server.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqscope::RequestContextLayer;
use reqscope::outgoing::{PropagateContext, PropagateContextLayer};
use serde::Deserialize;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};

/// One callback the harness asks for.
#[derive(Deserialize)]
struct Action {
    url: String,
    #[serde(default)]
    arguments: Value,
}

type HttpClient = PropagateContext<Client<HttpConnector, Full<Bytes>>>;

async fn test(client: axum::extract::State<HttpClient>, Json(actions): Json<Vec<Action>>) -> (StatusCode, Json<Value>) {
    for action in actions {
        let Ok(body) = serde_json::to_vec(&action.arguments) else {
            return (StatusCode::BAD_REQUEST, Json(Value::Null));
        };
        let request =
            match Request::post(&action.url).header(header::CONTENT_TYPE, "application/json").body(Full::from(body)) {
                Ok(request) => request,
                Err(_) => return (StatusCode::BAD_REQUEST, Json(Value::Null)),
            };
        // The handler runs inside the request's context: the layer adds the trace headers and
        // writes the call's line. A failed callback is the harness's to report.
        let sent = tokio::time::timeout(Duration::from_secs(10), client.0.clone().oneshot(request)).await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!(url = %action.url, "callback failed");
        }
    }
    (StatusCode::OK, Json(Value::Null))
}

fn main() -> ExitCode {
    let _log_guard = match reqscope::logging::init_from_env() {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: cannot set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    let port = match std::env::var("PORT").map(|p| p.parse::<u16>()) {
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("error: PORT must be a port number");
            return ExitCode::FAILURE;
        }
        Err(_) => 5000,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let client: HttpClient = ServiceBuilder::new()
            .layer(PropagateContextLayer::new())
            .service(Client::builder(TokioExecutor::new()).build_http());
        let app = Router::new().route("/test", post(test)).with_state(client).layer(RequestContextLayer::new());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        tracing::info!(address = %listener.local_addr()?, "trace context test service listening");
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
