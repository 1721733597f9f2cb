//! The fields of a span, rendered once when they are recorded and copied into each line.

use std::sync::atomic::AtomicUsize;

/// Live spans with a JSON [`Fragment`] (JSON and Google Cloud lines): while there are none,
/// events skip the span lookup.
pub(crate) static LIVE_JSON: AtomicUsize = AtomicUsize::new(0);
/// Live spans with a pretty [`Fragment`].
pub(crate) static LIVE_PRETTY: AtomicUsize = AtomicUsize::new(0);
/// Live spans with an ECS [`Fragment`] (values as strings, for labels).
pub(crate) static LIVE_ECS: AtomicUsize = AtomicUsize::new(0);

/// The rendered fields of one span, kept in its extensions: a value per rendering that a
/// [`LogLayer`](crate::LogLayer) of the subscriber writes (two layers of one format share one;
/// JSON and Google Cloud lines share the JSON one).
#[derive(Debug, Default)]
pub(crate) struct SpanFields {
    pub(crate) json: Option<Fragment>,
    pub(crate) pretty: Option<Fragment>,
    pub(crate) ecs: Option<Fragment>,
}

/// Field values rendered in one format, one buffer for all, in the order they were recorded.
#[derive(Debug, Default)]
pub(crate) struct Fragment {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    name: &'static str,
    start: usize,
    end: usize,
}

/// For spans that have no fields of their own: nothing to write.
pub(crate) static EMPTY: Fragment = Fragment { bytes: Vec::new(), entries: Vec::new() };

impl Fragment {
    /// Adds a field, its value rendered by `render`.
    pub(crate) fn push(&mut self, name: &'static str, render: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        render(&mut self.bytes);
        self.entries.push(Entry { name, start, end: self.bytes.len() });
    }

    /// The rendered values so far, to render one more at their end; see [`Fragment::commit`].
    pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub(crate) fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Records that the bytes from `start` to the end are the value of `name`.
    pub(crate) fn commit(&mut self, name: &'static str, start: usize) {
        self.entries.push(Entry { name, start, end: self.bytes.len() });
    }

    /// Takes the values of `newer` (a later `record`): a field recorded again keeps its place
    /// with the new value, a field recorded for the first time comes last.
    pub(crate) fn update(&mut self, newer: Fragment) {
        let mut merged = Fragment::default();
        for entry in &self.entries {
            let value = match newer.value(entry.name) {
                Some(value) => value,
                None => &self.bytes[entry.start..entry.end],
            };
            merged.push(entry.name, |buf| buf.extend_from_slice(value));
        }
        for (name, value) in newer.fields() {
            if self.value(name).is_none() {
                merged.push(name, |buf| buf.extend_from_slice(value));
            }
        }
        *self = merged;
    }

    fn value(&self, name: &str) -> Option<&[u8]> {
        self.entries.iter().find(|e| e.name == name).map(|e| &self.bytes[e.start..e.end])
    }

    /// Each field's name and rendered value.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.entries.iter().map(|e| (e.name, &self.bytes[e.start..e.end]))
    }

    /// Each field's name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> {
        self.entries.iter().map(|e| e.name)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
