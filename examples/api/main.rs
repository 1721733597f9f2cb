//! The reqscope example API server.
//!
//! ```text
//! cargo run --example api
//! curl -i localhost:3000/health
//! curl -i --http2-prior-knowledge localhost:3000/health
//! cargo run --example grpc_client -- get-user 1
//! ```
//!
//! One address serves HTTP/1.1, HTTP/2 (cleartext, prior knowledge) and gRPC
//! (`reqscope.example.v1.Users`, `proto/users.proto`, with server reflection).
//!
//! Environment: `ADDR` (default `127.0.0.1:3000`), `RUST_LOG` (default `info`),
//! `LOG_FORMAT` (`json`, the default, `pretty`, `ecs` — Elastic Common Schema — or `gcp` —
//! Google Cloud Logging; every line on stdout, start-up lines included, is in that format, and
//! whatever stops the start before logging is set up goes to stderr), `GOOGLE_CLOUD_PROJECT`
//! (the project of `gcp` lines' trace names; default `local`), `LOG_BAGGAGE_KEYS` (the baggage keys
//! written on every line as `baggage.<key>`, comma-separated; default `session`), `LOG_REDACT`
//! (field names whose values lines and Sentry events write as `"[redacted]"`, besides
//! reqscope's defaults — `password`, `token`, `api_key`, …; comma-separated; default `email`),
//! `LOG_HEADERS` (the request headers on the access line as `header.<name>`, comma-separated;
//! default `user-agent`), `LOG_BUFFER_BYTES` (log lines held while
//! stdout is not read, default 8 MiB; beyond it lines are dropped and counted), `LOG_ON_ERROR`
//! (`debug` or `trace`: each request's lines of that level are kept and written just before its
//! first ERROR line, dropped when it succeeds; default `off`), `JWT_SECRET` (HS256, at least 32 bytes;
//! unset: a development secret is made and kept in the temp directory, and
//! `cargo run --example mint_token -- 1` signs tokens with it), `DATABASE_URL` (unset: an
//! embedded in-memory SQLite database; `postgres://…`: PostgreSQL), `SLOW_QUERY_MS` (statements
//! slower than this are logged at WARN; default 100), `SENTRY_DSN` (set: errors and panics
//! also go to Sentry, with the request and the user), `RATE_LIMIT_PER_MINUTE` (per user or
//! client ip on `/users/…`; default 600), `REDIS_URL` (set: the rate-limit budgets live in
//! Redis, shared by every instance), `DOWNSTREAM_URL` (the next hop of `GET /chain`; default:
//! this server itself), `SHUTDOWN_GRACE_SECS` (how long SIGTERM / ctrl-c waits for in-flight
//! requests before cutting them off, which takes up to another second; default 10),
//! `AMQP_URL` (unset: the welcome-email jobs of `POST /users` go through an embedded queue,
//! run by a worker in this process; `amqp://…`: through RabbitMQ, run by
//! `cargo run --example worker` processes; a broker unreachable at start is a WARN, and
//! `POST /users` answers 503 until it is reachable), `WORKER` (`1`: with `AMQP_URL`, this
//! process runs jobs from RabbitMQ too; `0` or unset: it does not), `ACCESS_LOG_SKIP` (route
//! templates whose successful requests write no access line, comma-separated; default
//! `/health,/ready`), `ACCESS_LOG_SAMPLE` (the share of the other successful requests whose
//! access line is written, chosen by request id, `0.0`–`1.0`; default `1.0`),
//! `SLOW_REQUEST_MS` (a request this slow always writes its access line; default 1000),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (set, e.g. `http://127.0.0.1:4318`: every request, outgoing
//! call and job is also exported as an OpenTelemetry span, and every line as a log record,
//! over OTLP/HTTP — `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` for gRPC —, with the lines' ids; service
//! name `reqscope-example` unless `OTEL_SERVICE_NAME` says otherwise; see `reqscope::otlp`).
//!
//! A request whose token carries the role `log-debug` and which sends `x-log-level: debug` (or
//! `trace`) logs at that level; every other request stays at `RUST_LOG`'s
//! (`cargo run --example mint_token -- 1 log-debug` mints such a token).
#![forbid(unsafe_code)]

mod access_log;
mod app;
mod boom;
mod chain;
mod db;
mod error_tracking;
mod fanout;
mod grpc;
mod health;
mod jobs;
mod jwt;
mod log_settings;
mod not_found;
mod rate_limit;
mod ready;
mod request_fields;
mod shutdown;
mod stream;
mod users;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let redaction = match log_settings::redaction_from_env() {
        Ok(redaction) => redaction,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let headers = match log_settings::headers_from_env() {
        Ok(headers) => headers,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // First, so that the panic hook and every thread's Sentry hub see the client.
    let sentry = match error_tracking::init_from_env(redaction.clone()) {
        Ok(sentry) => sentry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let baggage_keys = match log_baggage_keys() {
        Ok(keys) => keys,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // OTEL_EXPORTER_OTLP_ENDPOINT set: spans and log records go to that collector too.
    let otlp = match reqscope::otlp::Otlp::builder().default_service_name("reqscope-example").build_from_env() {
        Ok(otlp) => otlp,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let otlp_layer = otlp.as_ref().map(|otlp| otlp.layer().redaction(redaction.clone()));
    // Every line on stdout, startup included, is a log line in `LOG_FORMAT`'s format: the
    // errors above, written before logging exists, go to stderr.
    let log_layer = reqscope::logging::LogLayer::new()
        .baggage_fields(baggage_keys)
        .redaction(redaction)
        .gcp_service_context("api", Some(env!("CARGO_PKG_VERSION")));
    let sentry_layer = sentry.is_some().then(reqscope::sentry::layer);
    let extra = tracing_subscriber::Layer::and_then(sentry_layer, otlp_layer);
    let log_guard = match reqscope::logging::init_from_env_with_layer(log_layer, extra) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: cannot set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(headers));
    if let Err(message) = &result {
        tracing::error!(error = %message, "server stopped");
        eprintln!("error: {message}");
    }
    // Requests still running after the grace period are dropped here, while logging still
    // works: each writes its access line, marked aborted.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // Sends every span and log record of the requests served, while stdout still takes lines.
    if let Some(otlp) = otlp
        && let Err(error) = otlp.shutdown()
    {
        tracing::warn!(%error, "spans or log records may be lost");
    }
    // Flushes every accepted log line, then every Sentry event, before the process ends.
    drop(log_guard);
    drop(sentry);
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn serve(headers: Vec<http::HeaderName>) -> Result<(), String> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let addr: SocketAddr =
        addr.parse().map_err(|_| format!("ADDR must be an address such as 127.0.0.1:3000, got {addr:?}"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local_addr = listener.local_addr().unwrap_or(addr);
    if std::env::var_os("JWT_SECRET").is_none() {
        tracing::warn!(
            secret_file = %jwt::dev_secret_path().display(),
            "JWT_SECRET is not set: using a development secret; mint a token with `cargo run --example mint_token -- 1`"
        );
    }
    let auth = app::auth_layer(&jwt::secret(true)?);
    let access_log = access_log::from_env()?;
    let database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| db::DEFAULT_URL.to_owned());
    let slow_ms: u64 = match std::env::var("SLOW_QUERY_MS") {
        Ok(ms) => ms.parse().map_err(|_| format!("SLOW_QUERY_MS must be a number of milliseconds, got {ms:?}"))?,
        Err(_) => 100,
    };
    let pool = db::connect(&database_url, std::time::Duration::from_millis(slow_ms))
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let grace = match std::env::var("SHUTDOWN_GRACE_SECS") {
        Ok(secs) => Duration::from_secs(
            secs.parse().map_err(|_| format!("SHUTDOWN_GRACE_SECS must be a whole number of seconds, got {secs:?}"))?,
        ),
        Err(_) => Duration::from_secs(10),
    };
    let limit = rate_limit::from_env()?;
    let downstream = std::env::var("DOWNSTREAM_URL").unwrap_or_else(|_| format!("http://{local_addr}"));
    let next_hop = chain::Chain::new(&downstream)?;
    let jobs = jobs::from_env().await?;
    tracing::info!(addr = %local_addr, rate_limit = ?limit, downstream = %downstream, "listening");

    let context = reqscope::RequestContextLayer::new().access_sampling(access_log).log_request_headers(headers);
    let service = app::app_with_context_layer(auth, limit, pool, next_hop, context)
        .layer(axum::Extension(jobs))
        .into_make_service_with_connect_info::<SocketAddr>();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        shutdown_signal().await;
        signalled.notify_one();
    });
    // On a signal the server stops accepting and waits for in-flight requests, for at most
    // the grace period: a stuck request must not keep a deployment from rolling.
    tokio::select! {
        served = server.into_future() => served.map_err(|e| e.to_string())?,
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period; stopping anyway");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// `LOG_BAGGAGE_KEYS`: the baggage keys every line carries as `baggage.<key>` (default
/// `session`); empty entries are skipped, so an empty value writes none.
fn log_baggage_keys() -> Result<Vec<String>, String> {
    let value = match std::env::var("LOG_BAGGAGE_KEYS") {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(vec!["session".to_owned()]),
        Err(std::env::VarError::NotUnicode(_)) => return Err("LOG_BAGGAGE_KEYS must be text".to_owned()),
    };
    let keys: Vec<String> = value.split(',').map(str::trim).filter(|key| !key.is_empty()).map(str::to_owned).collect();
    match keys.iter().find(|key| !reqscope::baggage::is_valid_key(key)) {
        Some(bad) => Err(format!(
            "LOG_BAGGAGE_KEYS must be a comma-separated list of baggage keys (tokens such as `session` or \
             `user.id`), got {value:?}: {bad:?} is not one"
        )),
        None => Ok(keys),
    }
}

/// Resolves on ctrl-c or SIGTERM; the server then stops accepting and finishes in-flight
/// requests.
async fn shutdown_signal() {
    shutdown::signal().await;
    tracing::info!("shutting down");
}
