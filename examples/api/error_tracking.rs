//! Sentry, on when `SENTRY_DSN` is set: panics, 5xx `ApiError`s and every `error!` are sent
//! with the request id, the user, the org and the route. Unset: no client, no layer, no cost.

use reqscope::redact::Redaction;
use sentry::ClientInitGuard;

/// Starts the Sentry client when `SENTRY_DSN` is set, redacting what the log lines redact.
/// `SENTRY_ENVIRONMENT` and `SENTRY_RELEASE` are read by `sentry` itself.
pub fn init_from_env(redaction: Redaction) -> Result<Option<ClientInitGuard>, String> {
    let Some(dsn) = std::env::var("SENTRY_DSN").ok().filter(|dsn| !dsn.is_empty()) else {
        return Ok(None);
    };
    // Parsed here because sentry would panic on a malformed DSN, and a DSN holds a key.
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| {
        format!("SENTRY_DSN is not a valid Sentry DSN ({e}); it should look like https://KEY@HOST/PROJECT")
    })?;
    let mut options = sentry::ClientOptions::new()
        .add_integration(reqscope::sentry::RequestContextIntegration::new().redaction(redaction));
    options.dsn = Some(dsn);
    options.release = sentry::release_name!();
    Ok(Some(sentry::init(options)))
}
