//! How a refusal or a panic becomes a response: HTTP JSON or a gRPC trailers-only response,
//! chosen per request.
//!
//! ```
//! use http::Request;
//! use reqscope_tower::error_response::{ByContentType, ErrorCode, ErrorReply, MakeErrorResponse, RespondWithError};
//!
//! let reply = ErrorReply::new(ErrorCode::Unauthenticated, "unauthorized", "missing");
//!
//! // A gRPC client gets a trailers-only response: HTTP 200, the status in the headers.
//! let grpc = Request::post("/reqscope.example.v1.Users/WhoAmI").header("content-type", "application/grpc").body(())?;
//! let response = ByContentType.for_request(&grpc).respond(&reply);
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["grpc-status"], "16");
//! assert_eq!(response.headers()["grpc-message"], "missing");
//! assert!(response.body().is_empty());
//!
//! // Anyone else gets JSON with the HTTP status.
//! let http = Request::get("/users/me").body(())?;
//! let response = ByContentType.for_request(&http).respond(&reply);
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.headers()["content-type"], "application/json");
//! assert_eq!(response.body(), r#"{"error":"unauthorized","message":"missing","request_id":null}"#);
//! # Ok::<(), http::Error>(())
//! ```
//!
//! The layers that refuse requests — [`CatchPanicLayer`](crate::catch_panic::CatchPanicLayer),
//! `AuthLayer` and `RequireRoleLayer` (feature `jwt`), `RateLimitLayer` (feature
//! `rate-limit`) — describe each refusal as an [`ErrorReply`]: an [`ErrorCode`] (which gives
//! both the HTTP status and the gRPC status code), the machine-readable `error` word of the
//! JSON body, the human `message`, and headers such as `WWW-Authenticate` or `Retry-After`.
//! When a request arrives they ask their [`MakeErrorResponse`] for a [`RespondWithError`]
//! (the panic layer keeps it until a panic happens), which turns the reply into a
//! `Response<Bytes>` if one is needed. Their responses have a [`ResponseBody`]: the inner
//! service's body, or the reply's bytes — so the inner body type only has to carry
//! [`Bytes`], as axum's and tonic's both do.
//!
//! Three makers come with the crate:
//!
//! - [`ByContentType`], every layer's default: gRPC for requests whose `content-type` is
//!   `application/grpc`, `application/grpc+…` (`+proto`, `+json`) or `application/grpc;…`,
//!   JSON for the rest, gRPC-Web (`application/grpc-web…`) included;
//! - [`JsonErrors`]: always `{"error","message","request_id"}` with the HTTP status and
//!   `content-type: application/json`; `request_id` is the current request's id, `null`
//!   outside a request;
//! - [`GrpcErrors`]: always a trailers-only gRPC response — HTTP 200, `content-type:
//!   application/grpc`, `grpc-status`, `grpc-message` (percent-encoded as the gRPC over
//!   HTTP/2 protocol requires), the reply's headers as metadata, `x-request-id` when there is
//!   a current request (always that name: with `RequestContextLayer::header_name`, the layer
//!   adds its own header beside it), and an empty body.
//!
//! Every layer takes another maker with its `error_response` method, e.g.
//! `CatchPanicLayer::new().error_response(GrpcErrors)` for a service that only speaks gRPC.
//! With the default, one stack serves axum routes and a tonic service alike:
//!
//! ```
//! use axum::{Router, routing::get};
//! use reqscope_tower::catch_panic::CatchPanicLayer;
//! use reqscope_tower::request_context::RequestContextLayer;
//!
//! async fn boom() -> &'static str {
//!     panic!("on purpose")
//! }
//!
//! // A panic answers a gRPC client INTERNAL (13) "internal server error", an HTTP client
//! // 500 JSON. Give the stack to `tonic::transport::Server::builder().layer(stack)` just as
//! // to an axum Router:
//! let stack = tower::ServiceBuilder::new()
//!     .layer(RequestContextLayer::new())
//!     .layer(CatchPanicLayer::new());
//! let app: Router = Router::new().route("/boom", get(boom)).layer(stack);
//! ```
//!
//! Another format is one small trait away:
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderValue, Request, Response};
//! use reqscope_tower::catch_panic::CatchPanicLayer;
//! use reqscope_tower::error_response::{ErrorReply, MakeErrorResponse, RespondWithError};
//!
//! /// RFC 9457 problem details.
//! #[derive(Clone, Copy)]
//! struct Problems;
//!
//! impl MakeErrorResponse for Problems {
//!     type Responder = Problems;
//!     fn for_request<B>(&self, _request: &Request<B>) -> Problems {
//!         Problems
//!     }
//! }
//!
//! impl RespondWithError for Problems {
//!     fn respond(&self, reply: &ErrorReply) -> Response<Bytes> {
//!         let status = reply.code.http_status();
//!         let body = format!(r#"{{"type":"about:blank","status":{}}}"#, status.as_u16());
//!         let mut response = Response::new(Bytes::from(body));
//!         *response.status_mut() = status;
//!         response.headers_mut().extend(reply.headers.clone());
//!         response.headers_mut().insert("content-type", HeaderValue::from_static("application/problem+json"));
//!         response
//!     }
//! }
//!
//! let layer = CatchPanicLayer::new().error_response(Problems);
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use reqscope_core::RequestContext;

use crate::request_context::X_REQUEST_ID;

/// The status header of a gRPC response.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The message header of a gRPC response.
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What went wrong, in terms both protocols have: each code maps to one HTTP status and one
/// gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No valid credentials: HTTP 401, gRPC `UNAUTHENTICATED` (16).
    Unauthenticated,
    /// Valid credentials without the right to do this: HTTP 403, gRPC `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// A quota is spent: HTTP 429, gRPC `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// Something this server depends on is down; retrying later may work: HTTP 503, gRPC
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// The server failed: HTTP 500, gRPC `INTERNAL` (13).
    Internal,
}

impl ErrorCode {
    /// The HTTP status of a JSON answer.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code (the number sent in `grpc-status`; `tonic::Code::from(i32)`
    /// reads it back).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::Unauthenticated => 16,
            ErrorCode::PermissionDenied => 7,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::Unavailable => 14,
            ErrorCode::Internal => 13,
        }
    }
}

/// A refusal, described apart from any protocol; a [`RespondWithError`] makes the response.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// The machine-readable word of the JSON body's `error` (`unauthorized`, `rate_limited`).
    pub error: Cow<'static, str>,
    /// The human message: the JSON body's `message`, the gRPC `grpc-message`.
    pub message: Cow<'static, str>,
    /// Headers the response carries whatever its protocol (`WWW-Authenticate`,
    /// `Retry-After`, the `RateLimit` headers): HTTP headers, or gRPC metadata.
    pub headers: HeaderMap,
}

impl ErrorReply {
    /// A reply without extra headers.
    pub fn new(code: ErrorCode, error: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        ErrorReply { code, error: error.into(), message: message.into(), headers: HeaderMap::new() }
    }

    /// Adds a header (appended: a name may be given several times).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
}

/// Chooses, when a request arrives, how the layer would answer it with an error; see the
/// [module docs](self).
pub trait MakeErrorResponse {
    /// What builds the response, kept with the request until it is needed.
    type Responder: RespondWithError;

    /// The responder for `request`.
    fn for_request<B>(&self, request: &Request<B>) -> Self::Responder;
}

/// Builds the response for an [`ErrorReply`]; see the [module docs](self).
pub trait RespondWithError {
    /// The whole response, body included.
    fn respond(&self, reply: &ErrorReply) -> Response<Bytes>;
}

/// HTTP JSON errors, `{"error","message","request_id"}`, for every request; see the
/// [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonErrors;

impl MakeErrorResponse for JsonErrors {
    type Responder = JsonErrors;
    fn for_request<B>(&self, _request: &Request<B>) -> JsonErrors {
        JsonErrors
    }
}

impl RespondWithError for JsonErrors {
    fn respond(&self, reply: &ErrorReply) -> Response<Bytes> {
        let mut response = Response::new(json_body(&reply.error, &reply.message));
        *response.status_mut() = reply.code.http_status();
        let headers = response.headers_mut();
        headers.extend(reply.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// Trailers-only gRPC errors for every request; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcErrors;

impl MakeErrorResponse for GrpcErrors {
    type Responder = GrpcErrors;
    fn for_request<B>(&self, _request: &Request<B>) -> GrpcErrors {
        GrpcErrors
    }
}

impl RespondWithError for GrpcErrors {
    fn respond(&self, reply: &ErrorReply) -> Response<Bytes> {
        // gRPC reports failures in the status, not the HTTP status: a client that sees
        // anything but 200 reports a transport problem instead of the reply's code.
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.extend(reply.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from(reply.code.grpc_code()));
        // Percent-encoding leaves only visible ASCII and spaces, which a header value takes.
        if !reply.message.is_empty()
            && let Ok(message) = HeaderValue::from_maybe_shared(Bytes::from(grpc_percent_encode(&reply.message)))
        {
            headers.insert(GRPC_MESSAGE.clone(), message);
        }
        if let Some(id) = RequestContext::with(|ctx| ctx.id().to_header_value()) {
            headers.insert(X_REQUEST_ID, id);
        }
        response
    }
}

/// gRPC for gRPC requests, JSON for the rest: every layer's default; see the
/// [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ByContentType;

impl MakeErrorResponse for ByContentType {
    type Responder = Protocol;
    fn for_request<B>(&self, request: &Request<B>) -> Protocol {
        let grpc = request.headers().get(CONTENT_TYPE).is_some_and(|value| is_grpc_content_type(value.as_bytes()));
        if grpc { Protocol::Grpc } else { Protocol::Json }
    }
}

/// The protocol [`ByContentType`] chose for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// Answer as [`JsonErrors`] does.
    Json,
    /// Answer as [`GrpcErrors`] does.
    Grpc,
}

impl RespondWithError for Protocol {
    fn respond(&self, reply: &ErrorReply) -> Response<Bytes> {
        match self {
            Protocol::Json => JsonErrors.respond(reply),
            Protocol::Grpc => GrpcErrors.respond(reply),
        }
    }
}

/// `application/grpc`, `application/grpc+<format>` or `application/grpc;<parameters>`
/// (media types are case-insensitive).
pub(crate) fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    match value.get(..GRPC.len()) {
        Some(start) if start.eq_ignore_ascii_case(GRPC) => matches!(value.get(GRPC.len()), None | Some(b'+' | b';')),
        _ => false,
    }
}

/// Percent-encodes a `grpc-message`: every byte of the UTF-8 text outside `%x20-%x7E`, and
/// `%` itself, becomes `%XX` (the gRPC over HTTP/2 protocol, "Percent-Encoded").
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The JSON error body `{"error","message","request_id"}`, with the current request's id
/// (`null` outside a request). [`ApiError`](crate::api_error::ApiError) writes its bodies with it too.
pub(crate) fn json_body(error: &str, message: &str) -> Bytes {
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
    Bytes::from(body)
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

pin_project! {
    /// The response body of the layers that answer errors: the inner service's body, or the
    /// bytes of an error response. Size hint and end of stream are those of whichever it is.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Reply { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, passed through.
    pub fn inner(body: B) -> Self {
        ResponseBody { kind: Kind::Inner { body } }
    }

    /// The bytes of an error response (empty for a trailers-only gRPC response).
    pub fn reply(bytes: Bytes) -> Self {
        // Empty bytes end the stream at once: hyper then sends the headers with END_STREAM,
        // which is what makes a gRPC response trailers-only.
        let bytes = if bytes.is_empty() { None } else { Some(bytes) };
        ResponseBody { kind: Kind::Reply { bytes } }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Reply { bytes } => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Reply { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Reply { bytes } => SizeHint::with_exact(bytes.as_ref().map_or(0, |bytes| bytes.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use reqscope_core::RequestId;

    use super::*;

    #[test]
    fn escapes_what_json_requires() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn grpc_messages_are_percent_encoded_as_the_protocol_says() {
        // Printable ASCII but `%` stays as it is.
        assert_eq!(grpc_percent_encode("too many requests; retry in 60 s"), "too many requests; retry in 60 s");
        assert_eq!(grpc_percent_encode(r#"a "quoted" {x} <y> ~!"#), r#"a "quoted" {x} <y> ~!"#);
        // `%`, control characters, DEL and every byte of non-ASCII UTF-8 are encoded.
        assert_eq!(grpc_percent_encode("100%"), "100%25");
        assert_eq!(grpc_percent_encode("line\nbreak\ttab\u{7f}"), "line%0Abreak%09tab%7F");
        assert_eq!(grpc_percent_encode("é€"), "%C3%A9%E2%82%AC");
        assert_eq!(grpc_percent_encode(""), "");
    }

    #[test]
    fn grpc_message_header_carries_the_encoded_message() {
        let reply = ErrorReply::new(ErrorCode::Internal, "internal", "crème brûlée: 100%");
        let response = GrpcErrors.respond(&reply);
        assert_eq!(response.headers()["grpc-message"], "cr%C3%A8me br%C3%BBl%C3%A9e: 100%25");
        assert_eq!(response.headers()["grpc-status"], "13");
    }

    fn protocol_of(content_type: Option<&str>) -> Protocol {
        let mut request = Request::post("/svc/Method");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        ByContentType.for_request(&request.body(()).expect("a valid request"))
    }

    #[test]
    fn content_type_chooses_the_protocol() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc;charset=utf-8",
            "Application/GRPC",
        ] {
            assert_eq!(protocol_of(Some(grpc)), Protocol::Grpc, "{grpc}");
        }
        for json in [
            None,
            Some("application/json"),
            Some("application/grpc-web"),
            Some("application/grpc-web+proto"),
            Some("application/grpcx"),
            Some("application/gr"),
            Some("text/plain; application/grpc"),
            Some(""),
        ] {
            assert_eq!(protocol_of(json), Protocol::Json, "{json:?}");
        }
    }

    #[test]
    fn codes_map_to_both_protocols() {
        let expected = [
            (ErrorCode::Unauthenticated, 401, 16),
            (ErrorCode::PermissionDenied, 403, 7),
            (ErrorCode::ResourceExhausted, 429, 8),
            (ErrorCode::Unavailable, 503, 14),
            (ErrorCode::Internal, 500, 13),
        ];
        for (code, http, grpc) in expected {
            assert_eq!(code.http_status().as_u16(), http, "{code:?}");
            assert_eq!(code.grpc_code(), grpc, "{code:?}");
        }
    }

    fn reply_with_headers() -> ErrorReply {
        ErrorReply::new(ErrorCode::ResourceExhausted, "rate_limited", "too many requests; retry in 3 s")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("3"))
            .with_header(HeaderName::from_static("ratelimit-policy"), HeaderValue::from_static("\"a\";q=1"))
            .with_header(HeaderName::from_static("ratelimit-policy"), HeaderValue::from_static("\"b\";q=2"))
    }

    #[tokio::test]
    async fn grpc_errors_are_trailers_only_with_the_request_id() {
        let ctx = Arc::new(RequestContext::new(RequestId::parse("grpc-unit-1").expect("a valid id")));
        let response = RequestContext::scope_sync(ctx, || {
            GrpcErrors.respond(&reply_with_headers()).map(ResponseBody::<http_body_util::Empty<Bytes>>::reply)
        });
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(headers["grpc-message"], "too many requests; retry in 3 s");
        assert_eq!(headers["retry-after"], "3");
        assert_eq!(headers.get_all("ratelimit-policy").iter().collect::<Vec<_>>(), ["\"a\";q=1", "\"b\";q=2"]);
        assert_eq!(headers["x-request-id"], "grpc-unit-1");
        assert!(response.body().is_end_stream(), "no body: the headers end the stream");
        assert_eq!(response.body().size_hint().exact(), Some(0));
        let body = response.into_body().collect().await.expect("no error").to_bytes();
        assert!(body.is_empty());

        // Outside a request there is no id to send.
        assert!(GrpcErrors.respond(&reply_with_headers()).headers().get("x-request-id").is_none());
    }

    #[tokio::test]
    async fn json_errors_keep_their_shape_and_exact_size() {
        let ctx = Arc::new(RequestContext::new(RequestId::parse("json-unit-1").expect("a valid id")));
        let response = RequestContext::scope_sync(ctx, || {
            JsonErrors.respond(&reply_with_headers()).map(ResponseBody::<http_body_util::Empty<Bytes>>::reply)
        });
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers().get_all("ratelimit-policy").iter().count(), 2);
        let expected =
            r#"{"error":"rate_limited","message":"too many requests; retry in 3 s","request_id":"json-unit-1"}"#;
        assert!(!response.body().is_end_stream());
        assert_eq!(response.body().size_hint().exact(), Some(expected.len() as u64));
        let body = response.into_body().collect().await.expect("no error").to_bytes();
        assert_eq!(body, expected);
    }

    #[tokio::test]
    async fn the_inner_body_passes_through_with_its_hints() {
        let body: ResponseBody<http_body_util::Full<Bytes>> =
            ResponseBody::inner(http_body_util::Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.expect("no error").to_bytes(), "hello");
        let empty: ResponseBody<http_body_util::Empty<Bytes>> = ResponseBody::inner(http_body_util::Empty::new());
        assert!(empty.is_end_stream());
    }
}
