//! Jobs: work that runs later, maybe in another process, on behalf of a request.
//!
//! ```
//! use reqscope_core::carry::Carried;
//! use reqscope_core::job::Job;
//! use reqscope_core::trace::TraceContext;
//! use reqscope_core::{RequestContext, RequestId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // In the request: the headers travel with the queued message.
//! let request = RequestContext::builder(RequestId::new_v4()).trace(TraceContext::new_root()).build();
//! request.set_user_id("42");
//! let headers = request.carry().to_headers();
//!
//! // In the worker:
//! let job = Job::new("welcome_email").with_id("msg-1").with_attempt(1);
//! let sent: Result<(), std::io::Error> = job
//!     .run(Carried::from_headers(&headers), async {
//!         // Stamped with the request's id, user and trace, and the job's name, id, attempt.
//!         tracing::info!("welcome email sent");
//!         let ctx = RequestContext::try_current().unwrap();
//!         assert_eq!(ctx.user_id().as_deref(), Some("42"));
//!         assert_eq!(ctx.job().unwrap().name(), "welcome_email");
//!         Ok(())
//!     })
//!     .await;
//! assert!(sent.is_ok());
//! # }
//! ```
//!
//! [`Job::run`] restores the [carried](crate::carry) context — the request's id, user, org,
//! roles, custom and hidden fields, baggage and [raised log level](crate::RaisedLevel) (a job
//! queued by a request raised to DEBUG writes its DEBUG lines too), and the same trace with a
//! span of the job's own whose parent is the request's span — and runs the work inside it, as a request layer
//! runs a handler: every poll inside the context, inside a `request` span
//! ([`REQUEST_SPAN_TARGET`](crate::REQUEST_SPAN_TARGET), so that a thread without the
//! task-local — sqlx-sqlite's — still finds it). Log layers stamp the job's lines with `job`,
//! `job_id` and `attempt` besides the request's fields.
//!
//! When the work ends, one line (target `reqscope::job`) tells how: INFO `job completed` with
//! `outcome="ok"`, or ERROR `job failed` with `outcome="error"` and the error, or
//! `outcome="panic"` and the panic's message (the panic then goes on); each with
//! `duration_ms` (the run) and `queue_ms` (from the snapshot to the start, when the producer
//! said when it took it).
//!
//! A carried context that does not validate is never an error for the job: it runs in a
//! context of its own (a new request id and trace), and one WARN line gives the reason. A
//! message that carries no context at all (no `x-request-id`: a producer that does not use
//! reqscope) runs the same way with a DEBUG line instead.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tracing::Instrument;

use crate::carry::{Carried, InvalidCarriedContext};
use crate::context::{RequestContext, RequestContextBuilder};
use crate::id::RequestId;
use crate::trace::TraceContext;

/// The target of a job's own lines: its end line, and the reason a carried context was rejected.
pub const JOB_TARGET: &str = "reqscope::job";

/// What a context knows of the job it runs: name, id and attempt (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    name: Arc<str>,
    id: Option<Arc<str>>,
    attempt: u32,
}

impl Job {
    /// A job of this name (`welcome_email`), first attempt, no id.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Job { name: name.into(), id: None, attempt: 1 }
    }

    /// The id of this job: the message id, the queue's job id.
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Which attempt this is, counting from 1 (a retry is 2).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The job's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job's id, if it has one.
    #[inline]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Which attempt this is, counting from 1.
    #[inline]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The context this job runs in: the carried one restored, or — when it did not
    /// validate — one of its own (a new id and trace), with the reason to report.
    pub fn context(
        &self,
        carried: Result<Carried, InvalidCarriedContext>,
    ) -> (RequestContext, Option<InvalidCarriedContext>) {
        let (builder, rejected) = self.context_builder(carried);
        (builder.build(), rejected)
    }

    /// [`context`](Self::context), not yet built: [`run`](Self::run) builds it shared.
    fn context_builder(
        &self,
        carried: Result<Carried, InvalidCarriedContext>,
    ) -> (RequestContextBuilder, Option<InvalidCarriedContext>) {
        match carried {
            Ok(carried) => (carried.into_builder().job(self.clone()), None),
            Err(invalid) => {
                let builder =
                    RequestContext::builder(RequestId::new_v4()).trace(TraceContext::new_root()).job(self.clone());
                (builder, Some(invalid))
            }
        }
    }

    /// Runs `work` inside the carried context and writes the job's end line; see the
    /// [module docs](self). The work's result is returned as it is; a panic goes on after
    /// its line.
    pub async fn run<F, T, E>(self, carried: Result<Carried, InvalidCarriedContext>, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let queued = carried.as_ref().ok().and_then(Carried::age);
        let (builder, rejected) = self.context_builder(carried);
        let ctx = builder.build_shared();
        crate::panics::install_panic_location_hook();
        let run = async {
            match rejected {
                // A producer that carries no context is no fault of the message.
                Some(InvalidCarriedContext::MissingRequestId) => {
                    tracing::debug!(target: JOB_TARGET, "no carried context; the job runs in a context of its own");
                }
                Some(reason) => {
                    tracing::warn!(target: JOB_TARGET, reason = %reason, "carried context rejected; the job runs in a context of its own");
                }
                None => {}
            }
            // Created inside the scope: the log layer keeps the context in it.
            let span = tracing::info_span!(target: crate::REQUEST_SPAN_TARGET, "request");
            let result = CatchUnwind { inner: work }.instrument(span).await;
            let duration_ms = millis(ctx.elapsed());
            let queue_ms = queued.map(millis);
            match result {
                Ok(Ok(value)) => {
                    tracing::info!(target: JOB_TARGET, outcome = "ok", duration_ms, queue_ms, "job completed");
                    Ok(value)
                }
                Ok(Err(error)) => {
                    tracing::error!(target: JOB_TARGET, outcome = "error", duration_ms, queue_ms, error = %error, "job failed");
                    Err(error)
                }
                Err(payload) => {
                    let message = crate::panics::panic_message(&*payload);
                    let location = crate::panics::take_panic_location().unwrap_or_else(|| "unknown".to_owned());
                    tracing::error!(
                        target: JOB_TARGET, outcome = "panic", duration_ms, queue_ms, panic = %message,
                        location = %location, "job failed"
                    );
                    std::panic::resume_unwind(payload)
                }
            }
        };
        let result = RequestContext::scope(Arc::clone(&ctx), run).await;
        ctx.mark_finished();
        result
    }
}

/// Milliseconds with microsecond precision, as on the access line.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

pin_project! {
    /// The work's output, or the payload of its panic.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled.map(Ok),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}
