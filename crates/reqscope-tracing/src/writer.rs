//! A non-blocking, bounded, lossy-but-counting line writer.
//!
//! Lines are appended to a shared buffer under a lock held only for a `memcpy`; one worker
//! thread swaps the buffer out and writes it in one call at most one flush interval (10 ms by
//! default) after its first line came in, or at once when 64 KiB are waiting or a flush is
//! asked for. Callers never wake the worker per line: a wake-up is a system call and, on a
//! busy core, a context switch — far more than formatting the line. Only the first line into
//! an idle writer wakes it; with nothing to write, the worker sleeps until there is (no timer).
//! When the output cannot keep up (a full pipe, a stalled terminal), the buffer stops growing
//! at its limit: new lines are dropped and counted, requests never wait, and once output
//! moves again a summary line reports how many were lost. Lines the output refuses (a write
//! error) are counted the same way, and a failing output is retried with a growing pause (up
//! to 1 s) as new lines arrive — never in a loop of its own.
//!
//! An output that fails part way through a batch took some bytes: the lines it took whole are
//! written, not dropped; the line it stopped in is *finished*, its unwritten end written
//! first at the next attempt, so the output never holds one line glued to the next; only the
//! lines after it are counted as dropped. (If the output never takes that end, the torn line
//! is counted as dropped when the writer stops.)
//!
//! After the [`WriterGuard`] is dropped and the worker has stopped, each line is written by
//! its caller, synchronously, or counted as dropped if the output refuses it: a line logged
//! during shutdown is written or counted, never silently lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

use crate::Format;

/// Wraps `output` in a [`NonBlocking`] writer with the default limits (8 MiB buffered, 5 s
/// to flush at shutdown). Keep the guard alive for as long as lines should be written.
pub fn non_blocking<T: Write + Send + 'static>(output: T) -> (NonBlocking, WriterGuard) {
    NonBlockingBuilder::default().finish(output)
}

/// Configures a [`NonBlocking`] writer.
#[derive(Clone, Debug)]
pub struct NonBlockingBuilder {
    buffer_limit: usize,
    shutdown_timeout: Duration,
    flush_interval: Duration,
    summary_format: Format,
}

impl Default for NonBlockingBuilder {
    fn default() -> Self {
        NonBlockingBuilder {
            buffer_limit: 8 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_millis(10),
            summary_format: Format::Json,
        }
    }
}

/// The bounds of [`NonBlockingBuilder::flush_interval`].
const MIN_INTERVAL: Duration = Duration::from_micros(100);
const MAX_INTERVAL: Duration = Duration::from_secs(1);

impl NonBlockingBuilder {
    /// Bytes that may wait for the output before lines are dropped (default 8 MiB). Memory use
    /// is bounded by about twice this: one buffer filling while the other is written.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes.max(1);
        self
    }

    /// The longest a line waits before it is written (default 10 ms; bounded to 100 µs …
    /// 1 s). Shorter means more write calls; a burst of 64 KiB is written at once regardless.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        self
    }

    /// How long dropping the guard waits for buffered lines to be written (default 5 s;
    /// `Duration::MAX` waits as long as it takes).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The format of the line that reports dropped lines (default JSON): that of the
    /// [`LogLayer`](crate::LogLayer) writing through it, so that every line of the output is
    /// in one format. [`init_from_env`](crate::init_from_env) sets it.
    pub fn summary_format(mut self, format: Format) -> Self {
        self.summary_format = format;
        self
    }

    /// Starts the worker thread writing to `output`.
    pub fn finish<T: Write + Send + 'static>(self, output: T) -> (NonBlocking, WriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                pending_drops: 0,
                writing: false,
                failing: false,
                urgent: false,
                shutdown: false,
                sleeping: false,
                output: Some(Output {
                    out: Box::new(output),
                    rest: Vec::new(),
                    rest_is_line: false,
                    summary_format: self.summary_format,
                }),
                direct: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            limit: self.buffer_limit,
            wake_at: (64 * 1024).min(self.buffer_limit / 2).max(1),
            interval: self.flush_interval,
            dropped: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        });
        let worker_shared = Arc::clone(&shared);
        let worker =
            std::thread::Builder::new().name("reqscope-log-writer".into()).spawn(move || worker_shared.run()).ok();
        if worker.is_none() {
            // No thread to hand lines to: every caller writes its own line.
            shared.lock().direct = true;
        }
        let writer = NonBlocking { shared: Arc::clone(&shared) };
        (writer, WriterGuard { shared, worker, timeout: self.shutdown_timeout })
    }
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    idle: Condvar,
    limit: usize,
    /// Buffered bytes at which a caller wakes the worker instead of letting it sleep on.
    wake_at: usize,
    interval: Duration,
    dropped: AtomicU64,
    /// Times the worker woke up, for the tests that check it sleeps while idle.
    wakeups: AtomicU64,
}

struct State {
    buf: Vec<u8>,
    pending_drops: u64,
    writing: bool,
    failing: bool,
    /// Write now: a flush was asked for, or the buffer passed `wake_at`.
    urgent: bool,
    shutdown: bool,
    /// The worker waits for work with no timeout: the next line must wake it.
    sleeping: bool,
    /// The output, here while no worker holds it (before it starts, after it stops).
    output: Option<Output>,
    /// No worker runs (it stopped at shutdown, or could not start): callers write their lines
    /// themselves.
    direct: bool,
}

/// The output and what it still owes of a line it took only part of.
struct Output {
    out: Box<dyn Write + Send>,
    /// The unwritten end of a torn line, written before anything else.
    rest: Vec<u8>,
    /// Whether `rest` ends a log line (rather than a drop summary).
    rest_is_line: bool,
    summary_format: Format,
}

/// What one attempt to write a batch achieved.
struct Written {
    /// Every byte went out.
    complete: bool,
    /// Log lines the output did not take (and will not: the torn one is not among them).
    lost: u64,
    /// The drop summary was written, or its end is waiting in `rest`.
    reported: bool,
}

impl Output {
    /// Writes `batch` (whole lines) and, when `drops > 0`, a summary line reporting them after
    /// it; first finishes a line an earlier attempt tore.
    fn write_batch(&mut self, batch: &mut Vec<u8>, drops: u64) -> Written {
        let lines_end = batch.len();
        if drops > 0 {
            batch.extend_from_slice(&drop_summary(self.summary_format, drops));
        }
        if !self.rest.is_empty() {
            let taken = write_some(&mut *self.out, &self.rest);
            self.rest.drain(..taken);
            if !self.rest.is_empty() {
                let _ = self.out.flush();
                return Written { complete: false, lost: count_lines(&batch[..lines_end]), reported: drops == 0 };
            }
        }
        let taken = write_some(&mut *self.out, batch);
        let _ = self.out.flush();
        if taken == batch.len() {
            return Written { complete: true, lost: 0, reported: true };
        }
        // The output stopped inside a line: keep its end to finish it next time, so that the
        // next line starts on a line of its own; it is not lost.
        let mut unsent = taken;
        if taken > 0 && batch[taken - 1] != b'\n' {
            let end = batch[taken..].iter().position(|&b| b == b'\n').map_or(batch.len(), |i| taken + i + 1);
            self.rest.extend_from_slice(&batch[taken..end]);
            self.rest_is_line = taken < lines_end;
            unsent = end;
        }
        Written {
            complete: false,
            lost: count_lines(&batch[unsent.min(lines_end)..lines_end]),
            reported: drops == 0 || taken > lines_end,
        }
    }
}

/// Writes as much of `bytes` as the output takes; how much that was.
fn write_some(out: &mut dyn Write, bytes: &[u8]) -> usize {
    let mut taken = 0;
    while taken < bytes.len() {
        match out.write(&bytes[taken..]) {
            Ok(0) => break,
            Ok(n) => taken += n.min(bytes.len() - taken),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    taken
}

/// Lines in `bytes`, a last one without its newline included.
fn count_lines(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

/// The longest pause between retries of an output that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self) {
        let Some(mut output) = self.lock().output.take() else {
            return;
        };
        let mut spare = Vec::new();
        let mut backoff = Duration::ZERO;
        loop {
            let drops = {
                let mut state = self.lock();
                // When the batch being gathered is due: one interval after its first line.
                let mut due: Option<Instant> = None;
                loop {
                    // A failing output is retried only when new lines arrive, never in a spin.
                    let has_work = !state.buf.is_empty() || (state.pending_drops > 0 && !state.failing);
                    if !has_work {
                        if state.shutdown {
                            self.stop(state, output);
                            return;
                        }
                        due = None;
                        state.sleeping = true;
                        state = self.work.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                        state.sleeping = false;
                        self.wakeups.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if state.urgent || state.shutdown {
                        break;
                    }
                    let now = Instant::now();
                    // No deadline that far in the future: write now rather than panic.
                    let deadline = *due.get_or_insert_with(|| now.checked_add(self.interval).unwrap_or(now));
                    let left = deadline.saturating_duration_since(now);
                    if left.is_zero() {
                        break;
                    }
                    state = self.work.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                }
                state.urgent = false;
                std::mem::swap(&mut state.buf, &mut spare);
                state.writing = true;
                std::mem::take(&mut state.pending_drops)
            };
            if !backoff.is_zero() {
                std::thread::sleep(backoff);
            }
            let written = output.write_batch(&mut spare, drops);
            spare.clear();
            if spare.capacity() > self.limit {
                spare = Vec::new();
            }
            let mut state = self.lock();
            // Lines the output refused are lost like lines dropped for lack of room: counted.
            self.dropped.fetch_add(written.lost, Ordering::Relaxed);
            state.pending_drops += written.lost + if written.reported { 0 } else { drops };
            state.failing = !written.complete;
            backoff = if written.complete {
                Duration::ZERO
            } else {
                backoff.saturating_mul(2).clamp(Duration::from_millis(10), MAX_BACKOFF)
            };
            state.writing = false;
            self.idle.notify_all();
        }
    }

    /// Hands the output back at shutdown: from now on callers write their own lines.
    fn stop(&self, mut state: MutexGuard<'_, State>, mut output: Output) {
        if !output.rest.is_empty() && std::mem::take(&mut output.rest_is_line) {
            // A torn line the output never finished: counted. Its end still goes out first if
            // a later line is written, so that line starts clean.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        state.output = Some(output);
        state.direct = true;
        self.idle.notify_all();
    }

    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.direct {
            self.write_direct(&mut state, line);
            return;
        }
        if state.buf.len() + line.len() > self.limit {
            state.pending_drops += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = state.buf.is_empty();
        state.buf.extend_from_slice(line);
        // One wake-up per batch at most: for the first line into an idle writer, or when the
        // buffer passes `wake_at`.
        let first = was_empty && std::mem::take(&mut state.sleeping);
        let full = state.buf.len() >= self.wake_at && !std::mem::replace(&mut state.urgent, true);
        drop(state);
        if first || full {
            self.work.notify_one();
        }
    }

    /// Writes `line` in the caller's thread (no worker runs), or counts it as dropped.
    fn write_direct(&self, state: &mut State, line: &[u8]) {
        let drops = std::mem::take(&mut state.pending_drops);
        // No worker uses the buffer now: the line goes through it, so no line allocates.
        debug_assert!(state.buf.is_empty(), "direct mode starts with the worker's lines written or counted");
        let mut batch = std::mem::take(&mut state.buf);
        batch.clear();
        batch.extend_from_slice(line);
        let written = match state.output.as_mut() {
            Some(output) => output.write_batch(&mut batch, drops),
            None => Written { complete: false, lost: count_lines(line), reported: false },
        };
        // Kept for the next line, unless one huge line made it larger than the buffer limit.
        if batch.capacity() <= self.limit {
            batch.clear();
            state.buf = batch;
        }
        self.dropped.fetch_add(written.lost, Ordering::Relaxed);
        state.pending_drops += written.lost + if written.reported { 0 } else { drops };
    }

    /// Waits until everything buffered so far is written, or `timeout` passes.
    fn flush(&self, timeout: Duration) -> bool {
        // `None`: so far away that it never comes.
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        state.urgent = true;
        self.work.notify_one();
        while !state.direct && (!state.buf.is_empty() || state.writing || (state.pending_drops > 0 && !state.failing)) {
            state = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.idle.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.idle.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
        true
    }
}

/// The line that reports `dropped` lines, in `format`.
fn drop_summary(format: Format, dropped: u64) -> Vec<u8> {
    const TARGET: &str = "reqscope::writer";
    const MESSAGE: &str = "log output could not keep up; lines were dropped";
    let timestamp = crate::time::rfc3339(SystemTime::now());
    let timestamp = std::str::from_utf8(&timestamp).unwrap_or_default();
    match format {
        Format::Json => format!(
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"WARN\",\"target\":\"{TARGET}\",\"message\":\"{MESSAGE}\",\
             \"dropped\":{dropped}}}\n"
        ),
        Format::Pretty => format!("{timestamp}  WARN {TARGET}: {MESSAGE} dropped={dropped}\n"),
        Format::Ecs => format!(
            "{{\"@timestamp\":\"{timestamp}\",\"log.level\":\"WARN\",\"message\":\"{MESSAGE}\",\"ecs.version\":\"{}\",\
             \"log.logger\":\"{TARGET}\",\"labels.dropped\":\"{dropped}\"}}\n",
            crate::ecs::ECS_VERSION
        ),
        Format::Gcp => format!(
            "{{\"time\":\"{timestamp}\",\"severity\":\"WARNING\",\"message\":\"{MESSAGE}\",\
             \"logging.googleapis.com/sourceLocation\":{{\"function\":\"{TARGET}\"}},\"dropped\":{dropped}}}\n"
        ),
    }
    .into_bytes()
}

/// A `MakeWriter` that hands lines to a background thread and never blocks the caller; see
/// [`non_blocking`].
///
/// Each `write` call is taken as one whole line (the [`LogLayer`](crate::LogLayer) writes a
/// line with one call), so a line is either written whole or dropped whole.
#[derive(Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

impl NonBlocking {
    /// Lines dropped since start because the output could not keep up or refused them.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line accepted so far is written, at most `timeout`; `false` when
    /// the time ran out.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        self.shared.flush(timeout)
    }
}

impl std::fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonBlocking")
            .field("limit", &self.shared.limit)
            .field("dropped", &self.dropped_lines())
            .finish()
    }
}

impl Write for &NonBlocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = &'a NonBlocking;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Flushes the [`NonBlocking`] writer when dropped: every accepted line is written before
/// the program goes on (up to the shutdown timeout, so a dead output cannot hang the exit).
/// Lines logged after that are written synchronously by the thread that logs them, or
/// counted as dropped if the output refuses them. If the output is still stuck when the
/// timeout passes, the lines still buffered are counted as dropped, and so are later ones
/// until the stuck write returns.
#[must_use = "dropping the guard at once stops the log writer"]
pub struct WriterGuard {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl WriterGuard {
    /// Lines dropped since start because the output could not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for WriterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterGuard").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let flushed = self.shared.flush(self.timeout);
        let mut state = self.shared.lock();
        state.shutdown = true;
        if !flushed && !state.direct {
            // The output is stuck in the worker's hands past the timeout: what is still
            // buffered is counted as dropped, and later lines go the direct way (counted too
            // until the worker, if its write ever returns, hands the output back).
            let stranded = count_lines(&state.buf);
            state.buf.clear();
            self.shared.dropped.fetch_add(stranded, Ordering::Relaxed);
            state.direct = true;
        }
        drop(state);
        self.shared.work.notify_one();
        if flushed && let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that blocks until the test lets it go, like a pipe nobody reads.
    struct Gate {
        entered: mpsc::Sender<()>,
        open: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
        opened: bool,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.opened {
                let _ = self.entered.send(());
                let _ = self.open.recv();
                self.opened = true;
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_drop_summary_is_a_line_of_the_layers_format() {
        let line = |format| String::from_utf8(drop_summary(format, 7)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&line(Format::Json)).unwrap();
        assert_eq!((&json["level"], &json["dropped"]), (&"WARN".into(), &7.into()));
        let ecs = crate::test_support::check_ecs_line(line(Format::Ecs).trim_end());
        assert_eq!((&ecs["log.logger"], &ecs["labels.dropped"]), (&"reqscope::writer".into(), &"7".into()));
        let gcp: serde_json::Value = serde_json::from_str(&line(Format::Gcp)).unwrap();
        assert_eq!((&gcp["severity"], &gcp["dropped"]), (&"WARNING".into(), &7.into()));
        let pretty = line(Format::Pretty);
        assert!(
            pretty.ends_with("  WARN reqscope::writer: log output could not keep up; lines were dropped dropped=7\n")
        );
        assert_eq!(pretty.lines().count(), 1);
    }

    #[test]
    fn stalled_output_drops_counts_and_reports() {
        let (open, gate) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let (writer, guard) = NonBlockingBuilder::default().buffer_limit(100).finish(Gate {
            entered: entered_tx,
            open: gate,
            out: Arc::clone(&out),
            opened: false,
        });
        // The first line goes to the worker, which then blocks on the gate.
        (&writer).write_all(b"first\n").unwrap();
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let started = Instant::now();
        for i in 0..100 {
            (&writer).write_all(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1), "writes must not block");
        // 100 bytes hold 12 lines of 8 bytes; the other 88 are dropped and counted.
        assert_eq!(writer.dropped_lines(), 88);
        open.send(()).unwrap();
        assert!(writer.flush_timeout(Duration::from_secs(5)));
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1..13], (0..12).map(|i| format!("line {i:02}")).collect::<Vec<_>>()[..]);
        let summary: serde_json::Value = serde_json::from_str(lines[13]).unwrap();
        assert_eq!(summary["dropped"], 88);
        assert_eq!(summary["level"], "WARN");
        assert_eq!(lines.len(), 14);
    }

    #[test]
    fn guard_flushes_everything_accepted() {
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = non_blocking(Shared(Arc::clone(&out)));
        for i in 0..10_000 {
            (&writer).write_all(format!("{i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 10_000);
        assert_eq!(writer.dropped_lines(), 0);
    }
}

#[cfg(test)]
mod failing_output {
    use super::*;

    /// Refuses the first `fail` writes, then accepts everything.
    struct Flaky {
        fail: usize,
        out: Arc<Mutex<Vec<u8>>>,
        attempts: Arc<AtomicU64>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            if self.fail > 0 {
                self.fail -= 1;
                return Err(io::Error::other("broken pipe"));
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn refused_lines_are_counted_reported_and_never_spun_on() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicU64::new(0));
        let (writer, guard) = non_blocking(Flaky { fail: 1, out: Arc::clone(&out), attempts: Arc::clone(&attempts) });
        (&writer).write_all(b"a\nb\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.dropped_lines() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Long enough for a spinning worker to have retried many times.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(writer.dropped_lines(), 2, "the refused batch is counted");
        assert!(attempts.load(Ordering::Relaxed) <= 2, "a failing output must not be retried in a loop");
        (&writer).write_all(b"c\n").unwrap();
        assert!(writer.flush_timeout(Duration::from_secs(5)));
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "c");
        let summary: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(summary["dropped"], 2);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Everything the output took, readable by the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Takes `budget` bytes, then fails once (like a pipe that breaks mid-write and is
    /// reconnected), then takes everything.
    struct BreaksOnce {
        budget: usize,
        failed: bool,
        sink: Sink,
    }

    impl Write for BreaksOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = if self.failed {
                buf.len()
            } else if self.budget == 0 {
                self.failed = true;
                return Err(io::Error::other("broken pipe"));
            } else {
                let n = self.budget.min(buf.len());
                self.budget -= n;
                n
            };
            self.sink.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_that_fails_part_way_loses_only_the_lines_not_taken_and_tears_none() {
        let sink = Sink::default();
        // 7 bytes: "aaaa\n" whole and "bb" of the second line.
        let output = BreaksOnce { budget: 7, failed: false, sink: sink.clone() };
        let (writer, guard) = NonBlockingBuilder::default().flush_interval(Duration::from_secs(1)).finish(output);
        (&writer).write_all(b"aaaa\nbbbb\ncccc\n").unwrap();
        assert!(writer.flush_timeout(Duration::from_secs(10)));
        assert_eq!(writer.dropped_lines(), 1, "only cccc was not taken: {:?}", sink.text());
        (&writer).write_all(b"dddd\n").unwrap();
        assert!(writer.flush_timeout(Duration::from_secs(10)));
        drop(guard);
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..3], ["aaaa", "bbbb", "dddd"], "{text:?}");
        let summary: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(summary["dropped"], 1);
        assert_eq!(lines.len(), 4, "{text:?}");
    }

    #[test]
    fn an_idle_writer_sleeps_until_there_is_work() {
        let sink = Sink::default();
        let (writer, guard) = non_blocking(sink.clone());
        (&writer).write_all(b"one\n").unwrap();
        assert!(writer.flush_timeout(Duration::from_secs(10)));
        let wakeups = writer.shared.wakeups.load(Ordering::Relaxed);
        // An observation window, not a wait for a condition: a worker on a 10 ms timer wakes
        // about 30 times in it.
        std::thread::sleep(Duration::from_millis(300));
        let idle_wakeups = writer.shared.wakeups.load(Ordering::Relaxed) - wakeups;
        assert!(idle_wakeups <= 1, "woke {idle_wakeups} times with nothing to write");
        // And the next line still wakes it.
        (&writer).write_all(b"two\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sink.text().contains("two") {
            assert!(Instant::now() < deadline, "the line after an idle time was not written");
            std::thread::yield_now();
        }
        drop(guard);
    }

    #[test]
    fn extreme_durations_do_not_panic() {
        let sink = Sink::default();
        let (writer, guard) = NonBlockingBuilder::default()
            .flush_interval(Duration::MAX)
            .shutdown_timeout(Duration::MAX)
            .finish(sink.clone());
        (&writer).write_all(b"line\n").unwrap();
        assert!(writer.flush_timeout(Duration::MAX));
        (&writer).write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(sink.text(), "line\nlast\n");
    }

    #[test]
    fn lines_after_shutdown_are_written_or_counted() {
        let sink = Sink::default();
        let (writer, guard) = non_blocking(sink.clone());
        (&writer).write_all(b"before\n").unwrap();
        drop(guard);
        (&writer).write_all(b"after, a longer line\n").unwrap();
        (&writer).write_all(b"short\n").unwrap();
        // Each line once, whole: the buffer the lines go through holds nothing of the last.
        assert_eq!(sink.text(), "before\nafter, a longer line\nshort\n", "written at once, by the caller");

        struct Refuses;
        impl Write for Refuses {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = non_blocking(Refuses);
        drop(guard);
        (&writer).write_all(b"lost\n").unwrap();
        assert_eq!(writer.dropped_lines(), 1);
    }

    #[test]
    fn an_output_stuck_past_the_shutdown_timeout_loses_nothing_uncounted() {
        // The output blocks until released: the worker is stuck in its first write.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let _ = self.0.recv();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = NonBlockingBuilder::default()
            .flush_interval(Duration::from_micros(100))
            .shutdown_timeout(Duration::from_millis(20))
            .finish(Stuck(stuck));
        (&writer).write_all(b"taken by the stuck write\n").unwrap();
        // Wait until the worker holds that line, so the next two stay buffered.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !writer.shared.lock().writing {
            assert!(Instant::now() < deadline, "the worker never started writing");
            std::thread::yield_now();
        }
        (&writer).write_all(b"buffered one\nbuffered two\n").unwrap();
        drop(guard); // times out: the output is still stuck
        assert_eq!(writer.dropped_lines(), 2, "the buffered lines are counted");
        (&writer).write_all(b"after\n").unwrap();
        assert_eq!(writer.dropped_lines(), 3, "a line after a stuck shutdown is counted too");
        drop(release);
    }
}
