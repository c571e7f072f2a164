//! The idempotency key itself: validation, derivation along a cascade, the task-local
//! current key. Re-exported from [`crate::idempotency`], where the scheme is documented.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The message attribute the broker deduplicates publishes on (re-exported from the broker's
/// core, so the SDK and the broker can never disagree on the name).
pub use converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE;

/// The longest key accepted, in bytes. Keys travel as a Pub/Sub attribute value (1,024 bytes at
/// most), as the CloudEvents `id` and, typically, as an HTTP `Idempotency-Key` header; 256 bytes
/// leaves room for any reasonable caller-chosen key (an outbox row id, a request id, a UUID)
/// while keeping them cheap to store in the broker's deduplication index.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The UUID namespace of [`IdempotencyKey::derive`] (itself the UUID v5 of the URL
/// `https://converge.invalid/idempotency-key` in the standard URL namespace). Fixed forever:
/// changing it would change every derived key and defeat deduplication across a deploy.
pub const DERIVATION_NAMESPACE: Uuid = Uuid::from_u128(0x0e12_dcfc_a3c9_5897_8efd_9095_1be4_2813);

/// Why a string is not an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdempotencyKey {
    /// The key is empty (the broker treats an empty key as no key at all).
    #[error("idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_IDEMPOTENCY_KEY_BYTES`].
    #[error("idempotency key is {len} bytes; the limit is {MAX_IDEMPOTENCY_KEY_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The key holds a character outside visible ASCII (`!` to `~`).
    #[error(
        "idempotency key has {character:?} at byte {position}; only visible ASCII ('!' to '~') is allowed"
    )]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset in the key.
        position: usize,
    },
}

/// A validated idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes of visible ASCII.
///
/// Visible ASCII only, because a key is copied verbatim into places with stricter rules than a
/// Pub/Sub attribute (HTTP headers, log fields, URLs, database columns) and must compare equal
/// everywhere: no whitespace to be trimmed, no Unicode to be normalised.
///
/// ```
/// use converge::idempotency::IdempotencyKey;
///
/// let order: IdempotencyKey = "order-1234".parse()?;
/// // The first and second events a handler emits for this order, on every retry alike.
/// assert_eq!(order.derive(0), order.derive(0));
/// assert_ne!(order.derive(0), order.derive(1));
/// # Ok::<(), converge::idempotency::InvalidIdempotencyKey>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

tokio::task_local! {
    static CURRENT: IdempotencyKey;
}

impl IdempotencyKey {
    /// A fresh random key (a UUID v4), for an intent that starts here: a user request, a
    /// scheduled job. When the intent already has an identity (a request's own
    /// `Idempotency-Key`, an outbox row), use that instead, so a retry of the *caller* maps to
    /// the same key.
    #[allow(clippy::new_without_default)] // a random value is not a default
    pub fn new() -> Self {
        Self::from_uuid(Uuid::new_v4())
    }

    /// Checks `key` and wraps it.
    pub fn parse(key: impl Into<String>) -> Result<Self, InvalidIdempotencyKey> {
        let key = key.into();
        if key.is_empty() {
            return Err(InvalidIdempotencyKey::Empty);
        }
        if let Some((position, character)) = key.char_indices().find(|(_, c)| !c.is_ascii_graphic())
        {
            return Err(InvalidIdempotencyKey::InvalidCharacter {
                character,
                position,
            });
        }
        if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(InvalidIdempotencyKey::TooLong { len: key.len() });
        }
        Ok(Self(key))
    }

    /// The key spelled as a UUID in its hyphenated lower-case form (always valid).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid.hyphenated().to_string())
    }

    /// The key of the `position`-th effect (0, 1, 2, …) of the intent this key names; see the
    /// module documentation for the exact scheme. Deterministic: a retried handler that emits
    /// its events in the same order derives the same keys, which is what lets the broker drop
    /// the repeats.
    pub fn derive(&self, position: u32) -> Self {
        let mut name = Vec::with_capacity(self.0.len() + 5);
        name.extend_from_slice(self.0.as_bytes());
        name.push(0);
        name.extend_from_slice(&position.to_be_bytes());
        Self::from_uuid(Uuid::new_v5(&DERIVATION_NAMESPACE, &name))
    }

    /// A key for a CloudEvent that arrived without a converge key: CloudEvents guarantees that
    /// `source` and `id` together name one distinct event, so they name its intent as well.
    /// (UUID v5 in [`DERIVATION_NAMESPACE`] over `source`, a zero byte, `id`, with a leading
    /// `0xff` byte so these names never coincide with those of [`IdempotencyKey::derive`].)
    pub fn from_cloud_event(source: &str, id: &str) -> Self {
        let mut name = Vec::with_capacity(source.len() + id.len() + 2);
        name.push(0xff);
        name.extend_from_slice(source.as_bytes());
        name.push(0);
        name.extend_from_slice(id.as_bytes());
        Self::from_uuid(Uuid::new_v5(&DERIVATION_NAMESPACE, &name))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The key of the event whose handler is running on this task, if any. Set by the event
    /// bus around each handler (and by [`IdempotencyKey::scope`]), so that outgoing calls made
    /// anywhere below a handler can reuse the intent's key.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as [`IdempotencyKey::current`]. Scopes nest: the innermost
    /// wins, and the outer key is current again once `future` completes.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidIdempotencyKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<Uuid> for IdempotencyKey {
    fn from(uuid: Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

/// Serialized as a plain string, so keys can sit in JSON payloads and outbox rows.
impl Serialize for IdempotencyKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Validated on the way in: a stored key that is not a key is an error, not a surprise later.
impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn namespace_is_the_documented_v5_of_its_url() {
        let url = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://converge.invalid/idempotency-key",
        );
        // The constant is fixed forever; this test tells whoever edits it what it stands for.
        assert_eq!(DERIVATION_NAMESPACE, url, "expected {url}");
    }

    #[test]
    fn validation() {
        assert_eq!(IdempotencyKey::parse(""), Err(InvalidIdempotencyKey::Empty));
        assert_eq!(
            IdempotencyKey::parse("a b"),
            Err(InvalidIdempotencyKey::InvalidCharacter {
                character: ' ',
                position: 1
            })
        );
        assert_eq!(
            IdempotencyKey::parse("clé"),
            Err(InvalidIdempotencyKey::InvalidCharacter {
                character: 'é',
                position: 2
            })
        );
        assert!(matches!(
            IdempotencyKey::parse("x\n"),
            Err(InvalidIdempotencyKey::InvalidCharacter { position: 1, .. })
        ));
        assert_eq!(
            IdempotencyKey::parse("k".repeat(257)),
            Err(InvalidIdempotencyKey::TooLong { len: 257 })
        );
        let longest = "k".repeat(256);
        assert_eq!(
            IdempotencyKey::parse(longest.clone()).unwrap().as_str(),
            longest
        );
        assert_eq!(
            IdempotencyKey::parse("order/42:retry~!").unwrap().as_str(),
            "order/42:retry~!"
        );
    }

    #[test]
    fn new_keys_are_valid_and_distinct() {
        let a = IdempotencyKey::new();
        let b = IdempotencyKey::new();
        assert_ne!(a, b);
        assert_eq!(IdempotencyKey::parse(a.as_str()), Ok(a.clone()));
        assert_eq!(a.as_str().len(), 36);
    }

    /// Pinned values: derived keys must never change between versions, or a retry that spans
    /// an upgrade would publish duplicates.
    #[test]
    fn derivation_is_pinned() {
        let parent = IdempotencyKey::parse("order-1234").unwrap();
        let table = [
            (0, parent.derive(0)),
            (1, parent.derive(1)),
            (u32::MAX, parent.derive(u32::MAX)),
        ];
        for (position, key) in &table {
            let mut name = b"order-1234\0".to_vec();
            name.extend_from_slice(&position.to_be_bytes());
            let expected = Uuid::new_v5(&DERIVATION_NAMESPACE, &name);
            assert_eq!(key.as_str(), expected.hyphenated().to_string());
            assert_eq!(Uuid::parse_str(key.as_str()).unwrap().get_version_num(), 5);
        }
        assert_eq!(
            parent.derive(0).as_str(),
            "dad6b76e-cdc7-5506-9809-e8fb04600cbb",
            "derivation changed"
        );
        // Derivation composes: the grandchild depends on the whole path.
        assert_ne!(parent.derive(0).derive(1), parent.derive(1).derive(0));
    }

    #[test]
    fn cloud_event_keys_do_not_collide_with_derived_ones() {
        let a = IdempotencyKey::from_cloud_event("/signup", "1");
        assert_eq!(a, IdempotencyKey::from_cloud_event("/signup", "1"));
        assert_ne!(a, IdempotencyKey::from_cloud_event("/signup", "2"));
        assert_ne!(a, IdempotencyKey::from_cloud_event("/signup/", "1"));
        assert_ne!(
            IdempotencyKey::from_cloud_event("a", "b"),
            IdempotencyKey::from_cloud_event("a\0b", "")
        );
    }

    #[test]
    fn serde_round_trip_validates() {
        let key = IdempotencyKey::parse("abc").unwrap();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, "\"abc\"");
        assert_eq!(serde_json::from_str::<IdempotencyKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<IdempotencyKey>("\"\"").is_err());
    }

    #[tokio::test]
    async fn current_key_is_scoped() {
        assert_eq!(IdempotencyKey::current(), None);
        let outer = IdempotencyKey::parse("outer").unwrap();
        let inner = IdempotencyKey::parse("inner").unwrap();
        let seen = outer
            .clone()
            .scope(async {
                let before = IdempotencyKey::current();
                let nested = inner
                    .clone()
                    .scope(async { IdempotencyKey::current() })
                    .await;
                let after = IdempotencyKey::current();
                (before, nested, after)
            })
            .await;
        assert_eq!(seen, (Some(outer.clone()), Some(inner), Some(outer)));
        assert_eq!(IdempotencyKey::current(), None);
    }

    proptest! {
        #[test]
        fn derive_is_deterministic_valid_and_injective(
            parent in "[!-~]{1,256}",
            other in "[!-~]{1,256}",
            a in any::<u32>(),
            b in any::<u32>(),
        ) {
            let parent = IdempotencyKey::parse(parent).unwrap();
            let other = IdempotencyKey::parse(other).unwrap();
            let derived = parent.derive(a);
            prop_assert_eq!(&derived, &parent.clone().derive(a));
            prop_assert_eq!(IdempotencyKey::parse(derived.as_str()), Ok(derived.clone()));
            prop_assert_eq!(a == b, derived == parent.derive(b));
            prop_assert_eq!(parent == other, derived == other.derive(a));
        }
    }
}
