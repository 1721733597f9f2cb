//! The one shape of every error response the layers write: `{"error","message","request_id"}`.

use std::fmt::Write as _;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use reqscope_core::RequestContext;

/// A JSON error response with the current request's id (`null` outside a request).
pub(crate) fn json_error<B: From<String>>(status: StatusCode, error: &str, message: &str) -> Response<B> {
    let mut body = String::with_capacity(64 + error.len() + message.len());
    body.push_str(r#"{"error":"#);
    push_json_string(&mut body, error);
    body.push_str(r#","message":"#);
    push_json_string(&mut body, message);
    body.push_str(r#","request_id":"#);
    match RequestContext::with(|ctx| push_json_string(&mut body, ctx.id().as_str())) {
        Some(()) => {}
        None => body.push_str("null"),
    }
    body.push('}');
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Appends `text` as a JSON string (RFC 8259 escaping).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_json_requires() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
