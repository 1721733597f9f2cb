//! Decide whether a request failed, for its access line: HTTP 5xx, and the gRPC statuses that
//! mean the server failed — read where gRPC puts them, in the trailers.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use reqscope_tower::request_context::RequestContextLayer;
//! use reqscope_tower::classify::{Classification, ClassifyFailure, DefaultClassifier};
//!
//! /// For an internal API whose clients are our own: a 4xx is a bug somewhere, log it as one.
//! struct ClientErrorsToo;
//!
//! impl ClassifyFailure for ClientErrorsToo {
//!     fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification {
//!         let default = DefaultClassifier.classify_response(status, headers);
//!         default.with_failure(default.is_failure() || status.is_client_error())
//!     }
//!
//!     fn classify_trailers(&self, response: Classification, trailers: &HeaderMap) -> Classification {
//!         DefaultClassifier.classify_trailers(response, trailers)
//!     }
//! }
//!
//! let layer = RequestContextLayer::new().failure_classifier(ClientErrorsToo);
//! ```
//!
//! The [`RequestContextLayer`](crate::request_context::RequestContextLayer) asks its classifier twice at most:
//! once with the response head ([`classify_response`](ClassifyFailure::classify_response)),
//! and — when the body ends with a trailers frame — once more with the trailers
//! ([`classify_trailers`](ClassifyFailure::classify_trailers)), given what the head said. The
//! last answer decides the access line: ERROR for a failure, INFO otherwise, with
//! `grpc_status` when one is known. A request that never got to the end of its body (the
//! client left, the body failed) keeps its `aborted` line whatever the classifier says — but
//! a gRPC call dropped once its deadline had passed is put to
//! [`classify_trailers`](ClassifyFailure::classify_trailers) as `grpc-status: 4`
//! (`DEADLINE_EXCEEDED`), which decides that line's level.
//!
//! [`DefaultClassifier`] is the default: an HTTP 5xx is a failure; a gRPC response is judged
//! by its `grpc-status` — from the trailers, or from the headers of a trailers-only response
//! (how a gRPC server answers an error before sending any message) — and only the codes that
//! mean the *server* failed count ([`is_grpc_failure`]): `NOT_FOUND` or `INVALID_ARGUMENT` are
//! the client's business, like an HTTP 4xx.

use http::{HeaderMap, HeaderName, StatusCode};

/// The `grpc-status` header / trailer.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The verdict on one request: failed or not, and its gRPC status when it has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    failed: bool,
    grpc_status: Option<i32>,
}

impl Classification {
    /// Not a failure, no gRPC status.
    pub const SUCCESS: Self = Classification { failed: false, grpc_status: None };
    /// A failure, no gRPC status.
    pub const FAILURE: Self = Classification { failed: true, grpc_status: None };

    /// A failure exactly when `status` is a 5xx.
    pub fn from_http_status(status: StatusCode) -> Self {
        Classification { failed: status.is_server_error(), grpc_status: None }
    }

    /// `code` as the gRPC status, failed exactly when [`is_grpc_failure`] says so.
    pub const fn from_grpc_status(code: i32) -> Self {
        Classification { failed: is_grpc_failure(code), grpc_status: Some(code) }
    }

    /// The same verdict with `failed` as its failure.
    #[must_use]
    pub const fn with_failure(self, failed: bool) -> Self {
        Classification { failed, ..self }
    }

    /// The same verdict with `code` as its gRPC status (the failure is left as it is).
    #[must_use]
    pub const fn with_grpc_status(self, code: i32) -> Self {
        Classification { grpc_status: Some(code), ..self }
    }

    /// Whether the request failed: its access line is an ERROR.
    pub const fn is_failure(&self) -> bool {
        self.failed
    }

    /// The gRPC status, when the response carried one; it goes on the access line.
    pub const fn grpc_status(&self) -> Option<i32> {
        self.grpc_status
    }
}

/// Decides whether a request failed, from its response head and, when the body ends with
/// them, its trailers. See the [module docs](self).
///
/// Called on the request path, once or twice per request: keep it cheap, and never panic on
/// what a response carries.
pub trait ClassifyFailure: Send + Sync + 'static {
    /// The verdict from the status and headers, before the body is sent.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification;

    /// The verdict once the body has ended with `trailers`, given the head's verdict
    /// (`response`). By default the head's verdict stands.
    fn classify_trailers(&self, response: Classification, trailers: &HeaderMap) -> Classification {
        let _ = trailers;
        response
    }
}

/// HTTP 5xx, and the gRPC statuses of [`is_grpc_failure`], are failures.
///
/// A gRPC response (`content-type: application/grpc…`) is judged by the `grpc-status` of its
/// headers when it is trailers-only, else by the `grpc-status` of its trailers; a status that
/// is not a number is ignored (and the HTTP status decides).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl ClassifyFailure for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification {
        let http = Classification::from_http_status(status);
        // Only a gRPC response's headers can hold its final status (trailers-only); elsewhere
        // a `grpc-status` header means nothing.
        match is_grpc(headers).then(|| grpc_status(headers)).flatten() {
            Some(code) => Classification::from_grpc_status(code).with_failure(http.failed || is_grpc_failure(code)),
            None => http,
        }
    }

    fn classify_trailers(&self, response: Classification, trailers: &HeaderMap) -> Classification {
        match grpc_status(trailers) {
            Some(code) => response.with_grpc_status(code).with_failure(response.failed || is_grpc_failure(code)),
            None => response,
        }
    }
}

/// Whether a gRPC status code means the server failed: `UNKNOWN` (2), `DEADLINE_EXCEEDED`
/// (4), `UNIMPLEMENTED` (12), `INTERNAL` (13), `UNAVAILABLE` (14), `DATA_LOSS` (15).
///
/// The other codes (`NOT_FOUND`, `INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) answer a request
/// the server understood and handled; they are no more failures than an HTTP 4xx.
pub const fn is_grpc_failure(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The `grpc-status` in `headers` (a response's headers or trailers), when it is one
/// non-negative decimal number.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get(GRPC_STATUS)?.as_bytes();
    // `str::parse` would accept a leading `+`; the gRPC grammar is digits only.
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether the response is gRPC (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web…`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value))).collect()
    }

    #[test]
    fn server_errors_fail_and_client_errors_do_not() {
        let none = HeaderMap::new();
        assert!(DefaultClassifier.classify_response(StatusCode::INTERNAL_SERVER_ERROR, &none).is_failure());
        assert!(DefaultClassifier.classify_response(StatusCode::SERVICE_UNAVAILABLE, &none).is_failure());
        assert!(!DefaultClassifier.classify_response(StatusCode::NOT_FOUND, &none).is_failure());
        assert!(!DefaultClassifier.classify_response(StatusCode::OK, &none).is_failure());
        assert_eq!(DefaultClassifier.classify_response(StatusCode::OK, &none).grpc_status(), None);
    }

    #[test]
    fn a_trailers_only_grpc_response_is_judged_by_its_headers() {
        let internal = headers(&[("content-type", "application/grpc"), ("grpc-status", "13")]);
        let verdict = DefaultClassifier.classify_response(StatusCode::OK, &internal);
        assert_eq!(verdict, Classification::FAILURE.with_grpc_status(13));
        let not_found = headers(&[("content-type", "application/grpc+proto"), ("grpc-status", "5")]);
        assert_eq!(
            DefaultClassifier.classify_response(StatusCode::OK, &not_found),
            Classification::from_grpc_status(5)
        );
        // Not gRPC: the header is nobody's status.
        let plain = headers(&[("content-type", "text/plain"), ("grpc-status", "13")]);
        assert_eq!(DefaultClassifier.classify_response(StatusCode::OK, &plain), Classification::SUCCESS);
    }

    #[test]
    fn the_trailers_decide_a_streamed_grpc_response() {
        let head =
            DefaultClassifier.classify_response(StatusCode::OK, &headers(&[("content-type", "application/grpc")]));
        assert_eq!(head, Classification::SUCCESS);
        let ok = DefaultClassifier.classify_trailers(head, &headers(&[("grpc-status", "0")]));
        assert_eq!(ok, Classification::SUCCESS.with_grpc_status(0));
        let unavailable = DefaultClassifier.classify_trailers(head, &headers(&[("grpc-status", "14")]));
        assert_eq!(unavailable, Classification::FAILURE.with_grpc_status(14));
        let without = DefaultClassifier.classify_trailers(head, &headers(&[("x-other", "1")]));
        assert_eq!(without, head);
    }

    #[test]
    fn exactly_the_server_side_codes_are_failures() {
        let failing: Vec<i32> = (0..=16).filter(|&code| is_grpc_failure(code)).collect();
        assert_eq!(failing, [2, 4, 12, 13, 14, 15]);
        assert!(!is_grpc_failure(-1));
        assert!(!is_grpc_failure(17));
    }

    #[test]
    fn a_status_that_is_not_a_number_is_ignored() {
        for bad in ["", "+13", "-1", " 13", "13 ", "1e3", "99999999999", "thirteen"] {
            let mut map = HeaderMap::new();
            map.insert(GRPC_STATUS, HeaderValue::from_str(bad).unwrap());
            assert_eq!(grpc_status(&map), None, "{bad:?}");
        }
        assert_eq!(grpc_status(&headers(&[("grpc-status", "007")])), Some(7));
    }
}
