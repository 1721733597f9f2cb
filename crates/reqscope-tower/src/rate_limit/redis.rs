//! The Redis store: concurrent checks coalesced into one atomic GCRA script call per round
//! trip, run by the server on its own clock; optionally, budget leased to each instance a few
//! cells at a time.
//!
//! Every store has one background task (spawned on the first check) that owns the
//! connection. A check is queued to it; while a round trip is in flight, the checks that
//! arrive wait in the (bounded) queue, and the next round trip sends up to `max_batch` of them
//! as one `EVALSHA` of [`BATCH_GCRA`], one entry per distinct key: `want` cells of it at once
//! (one GET and one SET however many checks of the key the batch has). Redis runs a script
//! atomically on one reading of its clock, and the cells of a key go to its checks in queue
//! order, so every decision (allowed, `remaining`, `reset`, `retry_after`) is the one a
//! one-by-one run in that order, at that instant, would give.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisWrite as _, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::quota::{Decision, Quota};

const UNIT: Duration = Duration::from_micros(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_MAX_BATCH: usize = 128;
const DEFAULT_MAX_QUEUE: usize = 4096;
const DEFAULT_LEASE_LIFETIME: Duration = Duration::from_secs(1);
const DEFAULT_PREFIX: &str = "reqscope:rate_limit:";

/// GCRA for each key in order, on one reading of the server's clock. `ARGV` holds
/// `interval, span, want` per key (microseconds, cells): up to `want` cells are taken at once
/// (1 for an exact check, more for a lease). Per key the reply is four integers: cells
/// granted (0 = refused), requests left, µs until the whole burst is back, µs until the next
/// request would be allowed (0 when granted).
///
/// Arrival times live in Redis as integer microseconds under `PREFIX + key`, expiring when
/// the key is idle again. `%.0f` because Lua's default number formatting would round
/// 16-digit values. With `want = 1` this is the single-check script this store ran before
/// batching, decision for decision: allowed iff `tat + interval - now <= span`.
const BATCH_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local span = tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local fit = math.floor((span - (tat - now)) / interval)
  if fit > 0 and tat + fit * interval - now > span then fit = fit - 1 end
  local k = math.min(want, fit)
  if k < 1 then
    out[4 * i - 3] = 0
    out[4 * i - 2] = 0
    out[4 * i - 1] = tat - now
    out[4 * i] = tat + interval - now - span
  else
    local next = tat + k * interval
    local ahead = next - now
    redis.call('SET', KEYS[i], string.format('%.0f', next), 'PX', math.ceil(ahead / 1000))
    out[4 * i - 3] = k
    out[4 * i - 2] = math.floor((span - ahead) / interval)
    out[4 * i - 1] = ahead
    out[4 * i] = 0
  end
end
return out
";

/// A rate-limit store shared by every instance that uses the same Redis and key prefix.
///
/// Checks are coalesced: a background task owns the connection, and the checks that arrive
/// while a round trip is in flight go together in the next one (at most
/// [`max_batch`](Self::max_batch)), as one `EVALSHA` of a script that runs GCRA once per
/// distinct key for as many cells as the batch has checks of it; the cells go to the checks
/// in queue order. The script is atomic, so the decisions are exactly those of one call per
/// check. The script
/// is loaded on first use and again when Redis answers `NOSCRIPT` (after a restart or
/// `SCRIPT FLUSH`). The connection is made lazily and remade after failures, with short
/// timeouts, so a Redis outage costs each request at most twice [`timeout`](Self::timeout)
/// (once queued behind a call that ran out, once its own) and
/// the limiter recovers by itself when Redis is back.
///
/// With [`local_lease`](Self::local_lease), an instance takes several cells of a key's
/// budget per script call and serves checks from them in process: far fewer round trips, at
/// a documented cost in exactness.
///
/// Clones share the queue, the task and the counters. The task is spawned on the Tokio
/// runtime of the first check and lives as long as the store (or that runtime).
/// Redis Cluster is not supported (one script call touches keys of any slot).
#[derive(Clone)]
pub struct RedisStore {
    config: Arc<Config>,
    shared: Arc<Handle>,
}

/// What the background task is made with.
#[derive(Clone)]
struct Config {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    max_batch: usize,
    max_queue: usize,
    lease: Option<LeaseConfig>,
}

#[derive(Clone, Copy, Debug)]
struct LeaseConfig {
    cells: u32,
    lifetime: Duration,
}

/// What every clone shares once the store is in use.
#[derive(Default)]
struct Handle {
    queue: OnceLock<mpsc::Sender<Job>>,
    leases: OnceLock<Arc<Leases>>,
    /// Shared with the background task, which holds no sender of its own queue (it ends
    /// when the last clone of the store is dropped).
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    checks: AtomicU64,
    script_calls: AtomicU64,
    script_loads: AtomicU64,
    local: AtomicU64,
    queue_full: AtomicU64,
}

/// Counters of a [`RedisStore`] (shared by its clones), from [`RedisStore::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreStats {
    /// Checks asked of the store.
    pub checks: u64,
    /// Batch script calls made (each one `EVALSHA` for up to
    /// [`max_batch`](RedisStore::max_batch) checks; a call repeated after `NOSCRIPT` counts
    /// once).
    pub script_calls: u64,
    /// Times Redis answered `NOSCRIPT` and the script was loaded (first use, Redis restarted,
    /// `SCRIPT FLUSH`).
    pub script_loads: u64,
    /// Checks answered in process, without Redis: from a lease, or a refusal remembered
    /// from Redis's last answer for the key ([`local_lease`](RedisStore::local_lease) mode
    /// only).
    pub local: u64,
    /// Checks refused with [`RedisStoreError::QueueFull`].
    pub queue_full: u64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.config.prefix)
            .field("timeout", &self.config.timeout)
            .field("max_batch", &self.config.max_batch)
            .field("max_queue", &self.config.max_queue)
            .field("lease", &self.config.lease)
            .finish()
    }
}

/// Why a Redis store could not be made or could not answer.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The script returned something else than four integers per check.
    #[error("unexpected reply from the rate-limit script")]
    Reply,
    /// More checks were waiting for Redis than [`RedisStore::max_queue`] allows: Redis is
    /// slower than the request rate. The check is not made (the layer treats it as a store
    /// failure: fail-open or fail-closed).
    #[error("{0} rate-limit checks already wait for Redis")]
    QueueFull(usize),
    /// The store's background task is gone: the Tokio runtime it was spawned on (the one of
    /// the store's first check) has shut down.
    #[error("the Redis store's background task has stopped")]
    Stopped,
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`, `rediss://…` is not supported), with the
    /// key prefix `reqscope:rate_limit:`, a 250 ms timeout, batches of at most 128 checks and
    /// a queue of at most 4,096. Exact (no lease) unless [`local_lease`](Self::local_lease)
    /// is set. Must be called inside a Tokio runtime; it does not connect yet.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError::Url`] when the URL does not parse.
    pub fn open(url: &str) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| RedisStoreError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            config: Arc::new(Config {
                connection,
                prefix: DEFAULT_PREFIX.to_owned(),
                timeout: DEFAULT_TIMEOUT,
                max_batch: DEFAULT_MAX_BATCH,
                max_queue: DEFAULT_MAX_QUEUE,
                lease: None,
            }),
            shared: Arc::default(),
        })
    }

    /// A store with `change` made to its settings. The settings are fixed when the store is
    /// built: each builder call makes a store with a queue, background task and counters of
    /// its own (clones made after it share them).
    fn configure(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = (*self.config).clone();
        change(&mut config);
        RedisStore { config: Arc::new(config), shared: Arc::default() }
    }

    /// Keys are stored as `prefix + key`; instances that should share budgets share a prefix.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.configure(|config| config.prefix = prefix)
    }

    /// How long one check may take before it counts as a Redis failure (default 250 ms),
    /// time waiting in the queue included.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.configure(|config| config.timeout = timeout)
    }

    /// At most this many checks in one script call (default 128; at least 1).
    pub fn max_batch(self, checks: usize) -> Self {
        self.configure(|config| config.max_batch = checks.max(1))
    }

    /// At most this many checks waiting for Redis (default 4,096; at least 1). A check that
    /// finds the queue full fails at once with [`RedisStoreError::QueueFull`], which the
    /// layer handles as any store failure: the request goes on (fail-open, counted in
    /// [`store_failures`](super::RateLimitLayer::store_failures)) or gets 503 with
    /// [`fail_closed`](super::RateLimitLayer::fail_closed).
    pub fn max_queue(self, checks: usize) -> Self {
        self.configure(|config| config.max_queue = checks.max(1))
    }

    /// Local-lease mode (opt-in): this instance takes up to `cells` requests of a key's
    /// budget from Redis per script call and serves the key's next checks from them in
    /// process, until they are used or the lease is [`lease_lifetime`](Self::lease_lifetime)
    /// old (default 1 s). `cells` is at least 1. Meant for hot keys; the default (exact)
    /// mode asks Redis for every check.
    ///
    /// The bound, per key and per instance (exact mode has no error):
    ///
    /// - **never more than Redis counted**: every allowed request spends a cell that the
    ///   script took from the GCRA budget in Redis, and an instance holds at most one lease
    ///   per key, of at most `cells − 1` cells beyond the check that took it. Over any
    ///   interval, all instances together allow at most what exact mode would allow plus
    ///   `cells − 1` per instance: cells taken before the interval and spent in it (a
    ///   request may be served up to a lease lifetime after its cell was counted);
    /// - **undershoot**: cells an instance has taken but not spent are unavailable to the
    ///   others (who may be refused meanwhile), and the unspent cells of an expired lease
    ///   are lost (not given back; they refill at the quota's rate like spent ones): at
    ///   most `cells − 1` per instance per lease;
    /// - a key refused by Redis is refused in process too, until its `Retry-After` or the
    ///   lease lifetime, whichever comes first (GCRA never allows a key before its retry
    ///   time, so this refuses nothing Redis would have allowed).
    ///
    /// The headers then report this instance's view as of the lease: `remaining` = cells
    /// left in its lease + what Redis had left when it was taken (others may have spent that
    /// since); `reset` = Redis's answer then, minus the time since; `retry_after` = Redis's
    /// answer for the refusal, minus the time since.
    pub fn local_lease(self, cells: u32) -> Self {
        let cells = cells.max(1);
        self.configure(|config| {
            let lifetime = config.lease.map_or(DEFAULT_LEASE_LIFETIME, |lease| lease.lifetime);
            config.lease = Some(LeaseConfig { cells, lifetime });
        })
    }

    /// How long a lease (and a remembered refusal) is used at most (default 1 s; at least
    /// 1 ms). Without [`local_lease`](Self::local_lease) it has no effect.
    pub fn lease_lifetime(self, lifetime: Duration) -> Self {
        let lifetime = lifetime.max(Duration::from_millis(1));
        self.configure(|config| {
            if let Some(lease) = &mut config.lease {
                lease.lifetime = lifetime;
            }
        })
    }

    /// The store's counters so far (shared by its clones).
    pub fn stats(&self) -> RedisStoreStats {
        let stats = &self.shared.stats;
        RedisStoreStats {
            checks: stats.checks.load(Ordering::Relaxed),
            script_calls: stats.script_calls.load(Ordering::Relaxed),
            script_loads: stats.script_loads.load(Ordering::Relaxed),
            local: stats.local.load(Ordering::Relaxed),
            queue_full: stats.queue_full.load(Ordering::Relaxed),
        }
    }

    /// A check: from the key's lease if there is one, else through Redis.
    #[cfg(test)]
    pub(crate) async fn check(&self, key: String, quota: &Quota) -> Result<Decision, RedisStoreError> {
        match self.check_local(&key, quota) {
            Some(decision) => Ok(decision),
            None => self.check_remote(key, quota).await,
        }
    }

    /// The answer of the key's lease or remembered refusal, in local-lease mode (counted as a
    /// check); `None` when Redis must be asked ([`check_remote`](Self::check_remote)).
    pub(crate) fn check_local(&self, key: &str, quota: &Quota) -> Option<Decision> {
        let lease = self.config.lease?;
        let interval = quota.interval_in(UNIT);
        let span = interval.saturating_mul(u64::from(quota.burst()));
        let leases = self.shared.leases.get_or_init(|| Arc::new(Leases::new(lease)));
        let decision = leases.take(key, interval, span, Instant::now())?;
        let stats = &self.shared.stats;
        stats.checks.fetch_add(1, Ordering::Relaxed);
        stats.local.fetch_add(1, Ordering::Relaxed);
        Some(decision)
    }

    /// A check through Redis (after [`check_local`](Self::check_local) said `None`).
    pub(crate) async fn check_remote(&self, key: String, quota: &Quota) -> Result<Decision, RedisStoreError> {
        let stats = &self.shared.stats;
        stats.checks.fetch_add(1, Ordering::Relaxed);
        let interval = quota.interval_in(UNIT);
        let span = interval.saturating_mul(u64::from(quota.burst()));
        let now = Instant::now();
        let queue = self.shared.queue.get_or_init(|| self.spawn());
        let deadline = later(now, self.config.timeout);
        let (reply, answer) = oneshot::channel();
        let job = Job { key, interval, span, deadline, reply };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(RedisStoreError::QueueFull(self.config.max_queue));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(RedisStoreError::Stopped),
        }
        // No timer per check: the task answers every check, with `Timeout` when its deadline
        // passed. A check queued behind a slow call can so wait up to twice the timeout.
        match answer.await {
            Ok(result) => result,
            Err(_) if Instant::now() >= deadline => Err(RedisStoreError::Timeout(self.config.timeout)),
            Err(_) => Err(RedisStoreError::Stopped),
        }
    }

    /// The SHA1 of the batch script.
    #[cfg(test)]
    fn script_hash(&self) -> String {
        redis::Script::new(BATCH_GCRA).get_hash().to_owned()
    }

    fn spawn(&self) -> mpsc::Sender<Job> {
        let config = &*self.config;
        let (sender, receiver) = mpsc::channel(config.max_queue);
        // The same map as the checks' fast path.
        let leases =
            config.lease.map(|lease| Arc::clone(self.shared.leases.get_or_init(|| Arc::new(Leases::new(lease)))));
        let worker = Worker {
            queue: receiver,
            connection: config.connection.clone(),
            script: redis::Script::new(BATCH_GCRA),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            max_batch: config.max_batch,
            lease_cells: config.lease.map_or(1, |lease| lease.cells),
            leases,
            stats: Arc::clone(&self.shared.stats),
            jobs: Vec::with_capacity(config.max_batch),
            command: redis::Cmd::new(),
            groups: Vec::new(),
            group_of: Vec::new(),
        };
        tokio::spawn(worker.run());
        sender
    }
}

/// One check waiting for Redis.
struct Job {
    key: String,
    interval: u64,
    span: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<Decision, RedisStoreError>>,
}

/// The background task of a store: takes what the queue holds (up to `max_batch`), sends it
/// as one script call, answers every check, and again.
struct Worker {
    queue: mpsc::Receiver<Job>,
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    max_batch: usize,
    lease_cells: u32,
    /// The leases, in lease mode.
    leases: Option<Arc<Leases>>,
    stats: Arc<Stats>,
    /// The batch, reused.
    jobs: Vec<Job>,
    /// The script call, rebuilt in place for every batch.
    command: redis::Cmd,
    /// One per script entry: a key (and quota) of the batch.
    groups: Vec<Group>,
    /// The group of each job.
    group_of: Vec<usize>,
}

/// The checks of one key (and quota) in a batch: one script entry.
struct Group {
    /// The index of its first check in the batch.
    first: usize,
    checks: u64,
    /// Checks answered so far, in queue order.
    served: u64,
    entry: Result<Entry, RedisStoreError>,
}

/// One entry of the script's reply.
#[derive(Clone, Copy)]
struct Entry {
    granted: u64,
    remaining: u64,
    reset: u64,
    retry_after: u64,
}

impl Worker {
    async fn run(mut self) {
        while self.queue.recv_many(&mut self.jobs, self.max_batch).await > 0 {
            let now = Instant::now();
            // Checks past their deadline (they waited behind a slow call) are not made.
            let timeout = self.timeout;
            self.jobs.retain_mut(|job| {
                if job.deadline > now {
                    return !job.reply.is_closed();
                }
                let (done, _) = oneshot::channel();
                let _ = std::mem::replace(&mut job.reply, done).send(Err(RedisStoreError::Timeout(timeout)));
                false
            });
            if let Some(leases) = &self.leases {
                Self::answer_from_leases(&mut self.jobs, leases, &self.stats, now);
            }
            if !self.jobs.is_empty() {
                self.batch(now).await;
            }
            self.jobs.clear();
        }
    }

    /// A lease filled by an earlier batch answers the checks queued before it came back.
    fn answer_from_leases(jobs: &mut Vec<Job>, leases: &Leases, stats: &Stats, now: Instant) {
        let mut index = 0;
        while index < jobs.len() {
            let job = &jobs[index];
            match leases.take(&job.key, job.interval, job.span, now) {
                Some(decision) => {
                    stats.local.fetch_add(1, Ordering::Relaxed);
                    // `remove`, not `swap_remove`: the checks left keep their queue order.
                    let job = jobs.remove(index);
                    let _ = job.reply.send(Ok(decision));
                }
                None => index += 1,
            }
        }
    }

    /// One script entry per key (and quota) of the batch, asking for as many cells as the
    /// batch has checks of it (in lease mode, `lease_cells − 1` more, to keep). Then every
    /// check gets, in queue order among the checks of its key and quota (a key checked under
    /// two quotas in one batch is run as two entries), what one call per check would have answered at the
    /// script's instant: the first `granted` are allowed (each with the `remaining` and
    /// `reset` it would have seen), the rest refused; in lease mode the leftover cells become
    /// the key's lease.
    async fn batch(&mut self, sent: Instant) {
        self.groups.clear();
        self.group_of.clear();
        let mut index: HashMap<(&str, u64, u64), usize> = HashMap::with_capacity(self.jobs.len());
        for (n, job) in self.jobs.iter().enumerate() {
            let group = *index.entry((job.key.as_str(), job.interval, job.span)).or_insert_with(|| {
                self.groups.push(Group { first: n, checks: 0, served: 0, entry: Err(RedisStoreError::Reply) });
                self.groups.len() - 1
            });
            self.groups[group].checks += 1;
            self.group_of.push(group);
        }
        drop(index);
        let leases = self.leases.clone();
        let leases = leases.as_deref();
        let extra = if leases.is_some() { u64::from(self.lease_cells - 1) } else { 0 };
        self.command.clear();
        self.command.arg("EVALSHA").arg(self.script.get_hash()).arg(self.groups.len());
        for group in &self.groups {
            write_key(&mut self.command, &self.prefix, &self.jobs[group.first].key);
        }
        for group in &self.groups {
            let job = &self.jobs[group.first];
            self.command.arg(job.interval).arg(job.span).arg(group.checks.saturating_add(extra));
        }
        // Bounded by the newest check's deadline, not the oldest's: one check that waited
        // behind the previous call must not fail the whole batch.
        let deadline = self.jobs.iter().map(|job| job.deadline).max().unwrap_or(sent);
        match self.call(deadline).await {
            Ok(reply) => {
                let mut entries = Entries::new(&reply, self.groups.len());
                for group in &mut self.groups {
                    group.entry = entries.next_entry();
                }
            }
            Err(error) => {
                for group in &mut self.groups {
                    group.entry = Err(error.clone());
                }
            }
        }
        if let Some(leases) = leases {
            for group in &self.groups {
                if let Ok(entry) = &group.entry {
                    let job = &self.jobs[group.first];
                    leases.store(&job.key, job.interval, job.span, entry, group.checks, sent);
                }
            }
        }
        let leased = leases.is_some();
        let answered = Instant::now();
        for (job, &group) in self.jobs.drain(..).zip(&self.group_of) {
            let group = &mut self.groups[group];
            let answer = match &group.entry {
                Ok(entry) if group.served < entry.granted => {
                    // Cells granted after this check's, in this batch or kept in the lease.
                    let after = entry.granted - group.served - 1;
                    let mut decision = entry.decision(after);
                    if !leased {
                        // Its own reset, as if the cells after it were not taken yet.
                        let earlier = Duration::from_micros(after.saturating_mul(job.interval));
                        decision.reset = decision.reset.saturating_sub(earlier);
                    }
                    Ok(decision)
                }
                Ok(entry) => Ok(entry.exhausted(job.interval, job.span)),
                Err(error) => Err(error.clone()),
            };
            group.served += 1;
            // Counted above either way (Redis took its cell, as it would have for a check
            // that timed out on its own), but answered as the timeout it is.
            let answer = if job.deadline <= answered { Err(RedisStoreError::Timeout(self.timeout)) } else { answer };
            let _ = job.reply.send(answer);
        }
    }

    /// Sends the batch built in `command`; on `NOSCRIPT` (first use, Redis restarted, `SCRIPT
    /// FLUSH`) loads the script and sends it again. Gives up at `deadline` (the latest of
    /// the batch's checks), or after the timeout, whichever comes first.
    async fn call(&mut self, deadline: Instant) -> Result<Value, RedisStoreError> {
        let deadline = deadline.min(later(Instant::now(), self.timeout));
        let stats = &*self.stats;
        let connection = &mut self.connection;
        let command = &self.command;
        let script = &self.script;
        let round_trips = async move {
            stats.script_calls.fetch_add(1, Ordering::Relaxed);
            match command.query_async::<Value>(connection).await {
                Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    stats.script_loads.fetch_add(1, Ordering::Relaxed);
                    script.load_async(connection).await?;
                    command.query_async::<Value>(connection).await
                }
                other => other,
            }
        };
        match tokio::time::timeout_at(deadline, round_trips).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
        }
    }
}

/// `at + after`, or a time decades away when that would overflow (`Duration::MAX` as a
/// timeout or lease lifetime means "never").
fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after).unwrap_or_else(|| at + Duration::from_secs(30 * 365 * 86_400))
}

/// `prefix + key` as one argument, written into the command's buffer.
fn write_key(command: &mut redis::Cmd, prefix: &str, key: &str) {
    let mut arg = command.writer_for_next_arg();
    // Writing into a Vec cannot fail.
    let _ = arg.write_all(prefix.as_bytes());
    let _ = arg.write_all(key.as_bytes());
}

/// The script's reply, four integers per entry, read in order.
struct Entries<'a> {
    values: std::slice::Iter<'a, Value>,
    valid: bool,
}

impl<'a> Entries<'a> {
    fn new(reply: &'a Value, entries: usize) -> Self {
        match reply {
            Value::Array(values) => Entries { values: values.iter(), valid: values.len() == entries * 4 },
            _ => Entries { values: [].iter(), valid: false },
        }
    }

    fn next_entry(&mut self) -> Result<Entry, RedisStoreError> {
        if !self.valid {
            return Err(RedisStoreError::Reply);
        }
        let mut next = || match self.values.next() {
            Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| RedisStoreError::Reply),
            _ => Err(RedisStoreError::Reply),
        };
        Ok(Entry { granted: next()?, remaining: next()?, reset: next()?, retry_after: next()? })
    }
}

impl Entry {
    /// The decision for a check granted a cell, `kept` more cells left in the lease after it;
    /// or the refusal.
    fn decision(&self, kept: u64) -> Decision {
        if self.granted == 0 {
            return Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_micros(self.reset),
                retry_after: Duration::from_micros(self.retry_after),
            };
        }
        Decision {
            allowed: true,
            remaining: self.remaining.saturating_add(kept),
            reset: Duration::from_micros(self.reset),
            retry_after: Duration::ZERO,
        }
    }

    /// A check of a lease batch that found the granted cells spent by the checks before it.
    fn exhausted(&self, interval: u64, span: u64) -> Decision {
        if self.granted == 0 {
            return self.decision(0);
        }
        // The budget is empty after the grant: the next cell comes one interval after it.
        let retry = self.reset.saturating_add(interval).saturating_sub(span).max(1);
        Decision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_micros(self.reset),
            retry_after: Duration::from_micros(retry),
        }
    }
}

/// Lease mode: per key, the cells this instance holds, or a remembered refusal.
struct Leases {
    config: LeaseConfig,
    map: Mutex<LeaseMap>,
}

struct LeaseMap {
    leases: HashMap<Box<str>, Lease>,
    next_sweep: Instant,
}

struct Lease {
    interval: u64,
    span: u64,
    /// Cells left to serve.
    cells: u64,
    /// Redis's `remaining` when the lease was taken (after it).
    remaining: u64,
    /// Redis's `reset` then.
    reset: Duration,
    /// For a remembered refusal: Redis's `retry_after` then.
    refused: Option<Duration>,
    taken: Instant,
    until: Instant,
}

impl Leases {
    fn new(config: LeaseConfig) -> Self {
        Leases { config, map: Mutex::new(LeaseMap { leases: HashMap::new(), next_sweep: Instant::now() }) }
    }

    /// A check answered in process, if the key's lease (or refusal) says so.
    fn take(&self, key: &str, interval: u64, span: u64, now: Instant) -> Option<Decision> {
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let lease = map.leases.get_mut(key)?;
        if lease.interval != interval || lease.span != span || now >= lease.until {
            return None;
        }
        let elapsed = now.saturating_duration_since(lease.taken);
        let reset = lease.reset.saturating_sub(elapsed);
        if let Some(retry_after) = lease.refused {
            return Some(Decision {
                allowed: false,
                remaining: 0,
                reset,
                retry_after: retry_after.saturating_sub(elapsed).max(UNIT),
            });
        }
        if lease.cells == 0 {
            return None;
        }
        lease.cells -= 1;
        Some(Decision { allowed: true, remaining: lease.remaining + lease.cells, reset, retry_after: Duration::ZERO })
    }

    /// Keeps what a script entry granted beyond the `waiters` it answered, or the refusal.
    fn store(&self, key: &str, interval: u64, span: u64, entry: &Entry, waiters: u64, taken: Instant) {
        let lifetime = self.config.lifetime;
        let reset = Duration::from_micros(entry.reset);
        let lease = if entry.granted > waiters {
            Lease {
                interval,
                span,
                cells: entry.granted - waiters,
                remaining: entry.remaining,
                reset,
                refused: None,
                taken,
                until: later(taken, lifetime),
            }
        } else {
            let retry_after = if entry.granted == 0 {
                Duration::from_micros(entry.retry_after)
            } else if entry.granted < waiters {
                Duration::from_micros(entry.reset.saturating_add(interval).saturating_sub(span).max(1))
            } else {
                // Exactly spent: nothing to keep, nothing known to be refused.
                let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                map.leases.remove(key);
                return;
            };
            Lease {
                interval,
                span,
                cells: 0,
                remaining: 0,
                reset,
                refused: Some(retry_after),
                taken,
                until: later(taken, lifetime.min(retry_after)),
            }
        };
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Expired leases go once per lifetime: the map holds the keys of the last one or two.
        if taken >= map.next_sweep {
            map.leases.retain(|_, lease| lease.until > taken);
            map.next_sweep = later(taken, lifetime);
        }
        match map.leases.get_mut(key) {
            Some(existing) => *existing = lease,
            None => {
                map.leases.insert(key.into(), lease);
            }
        }
    }
}

#[cfg(test)]
mod tests;
