//! One request's log level, raised above the global filter; see [`RaisedLevel`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::context::RequestContext;

/// How far one request's log level is raised above the global filter: DEBUG, or TRACE as
/// well.
///
/// ```
/// use reqscope_core::{RaisedLevel, RequestContext, RequestId};
///
/// let ctx = RequestContext::new(RequestId::new_v4());
/// // The request asked for DEBUG (`x-log-level: debug`); only a user with the role gets it.
/// ctx.raise_level_for_role(RaisedLevel::Debug, "log-debug");
/// assert_eq!(ctx.raised_level(), None);
/// ctx.set_roles(["reader", "log-debug"]); // what the auth layer does with a verified token
/// assert_eq!(ctx.raised_level(), Some(RaisedLevel::Debug));
/// ```
///
/// The context only holds the level; a log filter that knows of it (reqscope-tracing's
/// `RequestLevelFilter`) lets the request's DEBUG or TRACE events through while every other
/// request stays at the global level. Reading it is one atomic load, cheap enough to do for
/// every event.
///
/// The raise goes wherever the context goes: spawned tasks, streaming bodies, threads that
/// only see the request span, [forks](RequestContext::fork), and jobs — a
/// [snapshot](crate::carry) carries the level in effect when it is taken, and the job runs at
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaisedLevel {
    /// DEBUG events (and every more severe one) are written.
    Debug = 1,
    /// TRACE events too.
    Trace = 2,
}

impl RaisedLevel {
    /// `debug` or `trace`, in any case, with surrounding spaces; anything else is `None`.
    /// Reads a header value as sent: a value that is not one of the two is no request.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        if value.eq_ignore_ascii_case(b"debug") {
            Some(RaisedLevel::Debug)
        } else if value.eq_ignore_ascii_case(b"trace") {
            Some(RaisedLevel::Trace)
        } else {
            None
        }
    }

    /// `debug` or `trace`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RaisedLevel::Debug => "debug",
            RaisedLevel::Trace => "trace",
        }
    }

    fn to_u8(level: Option<Self>) -> u8 {
        level.map_or(0, |level| level as u8)
    }

    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(RaisedLevel::Debug),
            2 => Some(RaisedLevel::Trace),
            _ => None,
        }
    }
}

/// How many live contexts have a raised level: with none, a filter need not look for the
/// request an event belongs to.
static RAISED: AtomicUsize = AtomicUsize::new(0);

/// The level in effect, and the request for one that waits on a role.
#[derive(Debug, Default)]
pub(crate) struct LevelState {
    /// The level in effect (`RaisedLevel as u8`, 0 for none): what every event reads.
    effective: AtomicU8,
    /// Whether `gate` holds a request: patch updates look at nothing else when it does not.
    gated: AtomicBool,
    /// The level asked for and the role that grants it.
    gate: Mutex<Option<(RaisedLevel, Arc<str>)>>,
}

impl LevelState {
    pub(crate) fn new(level: Option<RaisedLevel>) -> Self {
        // Made with its level, not set afterwards: a new context is not shared yet, and a
        // swap is an atomic read-modify-write on every request.
        let effective = RaisedLevel::to_u8(level);
        if effective != 0 {
            RAISED.fetch_add(1, Ordering::Relaxed);
        }
        LevelState { effective: AtomicU8::new(effective), gated: AtomicBool::new(false), gate: Mutex::new(None) }
    }

    /// A copy for a fork: the same level in effect, the same request.
    pub(crate) fn copy(&self) -> Self {
        let gate = self.lock().clone();
        let copy =
            LevelState { effective: AtomicU8::new(0), gated: AtomicBool::new(gate.is_some()), gate: Mutex::new(gate) };
        copy.set(self.effective());
        copy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(RaisedLevel, Arc<str>)>> {
        self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[inline]
    fn effective(&self) -> Option<RaisedLevel> {
        RaisedLevel::from_u8(self.effective.load(Ordering::Relaxed))
    }

    fn set(&self, level: Option<RaisedLevel>) {
        let new = RaisedLevel::to_u8(level);
        let old = self.effective.swap(new, Ordering::Relaxed);
        match (old != 0, new != 0) {
            (false, true) => {
                RAISED.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                RAISED.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl Drop for LevelState {
    fn drop(&mut self) {
        if *self.effective.get_mut() != 0 {
            RAISED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl RequestContext {
    /// The level this request's log lines are raised to, if any (see [`RaisedLevel`]). One
    /// atomic load: log filters call it for every event they would otherwise drop.
    #[inline]
    pub fn raised_level(&self) -> Option<RaisedLevel> {
        self.level.effective()
    }

    /// Whether any context alive now has a raised level: one relaxed load, so that a log
    /// filter can skip looking for an event's request while no request is raised.
    #[inline]
    pub fn any_raised_level() -> bool {
        RAISED.load(Ordering::Relaxed) != 0
    }

    /// Raises this request's level (or lowers it back with `None`) unconditionally — for
    /// jobs, CLIs and tests, or an application's own rule. Replaces a request made with
    /// [`raise_level_for_role`](Self::raise_level_for_role).
    pub fn raise_level(&self, level: Option<RaisedLevel>) {
        let mut gate = self.level.lock();
        *gate = None;
        self.level.gated.store(false, Ordering::Relaxed);
        self.level.set(level);
    }

    /// Asks for `level`, granted for as long as the context's roles include `role`: at once
    /// when they do, or as soon as a later patch (the auth layer's, after it verified a
    /// token) puts it in. Without the role, nothing is raised and nothing is said.
    /// `RequestContextLayer` calls it for a request that sends `x-log-level`.
    pub fn raise_level_for_role(&self, level: RaisedLevel, role: impl Into<Arc<str>>) {
        let role = role.into();
        let mut gate = self.level.lock();
        let granted = self.has_role(&role);
        *gate = Some((level, role));
        self.level.gated.store(true, Ordering::Release);
        self.level.set(granted.then_some(level));
    }

    /// After a patch: a request waiting on a role is granted, or withdrawn, by the new roles.
    pub(crate) fn refresh_raised_level(&self) {
        if !self.level.gated.load(Ordering::Acquire) {
            return;
        }
        let gate = self.level.lock();
        if let Some((level, role)) = &*gate {
            let granted = self.has_role(role);
            self.level.set(granted.then_some(*level));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    #[test]
    fn header_values_parse_or_are_nothing() {
        assert_eq!(RaisedLevel::parse(b"debug"), Some(RaisedLevel::Debug));
        assert_eq!(RaisedLevel::parse(b" TRACE "), Some(RaisedLevel::Trace));
        assert_eq!(RaisedLevel::parse(b"Debug"), Some(RaisedLevel::Debug));
        for bad in [&b""[..], b"info", b"debug2", b"de bug", b"\xff", b"warn"] {
            assert_eq!(RaisedLevel::parse(bad), None, "{bad:?}");
        }
        assert!(RaisedLevel::Trace > RaisedLevel::Debug);
        assert_eq!(RaisedLevel::Trace.as_str(), "trace");
    }

    #[test]
    fn a_request_waits_for_its_role_and_follows_it() {
        let ctx = RequestContext::new(RequestId::new_v4());
        assert_eq!(ctx.raised_level(), None);
        ctx.raise_level_for_role(RaisedLevel::Trace, "log-debug");
        assert_eq!(ctx.raised_level(), None);
        ctx.set_user_id("7");
        assert_eq!(ctx.raised_level(), None, "a patch without the role grants nothing");
        ctx.set_roles(["log-debug"]);
        assert_eq!(ctx.raised_level(), Some(RaisedLevel::Trace));
        let fork = ctx.fork();
        assert_eq!(fork.raised_level(), Some(RaisedLevel::Trace));
        ctx.set_roles(["reader"]);
        assert_eq!(ctx.raised_level(), None, "the role taken away takes the level with it");
        assert_eq!(fork.raised_level(), Some(RaisedLevel::Trace), "a fork is apart");
        fork.set_roles(["reader"]);
        assert_eq!(fork.raised_level(), None, "and keeps the request");
        fork.set_roles(["log-debug"]);
        assert!(RequestContext::any_raised_level());
    }

    #[test]
    fn an_unconditional_raise_replaces_a_request() {
        let ctx = RequestContext::new(RequestId::new_v4());
        ctx.set_roles(["log-debug"]);
        ctx.raise_level_for_role(RaisedLevel::Debug, "log-debug");
        assert_eq!(ctx.raised_level(), Some(RaisedLevel::Debug));
        ctx.raise_level(Some(RaisedLevel::Trace));
        ctx.set_roles(["reader"]);
        assert_eq!(ctx.raised_level(), Some(RaisedLevel::Trace));
        ctx.raise_level(None);
        assert_eq!(ctx.raised_level(), None);
    }
}
