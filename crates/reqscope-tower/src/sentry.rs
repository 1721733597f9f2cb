//! Sentry reports that name the request and the user: errors, `error!` events and panics.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! // SENTRY_DSN unset: no client, no layer, no cost.
//! let _sentry = std::env::var("SENTRY_DSN").ok().map(|dsn| {
//!     sentry::init((dsn, sentry::ClientOptions::default()
//!         .add_integration(reqscope_tower::sentry::RequestContextIntegration::new())))
//! });
//! tracing_subscriber::registry()
//!     .with(_sentry.is_some().then(reqscope_tower::sentry::layer))
//!     .init();
//! ```
//!
//! Two parts, both needed:
//!
//! - [`RequestContextIntegration`], added to the client's options, enriches every event the
//!   client sends — `error!` events, `sentry::capture_error`, panics — with the request
//!   context current where the event was captured: `user.id` (and `user.ip_address` when
//!   `send_default_pii` is on), the tags `request_id` and `org_id`, the route as the
//!   transaction name (`GET /users/{id}`), and a `request` context with every stamped field.
//!   It also keeps breadcrumbs per request (see below), and redacts what the log lines
//!   redact (see below).
//! - [`layer`] turns `tracing` events into Sentry data: `ERROR` events become Sentry events,
//!   `WARN` and `INFO` events become breadcrumbs. Access lines are left out, and so are the
//!   `reqscope::panic` reports, because the `panic` integration of `sentry` (on in its default
//!   features and in `sentry::init`'s default integrations) already reports each panic, with
//!   the stack trace of the panicking thread; it runs in that thread, inside the request.
//!
//! # Redaction
//!
//! Every event the client sends, inside a request or not, goes through the integration's
//! [`Redaction`] — by default [`Redaction::new`], the same keys a `LogLayer` redacts; give
//! both the same policy with [`RequestContextIntegration::redaction`]. A value whose key is
//! sensitive, or that the value hook redacts, becomes `"[redacted]"` in the event's fields
//! (the `Rust Tracing Fields` context `sentry-tracing` fills, any other context map, at any
//! depth), its tags and extra data, the custom fields of its `request` context and the data
//! of its breadcrumbs; the message is shown to the value hook under the key `message`. The
//! stamped fields (request id, user, route, …) are reqscope's own and are kept.
//!
//! # Why not a hub per request
//!
//! `sentry-tower` binds a fresh `Hub` to each request future. A hub lives in a thread-local,
//! so it is left behind by `tokio::spawn` and by a body polled after the handler returned, and
//! a scope set on the shared hub (`sentry::configure_scope`) leaks into every request on that
//! thread. reqscope already carries the request context into spawned tasks
//! ([`reqscope_core::spawn`], [`FutureExt`](reqscope_core::FutureExt)), `spawn_blocking` and
//! streaming bodies, so the integration reads it at capture time, wherever that is: two
//! concurrent requests of different users can never swap users, even on one thread. For
//! request-specific data, set a field on the context
//! ([`RequestContext::set_field`](reqscope_core::RequestContext::set_field)) instead of on a
//! Sentry scope: it goes to the log lines and to the event's `request` context alike.
//!
//! # Breadcrumbs
//!
//! A breadcrumb recorded inside a request is kept with that request (up to `max_breadcrumbs`,
//! oldest dropped) instead of on the thread's hub, and is attached only to that request's
//! events, merged by time with the breadcrumbs recorded outside any request. Without this,
//! breadcrumbs of concurrent requests would interleave, and those recorded on another worker
//! thread would be missing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use reqscope_core::redact::{REDACTED, Redaction};
use reqscope_core::{FieldValue, RequestContext};
use sentry_core::protocol::{Breadcrumb, Context, Event, Map, User, Value};
use sentry_core::{ClientOptions, Integration};
use tracing_core::{Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The tag carrying the request id.
pub const REQUEST_ID_TAG: &str = "request_id";
/// The tag carrying the organisation id.
pub const ORG_ID_TAG: &str = "org_id";
/// The key of the event context holding every stamped field of the request.
pub const REQUEST_CONTEXT_KEY: &str = "request";

/// Adds the current request's context to every event the Sentry client sends, and redacts
/// sensitive values; see the [module docs](self).
#[derive(Debug, Default)]
pub struct RequestContextIntegration {
    redaction: Redaction,
}

impl RequestContextIntegration {
    /// The integration with the default [`Redaction`]; add it with
    /// `ClientOptions::add_integration`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Redacts with `redaction` instead of [`Redaction::new`] (see
    /// [Redaction](self#redaction)); [`Redaction::none`] turns it off.
    pub fn redaction(mut self, redaction: Redaction) -> Self {
        self.redaction = redaction;
        self
    }
}

/// The breadcrumbs of one request, kept in its context.
#[derive(Clone, Default)]
struct RequestBreadcrumbs(Arc<Mutex<VecDeque<Breadcrumb>>>);

impl Integration for RequestContextIntegration {
    fn name(&self) -> &'static str {
        "reqscope-request-context"
    }

    fn setup(&self, options: &mut ClientOptions) {
        let previous = options.before_breadcrumb.take();
        let max = options.max_breadcrumbs;
        options.before_breadcrumb = Some(Arc::new(move |breadcrumb| {
            // The user's own callback decides first, as it would without this integration.
            let breadcrumb = match &previous {
                Some(previous) => previous(breadcrumb)?,
                None => breadcrumb,
            };
            match RequestContext::current() {
                Some(ctx) => {
                    let kept = ctx.extension_or_insert_with(RequestBreadcrumbs::default);
                    let mut kept = kept.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    kept.push_back(breadcrumb);
                    while kept.len() > max {
                        kept.pop_front();
                    }
                    None
                }
                None => Some(breadcrumb),
            }
        }));
    }

    fn process_event(&self, mut event: Event<'static>, options: &ClientOptions) -> Option<Event<'static>> {
        // Before the integration adds its own: the stamped tags and context stay as they are.
        redact_event(&self.redaction, &mut event);
        let Some(ctx) = RequestContext::current() else {
            return Some(event);
        };
        let patch = ctx.patch();
        let user = event.user.get_or_insert_with(User::default);
        if user.id.is_none() {
            user.id = patch.user_id.as_deref().map(str::to_owned);
        }
        if options.send_default_pii && user.ip_address.is_none() {
            user.ip_address = ctx.client_ip().map(Into::into);
        }
        if *user == User::default() {
            event.user = None;
        }
        event.tags.insert(REQUEST_ID_TAG.to_owned(), ctx.id().to_string());
        if let Some(org_id) = &patch.org_id {
            event.tags.entry(ORG_ID_TAG.to_owned()).or_insert_with(|| org_id.to_string());
        }
        if event.transaction.is_none()
            && let Some(route) = &patch.route
        {
            event.transaction = Some(match ctx.method() {
                Some(method) => format!("{method} {route}"),
                None => route.to_string(),
            });
        }
        event.contexts.insert(REQUEST_CONTEXT_KEY.to_owned(), Context::Other(request_context(&ctx, &self.redaction)));
        if let Some(kept) = ctx.extension::<RequestBreadcrumbs>() {
            let kept = kept.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let breadcrumbs = &mut event.breadcrumbs.values;
            breadcrumbs.extend(kept.iter().cloned().map(|mut breadcrumb| {
                redact_map(&self.redaction, &mut breadcrumb.data);
                breadcrumb
            }));
            breadcrumbs.sort_by_key(|b| b.timestamp);
            let excess = breadcrumbs.len().saturating_sub(options.max_breadcrumbs);
            breadcrumbs.drain(..excess);
        }
        Some(event)
    }
}

/// Redacts the values of `event` that came from the program: fields, tags, extra data,
/// context maps and breadcrumb data; the message for the value hook.
fn redact_event(redaction: &Redaction, event: &mut Event<'static>) {
    if let Some(message) = &mut event.message
        && redaction.redacts_value("message", message)
    {
        REDACTED.clone_into(message);
    }
    for (key, value) in &mut event.tags {
        if redaction.redacts(key, value) {
            REDACTED.clone_into(value);
        }
    }
    redact_map(redaction, &mut event.extra);
    for context in event.contexts.values_mut() {
        if let Context::Other(map) = context {
            redact_map(redaction, map);
        }
    }
    for breadcrumb in &mut event.breadcrumbs.values {
        redact_map(redaction, &mut breadcrumb.data);
    }
}

/// Redacts the values of a map (a Sentry `Map` or a JSON object), nested maps and lists
/// included.
fn redact_map<'a>(redaction: &Redaction, map: impl IntoIterator<Item = (&'a String, &'a mut Value)>) {
    for (key, value) in map {
        redact_value(redaction, key, value);
    }
}

/// Redacts `value`, the value of `key`: all of it when the key is sensitive, otherwise what
/// the value hook or the keys of nested maps say.
fn redact_value(redaction: &Redaction, key: &str, value: &mut Value) {
    if redaction.is_sensitive_key(key) {
        *value = Value::from(REDACTED);
        return;
    }
    let redacted = match value {
        Value::Object(map) => {
            redact_map(redaction, map);
            false
        }
        Value::Array(items) => {
            // The items of a list are judged by the list's key.
            for item in items {
                redact_value(redaction, key, item);
            }
            false
        }
        Value::String(text) => redaction.redacts_value(key, text),
        Value::Number(number) => redaction.has_value_hook() && redaction.redacts_value(key, &number.to_string()),
        Value::Bool(flag) => redaction.redacts_value(key, if *flag { "true" } else { "false" }),
        Value::Null => false,
    };
    if redacted {
        *value = Value::from(REDACTED);
    }
}

/// Every stamped field of the request, as the log lines carry them; custom fields redacted.
fn request_context(ctx: &RequestContext, redaction: &Redaction) -> BTreeMap<String, Value> {
    let patch = ctx.patch();
    let mut map = Map::new();
    map.insert("request_id".to_owned(), ctx.id().as_str().into());
    if let Some(method) = ctx.method() {
        map.insert("method".to_owned(), method.as_str().into());
    }
    if let Some(path) = ctx.path() {
        map.insert("path".to_owned(), path.into());
    }
    let text = |value: &Option<Arc<str>>| value.as_deref().map(Value::from);
    for (key, value) in
        [("route", text(&patch.route)), ("user_id", text(&patch.user_id)), ("org_id", text(&patch.org_id))]
    {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    if !patch.roles.is_empty() {
        map.insert("roles".to_owned(), patch.roles.iter().map(|r| Value::from(&**r)).collect());
    }
    if let Some(remaining) = patch.rate_limit_remaining {
        map.insert("rate_limit_remaining".to_owned(), remaining.into());
    }
    if let Some(reset) = patch.rate_limit_reset {
        map.insert("rate_limit_reset".to_owned(), reset.into());
    }
    if let Some(job) = ctx.job() {
        map.insert("job".to_owned(), job.name().into());
        if let Some(id) = job.id() {
            map.insert("job_id".to_owned(), id.into());
        }
        map.insert("attempt".to_owned(), job.attempt().into());
    }
    for (key, value) in &patch.fields {
        let mut value = match value {
            FieldValue::Str(s) => Value::from(&**s),
            FieldValue::I64(n) => Value::from(*n),
            FieldValue::U64(n) => Value::from(*n),
            FieldValue::F64(n) => Value::from(*n),
            FieldValue::Bool(b) => Value::from(*b),
        };
        redact_value(redaction, key, &mut value);
        map.entry(key.to_string()).or_insert(value);
    }
    map.insert("elapsed_ms".to_owned(), (ctx.elapsed().as_secs_f64() * 1000.0).into());
    map
}

/// The `tracing` → Sentry layer for reqscope services; see the [module docs](self).
///
/// `ERROR` events become Sentry events (their `&dyn Error` fields become exceptions with
/// their source chain), `WARN` and `INFO` events become breadcrumbs; access lines and
/// `reqscope::panic` reports (already sent by the `panic` integration) are left out.
pub fn layer<S>() -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Breadcrumbs first, so that a breadcrumb recorded by the same event (none with these
    // filters, but a user-changed filter could) precedes the error it explains.
    sentry_tracing::BreadcrumbLayer::new()
        .with_filter(filter_fn(|m| {
            m.is_event() && matches!(*m.level(), Level::WARN | Level::INFO) && !is_access_or_panic(m)
        }))
        .and_then(
            sentry_tracing::ErrorLayer::new()
                .with_filter(filter_fn(|m| *m.level() == Level::ERROR && m.is_event() && !is_access_or_panic(m))),
        )
}

/// reqscope's own summary lines: a failure they sum up is reported where it happens (the
/// handler's or job's ERROR event, the panic by the panic integration), not a second time.
fn is_access_or_panic(metadata: &Metadata<'_>) -> bool {
    matches!(metadata.target(), "reqscope::access" | "reqscope::panic" | "reqscope::job")
}
