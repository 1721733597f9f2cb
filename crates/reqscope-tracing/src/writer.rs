//! A non-blocking, bounded, lossy-but-counting line writer.
//!
//! Lines are appended to a shared buffer under a lock held only for a `memcpy`; one worker
//! thread swaps the buffer out and writes it in one call every flush interval (10 ms by
//! default), or at once when 64 KiB are waiting or a flush is asked for. Callers never wake
//! the worker per line: a wake-up is a system call and, on a busy core, a context switch —
//! far more than formatting the line. When the output cannot keep up (a full pipe, a
//! stalled terminal), the buffer stops growing at its limit: new lines are dropped and
//! counted, requests never wait, and once output moves again a summary line reports how many
//! were lost. Lines the output refuses (a write error) are counted the same way, and a
//! failing output is retried with a growing pause (up to 1 s) as new lines arrive.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

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
}

impl Default for NonBlockingBuilder {
    fn default() -> Self {
        NonBlockingBuilder {
            buffer_limit: 8 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(5),
            flush_interval: Duration::from_millis(10),
        }
    }
}

impl NonBlockingBuilder {
    /// Bytes that may wait for the output before lines are dropped (default 8 MiB). Memory use
    /// is bounded by about twice this: one buffer filling while the other is written.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes.max(1);
        self
    }

    /// The longest a line waits before it is written (default 10 ms). Shorter means more
    /// write calls; a burst of 64 KiB is written at once regardless.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval.max(Duration::from_micros(100));
        self
    }

    /// How long dropping the guard waits for buffered lines to be written (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
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
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            limit: self.buffer_limit,
            wake_at: (64 * 1024).min(self.buffer_limit / 2).max(1),
            interval: self.flush_interval,
            dropped: AtomicU64::new(0),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("reqscope-log-writer".into())
            .spawn(move || worker_shared.run(output))
            .ok();
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
}

struct State {
    buf: Vec<u8>,
    pending_drops: u64,
    writing: bool,
    failing: bool,
    /// Write now: a flush was asked for, or the buffer passed `wake_at`.
    urgent: bool,
    shutdown: bool,
}

/// The longest pause between retries of an output that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run<T: Write>(&self, mut output: T) {
        let mut spare = Vec::new();
        let mut backoff = Duration::ZERO;
        let mut last_write = Instant::now();
        loop {
            let drops = {
                let mut state = self.lock();
                loop {
                    // A failing output is retried only when new lines arrive, never in a spin.
                    let has_work = !state.buf.is_empty() || (state.pending_drops > 0 && !state.failing);
                    let since = last_write.elapsed();
                    if has_work && (state.urgent || state.shutdown || since >= self.interval) {
                        break;
                    }
                    if !has_work && state.shutdown {
                        return;
                    }
                    let nap = if has_work { self.interval - since } else { self.interval };
                    state = self.work.wait_timeout(state, nap).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
                    if !has_work {
                        // Lines that arrived while idle are written at this wake-up.
                        last_write = Instant::now() - self.interval;
                    }
                }
                state.urgent = false;
                std::mem::swap(&mut state.buf, &mut spare);
                state.writing = true;
                std::mem::take(&mut state.pending_drops)
            };
            if !backoff.is_zero() {
                std::thread::sleep(backoff);
            }
            let written = output.write_all(&spare).is_ok();
            // Lines the output refused are lost like lines dropped for lack of room: counted.
            let lost = if written { 0 } else { spare.iter().filter(|&&b| b == b'\n').count() as u64 };
            let reported = written && (drops == 0 || output.write_all(&drop_summary(drops)).is_ok());
            let _ = output.flush();
            last_write = Instant::now();
            spare.clear();
            if spare.capacity() > self.limit {
                spare = Vec::new();
            }
            let mut state = self.lock();
            self.dropped.fetch_add(lost, Ordering::Relaxed);
            state.pending_drops += lost + if reported { 0 } else { drops };
            state.failing = !reported;
            backoff =
                if reported { Duration::ZERO } else { (backoff * 2).clamp(Duration::from_millis(10), MAX_BACKOFF) };
            state.writing = false;
            self.idle.notify_all();
        }
    }

    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.shutdown && state.buf.len() + line.len() > self.limit {
            return;
        }
        if state.buf.len() + line.len() > self.limit {
            state.pending_drops += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.buf.extend_from_slice(line);
        if state.buf.len() >= self.wake_at && !state.urgent {
            state.urgent = true;
            drop(state);
            self.work.notify_one();
        }
    }

    /// Waits until everything buffered so far is written, or `timeout` passes.
    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        state.urgent = true;
        self.work.notify_one();
        while !state.buf.is_empty() || state.writing || (state.pending_drops > 0 && !state.failing) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.idle.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

fn drop_summary(dropped: u64) -> Vec<u8> {
    let timestamp = crate::time::rfc3339(SystemTime::now());
    let timestamp = std::str::from_utf8(&timestamp).unwrap_or_default();
    format!(
        "{{\"timestamp\":\"{timestamp}\",\"level\":\"WARN\",\"target\":\"reqscope::writer\",\
         \"message\":\"log output could not keep up; lines were dropped\",\"dropped\":{dropped}}}\n"
    )
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
        self.shared.lock().shutdown = true;
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
