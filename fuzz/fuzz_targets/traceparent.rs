//! Any bytes as `traceparent` (and as `tracestate`): parsed by the strict grammar only, a
//! continued trace keeps its id, and whatever is carried on is a valid header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqscope::trace::{TraceContext, TraceParent};

#[path = "../../tests/e2e/grammar.rs"]
#[allow(dead_code)]
mod grammar;

fuzz_target!(|data: &[u8]| {
    let (parent, state) = data.split_at(data.len().min(55));
    assert_eq!(TraceParent::parse(parent).is_ok(), grammar::traceparent_is_valid(parent));
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("traceparent", parent), ("tracestate", state)] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    let (trace, _) = TraceContext::from_headers(&headers);
    let sent = TraceParent::parse(trace.traceparent().as_bytes()).expect("what is sent on is valid");
    if let Ok(Some(incoming)) = TraceParent::from_headers(&headers) {
        assert_eq!(sent.trace_id, incoming.trace_id);
    }
    if let Some(state) = trace.state() {
        assert!(state.as_str().len() <= 512 && state.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
    }
});
