//! Typed events: a Rust type per kind of fact, named by a stable type string.
//!
//! An event's type string is what routes it (the bus dispatches on it, subscriptions can filter
//! on it) and what other tools see (it travels as the CloudEvents `type`). Tying it to the Rust
//! type with an associated constant means a producer and a consumer compiled from the same
//! definition can never disagree on it, and renaming the Rust type does not silently change the
//! wire name.
//!
//! Payloads are JSON (`application/json`) through serde: readable by any consumer, whatever its
//! language, and tolerant of added fields when the consumer's type ignores unknown ones (serde's
//! default) or gives new fields a `#[serde(default)]`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The media type of event payloads, sent as the message's `Content-Type` attribute.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A kind of event.
///
/// ```
/// use converge::event::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct MailRequested {
///     user_id: u64,
///     template: String,
/// }
///
/// impl Event for MailRequested {
///     const TYPE: &'static str = "com.example.mail.requested";
///
///     // Mails to one user go out in the order they were requested.
///     fn ordering_key(&self) -> Option<String> {
///         Some(format!("user-{}", self.user_id))
///     }
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name on the wire (CloudEvents `type`). Reverse-DNS style is recommended
    /// (`com.example.mail.requested`): globally unique without a registry, and grouped by
    /// prefix, which subscription filters can match with `hasPrefix`. Never change it once
    /// events of the type exist: consumers dispatch on it.
    const TYPE: &'static str;

    /// The CloudEvents `subject`: what the event is about within its source (an order id, a
    /// file name), so that routers and filters can select on it without parsing the payload.
    /// None by default.
    fn subject(&self) -> Option<String> {
        None
    }

    /// The Pub/Sub ordering key: events with the same key are delivered one at a time, in
    /// publish order, on subscriptions with message ordering enabled. None by default (no
    /// ordering, the most throughput).
    fn ordering_key(&self) -> Option<String> {
        None
    }
}

/// Checks a type name the way the bus does before accepting a handler or publishing: the
/// CloudEvents specification requires a non-empty `type`, and a Pub/Sub attribute value is at
/// most 1,024 bytes.
pub(crate) fn check_type_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the event type is empty");
    }
    if name.len() > converge_core::limits::MAX_ATTRIBUTE_VALUE_BYTES {
        return Err("the event type is longer than an attribute value may be (1024 bytes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert!(check_type_name("com.example.mail.requested").is_ok());
        assert!(check_type_name("").is_err());
        assert!(check_type_name(&"x".repeat(1025)).is_err());
        assert!(check_type_name(&"x".repeat(1024)).is_ok());
    }
}
