use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::uri::{PathAndQuery, Scheme};
use http::{Extensions, Method, Uri, Version};
use pin_project_lite::pin_project;

use crate::baggage::{Baggage, InvalidBaggage};
use crate::error::NoRequestContext;
use crate::id::RequestId;
use crate::job::Job;
use crate::level::{LevelState, RaisedLevel};
use crate::logged_headers::LoggedHeader;
use crate::trace::TraceContext;

thread_local! {
    /// The context of the request this thread is working for right now. A scope moves its
    /// context in and back out again (a swap of two pointers), never cloning it: a future
    /// polled many times per request would otherwise pay two atomic operations per poll.
    static CURRENT: RefCell<Option<Arc<RequestContext>>> = const { RefCell::new(None) };
}

/// Swaps `slot` with the thread's current context, or says why it cannot.
#[inline]
fn swap_current(slot: &mut Option<Arc<RequestContext>>) -> Result<(), &'static str> {
    CURRENT
        .try_with(|current| match current.try_borrow_mut() {
            Ok(mut current) => {
                std::mem::swap(&mut *current, slot);
                Ok(())
            }
            Err(_) => Err("a request context scope cannot be entered inside `RequestContext::with`'s closure"),
        })
        .unwrap_or(Err("a request context scope cannot be entered while the thread's local storage is destroyed"))
}

/// Makes `slot` the current context until dropped, then puts both back where they were.
struct Entered<'a> {
    slot: &'a mut Option<Arc<RequestContext>>,
}

impl<'a> Entered<'a> {
    #[inline]
    fn enter(slot: &'a mut Option<Arc<RequestContext>>) -> Result<Self, &'static str> {
        swap_current(slot)?;
        Ok(Entered { slot })
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        // Cannot fail: nothing borrows the cell across the scope's closure, and the thread's
        // storage outlives the scope that was entered in it.
        let restored = swap_current(self.slot);
        debug_assert!(restored.is_ok(), "a request context scope could not be left: {restored:?}");
    }
}

pin_project! {
    /// A future running inside a request context, on every poll and when it is dropped (so
    /// that what its destructors log is stamped too); returned by [`RequestContext::scope`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        ctx: Option<Arc<RequestContext>>,
        // `None` once complete: the future is dropped inside the context, as soon as it is done.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if std::mem::needs_drop::<F>() && this.future.is_some() {
                let mut future = this.future;
                // Where the context cannot be entered (the thread is being torn down), the
                // future is still dropped, outside it.
                if let Ok(_entered) = Entered::enter(this.ctx) {
                    future.set(None);
                }
            }
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut future = this.future;
        RequestContext::scope_in_place(this.ctx, || {
            let polled = future.as_mut().as_pin_mut().expect("`Scoped` polled after it completed").poll(cx);
            if polled.is_ready() {
                future.set(None);
            }
            polled
        })
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped").field("id", &self.ctx.as_ref().map(|ctx| ctx.id())).finish_non_exhaustive()
    }
}

/// Everything known about the request being served, readable from anywhere that runs on its
/// behalf.
///
/// The immutable part (id, trace, method, path, client ip, start time) is set when the request
/// arrives. The [`Patch`] part (user, org, roles, route, rate-limit budget, custom fields) is
/// filled in by later layers and handlers; every log line written after a patch shows it,
/// including the access line. The patch is an `Arc` replaced as a whole on each (rare) write;
/// readers share a read lock that a writer takes only for the pointer swap, so a log line
/// never waits on a writer's work and reading allocates nothing.
pub struct RequestContext {
    id: RequestId,
    /// Set at build time, when the trace is known then: reading it is a plain field read.
    trace: Option<TraceContext>,
    /// Otherwise set once, later: right after the build by a layer that learns the trace from
    /// a span (OpenTelemetry), or by the first [`RequestContext::trace_or_start`] (an outgoing
    /// call, a fork or a carried snapshot of a context that had none).
    late_trace: OnceLock<TraceContext>,
    method: Option<Method>,
    path: Option<RequestPath>,
    /// The HTTP version and whether the request is a gRPC call: what an exported span says of
    /// the protocol.
    version: Option<Version>,
    grpc: bool,
    client_ip: Option<IpAddr>,
    started: Instant,
    /// `None` when derived from `started` (saves a clock read per request).
    started_at: Option<SystemTime>,
    patch: PatchCell,
    extensions: RwLock<Extensions>,
    /// Set when the request is over; see [`RequestContext::mark_finished`].
    finished: AtomicBool,
    /// The job this context runs, when it is one.
    job: Option<Arc<Job>>,
    /// The request headers for the access line.
    logged_headers: Box<[LoggedHeader]>,
    /// The log level this request is raised to; see [`RequestContext::raised_level`].
    pub(crate) level: LevelState,
    /// A log layer's lines kept for this request (see [`log_lines`]): its own, never a fork's.
    log_lines: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

/// Where a log layer keeps lines of this request until it fails: made on first use, dropped
/// with the context, and not copied into forks (which keep their own). Plumbing for
/// reqscope-tracing; the type in it is that crate's.
pub fn log_lines(ctx: &RequestContext) -> &OnceLock<Box<dyn std::any::Any + Send + Sync>> {
    &ctx.log_lines
}

/// A weak reference to the current context, taken without a strong one in between (two
/// atomic operations fewer than `Arc::downgrade(&RequestContext::current()?)`). Plumbing for
/// reqscope-tracing, which keeps one in each request span.
pub fn downgrade_current() -> Option<std::sync::Weak<RequestContext>> {
    RequestContext::with_shared(Arc::downgrade)
}

/// [`RequestContext::scope_in_place`] for destructors: where the context cannot be entered
/// (inside `with`'s closure, or while the thread's local storage is destroyed), `f` runs
/// without it instead of panicking, which in a destructor would abort. Plumbing for
/// reqscope-tower, whose request state writes the access line when it is dropped.
pub fn scope_in_place_or_outside<R>(slot: &mut Option<Arc<RequestContext>>, f: impl FnOnce() -> R) -> R {
    match Entered::enter(slot) {
        Ok(_entered) => f(),
        Err(_) => f(),
    }
}

/// Where the path comes from: the request's own URI (its path and scheme, sharing the URI's
/// bytes, no copy) or a string.
#[derive(Clone, Debug)]
enum RequestPath {
    Uri { scheme: Option<Scheme>, path: Option<PathAndQuery> },
    Owned(Box<str>),
}

/// The patch behind a lock whose write side is only ever held to swap a pointer: readers hold
/// it while they read (a log line's formatting, a writer copying the patch it changes),
/// writers change their copy outside it. The slot counts its writes, so a writer tells
/// whether another got in between by the count it read, without keeping the patch it copied
/// alive for the comparison (two reference-count updates less per write).
///
/// Until the first write, the patch is the empty one, read without the lock: most requests of
/// a service without auth are never patched, and each of their lines would take it for nothing.
struct PatchCell {
    /// Set under the write lock by the first write; never unset.
    written: AtomicBool,
    slot: RwLock<Slot>,
}

struct Slot {
    /// `None` for the empty patch.
    patch: Option<Arc<Patch>>,
    writes: u64,
}

impl PatchCell {
    fn new(patch: Option<Arc<Patch>>) -> Self {
        PatchCell { written: AtomicBool::new(patch.is_some()), slot: RwLock::new(Slot { patch, writes: 0 }) }
    }

    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.slot.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[inline]
    fn read<R>(&self, f: impl FnOnce(&Patch) -> R) -> R {
        // One call of `f`, so that it is inlined here once.
        let slot;
        let patch = if self.written.load(Ordering::Acquire) {
            slot = self.slot();
            slot.patch.as_deref().unwrap_or_else(|| empty_patch())
        } else {
            empty_patch()
        };
        f(patch)
    }

    /// The patch, shared; `None` while it is the empty one.
    fn written(&self) -> Option<Arc<Patch>> {
        if !self.written.load(Ordering::Acquire) {
            return None;
        }
        self.slot().patch.clone()
    }

    fn load_full(&self) -> Arc<Patch> {
        self.written().unwrap_or_else(|| Arc::clone(&EMPTY_SHARED))
    }

    fn update(&self, f: impl Fn(&mut Patch)) {
        loop {
            let (mut next, seen) = {
                let slot = self.slot();
                (Patch::clone(slot.patch.as_deref().unwrap_or_else(|| empty_patch())), slot.writes)
            };
            f(&mut next);
            let next = Arc::new(next);
            let mut slot = self.slot.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Another writer got in between: apply `f` again on top of its patch.
            if slot.writes == seen {
                let previous = slot.patch.replace(next);
                slot.writes = slot.writes.wrapping_add(1);
                self.written.store(true, Ordering::Release);
                drop(slot);
                // Freed outside the lock.
                drop(previous);
                return;
            }
        }
    }
}

/// Every context starts from the same empty patch; the first write replaces it.
#[inline]
fn empty_patch() -> &'static Patch {
    &EMPTY_SHARED
}

/// The empty patch, shared for [`RequestContext::patch`], which returns an `Arc`.
static EMPTY_SHARED: LazyLock<Arc<Patch>> = LazyLock::new(|| Arc::new(Patch::default()));

/// The patchable part of a [`RequestContext`]: who is asking and with how much budget.
///
/// Change it through [`RequestContext::update`] or the `set_*` shortcuts. Every field is
/// stamped on log lines; typed data that must not be logged goes into
/// [extensions](RequestContext::insert_extension) instead.
#[derive(Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Patch {
    /// The authenticated user (the JWT `sub`), if any.
    pub user_id: Option<Arc<str>>,
    /// The user's organisation or tenant, if any.
    pub org_id: Option<Arc<str>>,
    /// The user's roles.
    pub roles: Arc<[Arc<str>]>,
    /// The matched route template, e.g. `/users/{id}`.
    pub route: Option<Arc<str>>,
    /// Requests left in the current rate-limit window.
    pub rate_limit_remaining: Option<u64>,
    /// Seconds until the rate-limit budget resets.
    pub rate_limit_reset: Option<u64>,
    /// Custom fields stamped on every later log line, in insertion order.
    pub fields: Vec<(Arc<str>, FieldValue)>,
    /// Hidden fields: carried with the context (readable in code, copied into forks) but
    /// written to no log line in any format and no error report.
    pub hidden: Vec<(Arc<str>, FieldValue)>,
    /// The W3C baggage this request passes on: what the caller sent (when the request layer
    /// trusts it) and what the application added. It travels on outgoing calls and into
    /// jobs; only the keys a log layer is told to write ever reach a line. Shared: a patch
    /// update copies the pointer, not the list (`Arc::make_mut` to change it).
    pub baggage: Arc<Baggage>,
}

/// Hidden values and baggage stay out of `{:?}` (a `debug!(?ctx)` must not log them): only
/// their keys are shown.
impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patch")
            .field("user_id", &self.user_id)
            .field("org_id", &self.org_id)
            .field("roles", &self.roles)
            .field("route", &self.route)
            .field("rate_limit_remaining", &self.rate_limit_remaining)
            .field("rate_limit_reset", &self.rate_limit_reset)
            .field("fields", &self.fields)
            .field("hidden", &KeysOnly(self.hidden.iter().map(|(k, _)| &**k)))
            .field("baggage", &KeysOnly(self.baggage.iter().map(|e| e.key())))
            .finish()
    }
}

/// Formats the keys of a list whose values are not to be shown.
pub(crate) struct KeysOnly<I>(pub(crate) I);

impl<'a, I: Iterator<Item = &'a str> + Clone> fmt::Debug for KeysOnly<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.clone()).finish()
    }
}

impl Patch {
    /// Sets a custom field, replacing an earlier value under the same key.
    pub fn set_field(&mut self, key: impl Into<Arc<str>>, value: impl Into<FieldValue>) {
        upsert(&mut self.fields, key.into(), value.into());
    }

    /// A custom field by key.
    pub fn field(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// Sets a hidden field (never logged), replacing an earlier value under the same key.
    pub fn set_hidden_field(&mut self, key: impl Into<Arc<str>>, value: impl Into<FieldValue>) {
        upsert(&mut self.hidden, key.into(), value.into());
    }

    /// A hidden field by key.
    pub fn hidden_field(&self, key: &str) -> Option<&FieldValue> {
        self.hidden.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }
}

/// Replaces the value under `key`, or appends it: fields keep their first position.
fn upsert(fields: &mut Vec<(Arc<str>, FieldValue)>, key: Arc<str>, value: FieldValue) {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => fields.push((key, value)),
    }
}

/// The value of a custom context field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Text.
    Str(Arc<str>),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
}

macro_rules! field_from {
    ($($t:ty => $variant:ident($conv:expr)),* $(,)?) => {
        $(impl From<$t> for FieldValue {
            fn from(v: $t) -> Self { FieldValue::$variant($conv(v)) }
        })*
    };
}
field_from! {
    &str => Str(Arc::from),
    String => Str(Arc::from),
    Arc<str> => Str(|v| v),
    i64 => I64(|v| v),
    i32 => I64(i64::from),
    u64 => U64(|v| v),
    u32 => U64(u64::from),
    f64 => F64(|v| v),
    bool => Bool(|v| v),
}

/// A custom context field, declared once and then set and read like `user_id` — visible
/// (stamped on every later line, after the standard keys) or [hidden](ContextField::hidden)
/// (carried, never written).
///
/// ```
/// use reqscope_core::{ContextField, RequestContext, RequestId};
///
/// static TENANT: ContextField = ContextField::new("tenant");
/// static DEVICE_ID: ContextField = ContextField::hidden("device_id");
///
/// RequestContext::scope_sync(RequestContext::new(RequestId::new_v4()), || {
///     TENANT.set("acme"); // "tenant":"acme" on every later line
///     DEVICE_ID.set("d-41"); // on no line
///     assert_eq!(TENANT.get(), Some("acme".into()));
///     assert_eq!(DEVICE_ID.get(), Some("d-41".into()));
/// });
/// assert!(!TENANT.set("outside a request"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextField {
    name: &'static str,
    hidden: bool,
}

impl ContextField {
    /// A field written on every line as `name`.
    pub const fn new(name: &'static str) -> Self {
        ContextField { name, hidden: false }
    }

    /// A hidden field: carried with the context (into forks, spawned tasks, jobs) and
    /// readable in code, written to no line, in any format, and no error report.
    pub const fn hidden(name: &'static str) -> Self {
        ContextField { name, hidden: true }
    }

    /// The field's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the field is hidden.
    pub const fn is_hidden(&self) -> bool {
        self.hidden
    }

    /// Sets the field on the current context; `false` (and nothing set) outside a request.
    pub fn set(&self, value: impl Into<FieldValue>) -> bool {
        let value = value.into();
        RequestContext::with(|ctx| self.set_on(ctx, value)).is_some()
    }

    /// Sets the field on `ctx`.
    pub fn set_on(&self, ctx: &RequestContext, value: impl Into<FieldValue>) {
        if self.hidden {
            ctx.set_hidden_field(self.name, value);
        } else {
            ctx.set_field(self.name, value);
        }
    }

    /// The field's value in the current context.
    pub fn get(&self) -> Option<FieldValue> {
        RequestContext::with(|ctx| self.get_from(ctx)).flatten()
    }

    /// The field's value in `ctx`.
    pub fn get_from(&self, ctx: &RequestContext) -> Option<FieldValue> {
        ctx.read_patch(|patch| {
            if self.hidden { patch.hidden_field(self.name) } else { patch.field(self.name) }.cloned()
        })
    }
}

/// Builds a [`RequestContext`]; start with [`RequestContext::builder`].
///
/// The context is made in its shared allocation from the start, so neither a step nor
/// [`build_shared`](Self::build_shared) copies it (it is some 500 bytes, and a request layer
/// builds one per request).
#[derive(Debug)]
pub struct RequestContextBuilder {
    // Private and never cloned: no one else holds it until it is built.
    ctx: Arc<RequestContext>,
}

impl RequestContextBuilder {
    #[inline]
    fn ctx(&mut self) -> &mut RequestContext {
        // The `Arc` is private to the builder, never cloned and never downgraded, so it is
        // always unique here.
        Arc::get_mut(&mut self.ctx).expect("a context being built is held by its builder alone")
    }

    /// The trace this request belongs to (see [`TraceContext::from_headers`]). Without one,
    /// the context has no trace until [`RequestContext::trace_or_start`] starts one.
    #[inline]
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.ctx().trace = Some(trace);
        self
    }

    /// The HTTP method.
    #[inline]
    pub fn method(mut self, method: Method) -> Self {
        self.ctx().method = Some(method);
        self
    }

    /// The request path (without the query string, which may carry secrets).
    #[inline]
    pub fn path(mut self, path: impl Into<Box<str>>) -> Self {
        self.ctx().path = Some(RequestPath::Owned(path.into()));
        self
    }

    /// The request path, taken from the request's URI without copying it (the URI shares the
    /// request's buffer). The query string is never exposed.
    #[inline]
    pub fn uri(mut self, uri: &Uri) -> Self {
        // The path and scheme only: an absolute-form URI (HTTP/2, gRPC) has an authority too,
        // whose bytes would be one more reference count to take and drop.
        self.ctx().path = Some(RequestPath::Uri { scheme: uri.scheme().cloned(), path: uri.path_and_query().cloned() });
        self
    }

    /// The HTTP version the request came in.
    #[inline]
    pub fn version(mut self, version: Version) -> Self {
        self.ctx().version = Some(version);
        self
    }

    /// Marks the request as a gRPC call (`content-type: application/grpc…`).
    #[inline]
    pub fn grpc(mut self, grpc: bool) -> Self {
        self.ctx().grpc = grpc;
        self
    }

    /// The client's address.
    #[inline]
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.ctx().client_ip = Some(ip);
        self
    }

    /// Overrides the start time (defaults to the moment [`RequestContext::builder`] was
    /// called).
    #[inline]
    pub fn started(mut self, at: Instant, wall_clock: SystemTime) -> Self {
        let ctx = self.ctx();
        ctx.started = at;
        ctx.started_at = Some(wall_clock);
        self
    }

    /// Marks the context as a job's: its lines carry the job's name, id and attempt.
    #[inline]
    pub fn job(mut self, job: Job) -> Self {
        self.ctx().job = Some(Arc::new(job));
        self
    }

    /// The request headers a log layer writes on this request's access line (see
    /// [`logged_headers`](crate::logged_headers)).
    pub fn logged_headers(mut self, headers: impl IntoIterator<Item = LoggedHeader>) -> Self {
        self.ctx().logged_headers = headers.into_iter().collect();
        self
    }

    /// Starts with the log level raised (see [`RequestContext::raise_level`]): a job run for
    /// a raised request, say.
    #[inline]
    pub fn raised_level(mut self, level: RaisedLevel) -> Self {
        self.ctx().level = LevelState::new(Some(level));
        self
    }

    /// The patchable part to start with (a restored snapshot's).
    pub(crate) fn patch(mut self, patch: Patch) -> Self {
        self.ctx().patch = PatchCell::new(Some(Arc::new(patch)));
        self
    }

    /// The context, shared: what [`RequestContext::scope`] and the layers take. Cheaper than
    /// `Arc::new(builder.build())`, which copies the context out and back in.
    #[inline]
    pub fn build_shared(self) -> Arc<RequestContext> {
        self.ctx
    }

    /// The context, by value: copied out of the builder's allocation, which is freed. Prefer
    /// [`build_shared`](Self::build_shared) when the context is to be shared anyway.
    #[inline]
    pub fn build(self) -> RequestContext {
        // Unique for the reason given in `ctx`.
        Arc::into_inner(self.ctx).expect("a context being built is held by its builder alone")
    }
}

impl RequestContext {
    /// A context with only an id, for jobs, CLIs and tests; add details with
    /// [`RequestContext::builder`].
    pub fn new(id: RequestId) -> Self {
        Self::with_id(id)
    }

    /// Starts building a context.
    #[inline]
    pub fn builder(id: RequestId) -> RequestContextBuilder {
        RequestContextBuilder { ctx: Arc::new(Self::with_id(id)) }
    }

    /// A context with only its id (and its start time, now).
    // Inlined: returned from a call, the ~500-byte context was copied once more on its way
    // into `builder`'s `Arc`.
    #[inline(always)]
    fn with_id(id: RequestId) -> Self {
        RequestContext {
            id,
            trace: None,
            late_trace: OnceLock::new(),
            method: None,
            path: None,
            version: None,
            grpc: false,
            client_ip: None,
            started: Instant::now(),
            started_at: None,
            patch: PatchCell::new(None),
            extensions: RwLock::new(Extensions::new()),
            finished: AtomicBool::new(false),
            job: None,
            logged_headers: Box::default(),
            level: LevelState::new(None),
            log_lines: OnceLock::new(),
        }
    }

    /// The context of the request being served, or `None` outside a request.
    ///
    /// Costs one atomic increment; use [`RequestContext::with`] to read without it.
    #[inline]
    pub fn current() -> Option<Arc<RequestContext>> {
        Self::with_shared(Arc::clone)
    }

    /// Like [`RequestContext::current`], but outside a request returns an error whose message
    /// names the layer to add.
    #[inline]
    pub fn try_current() -> Result<Arc<RequestContext>, NoRequestContext> {
        Self::current().ok_or(NoRequestContext)
    }

    /// Runs `f` with the current context, without cloning it; `None` outside a request.
    ///
    /// `f` must not enter a context scope of its own (poll a [`Scoped`] future, call
    /// [`scope_sync`](Self::scope_sync)): that panics, as entering a `tokio::task_local!` scope
    /// there does.
    #[inline]
    pub fn with<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
        Self::with_shared(|ctx| f(ctx))
    }

    #[inline]
    fn with_shared<R>(f: impl FnOnce(&Arc<RequestContext>) -> R) -> Option<R> {
        CURRENT.try_with(|current| current.try_borrow().ok()?.as_ref().map(f)).ok().flatten()
    }

    /// Runs `future` with `ctx` as the current context on every poll.
    ///
    /// Tasks it spawns with plain `tokio::spawn` do not see the context; use
    /// [`spawn`](crate::spawn) and the other propagation helpers.
    #[inline]
    pub fn scope<F: Future>(ctx: impl Into<Arc<RequestContext>>, future: F) -> Scoped<F> {
        Scoped { ctx: Some(ctx.into()), future: Some(future) }
    }

    /// Runs the closure `f` with `ctx` as the current context: for synchronous jobs, threads
    /// and tests. Works on any thread, inside or outside a tokio runtime.
    #[inline]
    pub fn scope_sync<R>(ctx: impl Into<Arc<RequestContext>>, f: impl FnOnce() -> R) -> R {
        Self::scope_in_place(&mut Some(ctx.into()), f)
    }

    /// Runs `f` with the context in `slot` as the current one (none, for `None`), moving it
    /// in and back out rather than cloning it: for a future or body of your own that polls
    /// inner work inside a context it holds, many times per request, where
    /// [`scope_sync`](Self::scope_sync) would take and drop a reference each time. While `f`
    /// runs, `slot` holds the context that was current before; both are back in place when
    /// `f` returns or unwinds.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use reqscope_core::{RequestContext, RequestId};
    ///
    /// let mut held = Some(Arc::new(RequestContext::new(RequestId::parse("req-3").unwrap())));
    /// for _ in 0..3 {
    ///     let id = RequestContext::scope_in_place(&mut held, || RequestContext::with(|c| c.id().to_string()));
    ///     assert_eq!(id.as_deref(), Some("req-3"));
    /// }
    /// assert_eq!(held.map(|ctx| Arc::strong_count(&ctx)), Some(1));
    /// ```
    ///
    /// # Panics
    ///
    /// Inside [`with`](Self::with)'s closure, and while the thread's local storage is being
    /// destroyed, as entering a `tokio::task_local!` scope there does.
    #[inline]
    pub fn scope_in_place<R>(slot: &mut Option<Arc<RequestContext>>, f: impl FnOnce() -> R) -> R {
        // Left in place until the end: `f`'s result is returned where it is made, not copied.
        let _entered = Entered::enter(slot).unwrap_or_else(|reason| panic!("{reason}"));
        f()
    }

    /// A copy of this context to scope a sub-task with different values; changes to the copy
    /// never reach this context (nor the other way round). The id, trace and start time are
    /// kept (a context without a trace starts one here, so that parent and fork share it), and
    /// so is the [raised log level](Self::raised_level) with the role it waits on.
    pub fn fork(&self) -> RequestContext {
        let trace = Some(self.trace_or_start().clone());
        let extensions = self.extensions.read().map(|e| e.clone()).unwrap_or_default();
        RequestContext {
            id: self.id.clone(),
            trace,
            late_trace: OnceLock::new(),
            method: self.method.clone(),
            path: self.path.clone(),
            version: self.version,
            grpc: self.grpc,
            client_ip: self.client_ip,
            started: self.started,
            started_at: self.started_at,
            patch: PatchCell::new(self.patch.written()),
            extensions: RwLock::new(extensions),
            finished: AtomicBool::new(false),
            job: self.job.clone(),
            logged_headers: self.logged_headers.clone(),
            level: self.level.copy(),
            log_lines: OnceLock::new(),
        }
    }

    /// Marks the request as over (`RequestContextLayer` does it when the response ends, just
    /// before the access line). From then on, the log layer no longer stamps this request on
    /// events it finds only through a span — a connection or pool span created during the
    /// request that lives on; code that still runs *in* the context (a spawned task) still is.
    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// Whether [`RequestContext::mark_finished`] was called.
    #[inline]
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The request headers kept for the access line (none unless the request layer was told
    /// which; see [`logged_headers`](crate::logged_headers)).
    #[inline]
    pub fn logged_headers(&self) -> &[LoggedHeader] {
        &self.logged_headers
    }

    /// The job this context runs, when it is one (see [`Job`]).
    #[inline]
    pub fn job(&self) -> Option<&Job> {
        self.job.as_deref()
    }

    /// The request id.
    #[inline]
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The trace this request belongs to and its own span, if it has one (every request
    /// served by `RequestContextLayer` has).
    #[inline]
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref().or_else(|| self.late_trace.get())
    }

    /// The trace, starting a new one (this context as its root) if there is none yet: for
    /// jobs that make outgoing calls.
    pub fn trace_or_start(&self) -> &TraceContext {
        match &self.trace {
            Some(trace) => trace,
            None => self.late_trace.get_or_init(TraceContext::new_root),
        }
    }

    /// Sets the trace of a context built without one; returns the given trace back if the
    /// context already has one. For layers that learn the trace after the context exists
    /// (from an OpenTelemetry span that needs the context to be created).
    pub fn set_trace(&self, trace: TraceContext) -> Result<(), TraceContext> {
        if self.trace.is_some() {
            return Err(trace);
        }
        self.late_trace.set(trace)
    }

    /// The HTTP method, if this context belongs to an HTTP request.
    #[inline]
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// The request path, without the query string.
    #[inline]
    pub fn path(&self) -> Option<&str> {
        match self.path.as_ref()? {
            // As `Uri::path`: empty for a URI without a path (authority form).
            RequestPath::Uri { path, .. } => Some(path.as_ref().map_or("", |path| path.path())),
            RequestPath::Owned(path) => Some(path),
        }
    }

    /// The URI scheme (`http`, `https`), when the request's URI has one: HTTP/2 requests
    /// carry it, HTTP/1.1 requests in origin form (`GET /path`) do not.
    #[inline]
    pub fn scheme(&self) -> Option<&str> {
        match self.path.as_ref()? {
            RequestPath::Uri { scheme, .. } => scheme.as_ref().map(|scheme| scheme.as_str()),
            RequestPath::Owned(_) => None,
        }
    }

    /// The HTTP version the request came in, if this context belongs to an HTTP request.
    #[inline]
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Whether the request is a gRPC call.
    #[inline]
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The client's address (the peer, or the forwarded client behind a trusted proxy).
    #[inline]
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    /// When the request started (monotonic clock).
    #[inline]
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the request started (wall clock).
    #[inline]
    pub fn started_at(&self) -> SystemTime {
        // The wall clock is read only when asked for: now minus the monotonic elapsed time.
        self.started_at.unwrap_or_else(|| SystemTime::now() - self.started.elapsed())
    }

    /// Time since the request started.
    #[inline]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads the patchable part without cloning it.
    #[inline]
    pub fn read_patch<R>(&self, f: impl FnOnce(&Patch) -> R) -> R {
        self.patch.read(f)
    }

    /// A snapshot of the patchable part.
    pub fn patch(&self) -> Arc<Patch> {
        self.patch.load_full()
    }

    /// Changes the patchable part. Concurrent updates are applied one after the other (the
    /// closure may run more than once under contention, so keep it free of side effects).
    pub fn update(&self, f: impl Fn(&mut Patch)) {
        self.patch.update(f);
        // New roles may grant (or withdraw) a raised log level asked for earlier.
        self.refresh_raised_level();
    }

    /// The authenticated user, if any.
    #[inline]
    pub fn user_id(&self) -> Option<Arc<str>> {
        self.patch.read(|p| p.user_id.clone())
    }

    /// Sets the user id.
    pub fn set_user_id(&self, user_id: impl Into<Arc<str>>) {
        let user_id = user_id.into();
        self.update(|p| p.user_id = Some(user_id.clone()));
    }

    /// Sets the organisation id.
    pub fn set_org_id(&self, org_id: impl Into<Arc<str>>) {
        let org_id = org_id.into();
        self.update(|p| p.org_id = Some(org_id.clone()));
    }

    /// Sets the roles.
    pub fn set_roles<I, S>(&self, roles: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let roles: Arc<[Arc<str>]> = roles.into_iter().map(Into::into).collect();
        self.update(|p| p.roles = roles.clone());
    }

    /// Whether the user has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.patch.read(|p| p.roles.iter().any(|r| &**r == role))
    }

    /// Sets the matched route template.
    pub fn set_route(&self, route: impl Into<Arc<str>>) {
        let route = route.into();
        self.update(|p| p.route = Some(route.clone()));
    }

    /// Sets the rate-limit budget: requests remaining and seconds until the reset.
    pub fn set_rate_limit(&self, remaining: u64, reset_secs: u64) {
        self.update(|p| {
            p.rate_limit_remaining = Some(remaining);
            p.rate_limit_reset = Some(reset_secs);
        });
    }

    /// Sets a custom field that is stamped on every later log line of this request.
    pub fn set_field(&self, key: impl Into<Arc<str>>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        self.update(|p| p.set_field(key.clone(), value.clone()));
    }

    /// Sets a hidden field: carried with the context — readable with
    /// [`hidden_field`](Self::hidden_field), copied into [forks](Self::fork) and so into
    /// spawned tasks — but written to no log line, in any format, and no error report.
    pub fn set_hidden_field(&self, key: impl Into<Arc<str>>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        self.update(|p| p.set_hidden_field(key.clone(), value.clone()));
    }

    /// A hidden field of this request, by key.
    pub fn hidden_field(&self, key: &str) -> Option<FieldValue> {
        self.read_patch(|p| p.hidden_field(key).cloned())
    }

    /// A copy of this request's [baggage](Patch::baggage); read one entry without a copy
    /// through [`read_patch`](Self::read_patch).
    pub fn baggage(&self) -> Arc<Baggage> {
        self.read_patch(|p| Arc::clone(&p.baggage))
    }

    /// Adds a baggage entry (or replaces the one under `key`) that travels on with this
    /// request: on outgoing calls and into jobs. Fails when `key` is not a token.
    pub fn set_baggage(&self, key: impl Into<String>, value: impl Into<String>) -> Result<(), InvalidBaggage> {
        let (key, value): (String, String) = (key.into(), value.into());
        // Checked once here, so that the update (which may run more than once) cannot fail.
        Baggage::new().insert(key.clone(), value.clone())?;
        self.update(|p| {
            let _ = Arc::make_mut(&mut p.baggage).insert(key.clone(), value.clone());
        });
        Ok(())
    }

    /// Stores typed data for handlers (never logged), returning the value it replaces.
    pub fn insert_extension<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        match self.extensions.write() {
            Ok(mut ext) => ext.insert(value),
            Err(poisoned) => poisoned.into_inner().insert(value),
        }
    }

    /// The typed data of type `T`, first storing `make()` if there is none — in one step, so
    /// that concurrent callers all get the same value.
    pub fn extension_or_insert_with<T: Clone + Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> T {
        let mut ext = match self.extensions.write() {
            Ok(ext) => ext,
            Err(poisoned) => poisoned.into_inner(),
        };
        ext.get_or_insert_with(make).clone()
    }

    /// Typed data stored with [`RequestContext::insert_extension`].
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        match self.extensions.read() {
            Ok(ext) => ext.get::<T>().cloned(),
            Err(poisoned) => poisoned.into_inner().get::<T>().cloned(),
        }
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("id", &self.id)
            .field("trace", &self.trace())
            .field("method", &self.method)
            .field("path", &self.path())
            .field("client_ip", &self.client_ip)
            .field("started_at", &self.started_at())
            .field("patch", &self.patch.load_full())
            .field("job", &self.job)
            .field("raised_level", &self.raised_level())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(id: &str) -> RequestContext {
        RequestContext::new(RequestId::parse(id).unwrap())
    }

    #[test]
    fn outside_a_request() {
        assert!(RequestContext::current().is_none());
        assert!(RequestContext::with(|_| ()).is_none());
        let err = RequestContext::try_current().unwrap_err().to_string();
        assert!(err.contains("RequestContextLayer"), "{err}");
    }

    #[tokio::test]
    async fn scope_survives_awaits() {
        RequestContext::scope(ctx("abc"), async {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(RequestContext::with(|c| c.id().to_string()).unwrap(), "abc");
            assert_eq!(RequestContext::try_current().unwrap().id().as_str(), "abc");
        })
        .await;
        assert!(RequestContext::current().is_none());
    }

    fn current_id() -> Option<String> {
        RequestContext::with(|c| c.id().to_string())
    }

    #[test]
    fn a_lent_context_is_current_inside_and_back_in_its_slot_after_even_on_unwinding() {
        let mut held = Some(Arc::new(ctx("lent")));
        let outer = Arc::new(ctx("outer"));
        RequestContext::scope_sync(Arc::clone(&outer), || {
            let inside = RequestContext::scope_in_place(&mut held, || {
                // Nested: the outer scope's context is hidden, then current again.
                let nested = RequestContext::scope_sync(ctx("nested"), current_id);
                (current_id(), nested)
            });
            assert_eq!(inside, (Some("lent".to_owned()), Some("nested".to_owned())));
            assert_eq!(current_id().as_deref(), Some("outer"));
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                RequestContext::scope_in_place(&mut held, || panic!("inside the scope"))
            }));
            assert!(unwound.is_err());
            assert_eq!(current_id().as_deref(), Some("outer"));
            // An empty slot hides the current context for its scope.
            assert_eq!(RequestContext::scope_in_place(&mut None, current_id), None);
        });
        assert_eq!(current_id(), None);
        // Lent three times, never cloned: the slot holds the only reference again.
        assert_eq!(
            held.as_ref().map(|c| (c.id().as_str().to_owned(), Arc::strong_count(c))),
            Some(("lent".to_owned(), 1))
        );
        assert_eq!(Arc::strong_count(&outer), 1);
    }

    #[test]
    fn a_scope_entered_by_a_thread_locals_destructor_never_panics() {
        type Seen = Arc<std::sync::Mutex<Option<Option<String>>>>;
        struct EntersOnDrop(Option<Arc<RequestContext>>, Seen);
        impl Drop for EntersOnDrop {
            fn drop(&mut self) {
                let seen = scope_in_place_or_outside(&mut self.0, current_id);
                *self.1.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(seen);
            }
        }
        thread_local! {
            static HELD: RefCell<Option<EntersOnDrop>> = const { RefCell::new(None) };
        }
        let seen: Seen = Arc::default();
        let written = Arc::clone(&seen);
        std::thread::spawn(move || {
            // Stored before the context's own storage is first used, so that where thread-locals
            // are destroyed in reverse order, the context's is gone when this one is dropped.
            HELD.with(|held| *held.borrow_mut() = Some(EntersOnDrop(Some(Arc::new(ctx("late"))), written)));
            RequestContext::scope_sync(ctx("during"), || ());
        })
        .join()
        .expect("the thread exits without a panic");
        let seen = seen.lock().unwrap().clone();
        // In the context where its storage still lives, outside it where it is gone.
        assert!(matches!(seen.as_ref().map(|id| id.as_deref()), Some(Some("late") | None)), "{seen:?}");
    }

    #[test]
    fn entering_a_scope_inside_with_panics_with_a_message_and_leaves_the_context() {
        let reason = RequestContext::scope_sync(ctx("r"), || {
            let unwound =
                std::panic::catch_unwind(|| RequestContext::with(|_| RequestContext::scope_sync(ctx("x"), || ())));
            let payload = unwound.expect_err("entering a scope inside `with` panics");
            payload.downcast_ref::<String>().cloned().unwrap_or_default()
        });
        assert!(reason.contains("inside `RequestContext::with`"), "{reason}");
    }

    /// Says, when dropped, which context was current.
    struct SaysOnDrop(Arc<std::sync::Mutex<Vec<Option<String>>>>);

    impl Drop for SaysOnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(current_id());
        }
    }

    /// Ready at its first poll, without dropping what it holds: that is left to whoever drops it.
    struct ReadyHolding(#[allow(dead_code)] SaysOnDrop);

    impl Future for ReadyHolding {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    #[tokio::test]
    async fn a_scoped_future_is_dropped_inside_its_context_when_done_or_abandoned() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_so_far = || seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        // Done: its future dropped as it completes, inside the context, while the `Scoped`
        // itself is still alive.
        let mut done = Box::pin(RequestContext::scope(ctx("done"), ReadyHolding(SaysOnDrop(Arc::clone(&seen)))));
        assert!(futures_poll_once(done.as_mut()).await.is_ready());
        assert_eq!(seen_so_far(), [Some("done".to_owned())]);
        let polled_again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = std::task::Waker::noop();
            let _ = done.as_mut().poll(&mut Context::from_waker(waker));
        }));
        assert!(polled_again.is_err(), "a completed `Scoped` panics when polled again");
        drop(done);
        // Abandoned half way: its destructors still see its context.
        let says = SaysOnDrop(Arc::clone(&seen));
        let held = RequestContext::scope(ctx("held"), async move {
            let _says = says;
            tokio::task::yield_now().await;
        });
        let mut held = Box::pin(held);
        assert!(futures_poll_once(held.as_mut()).await.is_pending());
        drop(held);
        // Dropped inside `with`, where no scope can be entered: dropped all the same, without
        // a panic, in the context that was current.
        let inside_with = RequestContext::scope(ctx("unseen"), ReadyHolding(SaysOnDrop(Arc::clone(&seen))));
        RequestContext::scope_sync(ctx("outer"), || RequestContext::with(|_| drop(inside_with)));
        assert_eq!(seen_so_far(), [Some("done".to_owned()), Some("held".to_owned()), Some("outer".to_owned())]);
        assert_eq!(current_id(), None);
    }

    async fn futures_poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        let mut future = Some(future);
        std::future::poll_fn(move |cx| Poll::Ready(future.take().map(|f| f.poll(cx)))).await.unwrap_or(Poll::Pending)
    }

    #[test]
    fn a_context_keeps_the_path_and_scheme_of_its_uri_and_never_the_query() {
        let of = |uri: &str| {
            let ctx = RequestContext::builder(RequestId::new_v4()).uri(&uri.parse().unwrap()).build();
            (ctx.path().map(str::to_owned), ctx.scheme().map(str::to_owned))
        };
        let owned = |s: &str| Some(s.to_owned());
        // HTTP/2 and gRPC: absolute form.
        assert_eq!(of("https://api.example.com:8443/users/7?token=secret"), (owned("/users/7"), owned("https")));
        // HTTP/1.1: origin form, no scheme.
        assert_eq!(of("/hello?x=1"), (owned("/hello"), None));
        // CONNECT: authority form, no path (as `Uri::path` says).
        assert_eq!(of("example.com:443"), (owned(""), None));
    }

    #[test]
    fn a_context_has_one_trace_whenever_it_is_set() {
        // Set at build: kept, and nothing replaces it.
        let built = TraceContext::new_root();
        let ctx = RequestContext::builder(RequestId::new_v4()).trace(built.clone()).build_shared();
        assert_eq!(ctx.trace(), Some(&built));
        assert_eq!(ctx.trace_or_start(), &built);
        let other = TraceContext::new_root();
        assert_eq!(ctx.set_trace(other.clone()), Err(other.clone()));
        assert_eq!(ctx.trace(), Some(&built));
        assert_eq!(ctx.fork().trace(), Some(&built));
        assert!(ctx.late_trace.get().is_none(), "one slot holds the trace");
        assert!(format!("{ctx:?}").contains(built.trace_id().as_str()), "{ctx:?}");

        // Set later: once, by the first to set or start it.
        let late = ctx_without_trace();
        assert_eq!(late.trace(), None);
        assert_eq!(late.set_trace(other.clone()), Ok(()));
        assert_eq!(late.trace(), Some(&other));
        assert_eq!(late.set_trace(built.clone()), Err(built.clone()));
        assert_eq!(late.trace_or_start(), &other);
        assert!(late.trace.is_none(), "one slot holds the trace");
        let started = ctx_without_trace();
        let first = started.trace_or_start().clone();
        assert_eq!(started.trace(), Some(&first));
        assert_eq!(started.set_trace(built.clone()), Err(built));
    }

    fn ctx_without_trace() -> RequestContext {
        RequestContext::builder(RequestId::new_v4()).build()
    }

    #[test]
    fn fork_leaves_the_parent_untouched() {
        let parent = ctx("parent");
        parent.set_user_id("1");
        parent.insert_extension(7u8);
        let child = parent.fork();
        child.set_user_id("2");
        child.set_field("job", "x");
        child.insert_extension(9u8);
        assert_eq!(parent.user_id().as_deref(), Some("1"));
        assert!(parent.patch().fields.is_empty());
        assert_eq!(parent.extension::<u8>(), Some(7));
        assert_eq!(child.user_id().as_deref(), Some("2"));
        assert_eq!(child.extension::<u8>(), Some(9));
        assert_eq!(child.id(), parent.id());
    }

    #[test]
    fn concurrent_updates_all_land() {
        let ctx = RequestContext::new(RequestId::new_v4());
        let snapshot = ctx.patch();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let ctx = &ctx;
                scope.spawn(move || {
                    for i in 0..250 {
                        let key: Arc<str> = format!("t{thread}-{i}").into();
                        ctx.update(|patch| patch.fields.push((Arc::clone(&key), FieldValue::U64(i))));
                    }
                });
            }
        });
        let fields = ctx.patch().fields.clone();
        assert_eq!(fields.len(), 1000, "an update was lost or applied twice");
        let mut keys: Vec<_> = fields.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 1000);
        // A snapshot taken before is not changed by later writes.
        assert!(snapshot.fields.is_empty());
    }

    #[test]
    fn patches_are_visible_through_every_handle() {
        let shared = Arc::new(ctx("p"));
        RequestContext::scope_sync(shared.clone(), || {
            RequestContext::with(|c| {
                c.set_roles(["admin", "dev"]);
                c.set_rate_limit(9, 60);
                c.set_field("tenant", "acme");
                c.set_field("tenant", "globex");
            });
        });
        assert!(shared.has_role("admin"));
        let patch = shared.patch();
        assert_eq!(patch.rate_limit_remaining, Some(9));
        assert_eq!(patch.fields.len(), 1);
        assert_eq!(patch.field("tenant"), Some(&FieldValue::from("globex")));
    }
}
