//! The `/users/…` rate limit: `RATE_LIMIT_PER_MINUTE` (default 600) per user — per client ip
//! for anonymous requests — kept in process, or in Redis when `REDIS_URL` is set, so that
//! every instance shares one budget. Its state shows up on every log line of the request as
//! `rate_limit_remaining` and `rate_limit_reset`, and in the `RateLimit` headers.

use reqscope::rate_limit::{Quota, RateLimitLayer, RedisStore};

/// The layer described by `per_minute` and `redis_url`.
pub fn layer(per_minute: u32, redis_url: Option<&str>) -> Result<RateLimitLayer, String> {
    let quota = Quota::per_minute(per_minute).map_err(|e| format!("RATE_LIMIT_PER_MINUTE: {e}"))?;
    Ok(match redis_url {
        // Fail-open: a Redis outage logs a WARN per request but does not take the API down.
        Some(url) => RateLimitLayer::redis(quota, RedisStore::open(url).map_err(|e| format!("REDIS_URL: {e}"))?),
        None => RateLimitLayer::new(quota),
    })
}

/// The layer from `RATE_LIMIT_PER_MINUTE` and `REDIS_URL`.
pub fn from_env() -> Result<RateLimitLayer, String> {
    let per_minute = match std::env::var("RATE_LIMIT_PER_MINUTE") {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("RATE_LIMIT_PER_MINUTE must be a whole number of requests, got {value:?}"))?,
        Err(_) => 600,
    };
    let redis_url = std::env::var("REDIS_URL").ok().filter(|url| !url.is_empty());
    layer(per_minute, redis_url.as_deref())
}
