//! The limits of the real Pub/Sub service, checked on every request.
//!
//! converge enforces the same limits as the service it stands in for, so that code that works
//! against converge also works against Google Cloud: a publish that Pub/Sub would refuse is
//! refused here too, with `INVALID_ARGUMENT` and a message that names the field and the limit.
//! Both API surfaces (gRPC and REST) call these functions, so the rules live in one place.
//!
//! Sizes are counted in bytes of UTF-8 (as the service counts them), label lengths in
//! characters (as the label rules are written).

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::NewMessage;
use crate::retry::format_label_duration;
use crate::subscription::{
    DEFAULT_ACK_DEADLINE, DEFAULT_EXPIRATION_TTL, DEFAULT_SUBSCRIPTION_RETENTION,
};

/// The most messages one publish request may carry.
pub const MAX_PUBLISH_MESSAGES: usize = 1000;
/// The most bytes of data, attributes and ordering keys one publish request may carry.
pub const MAX_PUBLISH_REQUEST_BYTES: usize = 10_000_000;
/// The most attributes one message may carry.
pub const MAX_ATTRIBUTES: usize = 100;
/// The longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
/// The longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// The longest ordering key, in bytes.
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Attribute keys starting with this are reserved for Google.
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "goog";
/// The reserved prefix that is nevertheless accepted: the official client libraries publish
/// attributes such as `googclient_traceparent` (OpenTelemetry context) themselves, so the
/// service must accept them.
pub const CLIENT_ATTRIBUTE_PREFIX: &str = "googclient_";

/// The shortest ack deadline a subscription may set.
pub const MIN_ACK_DEADLINE: Duration = Duration::from_secs(10);
/// The longest ack deadline, for subscriptions and for ModifyAckDeadline.
pub const MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);
/// The shortest message retention of a topic or a subscription.
pub const MIN_RETENTION: Duration = Duration::from_secs(10 * 60);
/// The longest message retention of a topic or a subscription.
pub const MAX_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
/// The shortest expiration TTL of a subscription.
pub const MIN_EXPIRATION_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most messages one pull response returns, whatever the request asks for.
pub const MAX_PULL_MESSAGES: usize = 1000;
/// The most labels one resource may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label key or value, in characters.
pub const MAX_LABEL_CHARS: usize = 63;

/// How much of an offending key an error message quotes; keys can be 1 KB long.
const QUOTE_CHARS: usize = 32;

/// Validates the messages of one publish request against the service's limits: 1 to 1000
/// messages, at most 10,000,000 bytes in all, each message with data or an attribute, at most
/// 100 attributes with keys of 1 to 256 bytes (not starting with `goog`, except `googclient_`)
/// and values of at most 1024 bytes, ordering keys of at most 1024 bytes, one ordering key for
/// the whole request.
///
/// When several attributes of a message are invalid, the error names the smallest key, so the
/// same request always gets the same answer.
pub fn validate_publish(messages: &[NewMessage]) -> Result<()> {
    let Some(first) = messages.first() else {
        return Err(Error::invalid(
            "Publish request has no messages; at least 1 is required",
        ));
    };
    if messages.len() > MAX_PUBLISH_MESSAGES {
        return Err(Error::invalid(format!(
            "Publish request has {} messages; the limit is {MAX_PUBLISH_MESSAGES}",
            messages.len()
        )));
    }
    let mut total_bytes = 0usize;
    for (index, message) in messages.iter().enumerate() {
        validate_message(index, message)?;
        if message.ordering_key != first.ordering_key {
            return Err(Error::invalid(format!(
                "messages[{index}] has ordering key \"{}\" but messages[0] has \"{}\": all \
                 messages of one publish request must share one ordering key",
                quote(&message.ordering_key),
                quote(&first.ordering_key)
            )));
        }
        total_bytes += message_bytes(message);
    }
    if total_bytes > MAX_PUBLISH_REQUEST_BYTES {
        return Err(Error::invalid(format!(
            "Publish request is {total_bytes} bytes; the limit is {MAX_PUBLISH_REQUEST_BYTES}"
        )));
    }
    Ok(())
}

/// The bytes a message counts against the request limit: data, attribute keys and values,
/// ordering key (the same sum as [`crate::StoredMessage::size`]).
pub fn message_bytes(message: &NewMessage) -> usize {
    message.data.len()
        + message
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + message.ordering_key.len()
}

fn validate_message(index: usize, message: &NewMessage) -> Result<()> {
    if message.data.is_empty() && message.attributes.is_empty() {
        return Err(Error::invalid(format!(
            "messages[{index}] has neither data nor attributes; a message needs non-empty data \
             or at least one attribute"
        )));
    }
    if message.attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "messages[{index}] has {} attributes; the limit is {MAX_ATTRIBUTES}",
            message.attributes.len()
        )));
    }
    let violation = message
        .attributes
        .iter()
        .filter_map(|(key, value)| attribute_violation(key, value).map(|why| (key, why)))
        .min_by(|(a, _), (b, _)| a.cmp(b));
    if let Some((_, why)) = violation {
        return Err(Error::invalid(format!("{why} (in messages[{index}])")));
    }
    if message.ordering_key.len() > MAX_ORDERING_KEY_BYTES {
        return Err(Error::invalid(format!(
            "Ordering key \"{}\" of messages[{index}] is {} bytes; the limit is \
             {MAX_ORDERING_KEY_BYTES}",
            quote(&message.ordering_key),
            message.ordering_key.len()
        )));
    }
    Ok(())
}

/// What is wrong with one attribute, if anything.
fn attribute_violation(key: &str, value: &str) -> Option<String> {
    if key.is_empty() {
        return Some("Attribute key is empty; keys are 1 to 256 bytes".to_string());
    }
    if key.len() > MAX_ATTRIBUTE_KEY_BYTES {
        return Some(format!(
            "Attribute key \"{}\" is {} bytes; the limit is {MAX_ATTRIBUTE_KEY_BYTES}",
            quote(key),
            key.len()
        ));
    }
    if key.starts_with(RESERVED_ATTRIBUTE_PREFIX) && !key.starts_with(CLIENT_ATTRIBUTE_PREFIX) {
        return Some(format!(
            "Attribute key \"{}\" is reserved: keys starting with \"{RESERVED_ATTRIBUTE_PREFIX}\" \
             belong to Google (only \"{CLIENT_ATTRIBUTE_PREFIX}\" keys are accepted)",
            quote(key)
        ));
    }
    if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
        return Some(format!(
            "Value of attribute \"{}\" is {} bytes; the limit is {MAX_ATTRIBUTE_VALUE_BYTES}",
            quote(key),
            value.len()
        ));
    }
    None
}

/// The ack deadline of a subscription: 10 to 600 seconds, 0 for the default of 10 seconds.
pub fn ack_deadline(seconds: i64) -> Result<Duration> {
    if seconds == 0 {
        return Ok(DEFAULT_ACK_DEADLINE);
    }
    let (min, max) = (MIN_ACK_DEADLINE.as_secs(), MAX_ACK_DEADLINE.as_secs());
    match u64::try_from(seconds) {
        Ok(s) if (min..=max).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(Error::invalid(format!(
            "Invalid ack_deadline_seconds {seconds}: must be between {min} and {max} (or 0 for \
             the default of {})",
            DEFAULT_ACK_DEADLINE.as_secs()
        ))),
    }
}

/// The deadline of a ModifyAckDeadline request: 0 to 600 seconds, where 0 is a nack (the
/// message may be delivered again at once, subject to the retry schedule).
pub fn modify_ack_deadline(seconds: i64) -> Result<Duration> {
    let max = MAX_ACK_DEADLINE.as_secs();
    match u64::try_from(seconds) {
        Ok(s) if s <= max => Ok(Duration::from_secs(s)),
        _ => Err(Error::invalid(format!(
            "Invalid ack_deadline_seconds {seconds}: must be between 0 and {max}"
        ))),
    }
}

/// The message retention of a subscription: 10 minutes to 31 days; unset (or zero, which
/// proto3 JSON mappings produce for an unset field) means the default of 7 days.
pub fn subscription_retention(retention: Option<Duration>) -> Result<Duration> {
    match retention.filter(|d| !d.is_zero()) {
        None => Ok(DEFAULT_SUBSCRIPTION_RETENTION),
        Some(d) => check_retention("message_retention_duration", d),
    }
}

/// The message retention of a topic: 10 minutes to 31 days; unset (or zero) means `None`, no
/// topic retention (messages are then kept only as the subscriptions need them).
pub fn topic_retention(retention: Option<Duration>) -> Result<Option<Duration>> {
    retention
        .filter(|d| !d.is_zero())
        .map(|d| check_retention("message_retention_duration", d))
        .transpose()
}

fn check_retention(field: &str, d: Duration) -> Result<Duration> {
    if (MIN_RETENTION..=MAX_RETENTION).contains(&d) {
        return Ok(d);
    }
    Err(Error::invalid(format!(
        "Invalid {field} {}: must be between {} and {}",
        format_label_duration(d),
        format_label_duration(MIN_RETENTION),
        format_label_duration(MAX_RETENTION)
    )))
}

/// The TTL of a subscription's `expiration_policy` *when the policy is present*: at least
/// 1 day. An unset (or zero) TTL in a present policy means the subscription never expires:
/// `Ok(None)`.
///
/// A subscription *without* an expiration policy expires after 31 days without activity; use
/// [`expiration_policy`] to get that distinction right.
pub fn expiration_ttl(ttl: Option<Duration>) -> Result<Option<Duration>> {
    let Some(ttl) = ttl.filter(|d| !d.is_zero()) else {
        return Ok(None);
    };
    if ttl < MIN_EXPIRATION_TTL {
        return Err(Error::invalid(format!(
            "Invalid expiration_policy.ttl {}: the minimum is {}",
            format_label_duration(ttl),
            format_label_duration(MIN_EXPIRATION_TTL)
        )));
    }
    Ok(Some(ttl))
}

/// A subscription's expiration after inactivity, from its optional `expiration_policy`
/// (given as the policy's optional TTL): no policy = the default of 31 days; a policy without
/// TTL = never (`None`); otherwise [`expiration_ttl`].
pub fn expiration_policy(policy: Option<Option<Duration>>) -> Result<Option<Duration>> {
    match policy {
        None => Ok(Some(DEFAULT_EXPIRATION_TTL)),
        Some(ttl) => expiration_ttl(ttl),
    }
}

/// Checks that a subscription does not expire before the messages it retains would: an
/// expiration TTL shorter than the message retention would delete the subscription, and its
/// backlog, while a message was still meant to be kept. The Pub/Sub console states this rule;
/// callers that prefer the letter of the API reference may skip it.
pub fn expiration_covers_retention(ttl: Option<Duration>, retention: Duration) -> Result<()> {
    match ttl {
        Some(ttl) if ttl < retention => Err(Error::invalid(format!(
            "Invalid expiration_policy.ttl {}: must not be shorter than \
             message_retention_duration ({})",
            format_label_duration(ttl),
            format_label_duration(retention)
        ))),
        _ => Ok(()),
    }
}

/// How many messages a pull may return: `max_messages` must be positive (as in Pub/Sub, where
/// 0 is `INVALID_ARGUMENT`), and a response carries at most 1000.
pub fn pull_max_messages(max_messages: i32) -> Result<usize> {
    match usize::try_from(max_messages) {
        Ok(n) if n > 0 => Ok(n.min(MAX_PULL_MESSAGES)),
        _ => Err(Error::invalid(format!(
            "Invalid max_messages {max_messages}: must be greater than 0"
        ))),
    }
}

/// Validates the labels of a topic, subscription or snapshot as Google Cloud does: at most 64,
/// keys 1 to 63 characters starting with a lowercase letter, values 0 to 63 characters, both of
/// lowercase letters (international ones too), digits, `_` and `-`.
///
/// When several labels are invalid, the error names the smallest key.
pub fn validate_labels(labels: &HashMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "There are {} labels; the limit is {MAX_LABELS}",
            labels.len()
        )));
    }
    let violation = labels
        .iter()
        .filter_map(|(key, value)| label_violation(key, value).map(|why| (key, why)))
        .min_by(|(a, _), (b, _)| a.cmp(b));
    match violation {
        Some((_, why)) => Err(Error::invalid(why)),
        None => Ok(()),
    }
}

/// What is wrong with one label, if anything.
fn label_violation(key: &str, value: &str) -> Option<String> {
    const ALLOWED: &str = "only lowercase letters, digits, '_' and '-' are allowed";
    let key_chars = key.chars().count();
    if key_chars == 0 {
        return Some("Label key is empty; keys are 1 to 63 characters".to_string());
    }
    if key_chars > MAX_LABEL_CHARS {
        return Some(format!(
            "Label key \"{}\" is {key_chars} characters; the limit is {MAX_LABEL_CHARS}",
            quote(key)
        ));
    }
    if !key.chars().next().is_some_and(is_label_letter) {
        return Some(format!(
            "Label key \"{}\" must start with a lowercase letter",
            quote(key)
        ));
    }
    if let Some(c) = key.chars().find(|&c| !is_label_char(c)) {
        return Some(format!(
            "Label key \"{}\" contains {c:?}; {ALLOWED}",
            quote(key)
        ));
    }
    let value_chars = value.chars().count();
    if value_chars > MAX_LABEL_CHARS {
        return Some(format!(
            "Value of label \"{key}\" is {value_chars} characters; the limit is {MAX_LABEL_CHARS}"
        ));
    }
    if let Some(c) = value.chars().find(|&c| !is_label_char(c)) {
        return Some(format!(
            "Value of label \"{key}\" contains {c:?}; {ALLOWED}"
        ));
    }
    None
}

/// A lowercase letter, including letters of scripts without case (Google allows international
/// characters in labels).
fn is_label_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_uppercase()
}

fn is_label_char(c: char) -> bool {
    c == '_' || c == '-' || c.is_numeric() || is_label_letter(c)
}

/// The start of `s` for an error message, cut on a character boundary and marked with `…`
/// when cut.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const DAY: u64 = 24 * 3600;

    fn msg(data: &str) -> NewMessage {
        NewMessage {
            data: Bytes::from(data.to_string()),
            ..NewMessage::default()
        }
    }

    fn with_attr(key: &str, value: &str) -> NewMessage {
        let mut m = msg("x");
        m.attributes.insert(key.to_string(), value.to_string());
        m
    }

    fn with_key(data: &str, ordering_key: &str) -> NewMessage {
        NewMessage {
            ordering_key: ordering_key.to_string(),
            ..msg(data)
        }
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidArgument(text)) => text,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn publish_needs_1_to_1000_messages() {
        assert_eq!(
            err_text(validate_publish(&[])),
            "Publish request has no messages; at least 1 is required"
        );
        assert!(validate_publish(&[msg("a")]).is_ok());
        assert!(validate_publish(&vec![msg("a"); 1000]).is_ok());
        assert_eq!(
            err_text(validate_publish(&vec![msg("a"); 1001])),
            "Publish request has 1001 messages; the limit is 1000"
        );
    }

    #[test]
    fn publish_request_at_most_10_000_000_bytes() {
        // Data + attribute key and value + ordering key, spread over two messages.
        let mut a = with_key(&"d".repeat(4_999_000), "k");
        a.attributes.insert("attr".into(), "v".repeat(996));
        let b = with_key(&"d".repeat(4_999_998), "k");
        assert_eq!(message_bytes(&a) + message_bytes(&b), 10_000_000);
        assert!(validate_publish(&[a.clone(), b.clone()]).is_ok());
        let b = with_key(&"d".repeat(4_999_999), "k");
        assert_eq!(
            err_text(validate_publish(&[a, b])),
            "Publish request is 10000001 bytes; the limit is 10000000"
        );
    }

    #[test]
    fn message_needs_data_or_an_attribute() {
        let empty = NewMessage::default();
        assert_eq!(
            err_text(validate_publish(&[msg("a"), empty])),
            "messages[1] has neither data nor attributes; a message needs non-empty data or at \
             least one attribute"
        );
        let mut attributes_only = NewMessage::default();
        attributes_only.attributes.insert("k".into(), String::new());
        assert!(validate_publish(&[attributes_only]).is_ok());
    }

    #[test]
    fn at_most_100_attributes() {
        let mut m = msg("a");
        for i in 0..100 {
            m.attributes.insert(format!("k{i}"), "v".into());
        }
        assert!(validate_publish(std::slice::from_ref(&m)).is_ok());
        m.attributes.insert("k100".into(), "v".into());
        assert_eq!(
            err_text(validate_publish(&[m])),
            "messages[0] has 101 attributes; the limit is 100"
        );
    }

    #[test]
    fn attribute_key_is_1_to_256_bytes() {
        assert!(validate_publish(&[with_attr(&"k".repeat(256), "v")]).is_ok());
        let text = err_text(validate_publish(&[with_attr(&"k".repeat(257), "v")]));
        assert_eq!(
            text,
            format!(
                "Attribute key \"{}…\" is 257 bytes; the limit is 256 (in messages[0])",
                "k".repeat(32)
            )
        );
        assert_eq!(
            err_text(validate_publish(&[with_attr("", "v")])),
            "Attribute key is empty; keys are 1 to 256 bytes (in messages[0])"
        );
    }

    #[test]
    fn attribute_sizes_count_bytes_not_characters() {
        // 128 two-byte characters = 256 bytes: allowed; one more character is 258 bytes.
        assert!(validate_publish(&[with_attr(&"é".repeat(128), "v")]).is_ok());
        let text = err_text(validate_publish(&[with_attr(&"é".repeat(129), "v")]));
        assert!(text.contains("is 258 bytes; the limit is 256"), "{text}");
    }

    #[test]
    fn attribute_value_at_most_1024_bytes() {
        assert!(validate_publish(&[with_attr("k", &"v".repeat(1024))]).is_ok());
        assert_eq!(
            err_text(validate_publish(&[with_attr("k", &"v".repeat(1025))])),
            "Value of attribute \"k\" is 1025 bytes; the limit is 1024 (in messages[0])"
        );
    }

    #[test]
    fn goog_attribute_keys_are_reserved_except_googclient() {
        let text = err_text(validate_publish(&[with_attr("googfoo", "v")]));
        assert!(
            text.starts_with("Attribute key \"googfoo\" is reserved"),
            "{text}"
        );
        assert!(validate_publish(&[with_attr("googclient_traceparent", "v")]).is_ok());
        assert!(validate_publish(&[with_attr("goo", "v"), with_attr("Goog", "v")]).is_ok());
    }

    #[test]
    fn the_smallest_bad_attribute_key_is_reported() {
        let mut m = msg("a");
        m.attributes.insert("zz".into(), "v".repeat(2000));
        m.attributes.insert("goog-b".into(), "v".into());
        m.attributes.insert("aa".into(), "v".repeat(2000));
        let text = err_text(validate_publish(&[m]));
        assert!(text.starts_with("Value of attribute \"aa\""), "{text}");
    }

    #[test]
    fn ordering_key_at_most_1024_bytes() {
        let ok = "o".repeat(1024);
        assert!(validate_publish(&[with_key("a", &ok), with_key("b", &ok)]).is_ok());
        let text = err_text(validate_publish(&[with_key("a", &"o".repeat(1025))]));
        assert_eq!(
            text,
            format!(
                "Ordering key \"{}…\" of messages[0] is 1025 bytes; the limit is 1024",
                "o".repeat(32)
            )
        );
    }

    #[test]
    fn one_ordering_key_per_publish() {
        assert!(validate_publish(&[with_key("a", ""), with_key("b", "")]).is_ok());
        assert_eq!(
            err_text(validate_publish(&[
                with_key("a", "k1"),
                with_key("b", "k1"),
                with_key("c", "")
            ])),
            "messages[2] has ordering key \"\" but messages[0] has \"k1\": all messages of one \
             publish request must share one ordering key"
        );
    }

    #[test]
    fn ack_deadline_bounds() {
        assert_eq!(ack_deadline(0).unwrap(), S(10));
        assert_eq!(ack_deadline(10).unwrap(), S(10));
        assert_eq!(ack_deadline(600).unwrap(), S(600));
        for bad in [9, 601, -1, i64::MIN, i64::MAX] {
            assert_eq!(
                err_text(ack_deadline(bad)),
                format!(
                    "Invalid ack_deadline_seconds {bad}: must be between 10 and 600 (or 0 for \
                     the default of 10)"
                )
            );
        }
    }

    #[test]
    fn modify_ack_deadline_bounds() {
        assert_eq!(modify_ack_deadline(0).unwrap(), Duration::ZERO);
        assert_eq!(modify_ack_deadline(600).unwrap(), S(600));
        for bad in [601, -1] {
            assert_eq!(
                err_text(modify_ack_deadline(bad)),
                format!("Invalid ack_deadline_seconds {bad}: must be between 0 and 600")
            );
        }
    }

    #[test]
    fn subscription_retention_bounds_and_default() {
        assert_eq!(subscription_retention(None).unwrap(), S(7 * DAY));
        assert_eq!(
            subscription_retention(Some(Duration::ZERO)).unwrap(),
            S(7 * DAY)
        );
        assert_eq!(subscription_retention(Some(S(600))).unwrap(), S(600));
        assert_eq!(
            subscription_retention(Some(S(31 * DAY))).unwrap(),
            S(31 * DAY)
        );
        assert_eq!(
            err_text(subscription_retention(Some(S(599)))),
            "Invalid message_retention_duration 9m59s: must be between 10m and 31d"
        );
        assert_eq!(
            err_text(subscription_retention(Some(S(31 * DAY + 1)))),
            "Invalid message_retention_duration 31d1s: must be between 10m and 31d"
        );
    }

    #[test]
    fn topic_retention_bounds_and_unset() {
        assert_eq!(topic_retention(None).unwrap(), None);
        assert_eq!(topic_retention(Some(Duration::ZERO)).unwrap(), None);
        assert_eq!(topic_retention(Some(S(600))).unwrap(), Some(S(600)));
        assert_eq!(
            topic_retention(Some(S(31 * DAY))).unwrap(),
            Some(S(31 * DAY))
        );
        assert!(err_text(topic_retention(Some(S(599)))).contains("9m59s"));
        assert!(err_text(topic_retention(Some(S(31 * DAY + 1)))).contains("31d1s"));
    }

    #[test]
    fn expiration_ttl_bounds_and_never() {
        assert_eq!(expiration_ttl(None).unwrap(), None);
        assert_eq!(expiration_ttl(Some(Duration::ZERO)).unwrap(), None);
        assert_eq!(expiration_ttl(Some(S(DAY))).unwrap(), Some(S(DAY)));
        assert_eq!(
            expiration_ttl(Some(S(400 * DAY))).unwrap(),
            Some(S(400 * DAY))
        );
        assert_eq!(
            err_text(expiration_ttl(Some(S(DAY - 1)))),
            "Invalid expiration_policy.ttl 23h59m59s: the minimum is 1d"
        );
    }

    #[test]
    fn expiration_policy_distinguishes_absent_from_unset_ttl() {
        assert_eq!(expiration_policy(None).unwrap(), Some(S(31 * DAY)));
        assert_eq!(expiration_policy(Some(None)).unwrap(), None);
        assert_eq!(
            expiration_policy(Some(Some(S(2 * DAY)))).unwrap(),
            Some(S(2 * DAY))
        );
        assert!(expiration_policy(Some(Some(S(60)))).is_err());
    }

    #[test]
    fn expiration_must_cover_retention() {
        assert!(expiration_covers_retention(None, S(7 * DAY)).is_ok());
        assert!(expiration_covers_retention(Some(S(7 * DAY)), S(7 * DAY)).is_ok());
        assert_eq!(
            err_text(expiration_covers_retention(Some(S(2 * DAY)), S(7 * DAY))),
            "Invalid expiration_policy.ttl 2d: must not be shorter than \
             message_retention_duration (7d)"
        );
    }

    #[test]
    fn pull_max_messages_positive_and_capped() {
        assert_eq!(pull_max_messages(1).unwrap(), 1);
        assert_eq!(pull_max_messages(1000).unwrap(), 1000);
        assert_eq!(pull_max_messages(1001).unwrap(), 1000);
        assert_eq!(pull_max_messages(i32::MAX).unwrap(), 1000);
        for bad in [0, -1] {
            assert_eq!(
                err_text(pull_max_messages(bad)),
                format!("Invalid max_messages {bad}: must be greater than 0")
            );
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn at_most_64_labels() {
        let mut l: HashMap<String, String> =
            (0..64).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(validate_labels(&l).is_ok());
        l.insert("k64".into(), "v".into());
        assert_eq!(
            err_text(validate_labels(&l)),
            "There are 65 labels; the limit is 64"
        );
    }

    #[test]
    fn label_key_rules() {
        assert!(validate_labels(&labels(&[("a", ""), ("b-c_d9", "x")])).is_ok());
        assert!(validate_labels(&labels(&[(&"k".repeat(63), "v")])).is_ok());
        assert!(validate_labels(&labels(&[("ключ", "значение"), ("キー", "値")])).is_ok());
        assert_eq!(
            err_text(validate_labels(&labels(&[("", "v")]))),
            "Label key is empty; keys are 1 to 63 characters"
        );
        assert_eq!(
            err_text(validate_labels(&labels(&[(&"k".repeat(64), "v")]))),
            format!(
                "Label key \"{}…\" is 64 characters; the limit is 63",
                "k".repeat(32)
            )
        );
        for bad in ["1abc", "-abc", "_abc", "Abc"] {
            assert_eq!(
                err_text(validate_labels(&labels(&[(bad, "v")]))),
                format!("Label key \"{bad}\" must start with a lowercase letter")
            );
        }
        assert_eq!(
            err_text(validate_labels(&labels(&[("aB", "v")]))),
            "Label key \"aB\" contains 'B'; only lowercase letters, digits, '_' and '-' are \
             allowed"
        );
        assert!(err_text(validate_labels(&labels(&[("a.b", "v")]))).contains("'.'"));
    }

    #[test]
    fn label_value_rules() {
        assert!(validate_labels(&labels(&[("k", &"v".repeat(63))])).is_ok());
        assert_eq!(
            err_text(validate_labels(&labels(&[("k", &"v".repeat(64))]))),
            "Value of label \"k\" is 64 characters; the limit is 63"
        );
        // 63 characters of two bytes each: characters count, not bytes.
        assert!(validate_labels(&labels(&[("k", &"é".repeat(63))])).is_ok());
        assert_eq!(
            err_text(validate_labels(&labels(&[("k", "a b")]))),
            "Value of label \"k\" contains ' '; only lowercase letters, digits, '_' and '-' are \
             allowed"
        );
        assert!(err_text(validate_labels(&labels(&[("k", "V")]))).contains("'V'"));
    }

    #[test]
    fn the_smallest_bad_label_key_is_reported() {
        let text = err_text(validate_labels(&labels(&[
            ("zz", "A"),
            ("ab", "B"),
            ("aa", "ok"),
        ])));
        assert!(text.starts_with("Value of label \"ab\""), "{text}");
    }

    #[test]
    fn quote_cuts_on_character_boundaries() {
        assert_eq!(quote("short"), "short");
        assert_eq!(quote(&"é".repeat(40)), format!("{}…", "é".repeat(32)));
    }
}
