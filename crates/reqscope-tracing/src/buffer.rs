//! Lines kept until their request fails: the per-request buffer of a [`LogLayer`](crate::LogLayer).
//!
//! [`RequestLevelFilter`](crate::RequestLevelFilter) decides which events are kept rather
//! than written (a *verdict*, handed over on the thread that dispatches the event); the log
//! layer formats each such line as usual, marks it `"buffered":true` and keeps it in its
//! request's buffer, which lives in the request context: it goes when the context does, and
//! a fork has one of its own. The buffer is written, in order, just before the request's first ERROR line — an error
//! event, or the failed access line — and emptied by the access line of a request that did
//! not fail. Once written, the request's later kept lines are written as they come.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use reqscope_core::__private::log_lines;
use reqscope_core::RequestContext;
use tracing::{Event, Metadata};

use crate::Format;
use crate::json::JsonStyle;
use crate::keys::KeyStyle;
use crate::pretty::PrettyStyle;

/// The access line's target: a request's end.
const ACCESS_TARGET: &str = "reqscope::access";

/// How many lines a [`LogLayer`](crate::LogLayer) keeps for one request until it fails, and
/// for all requests together; see
/// [`RequestLevelFilter::keep_until_error`](crate::RequestLevelFilter::keep_until_error).
///
/// Beyond a request's bounds its oldest lines are dropped to make room; beyond the total, a
/// new line is dropped. Either way the drop is counted, and the line that writes the
/// request's kept lines says how many went missing (`"buffered_dropped":3`).
///
/// ```
/// let limits = reqscope_tracing::HoldLimits::default().per_request_lines(64).total_bytes(16 << 20);
/// let layer = reqscope_tracing::LogLayer::new().hold_limits(limits);
/// # drop(layer);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    lines: usize,
    bytes: usize,
    total_bytes: usize,
}

impl Default for HoldLimits {
    /// 256 lines or 256 KiB per request, whichever comes first; 64 MiB for every request
    /// together.
    fn default() -> Self {
        HoldLimits { lines: 256, bytes: 256 * 1024, total_bytes: 64 * 1024 * 1024 }
    }
}

impl HoldLimits {
    /// The most lines kept for one request.
    pub fn per_request_lines(mut self, lines: usize) -> Self {
        self.lines = lines;
        self
    }

    /// The most bytes of lines kept for one request.
    pub fn per_request_bytes(mut self, bytes: usize) -> Self {
        self.bytes = bytes;
        self
    }

    /// The most bytes of lines kept for all requests together, by every layer in the process
    /// (counted in steps of 16 KiB per request).
    pub fn total_bytes(mut self, bytes: usize) -> Self {
        self.total_bytes = bytes;
        self
    }
}

/// Whether any verdict was ever given: until then, log layers skip every check of this module.
static HOLDING: AtomicBool = AtomicBool::new(false);

/// Bytes set aside for kept lines in every buffer of the process.
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// A request sets aside this much of the total at a time, not each line's bytes: one update
/// of the shared count for many lines.
const CHUNK: usize = 16 * 1024;

/// Whether lines may be kept at all (a filter has kept one).
#[inline]
pub(crate) fn holding() -> bool {
    HOLDING.load(Ordering::Relaxed)
}

/// A verdict "keep this event" for the log layers of one owner: the event's address (the same
/// `&Event` reaches every layer's `event_enabled` and `on_event`) and the owner (0: a global
/// filter, for every log layer; otherwise a per-layer filter's id, for the layer it filters).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Verdict {
    event: usize,
    owner: u64,
}

const NO_VERDICT: Verdict = Verdict { event: 0, owner: 0 };

/// More than one: an event dispatched while another waits between its verdict and its line
/// (another layer logs) must not take the first one's verdict away.
const VERDICTS: usize = 4;

thread_local! {
    static PENDING: std::cell::Cell<[Verdict; VERDICTS]> = const { std::cell::Cell::new([NO_VERDICT; VERDICTS]) };
}

fn address(event: &Event<'_>) -> usize {
    std::ptr::from_ref(event) as usize
}

/// Forgets an earlier verdict for an event at this address: one that never reached a layer
/// (another layer disabled the event) must not be taken by a later event in the same place.
pub(crate) fn forget(event: &Event<'_>, owner: u64) {
    if !holding() {
        return;
    }
    let verdict = Verdict { event: address(event), owner };
    let _ = PENDING.try_with(|pending| {
        let mut slots = pending.get();
        for slot in slots.iter_mut().filter(|slot| **slot == verdict) {
            *slot = NO_VERDICT;
        }
        pending.set(slots);
    });
}

/// Marks `event` as kept for the log layers of `owner`.
pub(crate) fn keep(event: &Event<'_>, owner: u64) {
    // Stored once: every event of every thread reads it.
    if !holding() {
        HOLDING.store(true, Ordering::Relaxed);
    }
    let verdict = Verdict { event: address(event), owner };
    let _ = PENDING.try_with(|pending| {
        let mut slots = pending.get();
        // The newest first; the oldest (a verdict nothing took) falls off the end.
        slots.copy_within(0..VERDICTS - 1, 1);
        slots[0] = verdict;
        pending.set(slots);
    });
}

/// Whether `event` is to be kept by a log layer of `owner` (and the verdict is taken).
#[inline]
pub(crate) fn take(event: &Event<'_>, owner: u64) -> bool {
    if !holding() {
        return false;
    }
    let verdict = Verdict { event: address(event), owner };
    PENDING
        .try_with(|pending| {
            let mut slots = pending.get();
            let found = slots.iter().position(|slot| *slot == verdict);
            if let Some(at) = found {
                slots[at] = NO_VERDICT;
                pending.set(slots);
            }
            found.is_some()
        })
        .unwrap_or(false)
}

/// Whether a global filter keeps `event` until its request fails, leaving the verdict to the
/// log layers that take it.
#[cfg(feature = "otlp")]
#[inline]
pub(crate) fn is_kept(event: &Event<'_>) -> bool {
    if !holding() {
        return false;
    }
    let verdict = Verdict { event: address(event), owner: 0 };
    PENDING.try_with(|pending| pending.get().contains(&verdict)).unwrap_or(false)
}

/// Whether `event` ends its request without failing it: the access line (not an ERROR) or a
/// job's end line.
pub(crate) fn ends_request(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    match meta.target() {
        ACCESS_TARGET => true,
        reqscope_core::job::JOB_TARGET => meta.fields().field("outcome").is_some(),
        _ => false,
    }
}

/// A request's buffers, one per log layer, in the context's slot for them (a fork has its
/// own): found without a lock, dropped with the context.
#[derive(Default)]
struct Held {
    slots: Mutex<Vec<Slot>>,
}

/// What one log layer keeps for one request: the lines, oldest first, one after the other in
/// blocks of 16 KiB (an allocation per block, not per line, and no copy as they grow).
struct Slot {
    layer: u64,
    state: State,
    lines: VecDeque<Line>,
    /// The blocks that hold the lines; the first is block number `first_block`.
    blocks: VecDeque<Vec<u8>>,
    first_block: usize,
    /// Bytes of the lines kept (what the request's bound counts).
    bytes: usize,
    /// Bytes of the total set aside for this slot (what the total counts).
    reserved: usize,
    dropped: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Lines are kept.
    Holding,
    /// The request failed and its lines were written: later ones are written as they come.
    Written,
    /// The request ended without failing: later lines are dropped.
    Closed,
}

struct Line {
    meta: &'static Metadata<'static>,
    /// The number of its block, counted from the slot's first.
    block: usize,
    start: usize,
    len: usize,
}

impl Slot {
    /// Keeps `line`, in the last block if it fits there.
    fn push(&mut self, meta: &'static Metadata<'static>, line: &[u8]) {
        let fits = self.blocks.back().is_some_and(|block| block.capacity() - block.len() >= line.len());
        if !fits {
            self.blocks.push_back(Vec::with_capacity(CHUNK.max(line.len())));
        }
        let block_number = self.first_block + self.blocks.len() - 1;
        if let Some(block) = self.blocks.back_mut() {
            self.lines.push_back(Line { meta, block: block_number, start: block.len(), len: line.len() });
            block.extend_from_slice(line);
            self.bytes += line.len();
        }
    }

    fn bytes_of(&self, line: &Line) -> &[u8] {
        self.blocks.get(line.block - self.first_block).map_or(&[], |block| &block[line.start..line.start + line.len])
    }

    /// Drops the oldest line, and the blocks no kept line is in any more.
    fn drop_oldest(&mut self) -> bool {
        let Some(oldest) = self.lines.pop_front() else { return false };
        self.bytes -= oldest.len;
        self.dropped += 1;
        let first_needed = self.lines.front().map_or(self.first_block + self.blocks.len(), |line| line.block);
        while self.first_block < first_needed && self.blocks.pop_front().is_some() {
            self.first_block += 1;
        }
        true
    }

    /// Sets aside room for `len` more bytes in the total, if it has it.
    fn reserve(&mut self, len: usize, total: usize) -> bool {
        if self.bytes + len <= self.reserved {
            return true;
        }
        let need = CHUNK.max(len);
        if TOTAL.fetch_add(need, Ordering::Relaxed) + need > total {
            TOTAL.fetch_sub(need, Ordering::Relaxed);
            return false;
        }
        self.reserved += need;
        true
    }

    /// Forgets every line, and gives the memory back.
    fn clear(&mut self) {
        TOTAL.fetch_sub(std::mem::take(&mut self.reserved), Ordering::Relaxed);
        self.bytes = 0;
        self.lines = VecDeque::new();
        self.blocks = VecDeque::new();
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        let reserved: usize = slots.iter().map(|slot| slot.reserved).sum();
        TOTAL.fetch_sub(reserved, Ordering::Relaxed);
    }
}

/// The request's buffers, if any line was kept.
fn existing(ctx: &RequestContext) -> Option<&Held> {
    log_lines(ctx).get()?.downcast_ref::<Held>()
}

/// The request's buffers, made on first use.
fn buffers(ctx: &RequestContext) -> Option<&Held> {
    log_lines(ctx).get_or_init(|| Box::<Held>::default()).downcast_ref::<Held>()
}

fn slot(slots: &mut Vec<Slot>, layer: u64) -> &mut Slot {
    let at = match slots.iter().position(|slot| slot.layer == layer) {
        Some(at) => at,
        None => {
            slots.push(Slot {
                layer,
                state: State::Holding,
                lines: VecDeque::new(),
                blocks: VecDeque::new(),
                first_block: 0,
                bytes: 0,
                reserved: 0,
                dropped: 0,
            });
            slots.len() - 1
        }
    };
    &mut slots[at]
}

/// Keeps `line` (the bytes of `meta`'s event, marked) for the request, within `limits` —
/// or writes it at once with `write` when the request has already failed.
pub(crate) fn keep_line(
    ctx: &RequestContext,
    layer: u64,
    limits: &HoldLimits,
    meta: &'static Metadata<'static>,
    line: &[u8],
    write: impl FnOnce(&[u8]),
) {
    // A request that is over keeps nothing: its buffer is gone, or goes with it.
    if ctx.is_finished() {
        return;
    }
    let Some(held) = buffers(ctx) else { return };
    let mut slots = held.lock();
    let slot = slot(&mut slots, layer);
    match slot.state {
        State::Closed => {}
        State::Written => write(line),
        State::Holding => {
            if line.len() > limits.bytes || limits.lines == 0 {
                slot.dropped += 1;
                return;
            }
            // The oldest make room.
            while (slot.lines.len() >= limits.lines || slot.bytes + line.len() > limits.bytes) && slot.drop_oldest() {}
            if !slot.reserve(line.len(), limits.total_bytes) {
                slot.dropped += 1;
                return;
            }
            slot.push(meta, line);
        }
    }
}

/// Writes the request's kept lines, oldest first, with `write_kept`, then calls `then` with
/// how many were dropped — all under the request's lock, so that no line of the request
/// comes between. From then on its kept lines are written as they come.
pub(crate) fn write_kept(
    ctx: &RequestContext,
    layer: u64,
    mut write_kept: impl FnMut(&'static Metadata<'static>, &[u8]),
    then: impl FnOnce(u64),
) {
    if ctx.is_finished() && existing(ctx).is_none() {
        // Over, and nothing kept: nothing to write, nothing to come.
        return then(0);
    }
    let Some(held) = buffers(ctx) else { return then(0) };
    let mut slots = held.lock();
    let slot = slot(&mut slots, layer);
    let dropped = std::mem::take(&mut slot.dropped);
    if slot.state == State::Holding {
        slot.state = State::Written;
    }
    for line in &slot.lines {
        write_kept(line.meta, slot.bytes_of(line));
    }
    slot.clear();
    then(dropped);
}

/// Drops the request's kept lines: it ended without failing. Lines that come later are
/// dropped too.
pub(crate) fn discard(ctx: &RequestContext, layer: u64) {
    let Some(held) = existing(ctx) else { return };
    let mut slots = held.lock();
    let slot = slot(&mut slots, layer);
    slot.clear();
    slot.dropped = 0;
    slot.state = State::Closed;
}

/// Adds `key` with the raw `value` (`true`, a number) at the end of a finished line.
pub(crate) fn append_field(line: &mut Vec<u8>, format: Format, key: &str, value: &[u8]) {
    fn append<S: KeyStyle>(line: &mut Vec<u8>, end: &[u8], key: &str, value: &[u8]) {
        if !line.ends_with(end) {
            return;
        }
        line.truncate(line.len() - end.len());
        line.extend_from_slice(S::OPEN);
        S::render(line, key);
        line.extend_from_slice(S::CLOSE);
        line.extend_from_slice(value);
        line.extend_from_slice(end);
    }
    match format {
        Format::Json | Format::Ecs | Format::Gcp => append::<JsonStyle>(line, b"}\n", key, value),
        Format::Pretty => append::<PrettyStyle>(line, b"\n", key, value),
    }
}

/// Bytes kept for `ctx` by every layer, for tests.
#[cfg(test)]
pub(crate) fn total_bytes_of(ctx: &RequestContext) -> usize {
    existing(ctx).map_or(0, |held| held.lock().iter().map(|slot| slot.bytes).sum())
}
