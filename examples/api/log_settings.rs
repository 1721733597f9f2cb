//! What the lines leave out and add, from the environment: `LOG_REDACT` (keys whose values
//! are written `"[redacted]"`, besides reqscope's defaults; default `email`) and `LOG_HEADERS`
//! (the request headers on the access line; default `user-agent`). Comma-separated; empty
//! entries are skipped, so an empty value adds nothing.

use reqscope::redact::Redaction;

/// `LOG_REDACT` when unset: the users' addresses stay out of the logs.
pub const DEFAULT_REDACT: &str = "email";

/// `LOG_HEADERS` when unset.
pub const DEFAULT_HEADERS: &str = "user-agent";

/// The redaction of the lines and the Sentry events: reqscope's default keys and those of
/// `LOG_REDACT`.
pub fn redaction_from_env() -> Result<Redaction, String> {
    redaction(&var("LOG_REDACT")?.unwrap_or_else(|| DEFAULT_REDACT.to_owned()))
}

/// The redaction with the keys of `list` added to reqscope's defaults.
pub fn redaction(list: &str) -> Result<Redaction, String> {
    let keys = entries(list);
    match keys.iter().find(|key| !reqscope::redact::is_valid_key(key)) {
        Some(bad) => Err(format!(
            "LOG_REDACT must be a comma-separated list of field names (letters, digits, `_`, `-`, `.`, such as \
             `email` or `card_number`), got {list:?}: {bad:?} is not one"
        )),
        None => Ok(Redaction::new().redact_keys(keys)),
    }
}

/// The request headers of `LOG_HEADERS`, for the access line.
pub fn headers_from_env() -> Result<Vec<http::HeaderName>, String> {
    headers(&var("LOG_HEADERS")?.unwrap_or_else(|| DEFAULT_HEADERS.to_owned()))
}

/// The header names of `list`, lowercased.
pub fn headers(list: &str) -> Result<Vec<http::HeaderName>, String> {
    entries(list)
        .into_iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!(
                    "LOG_HEADERS must be a comma-separated list of header names (such as `user-agent` or \
                     `x-client-version`), got {list:?}: {name:?} is not one"
                )
            })
        })
        .collect()
}

fn entries(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).collect()
}

/// The variable's value; `None` when unset.
fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} must be text")),
    }
}
