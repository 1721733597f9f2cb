//! A `tracing-subscriber` layer that stamps every event with the reqscope request context.
//!
//! ```
//! use tracing_subscriber::prelude::*;
//! use tracing_subscriber::EnvFilter;
//!
//! let (writer, _guard) = reqscope_tracing::non_blocking(std::io::stdout());
//! tracing_subscriber::registry()
//!     .with(EnvFilter::new("info"))
//!     .with(reqscope_tracing::LogLayer::new().with_writer(writer))
//!     .init();
//! tracing::info!(user = "ann", "hello");
//! // {"timestamp":"…","level":"INFO","target":"rust_out","message":"hello","user":"ann"}
//! // Inside a request the line also carries request_id, trace_id, span_id, user_id, method, path, …
//! ```
//!
//! Each event becomes one flat JSON object on one line, its keys in the order of the log-line
//! contract: `timestamp`, `level`, `target`, `message`, `request_id`, `trace_id`, `span_id`,
//! `user_id`, `org_id`,
//! `method`, `path`, `route`, `client_ip`, `roles`, `rate_limit_remaining`,
//! `rate_limit_reset`, `job`, `job_id`, `attempt` (in a [job](reqscope_core::job)), the custom
//! context fields, the baggage entries named with
//! [`LogLayer::baggage_fields`] (`"baggage.<key>":"<decoded value>"`; none by default), on
//! lines of target `reqscope::access` (access lines, WebSocket close lines) the request
//! headers the request layer kept
//! (`"header.<name>":"…"`, see `RequestContextLayer::log_request_headers` in
//! `reqscope-tower` and [`logged_headers`](reqscope_core::logged_headers)), the fields of the
//! spans in scope (root
//! first, as last recorded: `#[instrument(fields(order_id = 7))]` puts `"order_id":7` on every
//! line inside), then the event's own fields, and last `buffered` / `buffered_dropped` on
//! lines kept until their request failed (below). Key names are configurable with
//! [`FieldNames`]. Values are escaped by `serde_json`, so no field content can break a line
//! or forge another.
//!
//! The same stamp can be written in the Elastic Common Schema ([`Format::Ecs`]: `@timestamp`,
//! `log.level`, `message`, `ecs.version`, `http.request.id`, `trace.id`, `user.id`, …,
//! everything else under `labels.`) or for Google Cloud Logging ([`Format::Gcp`]: `severity`,
//! `time`, `logging.googleapis.com/trace` and `…/labels`, an `httpRequest` on access lines,
//! Error Reporting events for errors and panics); both keep every rule below.
//!
//! **Every key appears once, in every format.** A key that is taken gets its source's prefix,
//! `fields.` (custom context and event fields) or `span.` (span fields), repeated until it is
//! unique. Taken are: the stamped keys, always (so `info!(request_id = %x)` is written
//! `"fields.request_id"`, and no event field can pass for a stamped one even outside a
//! request) and the `baggage.<key>` names of the baggage allow-list; a key already on the line (an event field named like a custom context field
//! becomes `fields.<name>`; the context field keeps its name); and, for a span field, a name
//! the event or a nearer span uses (the field nearest the event wins). Pretty lines follow the
//! same rule and read like logfmt: bare keys only of `[A-Za-z0-9_.:@/-]`, strings quoted, and
//! a message or `%display` value with `=` or `"` in it quoted, so no content looks like a
//! pair of its own.
//!
//! **Secrets are redacted as lines are written**, by the layer's
//! [`Redaction`](reqscope_core::redact::Redaction) ([`LogLayer::redaction`]; on by default with
//! the [default keys](reqscope_core::redact::DEFAULT_KEYS) — `password`, `token`, `api_key`,
//! `cookie`, … — matched in any case, with `-`, `_`, `.` alike and as suffixes): a sensitive
//! value of an event, span, custom context or baggage field, or of a request header, is
//! written `"[redacted]"`, in every format. The stamped keys are never redacted.
//!
//! Records of crates that use the `log` facade are written like events — stamped, under the
//! record's own target — once the bridge is installed: [`init_from_env`] does it, or call
//! [`install_log_bridge`] after installing your own subscriber.
//!
//! The context is found through the task-local first and, failing that, through the span
//! scope: the layer keeps the context in the request span (target `reqscope::request`) that
//! `RequestContextLayer` opens, so an event on a foreign thread that only entered that span or
//! a child of it (sqlx-sqlite's worker, a callback on a pool thread) is stamped too — while
//! the request lasts. The span holds the context weakly, and stops stamping once the request
//! is finished ([`RequestContext::mark_finished`](reqscope_core::RequestContext::mark_finished),
//! set before the access line): a long-lived span created during a request (a pool's
//! connection task) neither stamps that request forever nor keeps its context alive.
//!
//! **One request at DEBUG, and DEBUG lines kept until an error.** [`RequestLevelFilter`]
//! wraps the global filter (an `EnvFilter`): a request whose level is
//! [raised](reqscope_core::RaisedLevel) — `x-log-level: debug` from a user with the role
//! `log-debug`, through `RequestContextLayer` — has its DEBUG (or TRACE) events written while
//! every other request stays at the filter's level; and with
//! [`keep_until_error`](RequestLevelFilter::keep_until_error) each request's DEBUG lines are
//! kept in a bounded buffer of the request ([`HoldLimits`]) and written, in order and marked
//! `"buffered":true`, just before the request's first ERROR line (an `error!`, a panic, the
//! access line of a 5xx or a failed gRPC call), or dropped when it ends otherwise.
//!
//! The JSON, ECS and Google Cloud paths allocate nothing per event once warm: lines are built in a thread-local
//! buffer and handed to the writer in one `write_all`; span fields are rendered once, when
//! they are recorded, and copied into each line. Use [`non_blocking`] so that a slow stdout
//! never blocks a request: it buffers up to a byte limit, drops and counts lines beyond it,
//! and reports the count once output recovers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod buffer;
mod ecs;
mod gcp;
mod json;
mod keys;
mod layer;
mod level;
mod memory;
mod names;
#[cfg(feature = "otlp")]
pub mod otlp;
mod pretty;
mod redact;
mod spans;
#[cfg(test)]
mod test_support;
mod time;
mod writer;

pub use buffer::HoldLimits;
pub use layer::{Format, LogLayer};
pub use level::RequestLevelFilter;
pub use memory::MemoryWriter;
pub use names::FieldNames;
pub use writer::{NonBlocking, NonBlockingBuilder, WriterGuard, non_blocking};

/// Installs the standard setup as the global default: `EnvFilter` from `RUST_LOG` (default
/// `info`; the request span, target `reqscope::request`, stays enabled — it carries the
/// context to foreign threads and the OpenTelemetry ids — unless a directive names exactly
/// that target, as `reqscope::request=off` does; `warn` or `reqscope=warn` keep it), wrapped
/// in a [`RequestLevelFilter`] (a [raised](reqscope_core::RaisedLevel) request logs down to
/// its level; with `LOG_ON_ERROR` set to `debug` or `trace` — default `off` — each request's
/// lines of that level are kept until it fails, and written just before its first ERROR
/// line), the `log` bridge ([`install_log_bridge`]; if another `log` logger is installed, it
/// stays and a WARN says so), a [`LogLayer`] in the format named by `LOG_FORMAT` (`json`, the
/// default, `pretty`, `ecs` or `gcp`, in any case; see [`Format`]; for `gcp` the project of the
/// trace names is `GOOGLE_CLOUD_PROJECT`, default `local`) writing to a non-blocking stdout
/// that holds at most `LOG_BUFFER_BYTES` (default 8 MiB) of lines the output has not taken
/// yet — beyond that, lines are dropped, counted and reported once output moves again (in
/// the same format), and requests never wait.
///
/// Keep the returned guard alive until the program ends: dropping it flushes every accepted
/// line.
///
/// # Errors
///
/// Fails when `LOG_FORMAT` has another value, `RUST_LOG` does not parse, `LOG_BUFFER_BYTES`
/// is not a positive number, `LOG_ON_ERROR` is not `debug`, `trace` or `off`, or a global
/// subscriber is already installed.
pub fn init_from_env() -> Result<WriterGuard, InitError> {
    init_from_env_with(tracing_subscriber::layer::Identity::new())
}

/// [`init_from_env`] with one more layer next to the [`LogLayer`] — for instance a layer
/// that sends errors to a tracker (`reqscope::sentry::layer`). It sees the events that
/// `RUST_LOG` lets through. An `Option` of a layer is a layer: `None` adds nothing.
///
/// # Errors
///
/// As [`init_from_env`].
pub fn init_from_env_with<L>(extra: L) -> Result<WriterGuard, InitError>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    init_from_env_with_layer(LogLayer::new(), extra)
}

/// [`init_from_env_with`], writing through `layer` as you built it — its
/// [field names](LogLayer::with_field_names), [baggage fields](LogLayer::baggage_fields) and
/// [redaction](LogLayer::redaction), say — instead of `LogLayer::new()`. The environment still decides the rest: the filter,
/// the buffer, the format when `LOG_FORMAT` is set and the Google Cloud project when
/// `GOOGLE_CLOUD_PROJECT` is (otherwise `layer`'s own).
///
/// ```no_run
/// let layer = reqscope_tracing::LogLayer::new().baggage_fields(["session"]);
/// let _guard = reqscope_tracing::init_from_env_with_layer(layer, None::<tracing_subscriber::layer::Identity>)?;
/// # Ok::<(), reqscope_tracing::InitError>(())
/// ```
///
/// # Errors
///
/// As [`init_from_env`].
pub fn init_from_env_with_layer<L>(layer: LogLayer, extra: L) -> Result<WriterGuard, InitError>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::prelude::*;

    let mut layer = match std::env::var("LOG_FORMAT") {
        Ok(value) => layer.with_format(value.parse()?),
        Err(_) => layer,
    };
    if let Some(project) = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.trim().is_empty()) {
        layer = layer.gcp_project(project.trim());
    }
    let directives = std::env::var("RUST_LOG").ok();
    let filter = RequestLevelFilter::new(env_filter(directives.as_deref())?).keep_until_error(on_error_from_env()?);
    let mut writer = NonBlockingBuilder::default().summary_format(layer.format());
    if let Ok(bytes) = std::env::var("LOG_BUFFER_BYTES") {
        match bytes.parse::<usize>() {
            Ok(limit) if limit > 0 => writer = writer.buffer_limit(limit),
            _ => return Err(InitError::BufferLimit(bytes)),
        }
    }
    let (writer, guard) = writer.finish(std::io::stdout());
    let subscriber = tracing_subscriber::registry().with(extra).with(filter).with(layer.with_writer(writer));
    // Not `try_init`: whether that also installs the `log` bridge depends on a cargo feature
    // another crate may turn on; the bridge is installed below, exactly once.
    tracing::subscriber::set_global_default(subscriber).map_err(|e| InitError::AlreadyInstalled(e.to_string()))?;
    if let Err(error) = install_log_bridge() {
        // The subscriber is in place and the guard must reach the caller: an application that
        // chose its own `log` logger keeps it, and is told once.
        tracing::warn!(target: "reqscope::logging", %error, "records of crates that use `log` are not bridged");
    }
    Ok(guard)
}

/// `LOG_ON_ERROR`: `debug` or `trace` keeps a request's lines of that level until it fails;
/// `off`, empty or unset keeps none.
fn on_error_from_env() -> Result<Option<reqscope_core::RaisedLevel>, InitError> {
    std::env::var("LOG_ON_ERROR").map_or(Ok(None), |value| on_error(&value))
}

fn on_error(value: &str) -> Result<Option<reqscope_core::RaisedLevel>, InitError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    reqscope_core::RaisedLevel::parse(trimmed.as_bytes()).map(Some).ok_or_else(|| InitError::OnError(value.to_owned()))
}

/// Sends the records of crates that log through the `log` facade to the tracing subscriber,
/// where [`LogLayer`] writes them like any event: stamped with the request, under the
/// record's own target (its module path), at its level. [`init_from_env`] calls it; call it
/// yourself when you install the subscriber by hand (or call `tracing_log::LogTracer::init()`,
/// which does the same without the level hint). Called after the global subscriber is set,
/// `log` records below its most verbose level are skipped cheaply, in the `log` crate; called
/// before, every record reaches the subscriber's filter.
///
/// # Errors
///
/// [`InitError::LogBridge`] when a `log` logger is already installed (this bridge or another
/// one): `log` accepts one logger per process.
pub fn install_log_bridge() -> Result<(), InitError> {
    use tracing_log::AsLog;
    // Before a global subscriber exists its level is unknown (tracing says OFF): pass every
    // record on and let the subscriber's filter decide, rather than lose them all.
    let max = if tracing::dispatcher::has_been_set() {
        tracing_core::LevelFilter::current()
    } else {
        tracing_core::LevelFilter::TRACE
    };
    tracing_log::LogTracer::builder()
        .with_max_level(max.as_log())
        .init()
        .map_err(|e| InitError::LogBridge(e.to_string()))
}

/// The filter of [`init_from_env`]: `directives` (from `RUST_LOG`; `info` when unset or
/// blank), plus `reqscope::request=info` unless the directives name that target themselves.
fn env_filter(directives: Option<&str>) -> Result<tracing_subscriber::EnvFilter, InitError> {
    let directives = directives.map(str::trim).filter(|d| !d.is_empty());
    let mut filter = match directives {
        Some(directives) => {
            tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| InitError::Filter(e.to_string()))?
        }
        None => tracing_subscriber::EnvFilter::new("info"),
    };
    // The request span carries the context to foreign threads (sqlx-sqlite's worker) and the
    // OpenTelemetry ids; `warn` or `warn,reqscope::auth=debug` would disable it. A directive
    // for its own target is more specific than any other that covers it, so adding one keeps
    // it on whatever else the filter says — unless the filter speaks of that target itself.
    if !directives.is_some_and(names_request_span) {
        let keep = format!("{}=info", reqscope_core::REQUEST_SPAN_TARGET);
        filter = filter.add_directive(
            keep.parse().map_err(|e: tracing_subscriber::filter::ParseError| InitError::Filter(e.to_string()))?,
        );
    }
    Ok(filter)
}

/// Whether one of the comma-separated `directives` has exactly the request span's target
/// (`reqscope::request`, `reqscope::request=off`, `reqscope::request[request]=debug`).
fn names_request_span(directives: &str) -> bool {
    directives.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or_default();
        target.trim() == reqscope_core::REQUEST_SPAN_TARGET
    })
}

/// Why [`init_from_env`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `LOG_FORMAT` was not `json`, `pretty`, `ecs` or `gcp`.
    #[error("LOG_FORMAT must be `json`, `pretty`, `ecs` or `gcp`, got {0:?}")]
    Format(String),
    /// `LOG_BUFFER_BYTES` was not a positive number.
    #[error("LOG_BUFFER_BYTES must be a positive number of bytes, got {0:?}")]
    BufferLimit(String),
    /// `LOG_ON_ERROR` was not `debug`, `trace` or `off`.
    #[error("LOG_ON_ERROR must be `debug`, `trace` or `off`, got {0:?}")]
    OnError(String),
    /// `RUST_LOG` did not parse.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
    /// Another global subscriber was installed first.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
    /// A `log` logger was installed first; see [`install_log_bridge`].
    #[error("a `log` logger is already installed: {0}")]
    LogBridge(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Subscriber as _;
    use tracing_subscriber::prelude::*;

    /// Whether the request span is enabled under the filter built from `directives`.
    ///
    /// Asked of the subscriber directly, as the span macro asks it: a callsite's cached
    /// interest is shared by every test thread, and another test's subscriber registering
    /// the same callsite at the same time could answer for this one.
    fn request_span_enabled(directives: Option<&str>) -> bool {
        // The span's metadata, from a subscriber that takes every span.
        let metadata = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!(target: reqscope_core::REQUEST_SPAN_TARGET, "request").metadata()
        })
        .expect("the registry takes every span");
        let subscriber = tracing_subscriber::registry().with(env_filter(directives).unwrap());
        let below_max = subscriber.max_level_hint().is_none_or(|max| *metadata.level() <= max);
        let interest = subscriber.register_callsite(metadata);
        below_max && (interest.is_always() || (interest.is_sometimes() && subscriber.enabled(metadata)))
    }

    #[test]
    fn the_request_span_survives_filters_that_do_not_name_it() {
        for directives in [None, Some(""), Some("warn"), Some("warn,reqscope::auth=debug"), Some("reqscope=warn")] {
            assert!(request_span_enabled(directives), "{directives:?}");
        }
    }

    #[test]
    fn naming_the_request_target_decides() {
        assert!(!request_span_enabled(Some("info,reqscope::request=off")));
        assert!(!request_span_enabled(Some("reqscope::request[request]=warn")));
        assert!(request_span_enabled(Some("warn,reqscope::request=debug")));
        assert!(names_request_span(" reqscope::request = off"));
        assert!(!names_request_span("reqscope::requests=off,reqscope=off"));
    }

    #[test]
    fn log_on_error_names_a_level_or_nothing() {
        use reqscope_core::RaisedLevel;
        assert_eq!(on_error("debug").unwrap(), Some(RaisedLevel::Debug));
        assert_eq!(on_error(" TRACE").unwrap(), Some(RaisedLevel::Trace));
        assert_eq!(on_error("off").unwrap(), None);
        assert_eq!(on_error("").unwrap(), None);
        let error = on_error("yes").unwrap_err().to_string();
        assert!(error.starts_with("LOG_ON_ERROR must be") && error.contains("\"yes\""), "{error}");
    }

    #[test]
    fn the_filter_still_applies_to_everything_else() {
        let subscriber = tracing_subscriber::registry().with(env_filter(Some("warn,reqscope::auth=debug")).unwrap());
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "reqscope::auth", tracing::Level::DEBUG));
            assert!(!tracing::enabled!(target: "myapp", tracing::Level::INFO));
            assert!(!tracing::enabled!(target: "reqscope::access", tracing::Level::INFO));
        });
    }
}
