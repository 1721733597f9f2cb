//! Any text and bytes in a message, an event field, a context field or the user id: exactly
//! one valid JSON line, every value read back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reqscope::logging::{LogLayer, MemoryWriter};
use reqscope::{RequestContext, RequestId};
use tracing_subscriber::prelude::*;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (first, second) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    let ctx = RequestContext::new(RequestId::parse("fuzz-1").unwrap());
    ctx.set_user_id(first);
    ctx.set_field("tenant", second);
    let logs = MemoryWriter::new();
    let subscriber = tracing_subscriber::registry().with(LogLayer::new().with_writer(logs.clone()));
    tracing::subscriber::with_default(subscriber, || {
        RequestContext::scope_sync(ctx, || tracing::info!(input = %second, raw = ?data, "{first}"));
    });
    let lines = logs.lines();
    assert_eq!(lines.len(), 1);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["message"], first);
    assert_eq!(line["user_id"].as_str().unwrap_or(""), first);
    assert_eq!(line["tenant"], second);
    assert_eq!(line["input"], second);
});
