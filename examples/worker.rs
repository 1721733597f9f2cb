//! A worker process for the example API server's jobs: consumes the RabbitMQ queue
//! `welcome_email` and runs each job inside the context of the request that queued it.
//!
//! ```text
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example api
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example worker
//! ```
//!
//! Each job's lines (JSON on stdout) carry the request's id, user and trace, and `job`,
//! `job_id`, `attempt`. Environment: `AMQP_URL` (required), `RUST_LOG` (default `info`),
//! `LOG_FORMAT` (`json`, the default, or `pretty`), `OTEL_EXPORTER_OTLP_ENDPOINT` (set: jobs
//! exported as OpenTelemetry spans, lines as log records; see `reqscope::otlp`). The worker reconnects when the broker goes
//! away and comes back; SIGTERM or ctrl-c stops it (jobs not acked by then are delivered
//! again, to this or another worker).
#![forbid(unsafe_code)]

#[path = "api/jobs.rs"]
#[allow(dead_code)] // the worker consumes; queueing jobs is the server's part
mod jobs;
#[path = "api/shutdown.rs"]
mod shutdown;

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // OTEL_EXPORTER_OTLP_ENDPOINT set: each job is exported as a span, each line as a log record.
    let otlp = match reqscope::otlp::Otlp::builder().default_service_name("reqscope-example-worker").build_from_env() {
        Ok(otlp) => otlp,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let log_guard = match reqscope::logging::init_from_env_with(otlp.as_ref().map(reqscope::otlp::Otlp::layer)) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: cannot set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    let queue = std::env::var("AMQP_URL")
        .map_err(|_| "AMQP_URL must be set: the worker consumes jobs from RabbitMQ".to_owned())
        .and_then(|url| jobs::Queue::new(&url, jobs::WELCOME_EMAIL).map_err(|error| format!("AMQP_URL {error}")));
    let queue = match queue {
        Ok(queue) => queue,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tracing::info!(queue = queue.name(), "worker started");
        tokio::select! {
            () = queue.work() => {}
            () = shutdown::signal() => {}
        }
        tracing::info!("stopped");
    });
    // Jobs still running are dropped (their messages, not acked, go to another worker).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(otlp) = otlp
        && let Err(error) = otlp.shutdown()
    {
        tracing::warn!(%error, "spans or log records may be lost");
    }
    // Flushes every accepted log line before the process ends.
    drop(log_guard);
    ExitCode::SUCCESS
}
