//! Requests that raise their own log level: `x-log-level: debug` (or `trace`) from a user
//! with the role that allows it.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use reqscope_core::{RaisedLevel, RequestContext};

/// The header a request names its level in, by default.
const X_LOG_LEVEL: HeaderName = HeaderName::from_static("x-log-level");

/// The role that lets a request raise its level, by default.
const LOG_DEBUG_ROLE: &str = "log-debug";

/// Which header asks for a level (`None`: none does) and which role grants it.
#[derive(Clone, Debug)]
pub(crate) struct LevelRequests {
    pub(crate) header: Option<HeaderName>,
    pub(crate) role: Arc<str>,
}

impl Default for LevelRequests {
    fn default() -> Self {
        LevelRequests { header: Some(X_LOG_LEVEL), role: Arc::from(LOG_DEBUG_ROLE) }
    }
}

impl LevelRequests {
    /// Records the level the request asks for, if it asks for one: granted only once the
    /// context's roles include the role (the auth layer sets them after verifying the token).
    /// A value sent twice, or other than `debug` / `trace`, is no request: ignored, never
    /// logged, never an error. A request without the header costs one lookup.
    pub(crate) fn apply(&self, headers: &HeaderMap, ctx: &RequestContext) {
        let Some(header) = &self.header else { return };
        let mut sent = headers.get_all(header).iter();
        if let (Some(value), None) = (sent.next(), sent.next())
            && let Some(level) = RaisedLevel::parse(value.as_bytes())
        {
            ctx.raise_level_for_role(level, Arc::clone(&self.role));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqscope_core::RequestId;

    fn asked(values: &[&str]) -> RequestContext {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_LOG_LEVEL, value.parse().unwrap());
        }
        let ctx = RequestContext::new(RequestId::new_v4());
        LevelRequests::default().apply(&headers, &ctx);
        ctx.set_roles(["log-debug"]);
        ctx
    }

    #[test]
    fn only_one_valid_value_is_a_request() {
        assert_eq!(asked(&["debug"]).raised_level(), Some(RaisedLevel::Debug));
        assert_eq!(asked(&["TRACE"]).raised_level(), Some(RaisedLevel::Trace));
        assert_eq!(asked(&[]).raised_level(), None);
        assert_eq!(asked(&["verbose"]).raised_level(), None);
        assert_eq!(asked(&["debug", "debug"]).raised_level(), None);
    }
}
