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
    /// When a line is not a valid JSON object, or has a key twice (which a plain parse into
    /// a map would hide, keeping the last) — which is what a test wants to know.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| match serde_json::from_str::<UniqueKeys>(line) {
                Ok(UniqueKeys(object)) => serde_json::Value::Object(object),
                Err(e) => panic!("not a JSON line with unique keys ({e}): {line}"),
            })
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

/// A JSON object whose top-level keys are all different.
struct UniqueKeys(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object with unique keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueKeys(object))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn a_duplicate_key_is_reported() {
        let logs = super::MemoryWriter::new();
        (&logs).write_all(b"{\"a\":1,\"b\":{\"a\":2}}\n").unwrap();
        assert_eq!(logs.json_lines()[0]["b"]["a"], 2);
        (&logs).write_all(b"{\"a\":1,\"a\":2}\n").unwrap();
        let panic = std::panic::catch_unwind(|| logs.json_lines()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("duplicate key \"a\""), "{message}");
    }
}
