//! Redaction as lines are written, and the request headers of access lines.
//!
//! The layer's [`Redaction`] is applied to every value that does not come from reqscope's
//! own stamp: event fields (the message too, for the value hook), span fields (judged when
//! they are recorded, and their keys again by each layer that writes them), custom context
//! fields, baggage entries and request headers. A value is judged by its field's own name, so
//! a key prefixed to keep it unique (`fields.token`) is redacted as `token` is. Keys are
//! checked without allocating; values are formatted for the value hook only when there is
//! one, into a reused thread-local buffer.

use std::cell::RefCell;
use std::fmt::Write as _;

use reqscope_core::FieldValue;
use reqscope_core::logged_headers::LoggedHeader;
use reqscope_core::redact::Redaction;

use crate::keys::{KeyStyle, Reserved, Seen, write_key};

/// A redacted value, as both formats write it: a quoted string.
pub(crate) const REDACTED_VALUE: &[u8] = b"\"[redacted]\"";

/// The target of the lines that carry the request headers.
pub(crate) const ACCESS_TARGET: &str = "reqscope::access";

/// The prefix of a request header's key: `header.user-agent`.
pub(crate) const HEADER_PREFIX: &str = "header.";

/// Runs `check` on the text `write` produces, in a buffer reused by the thread (a fresh one
/// when a `Debug` impl that logs finds it in use).
pub(crate) fn with_text<R>(write: impl FnOnce(&mut String), check: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
    }
    let run = |text: &mut String| {
        text.clear();
        write(text);
        let result = check(text);
        if text.capacity() > 64 * 1024 {
            *text = String::new();
        }
        result
    };
    TEXT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut text) => run(&mut text),
        Err(_) => run(&mut String::new()),
    })
}

/// Whether a custom context field is written redacted.
pub(crate) fn redacts_field(redaction: &Redaction, key: &str, value: &FieldValue) -> bool {
    if redaction.is_sensitive_key(key) {
        return true;
    }
    if !redaction.has_value_hook() {
        return false;
    }
    match value {
        FieldValue::Str(v) => redaction.redacts_value(key, v),
        FieldValue::I64(v) => redaction.redacts_value(key, itoa::Buffer::new().format(*v)),
        FieldValue::U64(v) => redaction.redacts_value(key, itoa::Buffer::new().format(*v)),
        FieldValue::F64(v) => with_text(
            |text| {
                let _ = write!(text, "{v}");
            },
            |text| redaction.redacts_value(key, text),
        ),
        FieldValue::Bool(v) => redaction.redacts_value(key, if *v { "true" } else { "false" }),
    }
}

/// Where [`write_headers`] writes a header.
pub(crate) enum HeaderKey {
    /// Under `header.<name>`, as the style renders it.
    Header,
    /// Under a key of the format's own, given as `,"key":` (ECS `user_agent.original`).
    Own(&'static [u8]),
    /// Not at all: the format wrote it elsewhere (Google Cloud's `httpRequest.userAgent`).
    Skip,
}

/// Writes ` header.<name>` and its value (by `write_value`) for each header of an access
/// line (or the key `key_of` gives it): `"[redacted]"` for the headers whose values are never
/// kept and those the policy redacts. After the custom context fields and the baggage, which
/// cannot take these keys.
pub(crate) fn write_headers<S: KeyStyle>(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    reserved: &Reserved,
    redaction: &Redaction,
    headers: &[LoggedHeader],
    key_of: impl Fn(&str) -> HeaderKey,
    write_value: impl Fn(&mut Vec<u8>, &str),
) {
    thread_local! {
        static KEY: RefCell<String> = const { RefCell::new(String::new()) };
    }
    for header in headers {
        let name = header.name().as_str();
        match key_of(name) {
            HeaderKey::Header => {}
            HeaderKey::Own(key) => {
                buf.extend_from_slice(key);
                write_header_value(buf, redaction, header, &write_value);
                continue;
            }
            HeaderKey::Skip => continue,
        }
        let mut write_name = |key: &mut String| {
            key.clear();
            key.push_str(HEADER_PREFIX);
            key.push_str(name);
            // Only a stamped name (a `FieldNames` set to `header.…`) can be in the way.
            write_key::<S>(buf, seen, key, S::FIELD_PREFIX, |k| reserved.contains_stamped(k));
        };
        KEY.with(|cell| match cell.try_borrow_mut() {
            Ok(mut key) => write_name(&mut key),
            Err(_) => write_name(&mut String::new()),
        });
        write_header_value(buf, redaction, header, &write_value);
    }
}

/// Writes a request header's value with `write_value`, or `"[redacted]"` when it was never
/// kept or the policy redacts it.
pub(crate) fn write_header_value(
    buf: &mut Vec<u8>,
    redaction: &Redaction,
    header: &LoggedHeader,
    write_value: &dyn Fn(&mut Vec<u8>, &str),
) {
    match header.value() {
        Some(value) if !redaction.redacts(header.name().as_str(), value) => write_value(buf, value),
        _ => buf.extend_from_slice(REDACTED_VALUE),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqscope_core::logged_headers::LoggedHeader;
    use reqscope_core::redact::DEFAULT_KEYS;
    use reqscope_core::{REQUEST_SPAN_TARGET, RequestContext, RequestId};
    use tracing_subscriber::prelude::*;

    use super::*;
    use crate::{LogLayer, MemoryWriter};

    fn capture(layer: impl FnOnce(MemoryWriter) -> LogLayer<MemoryWriter>, f: impl FnOnce()) -> MemoryWriter {
        let logs = MemoryWriter::new();
        let subscriber = tracing_subscriber::registry().with(layer(logs.clone()));
        tracing::subscriber::with_default(subscriber, f);
        logs
    }

    fn request(id: &str) -> Arc<RequestContext> {
        Arc::new(RequestContext::new(RequestId::parse(id).unwrap()))
    }

    /// One event with every default key (field names are static: spelled out, and checked
    /// against the list), each value `v-<key>`.
    fn log_every_default_key() {
        tracing::info!(
            password = "v-password",
            passwd = "v-passwd",
            secret = "v-secret",
            token = "v-token",
            access_token = "v-access_token",
            refresh_token = "v-refresh_token",
            id_token = "v-id_token",
            authorization = "v-authorization",
            cookie = "v-cookie",
            set_cookie = "v-set_cookie",
            api_key = "v-api_key",
            apikey = "v-apikey",
            client_secret = "v-client_secret",
            private_key = "v-private_key",
            rows = 3,
            "every key"
        );
    }

    #[test]
    fn every_default_key_is_redacted_in_json_and_pretty_lines() {
        let json = capture(|w| LogLayer::new().with_writer(w), log_every_default_key);
        let line = &json.json_lines()[0];
        for key in DEFAULT_KEYS {
            assert_eq!(line[key], "[redacted]", "{key}: {line}");
        }
        assert_eq!(line["rows"], 3);
        assert!(!json.contents().contains("v-"), "{}", json.contents());

        let pretty = capture(|w| LogLayer::new().pretty().with_writer(w), log_every_default_key);
        let text = pretty.contents();
        for key in DEFAULT_KEYS {
            assert!(text.contains(&format!(" {key}=\"[redacted]\"")), "{key}: {text}");
        }
        assert!(text.contains(" rows=3"), "{text}");
        assert!(!text.contains("v-"), "{text}");
    }

    #[test]
    fn spellings_suffixes_and_every_source_are_redacted() {
        let ctx = request("redact-sources");
        ctx.set_field("Api-Key", "v-custom");
        ctx.set_field("retries", 2);
        ctx.set_field("access_token", "v-custom-2");
        ctx.set_baggage("session.token", "v-baggage").unwrap();
        ctx.set_baggage("session", "kept").unwrap();
        for layer in [LogLayer::new(), LogLayer::new().pretty()] {
            let layer = layer.baggage_fields(["session.token", "session"]);
            let ctx = Arc::clone(&ctx);
            let logs = capture(
                |w| layer.with_writer(w),
                || {
                    RequestContext::scope_sync(ctx, || {
                        let span = tracing::info_span!(
                            "op",
                            db_password = "v-span",
                            order = 7,
                            late_token = tracing::field::Empty
                        );
                        let _entered = span.enter();
                        span.record("late_token", "v-late");
                        let inner = tracing::info_span!("inner", late_token = "v-late-inner");
                        let _inner = inner.enter();
                        // `access_token` is taken by the custom field: written `fields.access_token`.
                        tracing::info!(
                            DB_PASSWORD = "v-upper",
                            x.api.key = "v-dotted",
                            user_accessToken = ?"v-debug",
                            access_token = "v-prefixed",
                            "hello"
                        );
                    })
                },
            );
            let text = logs.contents();
            assert!(!text.contains("v-"), "a sensitive value was written: {text}");
            for kept in ["order", "retries", "kept", "hello", "redact-sources"] {
                assert!(text.contains(kept), "{kept} missing: {text}");
            }
            assert_eq!(text.matches("[redacted]").count(), 10, "{text}");
            assert!(text.contains("span.late_token") && text.contains("fields.access_token"), "{text}");
        }
    }

    #[test]
    fn added_keys_and_the_value_hook_redact_too_and_none_turns_it_off() {
        let redaction = Redaction::new()
            .redact_keys(["email"])
            .redact_values(|key: &str, value: &str| key != "rows" && value.contains("4111"));
        let ctx = request("redact-hook");
        ctx.set_field("note", "card 4111");
        ctx.set_field("card", 4111u64);
        let run = || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                let span = tracing::info_span!("op", memo = %"has 4111");
                let _entered = span.enter();
                tracing::info!(user_email = "ann@example.com", rows = 4111, text = "4111 again", debugged = ?"x4111", "paid with 4111");
            })
        };
        for layer in [LogLayer::new(), LogLayer::new().pretty()] {
            let logs = capture(|w| layer.redaction(redaction.clone()).with_writer(w), run);
            let text = logs.contents();
            assert!(!text.contains("ann@"), "{text}");
            assert_eq!(text.matches("4111").count(), 1, "only `rows` keeps it: {text}");
            assert_eq!(text.matches("[redacted]").count(), 7, "{text}");
        }
        let logs = capture(|w| LogLayer::new().redaction(Redaction::none()).with_writer(w), log_every_default_key);
        assert_eq!(logs.json_lines()[0]["password"], "v-password");
    }

    #[test]
    fn a_layer_redacts_span_keys_another_layer_rendered() {
        let open = MemoryWriter::new();
        let strict = MemoryWriter::new();
        let subscriber = tracing_subscriber::registry()
            .with(LogLayer::new().redaction(Redaction::none()).with_writer(open.clone()))
            .with(LogLayer::new().with_writer(strict.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("op", token = "v-token");
            span.in_scope(|| tracing::info!("x"));
        });
        assert_eq!(open.json_lines()[0]["token"], "v-token");
        assert_eq!(strict.json_lines()[0]["token"], "[redacted]", "{}", strict.contents());
    }

    fn with_headers(id: &str, pairs: &[(&str, &str)]) -> Arc<RequestContext> {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let kept = pairs.iter().filter_map(|(name, _)| {
            LoggedHeader::from_headers(&http::HeaderName::from_bytes(name.as_bytes()).unwrap(), &map)
        });
        Arc::new(RequestContext::builder(RequestId::parse(id).unwrap()).logged_headers(kept).build())
    }

    #[test]
    fn headers_are_written_on_access_lines_only() {
        let ctx = with_headers(
            "hdr-1",
            &[("user-agent", "curl/8.5.0"), ("authorization", "Bearer v-auth"), ("x-auth-token", "v-token")],
        );
        ctx.set_field("header.user-agent", "forged");
        let run = || {
            RequestContext::scope_sync(Arc::clone(&ctx), || {
                tracing::info!("handler");
                tracing::info!(target: ACCESS_TARGET, status = 200, "request completed");
            })
        };
        let logs = capture(|w| LogLayer::new().with_writer(w), run);
        let lines = logs.json_lines();
        assert!(lines[0].get("header.user-agent").is_none(), "{}", lines[0]);
        let access = &lines[1];
        assert_eq!(access["header.user-agent"], "curl/8.5.0");
        assert_eq!(access["header.authorization"], "[redacted]");
        assert_eq!(access["header.x-auth-token"], "[redacted]", "the policy judges header names too");
        assert_eq!(access["fields.header.user-agent"], "forged", "a custom field cannot pass for a header");
        assert!(!logs.contents().contains("v-"), "{}", logs.contents());
        let raw = &logs.lines()[1];
        assert!(raw.find("\"fields.header.user-agent\"").unwrap() < raw.find("\"header.user-agent\"").unwrap());
        assert!(raw.find("\"header.user-agent\"").unwrap() < raw.find("\"status\"").unwrap(), "{raw}");

        let pretty = capture(|w| LogLayer::new().pretty().with_writer(w), run);
        let text = pretty.lines()[1].clone();
        assert!(text.contains(" header.user-agent=\"curl/8.5.0\""), "{text}");
        assert!(text.contains(" header.authorization=\"[redacted]\""), "{text}");
        assert!(!pretty.lines()[0].contains(" header."), "{}", pretty.lines()[0]);
    }

    #[test]
    fn headers_reach_access_lines_found_through_the_request_span() {
        // An access line found through the request span alone carries them as well.
        let ctx = with_headers("hdr-span", &[("user-agent", "ua")]);
        let logs = capture(
            |w| LogLayer::new().with_writer(w),
            || {
                let span = RequestContext::scope_sync(
                    Arc::clone(&ctx),
                    || tracing::info_span!(target: REQUEST_SPAN_TARGET, "request"),
                );
                span.in_scope(|| tracing::info!(target: ACCESS_TARGET, "request completed"));
            },
        );
        assert_eq!(logs.json_lines()[0]["header.user-agent"], "ua");
    }
}
