//! Decide which access lines are written: every one by default; with an [`AccessSampler`],
//! none for the health checks that succeed and a share of the other successful requests,
//! chosen by request id — while failures and slow requests are always written.
//!
//! ```
//! use std::time::Duration;
//! use reqscope_tower::access_sampling::{AccessSampler, SampleRate};
//! use reqscope_tower::request_context::RequestContextLayer;
//!
//! # fn main() -> Result<(), reqscope_tower::access_sampling::InvalidSampleRate> {
//! let layer = RequestContextLayer::new().access_sampling(
//!     AccessSampler::new()
//!         // A successful probe writes nothing; a failed or slow one is still written.
//!         .skip_routes(["/health", "/ready"])
//!         // One successful request in ten, the same ten in every service of a chain.
//!         .sample_rate(SampleRate::new(0.1)?)
//!         .slow_threshold(Duration::from_millis(500)),
//! );
//! # Ok(())
//! # }
//! ```
//!
//! The [`RequestContextLayer`](crate::request_context::RequestContextLayer) asks its sampler
//! once per request, just before the access line would be written — after the
//! [failure classifier](crate::classify) has judged the response (its trailers too) and with
//! the context as it is then, so the matched route (`route`, set by `MatchedRouteLayer`) and
//! the user are known. The answer is an [`AccessDecision`]: write the line, write it marked
//! with the `sample_rate` that kept it, or write nothing. Only the access line is concerned:
//! the request's other lines, and its context, are untouched.
//!
//! [`AccessSampler`] never drops the line of a request that did not succeed — an HTTP status
//! of 400 or more, a gRPC status other than `OK` (`0`), a failure by the classifier's verdict,
//! a request aborted before its end or whose service failed —, nor of a request that took at
//! least its [slow threshold](AccessSampler::slow_threshold), nor of one whose log level was
//! raised ([`RequestContext::raised_level`]: a request being chased), nor of one a predicate
//! given to [`always_log_when`](AccessSampler::always_log_when) picks. Of the others, it drops those of the
//! [skipped routes](AccessSampler::skip_routes), then keeps those the
//! [sample rate](AccessSampler::sample_rate) keeps.
//!
//! # The same choice everywhere
//!
//! A request is kept by a [`SampleRate`] from its request id alone — no random number, no
//! per-process seed — so every service a request id travels through (`x-request-id` is
//! forwarded by [`outgoing`](crate::outgoing)) keeps or drops the access line of that id
//! alike, and a chain is logged whole or not at all. The id's bytes are hashed with 64-bit
//! FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), the hash mixed with
//! MurmurHash3's 64-bit finalizer (`h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33;
//! h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33`), and its top 53 bits, read as a fraction of
//! 2⁵³, are compared with the rate: the request is kept when that fraction is below it.
//! A service written in another language keeps the same requests by doing the same.
//!
//! A line kept this way carries `"sample_rate":0.1`: a request counted from the lines stands
//! for `1 / sample_rate` requests. A line written for any other reason (a failure, a slow
//! request, a rate of `1.0`) has no `sample_rate`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use reqscope_core::RequestContext;

use crate::classify::Classification;

/// Decides whether a request's access line is written. See the [module docs](self).
///
/// Implemented for closures `Fn(&AccessRequest<'_>) -> AccessDecision`. Called on the
/// request path, once per request: keep it cheap, and never panic.
pub trait SampleAccess: Send + Sync + 'static {
    /// The decision for `request`, whose access line is about to be written.
    fn sample(&self, request: &AccessRequest<'_>) -> AccessDecision;
}

impl<F> SampleAccess for F
where
    F: Fn(&AccessRequest<'_>) -> AccessDecision + Send + Sync + 'static,
{
    fn sample(&self, request: &AccessRequest<'_>) -> AccessDecision {
        self(request)
    }
}

/// What becomes of one access line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AccessDecision {
    /// The line is written as usual.
    Log,
    /// The line is written with `sample_rate`: it was kept by sampling at this rate.
    Sampled(SampleRate),
    /// No line is written.
    Skip,
}

/// A request at its end, as a [`SampleAccess`] sees it.
#[derive(Debug)]
pub struct AccessRequest<'a> {
    ctx: &'a RequestContext,
    status: Option<StatusCode>,
    classification: Classification,
    duration: Duration,
    complete: bool,
}

impl<'a> AccessRequest<'a> {
    pub(crate) fn new(
        ctx: &'a RequestContext,
        status: Option<StatusCode>,
        classification: Classification,
        duration: Duration,
        complete: bool,
    ) -> Self {
        AccessRequest { ctx, status, classification, duration, complete }
    }

    /// The request's context as it is now: its id, the matched route, the user, ….
    pub fn ctx(&self) -> &'a RequestContext {
        self.ctx
    }

    /// The response's status; `None` when the service failed without a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The failure classifier's verdict, with the gRPC status when the response carried one.
    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// How long the request took, from its start to the end (or the drop) of its body.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Whether the response was sent to its end: `false` when the client left, the body
    /// failed or the service failed without a response.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the request succeeded: complete, an HTTP status below 400, no gRPC status
    /// other than `OK`, and no failure by the classifier's verdict.
    pub fn succeeded(&self) -> bool {
        self.complete
            && !self.classification.is_failure()
            && self.status.is_some_and(|status| status.as_u16() < 400)
            && self.classification.grpc_status().is_none_or(|code| code == 0)
    }
}

/// A share of requests, from `0.0` (none) to `1.0` (all), kept by request id. See
/// [the same choice everywhere](self#the-same-choice-everywhere).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct SampleRate(f64);

impl SampleRate {
    /// Every request.
    pub const ALL: SampleRate = SampleRate(1.0);
    /// No request.
    pub const NONE: SampleRate = SampleRate(0.0);

    /// `rate`, when it is a number from `0.0` to `1.0`.
    pub fn new(rate: f64) -> Result<Self, InvalidSampleRate> {
        // `contains` is false for NaN: no rate compares as a fraction.
        if (0.0..=1.0).contains(&rate) { Ok(SampleRate(rate)) } else { Err(InvalidSampleRate) }
    }

    /// The rate as a number from `0.0` to `1.0`.
    pub const fn get(self) -> f64 {
        self.0
    }

    /// Whether the request with `id` is kept, the same in every process and every service
    /// that hashes ids this way.
    pub fn keeps(self, id: impl AsRef<[u8]>) -> bool {
        sample_point(id.as_ref()) < self.0
    }
}

impl Default for SampleRate {
    fn default() -> Self {
        SampleRate::ALL
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for SampleRate {
    type Err = InvalidSampleRate;

    /// A decimal number from `0.0` to `1.0` (`0.25`, `1`, `.5`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `f64::from_str` also reads `inf`, `NaN` and `1e-1`: a rate is plain digits.
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(InvalidSampleRate);
        }
        SampleRate::new(text.parse().map_err(|_| InvalidSampleRate)?)
    }
}

/// A sample rate that is not a number from `0.0` to `1.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a sample rate must be a number from 0.0 to 1.0")]
pub struct InvalidSampleRate;

/// Where `id` falls in `[0, 1)`: the top 53 bits of its hash, as a fraction of 2⁵³.
fn sample_point(id: &[u8]) -> f64 {
    (id_hash(id) >> 11) as f64 / (1u64 << 53) as f64
}

/// 64-bit FNV-1a, then MurmurHash3's 64-bit finalizer.
fn id_hash(id: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV-1a alone leaves ids that differ in their last bytes (`req-1`, `req-2`) with hashes
    // close together, which would make one choice for a whole run of sequential ids.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

type Predicate = Arc<dyn Fn(&RequestContext) -> bool + Send + Sync>;

/// Skips the access lines of given routes when they succeed, keeps a [`SampleRate`] of the
/// other successful requests, and always writes the rest. See the [module docs](self).
///
/// [`AccessSampler::new`] writes every line; it is the layer's default.
#[derive(Clone)]
pub struct AccessSampler {
    skip: Arc<[Box<str>]>,
    rate: SampleRate,
    slow: Duration,
    always: Arc<[Predicate]>,
}

impl fmt::Debug for AccessSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The predicates are closures, which have no `Debug`.
        f.debug_struct("AccessSampler")
            .field("skip", &self.skip)
            .field("rate", &self.rate)
            .field("slow", &self.slow)
            .field("always", &self.always.len())
            .finish()
    }
}

impl Default for AccessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessSampler {
    /// The slow threshold unless set: a request that takes a second is always written.
    pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(1);

    /// No route skipped, every request kept ([`SampleRate::ALL`]), a slow threshold of
    /// [one second](Self::DEFAULT_SLOW_THRESHOLD): every access line is written.
    pub fn new() -> Self {
        AccessSampler {
            skip: Arc::new([]),
            rate: SampleRate::ALL,
            slow: Self::DEFAULT_SLOW_THRESHOLD,
            always: Arc::new([]),
        }
    }

    /// Writes no access line for a successful request to one of these route templates
    /// (`/health`, `/users/{id}`, a gRPC method's `/package.Service/Method`), compared with
    /// the context's `route` as `MatchedRouteLayer` sets it. Replaces the routes given before.
    /// A request without a matched route (a 404 of the fallback) is never skipped.
    pub fn skip_routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Box<str>>,
    {
        self.skip = routes.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps the access lines of this share of the successful requests not skipped, by
    /// request id; each kept line carries `sample_rate`. Default [`SampleRate::ALL`].
    pub fn sample_rate(mut self, rate: SampleRate) -> Self {
        self.rate = rate;
        self
    }

    /// Always writes the access line of a request that took at least `threshold`, skipped
    /// route or not, sampled or not. Default [one second](Self::DEFAULT_SLOW_THRESHOLD).
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow = threshold;
        self
    }

    /// Always writes the access line of a request for which `predicate` holds, given its
    /// context at the end of the request: a user under investigation, say. Each call adds a predicate; a line is always written when any holds.
    pub fn always_log_when(mut self, predicate: impl Fn(&RequestContext) -> bool + Send + Sync + 'static) -> Self {
        let mut always = self.always.to_vec();
        always.push(Arc::new(predicate));
        self.always = always.into();
        self
    }

    /// Whether `request` is written whatever the routes and the rate say.
    fn always_logged(&self, request: &AccessRequest<'_>) -> bool {
        !request.succeeded()
            || request.duration() >= self.slow
            // A request someone is chasing at a raised level is never sampled away.
            || request.ctx().raised_level().is_some()
            || self.always.iter().any(|predicate| predicate(request.ctx()))
    }

    fn is_skipped(&self, ctx: &RequestContext) -> bool {
        !self.skip.is_empty()
            && ctx
                .read_patch(|patch| patch.route.as_deref().is_some_and(|route| self.skip.iter().any(|s| **s == *route)))
    }
}

impl SampleAccess for AccessSampler {
    fn sample(&self, request: &AccessRequest<'_>) -> AccessDecision {
        // Checked first so that the default sampler (nothing skipped, every request kept) costs
        // two comparisons.
        if self.skip.is_empty() && self.rate == SampleRate::ALL {
            return AccessDecision::Log;
        }
        if self.always_logged(request) {
            return AccessDecision::Log;
        }
        if self.is_skipped(request.ctx()) {
            return AccessDecision::Skip;
        }
        if self.rate == SampleRate::ALL {
            AccessDecision::Log
        } else if self.rate.keeps(request.ctx().id()) {
            AccessDecision::Sampled(self.rate)
        } else {
            AccessDecision::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use reqscope_core::RequestId;

    use super::*;

    fn ctx(id: &str, route: Option<&str>) -> RequestContext {
        let ctx = RequestContext::new(RequestId::parse(id).unwrap());
        if let Some(route) = route {
            ctx.set_route(route);
        }
        ctx
    }

    fn ok(ctx: &RequestContext) -> AccessRequest<'_> {
        AccessRequest::new(ctx, Some(StatusCode::OK), Classification::SUCCESS, Duration::from_millis(3), true)
    }

    #[test]
    fn rates_are_fractions_from_zero_to_one() {
        for good in ["0", "1", "0.5", ".25", "1.0", "0.000"] {
            assert!(good.parse::<SampleRate>().is_ok(), "{good}");
        }
        for bad in ["", "1.5", "-0.1", "NaN", "inf", "1e-1", "half", " 0.5", "0.5.1", "."] {
            assert_eq!(bad.parse::<SampleRate>(), Err(InvalidSampleRate), "{bad:?}");
        }
        assert_eq!(SampleRate::new(f64::NAN), Err(InvalidSampleRate));
        assert_eq!(SampleRate::new(1.0 + f64::EPSILON), Err(InvalidSampleRate));
    }

    #[test]
    fn the_hash_is_fixed() {
        // Known values: a change here changes which requests every deployed service keeps.
        assert_eq!(id_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(id_hash(b"req-1"), 0x41bf_9201_cad1_d3b5);
        assert_eq!(id_hash(b"req-2"), 0xb3e5_b5bc_3916_2243);
        assert!((sample_point(b"req-1") - 0.256_829_381_406_368_7).abs() < 1e-15);
        assert!(SampleRate::ALL.keeps("anything") && !SampleRate::NONE.keeps("anything"));
    }

    #[test]
    fn sequential_ids_are_spread_evenly() {
        let rate = SampleRate::new(0.25).unwrap();
        let kept = (0..10_000).filter(|i| rate.keeps(format!("req-{i}"))).count();
        assert!((2_300..2_700).contains(&kept), "{kept} of 10000 kept at 0.25");
        // No long run of equal choices among neighbours.
        let choices: Vec<bool> = (0..1_000).map(|i| rate.keeps(format!("req-{i}"))).collect();
        let longest = choices.chunk_by(|a, b| a == b).map(<[bool]>::len).max().unwrap();
        assert!(longest < 40, "a run of {longest} equal choices");
    }

    #[test]
    fn the_default_writes_everything() {
        let sampler = AccessSampler::new();
        let health = ctx("a", Some("/health"));
        assert_eq!(sampler.sample(&ok(&health)), AccessDecision::Log);
    }

    #[test]
    fn skipped_routes_are_written_only_when_they_do_not_succeed() {
        let sampler = AccessSampler::new().skip_routes(["/health"]);
        let health = ctx("a", Some("/health"));
        assert_eq!(sampler.sample(&ok(&health)), AccessDecision::Skip);
        let other = ctx("b", Some("/users/{id}"));
        assert_eq!(sampler.sample(&ok(&other)), AccessDecision::Log);
        let unrouted = ctx("c", None);
        assert_eq!(sampler.sample(&ok(&unrouted)), AccessDecision::Log);
        let fast = Duration::from_millis(1);
        let not_found = AccessRequest::new(&health, Some(StatusCode::NOT_FOUND), Classification::SUCCESS, fast, true);
        assert_eq!(sampler.sample(&not_found), AccessDecision::Log);
        let grpc = AccessRequest::new(&health, Some(StatusCode::OK), Classification::from_grpc_status(5), fast, true);
        assert_eq!(sampler.sample(&grpc), AccessDecision::Log);
        let aborted = AccessRequest::new(&health, Some(StatusCode::OK), Classification::SUCCESS, fast, false);
        assert_eq!(sampler.sample(&aborted), AccessDecision::Log);
        let failed = AccessRequest::new(&health, Some(StatusCode::OK), Classification::FAILURE, fast, true);
        assert_eq!(sampler.sample(&failed), AccessDecision::Log);
        let slow =
            AccessRequest::new(&health, Some(StatusCode::OK), Classification::SUCCESS, Duration::from_secs(1), true);
        assert_eq!(sampler.sample(&slow), AccessDecision::Log);
        let grpc_ok =
            AccessRequest::new(&health, Some(StatusCode::OK), Classification::from_grpc_status(0), fast, true);
        assert_eq!(sampler.sample(&grpc_ok), AccessDecision::Skip);
    }

    #[test]
    fn the_rate_keeps_by_id_and_predicates_keep_the_rest() {
        let half = SampleRate::new(0.5).unwrap();
        let sampler =
            AccessSampler::new().sample_rate(half).always_log_when(|ctx| ctx.user_id().as_deref() == Some("7"));
        let (mut kept, mut dropped) = (0, 0);
        for i in 0..200 {
            let request = ctx(&format!("id-{i}"), Some("/x"));
            match sampler.sample(&ok(&request)) {
                AccessDecision::Sampled(rate) if half.keeps(request.id()) => {
                    assert_eq!(rate, half);
                    kept += 1;
                }
                AccessDecision::Skip if !half.keeps(request.id()) => dropped += 1,
                other => panic!("id-{i}: {other:?}"),
            }
        }
        assert!(kept > 50 && dropped > 50, "{kept} kept, {dropped} dropped");
        let dropped_id = (0..).map(|i| format!("id-{i}")).find(|id| !half.keeps(id)).unwrap();
        let watched = ctx(&dropped_id, Some("/x"));
        watched.set_user_id("7");
        assert_eq!(sampler.sample(&ok(&watched)), AccessDecision::Log);
    }
}
