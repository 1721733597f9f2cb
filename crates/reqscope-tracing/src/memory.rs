use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// An in-memory writer for tests: every line the layer writes is kept and can be read back.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let logs = reqscope_tracing::MemoryWriter::new();
/// let subscriber = tracing_subscriber::registry()
///     .with(reqscope_tracing::LogLayer::new().with_writer(logs.clone()));
/// tracing::subscriber::with_default(subscriber, || tracing::info!(n = 1, "hi"));
/// let line = &logs.json_lines()[0];
/// assert_eq!(line["message"], "hi");
/// assert_eq!(line["n"], 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryWriter {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl MemoryWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }

    /// Every line parsed as JSON.
    ///
    /// # Panics
    ///
    /// When a line is not valid JSON — which is what a test wants to know.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
            .collect()
    }

    /// Forgets everything written so far.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl io::Write for &MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for MemoryWriter {
    type Writer = &'a MemoryWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}
