//! The Redis store: one GCRA script per check, run atomically by the server on its own clock.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::quota::{Decision, Quota};

const UNIT: Duration = Duration::from_micros(1);

/// Arrival times live in Redis as integer microseconds under `PREFIX + key`, expiring when
/// the key is idle again. `TIME` is the server's, so instances with skewed clocks agree.
/// `%.0f` because Lua's default number formatting would round 16-digit values.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next = tat + interval
local ahead = next - now
if ahead > span then
  return {0, 0, tat - now, ahead - span}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((span - ahead) / interval), ahead, 0}
";

/// A rate-limit store shared by every instance that uses the same Redis and key prefix.
///
/// One round trip per check (`EVALSHA` of a GCRA script; the script is loaded on first use).
/// The connection is made lazily and remade after failures, with short timeouts, so a
/// Redis outage costs each request at most [`timeout`](RedisStore::timeout) and the
/// limiter recovers by itself when Redis is back.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

/// Why a Redis store could not be made or could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script returned something else than four integers.
    #[error("unexpected reply from the rate-limit script")]
    Reply,
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`, `rediss://…` is not supported), with the
    /// key prefix `reqscope:rate_limit:` and a 250 ms timeout. Must be called inside a Tokio
    /// runtime; it does not connect yet.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError::Url`] when the URL does not parse.
    pub fn open(url: &str) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| RedisStoreError::Url(e.to_string()))?;
        let timeout = Duration::from_millis(250);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            connection,
            script: redis::Script::new(GCRA),
            prefix: "reqscope:rate_limit:".to_owned(),
            timeout,
        })
    }

    /// Keys are stored as `prefix + key`; instances that should share budgets share a prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one check may take before it counts as a Redis failure (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) async fn check(&self, key: &str, quota: &Quota) -> Result<Decision, RedisStoreError> {
        let interval = quota.interval_in(UNIT);
        let span = interval.saturating_mul(u64::from(quota.burst()));
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(interval).arg(span);
        let reply: Vec<u64> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| RedisStoreError::Timeout(self.timeout))??;
        let [allowed, remaining, reset, retry_after] = reply[..] else {
            return Err(RedisStoreError::Reply);
        };
        Ok(Decision {
            allowed: allowed == 1,
            remaining,
            reset: Duration::from_micros(reset),
            retry_after: Duration::from_micros(retry_after),
        })
    }
}
