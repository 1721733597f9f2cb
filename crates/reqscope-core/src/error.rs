use thiserror::Error;

/// Returned by [`RequestContext::try_current`](crate::RequestContext::try_current) outside a request.
///
/// Its message says what to add, because the usual cause is a missing layer rather than a bug
/// in the calling code.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[error(
    "no request context: this code runs outside a request. Add `reqscope::RequestContextLayer` \
     to the service (outermost layer), start tasks with `reqscope::spawn` / `spawn_blocking` / \
     `bind` instead of the plain tokio functions, or wrap jobs and tests in \
     `RequestContext::scope`"
)]
pub struct NoRequestContext;

/// Why a string was rejected as a request id.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum InvalidRequestId {
    /// The id was empty.
    #[error("request id is empty")]
    Empty,
    /// The id was longer than [`RequestId::MAX_LEN`](crate::RequestId::MAX_LEN) bytes.
    #[error("request id is longer than 128 bytes")]
    TooLong,
    /// The id contained a byte outside `[A-Za-z0-9._:+/=@-]`.
    #[error("request id contains a byte outside [A-Za-z0-9._:+/=@-]")]
    ForbiddenByte,
}

/// Displays an error with its whole `source()` chain on one line: `outer: inner: root`. Log
/// lines use it so that the cause of a failure is not cut off at the first layer.
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
