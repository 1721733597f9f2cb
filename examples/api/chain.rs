//! `GET /chain?hops=N`: a call across services. Each hop calls the next one (`DOWNSTREAM_URL`,
//! or this server itself) with `hops=N-1` until `hops` is 0, through a client that carries
//! the request id, a child W3C `traceparent` and the request's W3C `baggage` (so every hop's
//! lines carry the same `baggage.session`).
//!
//! Every hop's log lines share one `trace_id` and — inside this one trust boundary — one
//! `request_id` (each hop's `RequestContextLayer` keeps a valid forwarded id); each hop has
//! its own `span_id`, the next hop's parent. The response nests every hop's view.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use http::StatusCode;
use reqscope::{ApiError, RequestContext};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde::Deserialize;
use serde_json::{Value, json};

/// The most hops one request may ask for: each hop holds a connection open on every hop
/// before it.
pub const MAX_HOPS: u32 = 8;

/// Where the next hop is, and the client that calls it.
#[derive(Clone)]
pub struct Chain {
    client: ClientWithMiddleware,
    next: reqwest::Url,
}

impl Chain {
    /// Calls `next` (a base URL such as `http://127.0.0.1:3001`).
    pub fn new(next: &str) -> Result<Self, String> {
        let next = reqwest::Url::parse(next).map_err(|e| format!("DOWNSTREAM_URL must be a URL, got {next:?}: {e}"))?;
        if next.scheme() != "http" {
            return Err(format!("DOWNSTREAM_URL must be an http:// URL (the example's client has no TLS), got {next}"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // The next hop is inside this deployment: never send it through an HTTP proxy.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        // The one line that makes outgoing calls carry the request id, the trace and the baggage.
        let client = ClientBuilder::new(client).with(reqscope::outgoing::PropagateContextMiddleware::new()).build();
        Ok(Chain { client, next })
    }
}

/// The query string: `hops`, default 1.
#[derive(Deserialize)]
pub struct Params {
    hops: Option<u32>,
}

/// Answers this hop's ids, after the next hop's answer when `hops` is above 0.
pub async fn chain(
    State(chain): State<Chain>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let bad_hops = || ApiError::bad_request(format!("`hops` must be a whole number from 0 to {MAX_HOPS}"));
    let hops = params.map_err(|_| bad_hops())?.0.hops.unwrap_or(1);
    if hops > MAX_HOPS {
        return Err(bad_hops());
    }
    let downstream = match hops {
        0 => Value::Null,
        _ => call_next(&chain, hops - 1).await?,
    };
    let (request_id, trace_id, span_id) = RequestContext::with(|ctx| {
        let trace = ctx.trace();
        (ctx.id().to_string(), trace.map(|t| t.trace_id().to_string()), trace.map(|t| t.span_id().to_string()))
    })
    .unwrap_or_default();
    Ok(Json(json!({
        "hops": hops,
        "request_id": request_id,
        "trace_id": trace_id,
        "span_id": span_id,
        "downstream": downstream,
    })))
}

async fn call_next(chain: &Chain, hops: u32) -> Result<Value, ApiError> {
    let mut url = chain.next.join("/chain").map_err(ApiError::internal)?;
    url.query_pairs_mut().append_pair("hops", &hops.to_string());
    tracing::info!(next = %url, "calling the next hop");
    let bad_gateway = |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message);
    let response = chain
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| bad_gateway("the next hop did not answer".to_owned()).with_source(e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(bad_gateway(format!("the next hop answered {status}")));
    }
    response.json().await.map_err(|e| bad_gateway("the next hop's answer is not JSON".to_owned()).with_source(e))
}
