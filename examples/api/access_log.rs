//! Which access lines the server writes. `ACCESS_LOG_SKIP` (route templates, comma-separated;
//! default `/health,/ready`): a successful request to one of them writes none, so probes do
//! not flood the log. `ACCESS_LOG_SAMPLE` (`0.0`–`1.0`, default `1.0`): the share of the other
//! successful requests written, chosen by request id — every instance, and the next hop of
//! `/chain`, keeps the same ones — each with `sample_rate`. `SLOW_REQUEST_MS` (default 1000):
//! a request that takes this long is always written. So is every request that did not
//! succeed (a status of 400 or more, a gRPC status other than `OK`, a client that left).

use std::time::Duration;

use reqscope::access_sampling::{AccessSampler, SampleRate};

/// `ACCESS_LOG_SKIP` when it is not set.
pub const DEFAULT_SKIP: &str = "/health,/ready";
/// `ACCESS_LOG_SAMPLE` when it is not set.
pub const DEFAULT_SAMPLE: &str = "1.0";
/// `SLOW_REQUEST_MS` when it is not set.
pub const DEFAULT_SLOW_MS: &str = "1000";

/// The sampler described by the three variables' values; an error names the variable.
pub fn sampler(skip: &str, sample: &str, slow_ms: &str) -> Result<AccessSampler, String> {
    let routes: Vec<&str> = skip.split(',').map(str::trim).filter(|route| !route.is_empty()).collect();
    // A template as axum takes it starts with `/`; anything else would never match, silently.
    if let Some(bad) = routes.iter().find(|route| !route.starts_with('/') || route.contains(char::is_whitespace)) {
        return Err(format!(
            "ACCESS_LOG_SKIP must be a comma-separated list of route templates (such as /health or /users/{{id}}), \
             got {skip:?}: {bad:?} is not one"
        ));
    }
    let rate: SampleRate =
        sample.parse().map_err(|_| format!("ACCESS_LOG_SAMPLE must be a number from 0.0 to 1.0, got {sample:?}"))?;
    let slow: u64 = slow_ms
        .parse()
        .map_err(|_| format!("SLOW_REQUEST_MS must be a whole number of milliseconds, got {slow_ms:?}"))?;
    Ok(AccessSampler::new().skip_routes(routes).sample_rate(rate).slow_threshold(Duration::from_millis(slow)))
}

/// The sampler from `ACCESS_LOG_SKIP`, `ACCESS_LOG_SAMPLE` and `SLOW_REQUEST_MS`.
pub fn from_env() -> Result<AccessSampler, String> {
    let skip = var("ACCESS_LOG_SKIP", DEFAULT_SKIP)?;
    let sample = var("ACCESS_LOG_SAMPLE", DEFAULT_SAMPLE)?;
    let slow_ms = var("SLOW_REQUEST_MS", DEFAULT_SLOW_MS)?;
    sampler(&skip, &sample, &slow_ms)
}

fn var(name: &str, default: &str) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) => Ok(value),
        Err(std::env::VarError::NotPresent) => Ok(default.to_owned()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} must be text")),
    }
}
