//! Unique keys on every line, in every format.
//!
//! A line's keys come from six places, in this order: the stamped keys ([`FieldNames`]),
//! the custom context fields, the allow-listed baggage entries (`baggage.<key>`), on access
//! lines the request headers (`header.<name>`), the fields of the spans in scope (root to
//! leaf), the event's own fields. A key is written as it is unless it is *taken*:
//!
//! - a stamped key name is always taken (even when that key is absent from this line, so that
//!   an event field `user_id` outside a request cannot pass for a stamped one); so is the
//!   name of every allow-listed baggage entry, for every other source (a `baggage.<key>`
//!   key is always the baggage's, or absent);
//! - for a custom context field, the keys of reqscope's own access and outgoing-call lines
//!   WebSocket close lines and job end lines (`status`, `grpc_status`, `duration_ms`, `bytes`,
//!   `aborted`, `url`, `parent_span_id`, `error`, `messages_received`, `messages_sent`,
//!   `outcome`, `queue_ms`, `panic`, `location`, `reason`, `sample_rate`) are taken too, so
//!   that those lines keep their meaning, and so is every `header.<name>` key;
//! - a key already written on this line is taken;
//! - for a span field, a name the event's own fields use, or a span nearer the event, is taken
//!   (the event wins, then the innermost span).
//!
//! A taken key gets its source's prefix — `fields.` for context and event fields, `span.` for
//! span fields — as many times as needed for it to be unique (`fields.fields.x` in the rare
//! case that `fields.x` is taken too). Comparisons are made on the key as rendered (escaped
//! JSON, the pretty form, or an ECS label's name), which is one-to-one with the name — except
//! for ECS labels, whose names have `.`, `*` and `\` replaced by `_` (as the ecs-logging spec
//! requires): there `a.b` and `a_b` are the same key, so the second is prefixed, and the
//! prefixes are `fields_` and `span_`.
//!
//! A format can reserve more names than the stamped ones (Google Cloud's `severity`,
//! `httpRequest`, every `logging.googleapis.com/…` key): they are taken the same way.

use std::sync::Arc;

use reqscope_core::baggage::Baggage;
use reqscope_core::redact::{REDACTED, Redaction};
use tracing::Event;

use crate::names::FieldNames;
use crate::redact::REDACTED_VALUE;
use crate::spans::Fragment;

/// How a format writes a key.
pub(crate) trait KeyStyle {
    /// Before the key: `,"` in JSON, a space in pretty lines.
    const OPEN: &'static [u8];
    /// After the key: `":` in JSON, `=` in pretty lines.
    const CLOSE: &'static [u8];
    /// The prefix of a context or event field whose key is taken, as rendered.
    const FIELD_PREFIX: &'static [u8] = b"fields.";
    /// The prefix of a span field whose key is taken, as rendered.
    const SPAN_PREFIX: &'static [u8] = b"span.";
    /// How the keys of request headers (`header.<name>`) start, as rendered.
    const HEADER_PREFIX: &'static [u8] = b"header.";
    /// Writes `name` as it appears between `OPEN` and `CLOSE`.
    fn render(buf: &mut Vec<u8>, name: &str);
    /// Whether `name` renders as its own bytes (the common case: no copy to compare it).
    fn is_plain(name: &str) -> bool;

    /// Whether `name` renders as `rendered`.
    fn renders_as(name: &str, rendered: &[u8]) -> bool {
        if Self::is_plain(name) {
            name.as_bytes() == rendered
        } else {
            let mut own = Vec::new();
            Self::render(&mut own, name);
            own == rendered
        }
    }
}

/// The keys reqscope's own lines add as event fields — the access line and the WebSocket
/// close line (target `reqscope::access`), the outgoing-call line (`reqscope::outgoing`), the
/// job end line (`reqscope::job`). A
/// custom context field never takes one of these names from them: it is renamed
/// (`fields.status`) on every line, so `status` on an access line is always the response's.
/// Every name here renders as its own bytes in every style.
const LINE_KEYS: &[&[u8]] = &[
    b"status",
    b"grpc_status",
    b"duration_ms",
    b"bytes",
    b"aborted",
    b"url",
    b"parent_span_id",
    b"error",
    b"messages_received",
    b"messages_sent",
    b"outcome",
    b"queue_ms",
    b"panic",
    b"location",
    b"reason",
    b"sample_rate",
];

/// Whether a custom context field's rendered key is taken: a stamped key or one of the keys
/// reqscope's own lines carry.
pub(crate) fn taken_by_context_field<S: KeyStyle>(reserved: &Reserved, rendered: &[u8]) -> bool {
    reserved.contains(rendered)
        || LINE_KEYS.contains(&rendered)
        // A pretty key that is not bare is quoted.
        || rendered.strip_prefix(b"\"").unwrap_or(rendered).starts_with(S::HEADER_PREFIX)
}

/// A baggage entry written on every line where the baggage has it: `key` in the baggage,
/// `name` (`baggage.<key>`) on the line.
#[derive(Debug)]
pub(crate) struct BaggageField {
    key: Box<str>,
    name: Box<str>,
}

/// The baggage fields for an allow-list of keys, each once, in the order given.
pub(crate) fn baggage_fields<K: AsRef<str>>(keys: impl IntoIterator<Item = K>) -> Arc<[BaggageField]> {
    let mut fields: Vec<BaggageField> = Vec::new();
    for key in keys {
        let key = key.as_ref();
        // A key that is not a token is in no baggage: it would only reserve a name.
        if reqscope_core::baggage::is_valid_key(key) && !fields.iter().any(|field| &*field.key == key) {
            fields.push(BaggageField { key: key.into(), name: format!("baggage.{key}").into() });
        }
    }
    fields.into()
}

/// The stamped key names (and a format's own) and the baggage fields' names, rendered in one
/// style.
#[derive(Clone, Debug)]
pub(crate) struct Reserved {
    /// The stamped names, then the baggage fields' names.
    names: Box<[Box<[u8]>]>,
    /// How many of `names` are stamped names.
    stamped: usize,
    /// Bit `n` is set when a name renders in `n` bytes: most names are cleared by one bit test.
    lengths: u128,
    /// Every key that starts with this is taken too (Google Cloud's `logging.googleapis.com/`).
    prefix: Option<&'static [u8]>,
    baggage: Arc<[BaggageField]>,
}

impl Reserved {
    pub(crate) fn new<S: KeyStyle>(names: &FieldNames) -> Self {
        Self::with_names::<S>(names.all(), None)
    }

    /// `names` taken as stamped ones, and every key that starts with `prefix`.
    pub(crate) fn with_names<S: KeyStyle>(
        names: impl IntoIterator<Item = &'static str>,
        prefix: Option<&'static [u8]>,
    ) -> Self {
        let names: Box<[Box<[u8]>]> = names
            .into_iter()
            .map(|name| {
                let mut rendered = Vec::new();
                S::render(&mut rendered, name);
                rendered.into_boxed_slice()
            })
            .collect();
        let lengths = names.iter().fold(0u128, |mask, name| mask | length_bit(name.len()));
        Reserved { stamped: names.len(), names, lengths, prefix, baggage: Arc::new([]) }
    }

    /// The same stamped names, with `baggage` written on lines and its names taken.
    pub(crate) fn with_baggage<S: KeyStyle>(self, baggage: Arc<[BaggageField]>) -> Self {
        let mut names = self.names.into_vec();
        names.truncate(self.stamped);
        for field in baggage.iter() {
            let mut rendered = Vec::new();
            S::render(&mut rendered, &field.name);
            names.push(rendered.into_boxed_slice());
        }
        let lengths = names.iter().fold(0u128, |mask, name| mask | length_bit(name.len()));
        Reserved { names: names.into_boxed_slice(), stamped: self.stamped, lengths, prefix: self.prefix, baggage }
    }

    /// The baggage fields lines carry.
    pub(crate) fn baggage(&self) -> &Arc<[BaggageField]> {
        &self.baggage
    }

    /// Whether `rendered` is a stamped key or a baggage field's.
    pub(crate) fn contains(&self, rendered: &[u8]) -> bool {
        (self.lengths & length_bit(rendered.len()) != 0 && self.names.iter().any(|name| **name == *rendered))
            || self.prefix.is_some_and(|prefix| rendered.starts_with(prefix))
    }

    pub(crate) fn contains_stamped(&self, rendered: &[u8]) -> bool {
        (self.lengths & length_bit(rendered.len()) != 0 && self.names[..self.stamped].iter().any(|n| **n == *rendered))
            || self.prefix.is_some_and(|prefix| rendered.starts_with(prefix))
    }
}

/// Writes ` baggage.<key>` and its decoded value (by `write_value`; `[redacted]` when the
/// policy says so) for each baggage field whose key `baggage` has; after the custom context
/// fields, which cannot take these names.
pub(crate) fn write_baggage<S: KeyStyle>(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    reserved: &Reserved,
    redaction: &Redaction,
    baggage: &Baggage,
    write_value: impl Fn(&mut Vec<u8>, &str),
) {
    if baggage.is_empty() {
        return;
    }
    for field in reserved.baggage.iter() {
        if let Some(value) = baggage.get(&field.key) {
            // Only a stamped name (a `FieldNames` set to `baggage.…`) can be in the way.
            write_key::<S>(buf, seen, &field.name, S::FIELD_PREFIX, |key| reserved.contains_stamped(key));
            write_value(buf, if redaction.redacts(&field.key, value) { REDACTED } else { value });
        }
    }
}

/// Names of 127 bytes and more share the last bit: they are compared in full.
fn length_bit(len: usize) -> u128 {
    1u128 << len.min(127)
}

/// The keys written so far on the line being built (positions in its buffer); reused from
/// line to line, so it allocates nothing once warm.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    keys: Vec<(usize, usize)>,
    /// Bit `len % 64` is set for each key written.
    lengths: u64,
}

impl Seen {
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.lengths = 0;
    }

    fn contains(&self, buf: &[u8], start: usize, end: usize) -> bool {
        let len = end - start;
        self.lengths & (1 << (len % 64)) != 0
            && self.keys.iter().any(|&(s, e)| e - s == len && buf[s..e] == buf[start..end])
    }

    fn insert(&mut self, start: usize, end: usize) {
        self.keys.push((start, end));
        self.lengths |= 1 << ((end - start) % 64);
    }
}

/// Writes `OPEN key CLOSE` for a field named `name`, prefixed with `prefix` until the key is
/// neither written yet on this line nor `taken` (given the key as rendered).
pub(crate) fn write_key<S: KeyStyle>(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    name: &str,
    prefix: &[u8],
    taken: impl Fn(&[u8]) -> bool,
) {
    buf.extend_from_slice(S::OPEN);
    let start = buf.len();
    S::render(buf, name);
    let mut end = buf.len();
    while seen.contains(buf, start, end) || taken(&buf[start..end]) {
        buf.splice(start..start, prefix.iter().copied());
        end += prefix.len();
    }
    seen.insert(start, end);
    buf.extend_from_slice(S::CLOSE);
}

/// Whether the event has a field (other than its message) rendered as `key`.
pub(crate) fn event_claims<S: KeyStyle>(event: &Event<'_>, key: &[u8]) -> bool {
    event.metadata().fields().iter().any(|field| {
        let name = field.name();
        name != "message" && !name.starts_with("log.") && S::renders_as(name, key)
    })
}

/// Writes the fields of the spans in scope, `spans` from the root to the event's span: a key
/// the event's own fields or a nearer span use is prefixed (see [`crate::keys`]). A field
/// whose key `redaction` makes sensitive is written `"[redacted]"`, whichever layer rendered it.
pub(crate) fn write_span_fields<S: KeyStyle>(
    buf: &mut Vec<u8>,
    seen: &mut Seen,
    reserved: &Reserved,
    redaction: &Redaction,
    event: &Event<'_>,
    spans: &[&Fragment],
) {
    for (depth, span) in spans.iter().enumerate() {
        for (name, value) in span.fields() {
            write_key::<S>(buf, seen, name, S::SPAN_PREFIX, |key| {
                reserved.contains(key)
                    || event_claims::<S>(event, key)
                    || spans[depth + 1..].iter().any(|nearer| nearer.names().any(|n| S::renders_as(n, key)))
            });
            buf.extend_from_slice(if redaction.is_sensitive_key(name) { REDACTED_VALUE } else { value });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;
    impl KeyStyle for Plain {
        const OPEN: &'static [u8] = b" ";
        const CLOSE: &'static [u8] = b"=";
        fn render(buf: &mut Vec<u8>, name: &str) {
            buf.extend_from_slice(name.as_bytes());
        }
        fn is_plain(_: &str) -> bool {
            true
        }
    }

    #[test]
    fn taken_keys_are_prefixed_until_unique() {
        let reserved = Reserved::new::<Plain>(&FieldNames::default());
        let mut buf = Vec::new();
        let mut seen = Seen::default();
        for name in ["a", "fields.a", "a", "request_id", "rate_limit_remaining", &"x".repeat(300)] {
            write_key::<Plain>(&mut buf, &mut seen, name, Plain::FIELD_PREFIX, |k| reserved.contains(k));
        }
        let text = String::from_utf8(buf).unwrap();
        let keys: Vec<&str> = text.split(' ').skip(1).map(|k| k.trim_end_matches('=')).collect();
        assert_eq!(keys[..5], ["a", "fields.a", "fields.fields.a", "fields.request_id", "fields.rate_limit_remaining"]);
        assert_eq!(keys[5].len(), 300);
    }
}
