//! RabbitMQ messages, through [lapin], that carry the reqscope request context; jobs that run
//! inside it.
//!
//! ```
//! use lapin::BasicProperties;
//! use reqscope_core::trace::TraceContext;
//! use reqscope_core::{RequestContext, RequestId};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let request = RequestContext::builder(RequestId::parse("req-1").unwrap()).trace(TraceContext::new_root()).build();
//! request.set_user_id("42");
//!
//! // Publishing, inside the request: `channel.basic_publish(…, properties)`.
//! let properties = RequestContext::scope_sync(request, || reqscope_amqp::properties(BasicProperties::default()));
//!
//! // Consuming, in a worker process: `delivery.properties` is what was published.
//! let sent: Result<(), std::convert::Infallible> = reqscope_amqp::run("welcome_email", &properties, async {
//!     tracing::info!("welcome email sent"); // request_id "req-1", user_id "42", job "welcome_email", attempt 1
//!     assert_eq!(RequestContext::try_current().unwrap().id().as_str(), "req-1");
//!     Ok(())
//! })
//! .await;
//! # }
//! ```
//!
//! The context travels in the message's AMQP headers, as long strings, under the names of
//! [`reqscope_core::carry`]: `x-request-id`, `traceparent`, `tracestate`, `baggage` — which
//! consumers that know nothing of reqscope read as usual — and `reqscope-context` for the
//! rest. Publishing sets them with [`properties`] (the current request's context) or
//! [`properties_for`] (a snapshot taken earlier); headers of other names on the properties are
//! kept.
//!
//! Consuming, [`run`] restores the context from a delivery's properties and runs the job in it
//! ([`Job::run`]): the job's name as given, its id the message's `message_id`, its attempt
//! the [`ATTEMPT_HEADER`] (1 without one). The restored context is validated
//! ([`Carried::from_headers`]); one that does not validate — or a message published without
//! one — never stops the job: it runs in a context of its own, with one WARN line giving the
//! reason. [`retry_properties`] gives a failed job's properties for its next attempt: the same
//! carried context and message id, the attempt counted up.
//!
//! [lapin]: https://docs.rs/lapin
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use reqscope_core::carry::{Carried, HEADERS, InvalidCarriedContext};
use reqscope_core::job::Job;
use reqscope_core::{RequestContext, RequestId};

/// The header that counts a job's attempts, from 1: set by [`retry_properties`], read by
/// [`attempt`] and [`run`].
pub const ATTEMPT_HEADER: &str = "x-attempt";

/// `properties` with the current request's context in its headers; unchanged outside a
/// request.
pub fn properties(properties: BasicProperties) -> BasicProperties {
    match RequestContext::current() {
        Some(ctx) => properties_for(&ctx.carry(), properties),
        None => properties,
    }
}

/// `properties` with `carried` in its headers (replacing headers of the same names, keeping
/// the others).
pub fn properties_for(carried: &Carried, properties: BasicProperties) -> BasicProperties {
    // An earlier snapshot's headers go first: a `tracestate` or `baggage` this one lacks must
    // not stay beside its `traceparent`.
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .iter()
        .flat_map(|table| table.inner())
        .filter(|(name, _)| !HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut table = FieldTable::from(kept);
    for (name, value) in &carried.to_headers() {
        table.insert(ShortString::from(name.as_str()), AMQPValue::LongString(value.as_bytes().into()));
    }
    properties.with_headers(table)
}

/// The context carried by a message with these properties, validated.
pub fn carried(properties: &BasicProperties) -> Result<Carried, InvalidCarriedContext> {
    let mut headers = HeaderMap::new();
    if let Some(table) = properties.headers() {
        for name in HEADERS {
            let Some(value) = table.inner().get(name) else { continue };
            let bytes = match value {
                AMQPValue::LongString(text) => text.as_bytes(),
                AMQPValue::ShortString(text) => text.as_str().as_bytes(),
                _ => return Err(InvalidCarriedContext::NotText(name)),
            };
            let value = HeaderValue::from_bytes(bytes).map_err(|_| InvalidCarriedContext::NotText(name))?;
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    Carried::from_headers(&headers)
}

/// Which attempt a message with these properties is, from 1: its [`ATTEMPT_HEADER`] (any
/// integer type, or text), 1 when it has none or it is not a number from 1.
pub fn attempt(properties: &BasicProperties) -> u32 {
    let Some(value) = properties.headers().as_ref().and_then(|table| table.inner().get(ATTEMPT_HEADER)) else {
        return 1;
    };
    let number = match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok().and_then(|t| t.parse().ok()),
        AMQPValue::ShortString(text) => text.as_str().parse().ok(),
        _ => None,
    };
    number.and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1).unwrap_or(1)
}

/// The properties for the next attempt at a failed job: the same headers (the carried
/// context among them) and message id, [`ATTEMPT_HEADER`] counted up.
pub fn retry_properties(properties: &BasicProperties) -> BasicProperties {
    let next = attempt(properties).saturating_add(1);
    let mut table: FieldTable = properties.headers().clone().unwrap_or_default();
    table.insert(ShortString::from(ATTEMPT_HEADER), AMQPValue::LongLongInt(i64::from(next)));
    properties.clone().with_headers(table)
}

/// The job a message with these properties stands for: `name`, the message id as its id
/// (when it is a valid id by the request-id grammar: it comes from the broker and goes on
/// every line), its attempt.
pub fn job(name: &str, properties: &BasicProperties) -> Job {
    let job = Job::new(name).with_attempt(attempt(properties));
    match properties.message_id().as_ref().filter(|id| RequestId::validate(id.as_str().as_bytes()).is_ok()) {
        Some(id) => job.with_id(id.as_str()),
        None => job,
    }
}

/// Runs `work` as the job `name` of a message with these `properties` (a delivery's
/// `properties`), inside the context the message carries; see [`Job::run`] for its lines.
pub async fn run<F, T, E>(name: &str, properties: &BasicProperties, work: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    job(name, properties).run(carried(properties), work).await
}

#[cfg(test)]
mod tests {
    use reqscope_core::trace::TraceContext;

    use super::*;

    fn request() -> RequestContext {
        let ctx = RequestContext::builder(RequestId::parse("req-9").unwrap()).trace(TraceContext::new_root()).build();
        ctx.set_user_id("7");
        ctx.set_hidden_field("device_id", "d-9");
        ctx
    }

    #[test]
    fn the_context_travels_in_the_headers_and_others_stay() {
        let mut own = FieldTable::default();
        own.insert("x-app".into(), AMQPValue::LongString("kept".into()));
        let properties = properties_for(&request().carry(), BasicProperties::default().with_headers(own));
        let table = properties.headers().clone().unwrap();
        assert!(
            table.contains_key("x-app") && table.contains_key("traceparent") && table.contains_key("reqscope-context")
        );
        let restored = carried(&properties).unwrap().into_context();
        assert_eq!(restored.id().as_str(), "req-9");
        assert_eq!(restored.hidden_field("device_id"), Some("d-9".into()));
        assert_eq!(carried(&BasicProperties::default()), Err(InvalidCarriedContext::MissingRequestId));

        // Carried again (a retry published from a job), the earlier snapshot's headers go.
        let mut table = properties.headers().clone().unwrap();
        table.insert("tracestate".into(), AMQPValue::LongString("old=1".into()));
        let other = RequestContext::new(RequestId::parse("other").unwrap());
        let again = properties_for(&other.carry(), properties.with_headers(table));
        let table = again.headers().clone().unwrap();
        assert!(!table.contains_key("tracestate") && table.contains_key("x-app"));
        assert_eq!(carried(&again).unwrap().request_id().as_str(), "other");
    }

    #[test]
    fn a_header_of_another_type_is_refused() {
        let mut table = FieldTable::default();
        table.insert("x-request-id".into(), AMQPValue::LongInt(5));
        let properties = BasicProperties::default().with_headers(table);
        assert_eq!(carried(&properties), Err(InvalidCarriedContext::NotText("x-request-id")));
        let mut table = FieldTable::default();
        table.insert("x-request-id".into(), AMQPValue::LongString(b"a\nb".to_vec().into()));
        let properties = BasicProperties::default().with_headers(table);
        assert_eq!(carried(&properties), Err(InvalidCarriedContext::NotText("x-request-id")));
    }

    #[test]
    fn attempts_count_up_from_one() {
        let first = BasicProperties::default().with_message_id("m-1".into());
        assert_eq!(attempt(&first), 1);
        let second = retry_properties(&first);
        let third = retry_properties(&second);
        assert_eq!((attempt(&second), attempt(&third)), (2, 3));
        let job = job("welcome_email", &third);
        assert_eq!((job.name(), job.id(), job.attempt()), ("welcome_email", Some("m-1"), 3));
        for odd in
            [AMQPValue::LongInt(0), AMQPValue::LongInt(-4), AMQPValue::LongString("x".into()), AMQPValue::Boolean(true)]
        {
            let mut table = FieldTable::default();
            table.insert(ATTEMPT_HEADER.into(), odd);
            assert_eq!(attempt(&BasicProperties::default().with_headers(table)), 1);
        }
    }

    #[tokio::test]
    async fn a_job_runs_in_the_carried_context() {
        let properties = RequestContext::scope_sync(request(), || super::properties(BasicProperties::default()));
        let user = run("welcome_email", &properties, async {
            Ok::<_, std::convert::Infallible>(RequestContext::try_current().unwrap().user_id())
        })
        .await
        .unwrap();
        assert_eq!(user.as_deref(), Some("7"));
    }
}
