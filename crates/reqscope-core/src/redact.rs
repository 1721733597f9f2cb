//! Which values are secret or personal, and so never written where they could be read later:
//! a policy that log layers and error reporters apply when they format a value, leaving the
//! values the program uses untouched.
//!
//! ```
//! use reqscope_core::redact::{REDACTED, Redaction};
//!
//! let redaction = Redaction::new() // the default keys: password, token, api_key, …
//!     .redact_keys(["email"])
//!     .redact_values(|_key: &str, value: &str| value.starts_with("eyJ")); // anything like a JWT
//! assert!(redaction.is_sensitive_key("password"));
//! assert!(redaction.is_sensitive_key("DB_Password")); // any case, and as a suffix
//! assert!(redaction.is_sensitive_key("x-api-key")); // `-`, `_` and `.` are alike
//! assert!(redaction.is_sensitive_key("user.email"));
//! assert!(!redaction.is_sensitive_key("rows"));
//! assert!(redaction.redacts_value("note", "eyJhbGciOi…"));
//! assert_eq!(REDACTED, "[redacted]");
//! ```
//!
//! **Keys.** A key is sensitive when it ends with one of the policy's keys, compared without
//! regard to ASCII case and with `-`, `_` and `.` treated as the same character: with the
//! key `password`, `password`, `Password`, `db_password`, `dbPassword` and `user.password` are
//! all sensitive; `passwords` and `password_hint` are not. The default set is
//! [`DEFAULT_KEYS`]; [`Redaction::redact_keys`] adds to it, [`Redaction::none`] starts from
//! nothing. The check allocates nothing and, for most keys that match nothing, ends at the
//! key's last byte.
//!
//! **Values.** A [`RedactValue`] hook sees each value that no key made sensitive, as text,
//! with its key, and may redact it too: card numbers, tokens in free text, whatever the key.
//!
//! A redacted value is written as [`REDACTED`], `"[redacted]"`, in place of the value: the key
//! stays, so a reader sees that there was one.

use std::fmt;
use std::sync::Arc;

/// What a redacted value is written as.
pub const REDACTED: &str = "[redacted]";

/// The keys [`Redaction::new`] starts with: credentials, and the headers that carry them.
pub const DEFAULT_KEYS: [&str; 14] = [
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "cookie",
    "set_cookie",
    "api_key",
    "apikey",
    "client_secret",
    "private_key",
];

/// Decides, for each value written, whether it is written as [`REDACTED`]; see the
/// [module docs](self).
///
/// Cheap to clone (one shared, immutable set). The [default](Redaction::default) is
/// [`Redaction::new`]: the [`DEFAULT_KEYS`], no value hook.
#[derive(Clone)]
pub struct Redaction {
    keys: Arc<Keys>,
    hook: Option<Arc<dyn RedactValue>>,
}

/// A hook that redacts values by what they are, whatever their key. Closures
/// `Fn(&str, &str) -> bool` (key, value) are hooks.
pub trait RedactValue: Send + Sync + 'static {
    /// Whether the value of the field `key`, as text (a string as it is, a number in
    /// decimal, a `Debug` or `Display` value as formatted), is to be written as
    /// [`REDACTED`].
    fn redact(&self, key: &str, value: &str) -> bool;
}

impl<F> RedactValue for F
where
    F: Fn(&str, &str) -> bool + Send + Sync + 'static,
{
    fn redact(&self, key: &str, value: &str) -> bool {
        self(key, value)
    }
}

/// The keys of a policy, folded, each once, none a suffix of another (it would match nothing
/// more), and which bytes end them: most keys that match none are told by their last two
/// bytes, in one table lookup.
#[derive(Clone)]
struct Keys {
    /// As given, for `Debug` and [`Redaction::keys`].
    given: Vec<Box<str>>,
    folded: Vec<Box<[u8]>>,
    /// Row `a % 64`, bit `b % 64` is set when a folded key ends with the bytes `b`, `a` (or
    /// with `a` alone: then the whole row is set).
    ends: [u64; 64],
}

impl Default for Keys {
    fn default() -> Self {
        Keys { given: Vec::new(), folded: Vec::new(), ends: [0; 64] }
    }
}

/// ASCII case and the three separators folded: `A` → `a`, `-` and `.` → `_`.
#[inline]
fn fold(byte: u8) -> u8 {
    match byte {
        b'-' | b'.' => b'_',
        _ => byte.to_ascii_lowercase(),
    }
}

impl Keys {
    fn add(&mut self, key: &str) {
        // A key of separators only (or none) would make every key, or none, sensitive.
        if !key.bytes().any(|b| !matches!(b, b'-' | b'_' | b'.')) {
            return;
        }
        let folded: Box<[u8]> = key.bytes().map(fold).collect();
        if self.folded.iter().any(|k| folded.ends_with(k)) {
            // `access_token` after `token`: already covered.
            if !self.given.iter().any(|g| **g == *key) {
                self.given.push(key.into());
            }
            return;
        }
        // `token` after `access_token`: the longer one is covered now.
        self.folded.retain(|k| !k.ends_with(&folded));
        self.folded.push(folded);
        self.given.push(key.into());
        self.ends = [0; 64];
        for k in &self.folded {
            match **k {
                [.., before, last] => self.ends[usize::from(last & 63)] |= 1 << (before & 63),
                [last] => self.ends[usize::from(last & 63)] = u64::MAX,
                [] => {}
            }
        }
    }

    #[inline]
    fn matches(&self, key: &[u8]) -> bool {
        let row = match *key {
            [.., before, last] => {
                let row = self.ends[usize::from(fold(last) & 63)];
                if row & (1 << (fold(before) & 63)) == 0 {
                    return false;
                }
                row
            }
            [last] => self.ends[usize::from(fold(last) & 63)],
            [] => return false,
        };
        row != 0 && self.folded.iter().any(|k| ends_with_folded(key, k))
    }
}

/// Whether `key`, folded, ends with `folded`; compared from the end, where keys differ most.
#[inline]
fn ends_with_folded(key: &[u8], folded: &[u8]) -> bool {
    key.len() >= folded.len() && key.iter().rev().zip(folded.iter().rev()).all(|(&a, &b)| fold(a) == b)
}

impl Redaction {
    /// The [`DEFAULT_KEYS`], no value hook.
    pub fn new() -> Self {
        Self::none().redact_keys(DEFAULT_KEYS)
    }

    /// Nothing redacted: no key, no hook. Add keys with [`Redaction::redact_keys`].
    pub fn none() -> Self {
        Redaction { keys: Arc::new(Keys::default()), hook: None }
    }

    /// Adds `keys` to the sensitive keys (matched as the [module docs](self) say). A key made
    /// only of `-`, `_` and `.` (or empty) would match every key or none, and is left out;
    /// [`is_valid_key`] tells which keys are plain field names.
    pub fn redact_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut set = Keys::clone(&self.keys);
        for key in keys {
            set.add(key.as_ref());
        }
        self.keys = Arc::new(set);
        self
    }

    /// Redacts the values `hook` says are sensitive, besides those of sensitive keys.
    /// Replaces an earlier hook.
    pub fn redact_values(mut self, hook: impl RedactValue) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Whether the values of fields named `key` are written as [`REDACTED`].
    #[inline]
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        self.keys.matches(key.as_bytes())
    }

    /// Whether there is a value hook: without one, values need not be formatted to be judged.
    #[inline]
    pub fn has_value_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// Whether the value hook redacts `value` (as text) of the field `key`; `false` without a
    /// hook.
    #[inline]
    pub fn redacts_value(&self, key: &str, value: &str) -> bool {
        self.hook.as_ref().is_some_and(|hook| hook.redact(key, value))
    }

    /// Whether the field `key` with `value` (as text) is written as [`REDACTED`]: its key is
    /// sensitive or the hook says so.
    pub fn redacts(&self, key: &str, value: &str) -> bool {
        self.is_sensitive_key(key) || self.redacts_value(key, value)
    }

    /// The sensitive keys, as given (the defaults first, unless the policy started from
    /// [`Redaction::none`]).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.given.iter().map(|key| &**key)
    }
}

impl Default for Redaction {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redaction").field("keys", &self.keys.given).field("value_hook", &self.hook.is_some()).finish()
    }
}

/// Whether `key` is a plain field name to redact: 1 to 128 bytes of ASCII letters, digits,
/// `_`, `-` and `.`, at least one of them a letter or digit (`email`, `card_number`,
/// `x-session-id`). For checking keys from configuration; [`Redaction::redact_keys`] takes
/// any key with something besides separators.
pub fn is_valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && key.bytes().any(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_key_matches_in_every_spelling() {
        let redaction = Redaction::new();
        for key in DEFAULT_KEYS {
            let upper = key.to_ascii_uppercase();
            let dashed = key.replace('_', "-");
            let dotted = key.replace('_', ".");
            for spelling in [key.to_owned(), upper, dashed, dotted, format!("db_{key}"), format!("X-{key}")] {
                assert!(redaction.is_sensitive_key(&spelling), "{spelling}");
            }
        }
        for key in ["dbPassword", "userPassword", "accessToken", "x-api-key", "X-Api-Key", "apiKey", "Set-Cookie"] {
            assert!(redaction.is_sensitive_key(key), "{key}");
        }
    }

    #[test]
    fn other_keys_do_not_match() {
        let redaction = Redaction::new();
        for key in ["", "rows", "table", "passwords", "password_hint", "tokens", "token_count", "user_id", "cookies"] {
            assert!(!redaction.is_sensitive_key(key), "{key}");
        }
        assert!(!Redaction::none().is_sensitive_key("password"));
    }

    #[test]
    fn added_keys_extend_the_set_and_cover_each_other() {
        let redaction = Redaction::none().redact_keys(["card_number", "token", "access-token", "-", "", "Email"]);
        assert!(redaction.is_sensitive_key("CARD.NUMBER"));
        assert!(redaction.is_sensitive_key("user_email"));
        assert!(redaction.is_sensitive_key("refresh_token"));
        assert!(!redaction.is_sensitive_key("card"));
        assert!(!redaction.is_sensitive_key("any_"), "a key of separators is left out");
        assert_eq!(redaction.keys().collect::<Vec<_>>(), ["card_number", "token", "access-token", "Email"]);
        let short = Redaction::none().redact_keys(["x", "pin"]);
        assert!(short.is_sensitive_key("x") && short.is_sensitive_key("a-X") && short.is_sensitive_key("PIN"));
        assert!(!short.is_sensitive_key("xa") && !short.is_sensitive_key("in"));
        let longer_first = Redaction::none().redact_keys(["access_token", "token"]);
        assert!(longer_first.is_sensitive_key("id_token"));
        assert_eq!(longer_first.keys.folded.len(), 1);
    }

    #[test]
    fn the_value_hook_sees_key_and_text() {
        let redaction =
            Redaction::none().redact_values(|key: &str, value: &str| key == "note" && value.contains("4111"));
        assert!(redaction.redacts_value("note", "card 4111 1111"));
        assert!(!redaction.redacts_value("other", "card 4111 1111"));
        assert!(redaction.redacts("note", "4111"));
        assert!(!Redaction::new().redacts_value("note", "4111"));
        assert!(format!("{redaction:?}").contains("value_hook: true"));
    }

    #[test]
    fn valid_keys() {
        for key in ["email", "card_number", "x-session-id", "a.b", "_x"] {
            assert!(is_valid_key(key), "{key}");
        }
        for key in ["", "-", "._", "bad key", "é", "a=b", &"x".repeat(129)] {
            assert!(!is_valid_key(key), "{key}");
        }
    }
}
