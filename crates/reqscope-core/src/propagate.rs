//! Carrying the context across task and thread boundaries.
//!
//! The context belongs to one task, like a tokio task-local: `tokio::spawn`, `spawn_blocking`,
//! `JoinSet`, std threads and callbacks run elsewhere and see no context.
//! These helpers capture the current context — and the current `tracing` span, so that
//! libraries that hop threads with the span (sqlx-sqlite) stay stamped too — and re-enter
//! both around the work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::JoinHandle;
use tracing::Span;

use crate::context::RequestContext;

/// The current request context and tracing span, captured to be re-entered elsewhere.
///
/// For callbacks that take arguments, where [`bind`] and [`bind_fn`] do not fit:
///
/// ```
/// let captured = reqscope_core::Captured::current();
/// let on_row = move |row: u32| captured.run(|| tracing::info!(row, "row received"));
/// # on_row(1);
/// ```
#[derive(Clone, Debug)]
pub struct Captured {
    ctx: Option<Arc<RequestContext>>,
    span: Span,
}

impl Captured {
    /// Captures the context and span current here (either may be absent).
    #[inline]
    pub fn current() -> Self {
        Captured { ctx: RequestContext::current(), span: Span::current() }
    }

    /// The captured context.
    pub fn context(&self) -> Option<&Arc<RequestContext>> {
        self.ctx.as_ref()
    }

    /// Runs `f` inside the captured context and span.
    #[inline]
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.span.enter();
        match &self.ctx {
            Some(ctx) => RequestContext::scope_sync(Arc::clone(ctx), f),
            None => f(),
        }
    }

    /// [`run`](Self::run), lending the captured context rather than cloning it: for
    /// [`InContext`], which enters it on every poll.
    #[inline]
    fn run_in_place<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _entered = self.span.enter();
        match self.ctx {
            Some(_) => RequestContext::scope_in_place(&mut self.ctx, f),
            None => f(),
        }
    }
}

/// A message that carries its sender's request context (and tracing span) to whoever receives
/// it: for work sent through a channel — tokio's `mpsc`, any in-process queue — to a worker
/// task that serves many requests, so that what the worker logs for this message carries the
/// request that sent it.
///
/// ```
/// use reqscope_core::{Envelope, RequestContext, RequestId};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (jobs, mut inbox) = tokio::sync::mpsc::channel::<Envelope<u32>>(16);
/// // One worker for every request, started outside any of them.
/// let worker = tokio::spawn(async move {
///     while let Some(job) = inbox.recv().await {
///         let sender = job.open(|order| {
///             tracing::info!(order, "order shipped"); // stamped with the sender's request
///             RequestContext::with(|ctx| ctx.id().to_string())
///         });
///         assert_eq!(sender.as_deref(), Some("req-7"));
///     }
/// });
/// let ctx = RequestContext::new(RequestId::parse("req-7").unwrap());
/// RequestContext::scope(ctx, async { jobs.send(Envelope::new(42)).await.unwrap() }).await;
/// drop(jobs);
/// worker.await.unwrap();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Envelope<T> {
    captured: Captured,
    message: T,
}

impl<T> Envelope<T> {
    /// Wraps `message` with the context and span current here (either may be absent).
    pub fn new(message: T) -> Self {
        Envelope { captured: Captured::current(), message }
    }

    /// The message, without entering the context.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// The sender's context, if it had one.
    pub fn context(&self) -> Option<&Arc<RequestContext>> {
        self.captured.context()
    }

    /// Runs `f` on the message inside the sender's context and span.
    pub fn open<R>(self, f: impl FnOnce(T) -> R) -> R {
        let Envelope { captured, message } = self;
        captured.run(|| f(message))
    }

    /// Makes the future `f` returns for the message, and runs it — every poll — inside the
    /// sender's context and span.
    pub fn open_async<Fut: Future>(self, f: impl FnOnce(T) -> Fut) -> InContext<Fut> {
        let Envelope { captured, message } = self;
        let inner = captured.run(|| f(message));
        InContext { captured, inner }
    }

    /// The message and the captured context, apart.
    pub fn into_parts(self) -> (T, Captured) {
        (self.message, self.captured)
    }
}

/// Time since the current request started; `None` outside a request.
pub fn elapsed() -> Option<std::time::Duration> {
    RequestContext::with(RequestContext::elapsed)
}

/// Spawns a task that keeps the current request context; use it instead of `tokio::spawn`.
///
/// A panic in the task is reported like a handler's: one ERROR event (target
/// `reqscope::panic`) with the message and location, stamped with the request — then the
/// panic goes on, so that joining the task gives the usual `JoinError`.
///
/// Must be called inside a tokio runtime, like `tokio::spawn`.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    crate::panics::install_panic_location_hook();
    tokio::spawn(ReportPanics { inner: future }.in_current_context())
}

pin_project! {
    /// Reports a panic of the inner future (inside the context, so the report is stamped),
    /// then lets it unwind on.
    struct ReportPanics<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for ReportPanics<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled,
            Err(payload) => {
                let message = crate::panics::panic_message(&*payload);
                let location = crate::panics::take_panic_location().unwrap_or_else(|| "unknown".to_owned());
                tracing::error!(target: "reqscope::panic", panic = %message, location = %location, "spawned task panicked");
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// Runs blocking work on tokio's blocking pool, keeping the current request context; use it
/// instead of `tokio::task::spawn_blocking`.
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(bind(f))
}

/// Binds a closure to the current request context, like Node's `AsyncResource.bind`: it can
/// then run on a std thread, in a callback or a thread pool and still log with the request's
/// id.
///
/// ```
/// use reqscope_core::{RequestContext, RequestId};
///
/// let ctx = RequestContext::new(RequestId::parse("job-7").unwrap());
/// let job = RequestContext::scope_sync(ctx, || {
///     reqscope_core::bind(|| RequestContext::with(|c| c.id().to_string()))
/// });
/// let seen = std::thread::spawn(job).join().unwrap();
/// assert_eq!(seen.as_deref(), Some("job-7"));
/// ```
pub fn bind<F, R>(f: F) -> impl FnOnce() -> R
where
    F: FnOnce() -> R,
{
    let captured = Captured::current();
    move || captured.run(f)
}

/// Like [`bind`], for a callback that runs many times.
pub fn bind_fn<F, R>(f: F) -> impl Fn() -> R
where
    F: Fn() -> R,
{
    let captured = Captured::current();
    move || captured.run(&f)
}

/// Carries the current request context into a future that will run elsewhere.
pub trait FutureExt: Future + Sized {
    /// Makes this future run inside the context (and tracing span) current *now*, wherever
    /// it is polled later: for `JoinSet::spawn`, `select!` arms moved into tasks, executors
    /// other than tokio's.
    ///
    /// ```
    /// use reqscope_core::{FutureExt, RequestContext, RequestId};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ctx = RequestContext::new(RequestId::parse("req-1").unwrap());
    /// RequestContext::scope(ctx, async {
    ///     let mut set = tokio::task::JoinSet::new();
    ///     set.spawn(async { RequestContext::with(|c| c.id().to_string()) }.in_current_context());
    ///     let seen = set.join_next().await.unwrap().unwrap();
    ///     assert_eq!(seen.as_deref(), Some("req-1"));
    /// })
    /// .await;
    /// # }
    /// ```
    fn in_current_context(self) -> InContext<Self> {
        InContext { captured: Captured::current(), inner: self }
    }

    /// Makes this future run inside `ctx` (for example a [`RequestContext::fork`]).
    fn in_context(self, ctx: impl Into<Arc<RequestContext>>) -> InContext<Self> {
        InContext { captured: Captured { ctx: Some(ctx.into()), span: Span::current() }, inner: self }
    }
}

impl<F: Future> FutureExt for F {}

pin_project! {
    /// A future that re-enters a captured request context on every poll; see
    /// [`FutureExt::in_current_context`].
    #[must_use = "futures do nothing unless polled"]
    pub struct InContext<F> {
        captured: Captured,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for InContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.captured.run_in_place(|| this.inner.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    fn seen_id() -> Option<String> {
        RequestContext::with(|c| c.id().to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_helper_carries_the_context() {
        let ctx = RequestContext::new(RequestId::parse("r-9").unwrap());
        RequestContext::scope(ctx, async {
            let want = Some("r-9".to_owned());
            assert_eq!(spawn(async { seen_id() }).await.unwrap(), want);
            assert_eq!(spawn_blocking(seen_id).await.unwrap(), want);
            assert_eq!(std::thread::spawn(bind(seen_id)).join().unwrap(), want);
            let callback = bind_fn(seen_id);
            assert_eq!((callback(), callback()), (want.clone(), want.clone()));
            // The pitfall the helpers exist for:
            assert_eq!(tokio::spawn(async { seen_id() }).await.unwrap(), None);
        })
        .await;
    }

    #[tokio::test]
    async fn in_context_scopes_a_fork() {
        let parent = Arc::new(RequestContext::new(RequestId::parse("p").unwrap()));
        let child = parent.fork();
        child.set_user_id("batch");
        let user = async { RequestContext::with(|c| c.user_id()).flatten() }.in_context(child).await;
        assert_eq!(user.as_deref(), Some("batch"));
        assert_eq!(parent.user_id(), None);
    }
}
