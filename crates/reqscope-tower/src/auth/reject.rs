//! Why a request was refused, and the reply that says so.

use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;

use crate::error_response::{ErrorCode, ErrorReply};

/// The reason class of a rejected bearer token: the `message` of the 401 body, the
/// `error_description` of `WWW-Authenticate` and the `reason` of the WARN event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// Not a JWT, not a bearer credential, a required claim (`exp`, `sub`) is absent, or a
    /// claim has the wrong type (a numeric `sub`, a string `exp`).
    Malformed,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    NotYetValid,
    /// The signature does not match, or no configured key has the token's `kid`.
    InvalidSignature,
    /// `iss` is absent or not the configured issuer.
    WrongIssuer,
    /// `aud` is absent or not the configured audience.
    WrongAudience,
    /// `alg` is `none`, unknown, or not of the key's family (an HMAC token against an RSA key).
    UnsupportedAlgorithm,
    /// The header has a `crit` parameter: it names extensions the recipient must understand,
    /// and this layer understands none (RFC 7515 §4.1.11).
    UnsupportedCrit,
    /// The token is longer than the size cap; it was not parsed.
    TooLarge,
    /// The signing keys could not be fetched: 503, not 401, since the token may be fine.
    Unavailable,
}

impl Reason {
    /// The reason class as written in bodies, headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::InvalidSignature => "invalid_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::TooLarge => "too_large",
            Reason::Unavailable => "keys_unavailable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 401 with `WWW-Authenticate` as RFC 6750 section 3 describes, after one WARN event.
pub(crate) fn unauthorized(reason: Reason, realm: &str) -> ErrorReply {
    // The reason class only: never the token, never the Authorization header.
    tracing::warn!(target: "reqscope::auth", reason = reason.as_str(), "bearer token rejected");
    let mut reply = ErrorReply::new(ErrorCode::Unauthenticated, "unauthorized", reason.as_str());
    let challenge = match reason {
        // RFC 6750 3.1: a request without credentials gets no error code.
        Reason::Missing => format!("Bearer realm=\"{realm}\""),
        _ => format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{reason}\""),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        reply.headers.insert(WWW_AUTHENTICATE, value);
    }
    reply
}

/// The reply for a refused request: 503 (`UNAVAILABLE`) when the keys are unavailable, else
/// 401 (`UNAUTHENTICATED`).
pub(crate) fn refuse(reason: Reason, realm: &str) -> ErrorReply {
    if reason == Reason::Unavailable {
        // The token may be fine; the server cannot tell.
        tracing::warn!(target: "reqscope::auth", reason = reason.as_str(), "bearer token not checked");
        return ErrorReply::new(ErrorCode::Unavailable, "unavailable", "signing keys are unavailable; try again later");
    }
    unauthorized(reason, realm)
}
