//! OpenTelemetry export: each request, outgoing call and job as a span, each event as a log
//! record, over OTLP to a collector — with the ids of the stdout lines.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! // None when OTEL_EXPORTER_OTLP_ENDPOINT is unset: nothing is exported and nothing is paid.
//! let otlp = reqscope_tracing::otlp::Otlp::builder().default_service_name("checkout").build_from_env()?;
//! let (writer, _guard) = reqscope_tracing::non_blocking(std::io::stdout());
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info"))
//!     .with(otlp.as_ref().map(|otlp| otlp.layer()))
//!     .with(reqscope_tracing::LogLayer::new().with_writer(writer))
//!     .init();
//! // … serve until SIGTERM, then, after the server's graceful shutdown:
//! if let Some(otlp) = otlp {
//!     otlp.shutdown()?; // every span and log record handed over so far is sent
//! }
//! # Ok::<(), reqscope_tracing::otlp::OtlpError>(())
//! ```
//!
//! **What is exported.** [`OtlpLayer`] is a `tracing-subscriber` layer. It turns the lines
//! that end a unit of work into spans, when they are logged:
//!
//! - the access line of a request (target `reqscope::access`) → a `SERVER` span named
//!   `GET /users/{id}` (method and route; the method alone without a route) with
//!   `http.request.method`, `url.path`, `url.scheme` (the URI's, else `http`), `http.route`,
//!   `http.response.status_code`, `http.response.body.size`, `client.address`, `user.id`,
//!   `network.protocol.version` and `request_id`; a gRPC call is named `package.Service/Method`
//!   and has `rpc.system` (`grpc`), `rpc.service`, `rpc.method` and `rpc.grpc.status_code`
//!   too. Its status is `Error` when the access line says the request failed (an ERROR line:
//!   a 5xx, a gRPC status that means the server failed, whatever the request layer's
//!   classifier decides), was aborted, or got no response, with `error.type`;
//! - the line of an outgoing call (target `reqscope::outgoing`) → a `CLIENT` span named after
//!   the method, with `http.request.method`, `url.full` (without query), `server.address`,
//!   `server.port`, `http.response.status_code`; `Error` for a 4xx or 5xx answer, a failure
//!   without a response (`error.type` names its kind) or a dropped call;
//! - the end line of a [job](reqscope_core::job) (target `reqscope::job`) → a `CONSUMER`
//!   span named `process <job>`, with `messaging.operation.type` (`process`),
//!   `messaging.message.id`, `job.name`, `job.attempt`; `Error` unless it completed.
//!
//! Each span has exactly the trace id, span id and parent of the context that line is stamped
//! with, so the `trace_id` / `span_id` of every stdout line are the exported ones, and the
//! span of an incoming `traceparent`'s caller is the parent. Its start is the end minus the
//! line's `duration_ms`. A request whose access line is not written (the request layer's
//! `access_log(false)`, or an access line sampled out) is not exported as a span either.
//!
//! Every other event becomes a **log record** too, through the OpenTelemetry logs API:
//! severity and severity text from the level, the message as body, the target, the same
//! trace id and span id as its stdout line (none outside a request), and as attributes the
//! request's context — `request_id`, `user_id`, `org_id`, `method`, `path`, `route`,
//! `client_ip`, `job`, `job_id`, `attempt`, the custom context fields (never the
//! [hidden](reqscope_core::ContextField::hidden) ones) — and the event's own fields, each key
//! once (a field named like one already there gets `fields.` in front, as on the line). The
//! layer's [`Redaction`] (the default one unless [`OtlpLayer::redaction`] says otherwise:
//! give it the `LogLayer`'s) writes sensitive values as `"[redacted]"`, exactly as on the
//! line. Not exported as records: lines kept until their request fails (`LOG_ON_ERROR`), the
//! events of the exporter's own crates (`opentelemetry*`, `reqwest`, `hyper`, `h2`, `tonic`,
//! `tower`) and this module's reports (target `reqscope::otlp`), which exporting would only
//! multiply.
//!
//! **Configuration**, by the standard variables ([`OtlpBuilder::build_from_env`]; the
//! builder's settings are the defaults they override): `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`http://collector:4318`: traces to `<endpoint>/v1/traces`, logs to `<endpoint>/v1/logs`;
//! unset, no export), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`
//! with the feature `otlp-grpc`), `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds per export,
//! default 10000), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` — each checked here, a bad value being an [`OtlpError`] that
//! names the variable, and then applied by the OpenTelemetry SDK, which also reads
//! `OTEL_EXPORTER_OTLP_HEADERS`, the per-signal `OTEL_EXPORTER_OTLP_TRACES_*` /
//! `OTEL_EXPORTER_OTLP_LOGS_*` variables and the batch settings `OTEL_BSP_*` / `OTEL_BLRP_*`.
//! `OTEL_SDK_DISABLED=true` turns export off. Spans and records are queued in the SDK's batch
//! processors (bounded: 2048 of each by default, beyond which they are dropped) and sent
//! from their own threads. An `https` endpoint needs a TLS feature of `reqwest` 0.13 in the
//! application (`rustls`, say): the exporter's HTTP client is that `reqwest`'s blocking one.
//!
//! **A collector that is down** costs requests nothing: nothing on the request path waits
//! for it. Spans and records whose export fails are dropped and counted ([`Otlp::lost`]);
//! one WARN line (target `reqscope::otlp`) says when export starts failing, one when it works
//! again, with the counts lost in between — no restart needed. Exports are not retried: the
//! next batch is the next attempt. What a full queue drops (export slower than the load) is
//! counted by the SDK, not in [`Otlp::lost`].
//!
//! **Do not combine** with a `tracing-opentelemetry` layer that exports the same requests
//! (the `otel` feature of the request layer): both would send a span for each request. This
//! layer needs none: reqscope's context holds the ids.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context as OtelContext, Key, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use reqscope_core::redact::Redaction;
use reqscope_core::{FieldValue, REQUEST_SPAN_TARGET, RequestContext};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::layer::{remember_request, request_of_span};
use crate::redact::{ACCESS_TARGET, redacts_field};

/// The target of this module's own lines (export failing, export recovered).
const OTLP_TARGET: &str = "reqscope::otlp";
/// The target of an outgoing call's line.
const OUTGOING_TARGET: &str = "reqscope::outgoing";
/// What a redacted value is exported as.
const REDACTED: &str = "[redacted]";

/// How spans and log records travel to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), the default.
    #[default]
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`); needs the feature `otlp-grpc`.
    Grpc,
}

impl FromStr for Protocol {
    type Err = OtlpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err(OtlpError::Env {
                var: "OTEL_EXPORTER_OTLP_PROTOCOL",
                value: s.to_owned(),
                expected: "`http/protobuf` or `grpc`",
            }),
        }
    }
}

/// Why export could not be set up, or shut down cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// An environment variable has a value that cannot be used.
    #[error("{var} must be {expected}, got {value:?}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The gRPC protocol was asked for, but this build has no gRPC exporter.
    #[error("OTLP over gRPC needs reqscope's feature `otlp-grpc`; use `http/protobuf` or turn the feature on")]
    GrpcNotBuilt,
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
    /// The runtime of the gRPC exporter could not be started.
    #[error("cannot start the runtime of the OTLP gRPC exporter: {0}")]
    Runtime(#[source] std::io::Error),
    /// Flushing at shutdown failed: what was still queued may be lost.
    #[error("OTLP export did not shut down cleanly: {0}")]
    Shutdown(String),
}

/// Sets up export; see the [module docs](self). Its settings are defaults that the standard
/// environment variables override.
#[derive(Clone, Debug, Default)]
pub struct OtlpBuilder {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    service_name: Option<String>,
    timeout: Option<Duration>,
}

impl OtlpBuilder {
    /// The collector, when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset: the base URL
    /// (`http://collector:4318`; for HTTP, `/v1/traces` and `/v1/logs` are appended).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The protocol, when `OTEL_EXPORTER_OTLP_PROTOCOL` is unset.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// The service name, when neither `OTEL_SERVICE_NAME` nor `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES` names one (otherwise the SDK's `unknown_service`).
    pub fn default_service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// How long one export may take, when `OTEL_EXPORTER_OTLP_TIMEOUT` is unset (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Builds export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not
    /// `true`); `None` otherwise, at no cost.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_from_env(self) -> Result<Option<Otlp>, OtlpError> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        self.build().map(Some)
    }

    /// Builds export: the exporters, their batch processors (and threads), and, for gRPC, a
    /// runtime of its own. Where the builder says nothing and no variable is set, the
    /// collector is `http://localhost:4318`.
    ///
    /// # Errors
    ///
    /// [`OtlpError::Env`] naming the variable whose value is bad, [`OtlpError::GrpcNotBuilt`],
    /// or a failure to build the exporters or the runtime.
    pub fn build(self) -> Result<Otlp, OtlpError> {
        let settings = Settings::read(&self)?;
        let health = Arc::new(Health::default());
        let exporters = Exporters::build(&settings, &health)?;
        let resource = resource(self.service_name.as_deref());
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporters.spans)
            .with_id_generator(ContextIds::default())
            .with_resource(resource.clone())
            .build();
        let logger_provider =
            SdkLoggerProvider::builder().with_batch_exporter(exporters.logs).with_resource(resource).build();
        Ok(Otlp {
            tracer_provider,
            logger_provider,
            health,
            #[cfg(feature = "otlp-grpc")]
            runtime: exporters.runtime,
            shut_down: false,
        })
    }
}

/// Export, set up: hands out [layers](Self::layer), and flushes on [`shutdown`](Self::shutdown)
/// (or when dropped).
pub struct Otlp {
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    health: Arc<Health>,
    #[cfg(feature = "otlp-grpc")]
    runtime: Option<tokio::runtime::Runtime>,
    shut_down: bool,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp").field("lost", &self.lost()).finish_non_exhaustive()
    }
}

/// What export has lost so far: spans and log records whose export failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// Spans.
    pub spans: u64,
    /// Log records.
    pub log_records: u64,
}

impl Otlp {
    /// Starts a builder.
    pub fn builder() -> OtlpBuilder {
        OtlpBuilder::default()
    }

    /// [`OtlpBuilder::build_from_env`] with no defaults of your own.
    ///
    /// # Errors
    ///
    /// As [`OtlpBuilder::build`].
    pub fn from_env() -> Result<Option<Otlp>, OtlpError> {
        Self::builder().build_from_env()
    }

    /// The layer that exports, to add to the subscriber next to the `LogLayer`.
    pub fn layer(&self) -> OtlpLayer {
        OtlpLayer {
            tracer: self.tracer_provider.tracer("reqscope"),
            logger: self.logger_provider.logger("reqscope"),
            redaction: Redaction::new(),
        }
    }

    /// The spans and log records lost so far because their export failed.
    pub fn lost(&self) -> Lost {
        Lost {
            spans: self.health.total_spans.load(Ordering::Relaxed),
            log_records: self.health.total_records.load(Ordering::Relaxed),
        }
    }

    /// Sends every span and log record handed over so far, then stops exporting (later ones
    /// are dropped). Waits for the exports, each bounded by the timeout.
    ///
    /// # Errors
    ///
    /// [`OtlpError::Shutdown`] when an export failed or timed out.
    pub fn shutdown(mut self) -> Result<(), OtlpError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), OtlpError> {
        if std::mem::replace(&mut self.shut_down, true) {
            return Ok(());
        }
        let spans = self.tracer_provider.shutdown();
        let logs = self.logger_provider.shutdown();
        #[cfg(feature = "otlp-grpc")]
        if let Some(runtime) = self.runtime.take() {
            // Callable from async code too, unlike dropping it.
            runtime.shutdown_background();
        }
        match (spans, logs) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(OtlpError::Shutdown(e.to_string())),
        }
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// The settings the exporters are built with, the variables checked.
struct Settings {
    protocol: Protocol,
    /// From the builder, only when the variable is unset (the SDK reads the variable itself).
    endpoint: Option<String>,
    timeout: Option<Duration>,
}

impl Settings {
    fn read(builder: &OtlpBuilder) -> Result<Self, OtlpError> {
        let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(value) => value.parse()?,
            None => builder.protocol.unwrap_or_default(),
        };
        let endpoint = match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(value) => {
                check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &value)?;
                None
            }
            None => builder.endpoint.clone(),
        };
        if let Some(endpoint) = &endpoint {
            check_endpoint("OtlpBuilder::endpoint", endpoint)?;
        }
        for var in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] {
            if let Some(value) = env(var) {
                check_endpoint(var, &value)?;
            }
        }
        let mut timeout = builder.timeout;
        for var in
            ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"]
        {
            if let Some(value) = env(var) {
                value.trim().parse::<u64>().map_err(|_| OtlpError::Env {
                    var,
                    value: value.clone(),
                    expected: "a whole number of milliseconds",
                })?;
                timeout = None;
            }
        }
        check_sampler(env("OTEL_TRACES_SAMPLER").as_deref(), env("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        if let Some(value) = env("OTEL_SERVICE_NAME")
            && value.trim().is_empty()
        {
            return Err(OtlpError::Env { var: "OTEL_SERVICE_NAME", value, expected: "a service name" });
        }
        if let Some(value) = env("OTEL_RESOURCE_ATTRIBUTES") {
            check_resource_attributes(&value)?;
        }
        Ok(Settings { protocol, endpoint, timeout })
    }
}

fn check_endpoint(var: &'static str, value: &str) -> Result<(), OtlpError> {
    let rest = value.strip_prefix("http://").or_else(|| value.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace) => Ok(()),
        _ => Err(OtlpError::Env { var, value: value.to_owned(), expected: "an http:// or https:// URL" }),
    }
}

/// The samplers the SDK implements; it would fall back to its default on any other value.
fn check_sampler(sampler: Option<&str>, arg: Option<&str>) -> Result<(), OtlpError> {
    let Some(sampler) = sampler else {
        return Ok(());
    };
    match sampler {
        "always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off" => Ok(()),
        "traceidratio" | "parentbased_traceidratio" => match arg.map(|a| a.trim().parse::<f64>()) {
            Some(Ok(ratio)) if (0.0..=1.0).contains(&ratio) => Ok(()),
            _ => Err(OtlpError::Env {
                var: "OTEL_TRACES_SAMPLER_ARG",
                value: arg.unwrap_or_default().to_owned(),
                expected: "a ratio from 0.0 to 1.0 (the sampler is a trace id ratio)",
            }),
        },
        _ => Err(OtlpError::Env {
            var: "OTEL_TRACES_SAMPLER",
            value: sampler.to_owned(),
            expected: "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or \
                       parentbased_traceidratio",
        }),
    }
}

fn check_resource_attributes(value: &str) -> Result<(), OtlpError> {
    let valid = value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .all(|pair| pair.split_once('=').is_some_and(|(key, _)| !key.trim().is_empty()));
    if valid {
        Ok(())
    } else {
        Err(OtlpError::Env {
            var: "OTEL_RESOURCE_ATTRIBUTES",
            value: value.to_owned(),
            expected: "comma-separated key=value pairs",
        })
    }
}

/// The resource of the environment (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the
/// SDK's own attributes), with `default_name` when it names no service.
fn resource(default_name: Option<&str>) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    match default_name {
        Some(name) if unnamed => Resource::builder().with_service_name(name.to_owned()).build(),
        _ => detected,
    }
}

/// The exporters, wrapped to count and report failures.
struct Exporters {
    spans: Counted<opentelemetry_otlp::SpanExporter>,
    logs: Counted<opentelemetry_otlp::LogExporter>,
    #[cfg(feature = "otlp-grpc")]
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporters {
    fn build(settings: &Settings, health: &Arc<Health>) -> Result<Self, OtlpError> {
        let build_error = |e: opentelemetry_otlp::ExporterBuildError| OtlpError::Build(e.to_string());
        match settings.protocol {
            Protocol::HttpProtobuf => {
                let mut spans = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                let mut logs = opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(endpoint) = &settings.endpoint {
                    let base = endpoint.trim_end_matches('/');
                    spans = spans.with_endpoint(format!("{base}/v1/traces"));
                    logs = logs.with_endpoint(format!("{base}/v1/logs"));
                }
                if let Some(timeout) = settings.timeout {
                    spans = spans.with_timeout(timeout);
                    logs = logs.with_timeout(timeout);
                }
                // No retries: a batch that fails is counted lost at once, and the next batch
                // tries again — the processor's thread is never stuck in backoff.
                spans = spans.with_retry_policy(no_retries());
                logs = logs.with_retry_policy(no_retries());
                Ok(Exporters {
                    spans: Counted::new(spans.build().map_err(build_error)?, health, Signal::Spans),
                    logs: Counted::new(logs.build().map_err(build_error)?, health, Signal::Logs),
                    #[cfg(feature = "otlp-grpc")]
                    runtime: None,
                })
            }
            #[cfg(feature = "otlp-grpc")]
            Protocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("reqscope-otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(OtlpError::Runtime)?;
                // tonic's lazy channel starts its worker on the runtime it is built in.
                let _entered = runtime.enter();
                let mut spans = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                let mut logs = opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(endpoint) = &settings.endpoint {
                    spans = spans.with_endpoint(endpoint.clone());
                    logs = logs.with_endpoint(endpoint.clone());
                }
                if let Some(timeout) = settings.timeout {
                    spans = spans.with_timeout(timeout);
                    logs = logs.with_timeout(timeout);
                }
                use opentelemetry_otlp::WithTonicConfig as _;
                spans = spans.with_retry_policy(no_retries());
                logs = logs.with_retry_policy(no_retries());
                let mut counted_spans = Counted::new(spans.build().map_err(build_error)?, health, Signal::Spans);
                let mut counted_logs = Counted::new(logs.build().map_err(build_error)?, health, Signal::Logs);
                counted_spans.runtime = Some(runtime.handle().clone());
                counted_logs.runtime = Some(runtime.handle().clone());
                drop(_entered);
                Ok(Exporters { spans: counted_spans, logs: counted_logs, runtime: Some(runtime) })
            }
            #[cfg(not(feature = "otlp-grpc"))]
            Protocol::Grpc => Err(OtlpError::GrpcNotBuilt),
        }
    }
}

fn no_retries() -> opentelemetry_otlp::RetryPolicy {
    opentelemetry_otlp::RetryPolicy::disabled()
}

thread_local! {
    /// Set while an export runs on this thread: what it logs is not exported.
    static EXPORTING: Cell<bool> = const { Cell::new(false) };
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    Spans,
    Logs,
}

/// Whether export works, and what it lost, shared by both exporters.
#[derive(Debug, Default)]
struct Health {
    failing: AtomicBool,
    /// Lost since export began failing.
    spans: AtomicU64,
    records: AtomicU64,
    /// Lost in all.
    total_spans: AtomicU64,
    total_records: AtomicU64,
}

impl Health {
    fn record(&self, signal: Signal, count: u64, result: &OTelSdkResult) {
        let Err(error) = result else {
            if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
                let lost_spans = self.spans.swap(0, Ordering::Relaxed);
                let lost_log_records = self.records.swap(0, Ordering::Relaxed);
                tracing::warn!(target: OTLP_TARGET, lost_spans, lost_log_records, "OpenTelemetry export works again");
            }
            return;
        };
        let (since, total) = match signal {
            Signal::Spans => (&self.spans, &self.total_spans),
            Signal::Logs => (&self.records, &self.total_records),
        };
        since.fetch_add(count, Ordering::Relaxed);
        total.fetch_add(count, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: OTLP_TARGET, error = %error,
                "OpenTelemetry export failing: spans and log records are dropped and counted until it works again"
            );
        }
    }
}

/// An exporter that counts what it fails to send, and runs the gRPC one on its runtime.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    health: Arc<Health>,
    signal: Signal,
    #[cfg(feature = "otlp-grpc")]
    runtime: Option<tokio::runtime::Handle>,
}

impl<E> Counted<E> {
    fn new(inner: E, health: &Arc<Health>, signal: Signal) -> Self {
        Counted {
            inner,
            health: Arc::clone(health),
            signal,
            #[cfg(feature = "otlp-grpc")]
            runtime: None,
        }
    }

    /// Runs one export (on the batch processor's thread, which blocks on it anyway) and
    /// counts its result.
    fn run(&self, count: usize, export: impl Future<Output = OTelSdkResult>) -> OTelSdkResult {
        EXPORTING.with(|exporting| exporting.set(true));
        #[cfg(feature = "otlp-grpc")]
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(export),
            None => futures_block_on(export),
        };
        #[cfg(not(feature = "otlp-grpc"))]
        let result = futures_block_on(export);
        self.health.record(self.signal, count as u64, &result);
        EXPORTING.with(|exporting| exporting.set(false));
        result
    }
}

/// Polls `future` to its end on this thread. The HTTP exporter's future is ready at once
/// (its client blocks), the batch processors' threads block on exports anyway.
fn futures_block_on<F: Future>(future: F) -> F::Output {
    use std::task::{Context as TaskContext, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        self.run(count, self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let count = batch.iter().count();
        self.run(count, self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

thread_local! {
    /// The ids of the span about to be started on this thread: the SDK's tracer asks its id
    /// generator, and gets the context's.
    static NEXT_IDS: Cell<(Option<opentelemetry::trace::TraceId>, Option<opentelemetry::trace::SpanId>)> =
        const { Cell::new((None, None)) };
}

/// Hands the SDK the ids of reqscope's context for the span being started; random ones to
/// anything else.
#[derive(Debug, Default)]
struct ContextIds(RandomIdGenerator);

impl IdGenerator for ContextIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        let (trace, span) = NEXT_IDS.get();
        NEXT_IDS.set((None, span));
        trace.unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        let (trace, span) = NEXT_IDS.get();
        NEXT_IDS.set((trace, None));
        span.unwrap_or_else(|| self.0.new_span_id())
    }
}

/// The `tracing-subscriber` layer of [`Otlp`]: see the [module docs](self).
#[derive(Clone)]
pub struct OtlpLayer {
    tracer: SdkTracer,
    logger: SdkLogger,
    redaction: Redaction,
}

impl fmt::Debug for OtlpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpLayer").field("redaction", &self.redaction).finish_non_exhaustive()
    }
}

impl OtlpLayer {
    /// Exports the values `redaction` judges sensitive as `"[redacted]"` — give it the
    /// `LogLayer`'s, so that a record says what the line says. Default: [`Redaction::new`].
    pub fn redaction(mut self, redaction: Redaction) -> Self {
        self.redaction = redaction;
        self
    }

    fn export(&self, event: &Event<'_>, meta: &Metadata<'_>, ctx: Option<&RequestContext>) {
        let now = SystemTime::now();
        let mut fields = EventFields::new(&self.redaction);
        event.record(&mut fields);
        let trace = ctx.and_then(RequestContext::trace);
        let ids = trace.and_then(|trace| {
            let trace_id = opentelemetry::trace::TraceId::from_hex(trace.trace_id().as_str()).ok()?;
            let span_id = opentelemetry::trace::SpanId::from_hex(trace.span_id().as_str()).ok()?;
            Some((trace, trace_id, span_id))
        });
        if let (Some(ctx), Some((trace, trace_id, span_id))) = (ctx, ids) {
            let kind = match meta.target() {
                ACCESS_TARGET if !fields.end.websocket => Some(SpanKind::Server),
                OUTGOING_TARGET => Some(SpanKind::Client),
                reqscope_core::job::JOB_TARGET if fields.end.outcome.is_some() => Some(SpanKind::Consumer),
                _ => None,
            };
            if let Some(kind) = kind {
                self.span(kind, ctx, trace, (trace_id, span_id), *meta.level(), &fields, now);
            }
        }
        self.log_record(meta, ctx, ids.map(|(trace, t, s)| (trace.sampled(), t, s)), fields, now);
    }

    #[allow(clippy::too_many_arguments)] // one call site
    fn span(
        &self,
        kind: SpanKind,
        ctx: &RequestContext,
        trace: &reqscope_core::trace::TraceContext,
        (trace_id, span_id): (opentelemetry::trace::TraceId, opentelemetry::trace::SpanId),
        level: Level,
        fields: &EventFields<'_>,
        now: SystemTime,
    ) {
        let end = &fields.end;
        let (name, attributes, status) = match kind {
            SpanKind::Server => server_span(ctx, end, level),
            SpanKind::Client => client_span(ctx, end, level),
            _ => job_span(ctx, end),
        };
        let flags = if trace.sampled() { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state = trace.state().and_then(|s| s.as_str().parse::<TraceState>().ok()).unwrap_or_default();
        let parent = match trace.parent_id().and_then(|id| opentelemetry::trace::SpanId::from_hex(id.as_str()).ok()) {
            // The request span of an outgoing call is in this process; a request's or a job's
            // parent came from elsewhere.
            Some(parent) => OtelContext::new().with_remote_span_context(SpanContext::new(
                trace_id,
                parent,
                flags,
                kind != SpanKind::Client,
                state,
            )),
            None => OtelContext::new(),
        };
        let duration =
            end.duration_ms.filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| Duration::from_secs_f64(ms / 1000.0));
        let start = duration.and_then(|d| now.checked_sub(d)).unwrap_or_else(|| ctx.started_at());
        let builder = self.tracer.span_builder(name).with_kind(kind).with_start_time(start).with_attributes(attributes);
        NEXT_IDS.set((Some(trace_id), Some(span_id)));
        let mut span = self.tracer.build_with_context(builder, &parent);
        NEXT_IDS.set((None, None));
        use opentelemetry::trace::Span as _;
        span.set_status(status);
        span.end_with_timestamp(now);
    }

    fn log_record(
        &self,
        meta: &Metadata<'_>,
        ctx: Option<&RequestContext>,
        ids: Option<(bool, opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)>,
        fields: EventFields<'_>,
        now: SystemTime,
    ) {
        let mut record = self.logger.create_log_record();
        let (severity, text) = severity(*meta.level());
        record.set_severity_number(severity);
        record.set_severity_text(text);
        record.set_target(meta.target().to_owned());
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        if let Some(message) = fields.message {
            record.set_body(AnyValue::from(message));
        }
        if let Some((sampled, trace_id, span_id)) = ids {
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            record.set_trace_context(trace_id, span_id, Some(flags));
        }
        let mut keys = Keys::default();
        if let Some(ctx) = ctx {
            context_attributes(ctx, &self.redaction, &mut keys, |key, value| record.add_attribute(key, value));
        }
        for (name, value) in fields.values {
            let key = keys.unique(name, || Key::from_static_str(name));
            record.add_attribute(key, value);
        }
        self.logger.emit(record);
    }
}

fn severity(level: Level) -> (Severity, &'static str) {
    match level {
        Level::TRACE => (Severity::Trace, "TRACE"),
        Level::DEBUG => (Severity::Debug, "DEBUG"),
        Level::INFO => (Severity::Info, "INFO"),
        Level::WARN => (Severity::Warn, "WARN"),
        _ => (Severity::Error, "ERROR"),
    }
}

/// The keys of one record's attributes so far, to keep each once.
#[derive(Default)]
struct Keys(Vec<Key>);

impl Keys {
    /// `name`, or `fields.name` (repeated) when it is taken; and takes it. `name` is
    /// turned into a key only when it is free (a static or shared name, no copy).
    fn unique(&mut self, name: &str, as_key: impl FnOnce() -> Key) -> Key {
        let taken = |keys: &[Key], candidate: &str| keys.iter().any(|k| k.as_str() == candidate);
        let key = if taken(&self.0, name) {
            let mut key = name.to_owned();
            while taken(&self.0, &key) {
                key.insert_str(0, "fields.");
            }
            Key::from(key)
        } else {
            as_key()
        };
        self.0.push(key.clone());
        key
    }

    fn stamped(&mut self, name: &'static str) -> Key {
        let key = Key::from_static_str(name);
        self.0.push(key.clone());
        key
    }
}

/// The request's context as attributes, with the line's key names.
fn context_attributes(
    ctx: &RequestContext,
    redaction: &Redaction,
    keys: &mut Keys,
    mut add: impl FnMut(Key, AnyValue),
) {
    add(keys.stamped("request_id"), AnyValue::from(ctx.id().as_str().to_owned()));
    ctx.read_patch(|patch| {
        if let Some(user) = &patch.user_id {
            add(keys.stamped("user_id"), shared(user));
        }
        if let Some(org) = &patch.org_id {
            add(keys.stamped("org_id"), shared(org));
        }
        if let Some(method) = ctx.method() {
            add(keys.stamped("method"), AnyValue::from(method_name(method)));
        }
        if let Some(path) = ctx.path() {
            add(keys.stamped("path"), AnyValue::from(path.to_owned()));
        }
        if let Some(route) = &patch.route {
            add(keys.stamped("route"), shared(route));
        }
        if let Some(ip) = ctx.client_ip() {
            add(keys.stamped("client_ip"), AnyValue::from(ip.to_string()));
        }
        if let Some(job) = ctx.job() {
            add(keys.stamped("job"), AnyValue::from(job.name().to_owned()));
            if let Some(id) = job.id() {
                add(keys.stamped("job_id"), AnyValue::from(id.to_owned()));
            }
            add(keys.stamped("attempt"), AnyValue::Int(i64::from(job.attempt())));
        }
        for (name, value) in &patch.fields {
            let key = keys.unique(name, || Key::from(Arc::clone(name)));
            let value = if redacts_field(redaction, name, value) {
                AnyValue::from(REDACTED)
            } else {
                match value {
                    FieldValue::Str(v) => AnyValue::from(opentelemetry::StringValue::from(Arc::clone(v))),
                    FieldValue::I64(v) => AnyValue::Int(*v),
                    FieldValue::U64(v) => u64_value(*v),
                    FieldValue::F64(v) => AnyValue::Double(*v),
                    FieldValue::Bool(v) => AnyValue::Boolean(*v),
                }
            };
            add(key, value);
        }
    });
}

fn shared(text: &Arc<str>) -> AnyValue {
    AnyValue::from(opentelemetry::StringValue::from(Arc::clone(text)))
}

/// The method's name, without a copy for the standard ones.
fn method_name(method: &http::Method) -> opentelemetry::StringValue {
    use http::Method;
    let name = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return opentelemetry::StringValue::from(method.as_str().to_owned()),
    };
    opentelemetry::StringValue::from(name)
}

fn u64_value(v: u64) -> AnyValue {
    i64::try_from(v).map_or_else(|_| AnyValue::from(v.to_string()), AnyValue::Int)
}

/// What the end line of a span says.
#[derive(Default)]
struct EndFields {
    status: Option<u64>,
    grpc_status: Option<i64>,
    duration_ms: Option<f64>,
    bytes: Option<u64>,
    aborted: bool,
    outcome: Option<String>,
    url: Option<String>,
    error: Option<String>,
    /// A WebSocket's close line: not the request's end.
    websocket: bool,
}

/// An event's fields, as attribute values (redacted), its message, and what an end line says.
struct EventFields<'r> {
    redaction: &'r Redaction,
    message: Option<String>,
    values: Vec<(&'static str, AnyValue)>,
    end: EndFields,
}

impl<'r> EventFields<'r> {
    fn new(redaction: &'r Redaction) -> Self {
        EventFields { redaction, message: None, values: Vec::new(), end: EndFields::default() }
    }

    /// Keeps `value` for `field`: redacted when its key is sensitive (never the message's) or
    /// the value hook says so of its text.
    fn push(&mut self, field: &Field, text: impl FnOnce() -> String, value: impl FnOnce(String) -> AnyValue) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let is_message = name == "message";
        if !is_message && self.redaction.is_sensitive_key(name) {
            self.values.push((name, AnyValue::from(REDACTED)));
            return;
        }
        let text = text();
        let redacted = self.redaction.has_value_hook() && self.redaction.redacts_value(name, &text);
        if is_message {
            self.message = Some(if redacted { REDACTED.to_owned() } else { text });
        } else if redacted {
            self.values.push((name, AnyValue::from(REDACTED)));
        } else {
            self.values.push((name, value(text)));
        }
    }

    fn number(&mut self, field: &Field, value: AnyValue, text: impl Fn() -> String) {
        if self.redaction.has_value_hook() || self.redaction.is_sensitive_key(field.name()) {
            self.push(field, text, |_| value);
        } else if !field.name().starts_with("log.") {
            self.values.push((field.name(), value));
        }
    }
}

impl Visit for EventFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "url" || field.name() == "error" || field.name() == "outcome" {
            let text = format!("{value:?}");
            self.record_str(field, &text);
            return;
        }
        self.push(
            field,
            || {
                let mut text = String::new();
                let _ = write!(text, "{value:?}");
                text
            },
            AnyValue::from,
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "outcome" => self.end.outcome = Some(value.to_owned()),
            "url" => self.end.url = Some(value.to_owned()),
            "error" => self.end.error = Some(value.to_owned()),
            _ => {}
        }
        self.push(field, || value.to_owned(), AnyValue::from);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, || value.to_string(), AnyValue::from);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "grpc_status" => self.end.grpc_status = Some(value),
            "status" => self.end.status = u64::try_from(value).ok(),
            _ => {}
        }
        self.number(field, AnyValue::Int(value), || value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "status" => self.end.status = Some(value),
            "bytes" => self.end.bytes = Some(value),
            "grpc_status" => self.end.grpc_status = i64::try_from(value).ok(),
            "messages_received" => self.end.websocket = true,
            _ => {}
        }
        self.number(field, u64_value(value), || value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "duration_ms" {
            self.end.duration_ms = Some(value);
        }
        self.number(field, AnyValue::Double(value), || value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "aborted" {
            self.end.aborted = value;
        }
        self.number(field, AnyValue::Boolean(value), || value.to_string());
    }
}

type SpanParts = (String, Vec<KeyValue>, Status);

/// `network.protocol.version`.
fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn server_span(ctx: &RequestContext, end: &EndFields, level: Level) -> SpanParts {
    let mut attributes = Vec::with_capacity(16);
    let method = ctx.method().map(http::Method::as_str);
    let path = ctx.path().unwrap_or("/");
    let route = ctx.read_patch(|patch| patch.route.clone());
    let user = ctx.user_id();
    if let Some(method) = ctx.method() {
        attributes.push(KeyValue::new("http.request.method", method_name(method)));
    }
    attributes.push(KeyValue::new("url.path", path.to_owned()));
    attributes.push(KeyValue::new("url.scheme", ctx.scheme().unwrap_or("http").to_owned()));
    if let Some(route) = &route {
        attributes.push(KeyValue::new("http.route", Arc::clone(route)));
    }
    if let Some(status) = end.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::try_from(status).unwrap_or(i64::MAX)));
    }
    if let Some(bytes) = end.bytes {
        attributes.push(KeyValue::new("http.response.body.size", i64::try_from(bytes).unwrap_or(i64::MAX)));
    }
    if let Some(ip) = ctx.client_ip() {
        attributes.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(user) = user {
        attributes.push(KeyValue::new("user.id", user));
    }
    if let Some(version) = ctx.version() {
        attributes.push(KeyValue::new("network.protocol.version", protocol_version(version)));
    }
    attributes.push(KeyValue::new("request_id", ctx.id().as_str().to_owned()));
    let name = if ctx.is_grpc() {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        let full = path.trim_start_matches('/');
        if let Some((service, method)) = full.split_once('/') {
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
            attributes.push(KeyValue::new("rpc.method", method.to_owned()));
        }
        if let Some(code) = end.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", code));
        }
        full.to_owned()
    } else {
        match (method, &route) {
            (Some(method), Some(route)) => format!("{method} {route}"),
            (Some(method), None) => method.to_owned(),
            (None, _) => "request".to_owned(),
        }
    };
    let error = if end.aborted {
        Some(("aborted", "the request was aborted before its response was complete".to_owned()))
    } else if end.status.is_none() {
        Some(("no_response", "the service failed without a response".to_owned()))
    } else if level == Level::ERROR {
        Some(match (ctx.is_grpc(), end.grpc_status) {
            (true, Some(code)) => ("grpc_status", format!("gRPC status {code}")),
            _ => ("http_status", format!("HTTP {}", end.status.unwrap_or_default())),
        })
    } else {
        None
    };
    let status = match error {
        Some((kind, description)) => {
            let error_type = match kind {
                "http_status" => end.status.unwrap_or_default().to_string(),
                "grpc_status" => end.grpc_status.unwrap_or_default().to_string(),
                other => other.to_owned(),
            };
            attributes.push(KeyValue::new("error.type", error_type));
            Status::error(description)
        }
        None => Status::Unset,
    };
    (name, attributes, status)
}

fn client_span(ctx: &RequestContext, end: &EndFields, level: Level) -> SpanParts {
    let mut attributes = Vec::with_capacity(8);
    let method = ctx.method().map_or("GET", http::Method::as_str);
    attributes.push(KeyValue::new(
        "http.request.method",
        ctx.method().map_or(opentelemetry::StringValue::from("GET"), method_name),
    ));
    if let Some(url) = &end.url {
        attributes.push(KeyValue::new("url.full", url.clone()));
        if let Ok(uri) = url.parse::<http::Uri>()
            && let Some(host) = uri.host()
        {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
    }
    if let Some(status) = end.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::try_from(status).unwrap_or(i64::MAX)));
    }
    attributes.push(KeyValue::new("request_id", ctx.id().as_str().to_owned()));
    let error = match end.status {
        Some(status) if status >= 400 => Some((status.to_string(), format!("HTTP {status}"))),
        Some(_) => None,
        None if end.aborted => Some(("aborted".to_owned(), "the call was dropped before its response".to_owned())),
        None if level <= Level::WARN || end.error.is_some() => {
            let kind = end.error.clone().unwrap_or_else(|| "error".to_owned());
            Some((kind.clone(), format!("the call failed without a response: {kind}")))
        }
        None => None,
    };
    let status = match error {
        Some((kind, description)) => {
            attributes.push(KeyValue::new("error.type", kind));
            Status::error(description)
        }
        None => Status::Unset,
    };
    (method.to_owned(), attributes, status)
}

fn job_span(ctx: &RequestContext, end: &EndFields) -> SpanParts {
    let mut attributes = Vec::with_capacity(8);
    attributes.push(KeyValue::new("messaging.operation.type", "process"));
    let name = match ctx.job() {
        Some(job) => {
            attributes.push(KeyValue::new("job.name", job.name().to_owned()));
            attributes.push(KeyValue::new("job.attempt", i64::from(job.attempt())));
            if let Some(id) = job.id() {
                attributes.push(KeyValue::new("messaging.message.id", id.to_owned()));
            }
            format!("process {}", job.name())
        }
        None => "process".to_owned(),
    };
    if let Some(user) = ctx.user_id() {
        attributes.push(KeyValue::new("user.id", user));
    }
    attributes.push(KeyValue::new("request_id", ctx.id().as_str().to_owned()));
    let status = match end.outcome.as_deref() {
        Some("ok") | None => Status::Unset,
        Some(outcome) => {
            attributes.push(KeyValue::new("error.type", outcome.to_owned()));
            Status::error(format!("job failed: {outcome}"))
        }
    };
    (name, attributes, status)
}

/// Targets whose events are not exported as records: the exporter's own crates (exporting
/// what they log about exporting would feed itself) and this module's reports.
fn exporter_target(target: &str) -> bool {
    const OWN: [&str; 7] = ["opentelemetry", "reqwest", "hyper", "h2", "tonic", "tower", OTLP_TARGET];
    OWN.iter().any(|own| {
        target.strip_prefix(own).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with("::") || rest.starts_with('_') || rest.starts_with('-')
        })
    })
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() == REQUEST_SPAN_TARGET
            && let Some(span) = ctx.span(id)
        {
            remember_request(&span);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if EXPORTING.get() || crate::buffer::is_kept(event) {
            return;
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if exporter_target(meta.target()) {
            return;
        }
        if RequestContext::with(|request| self.export(event, meta, Some(request))).is_some() {
            return;
        }
        let from_span = ctx
            .event_scope(event)
            .and_then(|spans| spans.into_iter().find_map(|span| request_of_span(&span)).flatten());
        self.export(event, meta, from_span.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_variable() {
        let error = check_sampler(Some("sometimes"), None).unwrap_err().to_string();
        assert!(error.starts_with("OTEL_TRACES_SAMPLER must be"), "{error}");
        let error = check_sampler(Some("traceidratio"), Some("2")).unwrap_err().to_string();
        assert!(error.starts_with("OTEL_TRACES_SAMPLER_ARG must be"), "{error}");
        assert!(check_sampler(Some("parentbased_traceidratio"), Some("0.25")).is_ok());
        assert!(check_sampler(Some("always_off"), None).is_ok());
        let error = "http/json".parse::<Protocol>().unwrap_err().to_string();
        assert!(error.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL must be"), "{error}");
        assert_eq!(" grpc".parse::<Protocol>().unwrap(), Protocol::Grpc);
        for bad in ["localhost:4318", "http://", "ftp://x", "http:// x"] {
            let error = check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", bad).unwrap_err().to_string();
            assert!(error.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT must be"), "{error}");
        }
        assert!(check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318").is_ok());
        assert!(check_resource_attributes("deployment.environment=prod, team=core").is_ok());
        let error = check_resource_attributes("prod").unwrap_err().to_string();
        assert!(error.starts_with("OTEL_RESOURCE_ATTRIBUTES must be"), "{error}");
    }

    #[test]
    fn the_exporters_own_crates_are_not_exported() {
        for own in ["opentelemetry_sdk", "opentelemetry-otlp", "reqwest::connect", "hyper_util::client", "h2", "tonic"]
        {
            assert!(exporter_target(own), "{own}");
        }
        for other in ["reqscope::access", "myapp", "towers", "hyperion", "reqscope::outgoing"] {
            assert!(!exporter_target(other), "{other}");
        }
    }
}
