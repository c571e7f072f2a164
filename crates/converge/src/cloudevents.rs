//! CloudEvents on Pub/Sub messages, in binary content mode.
//!
//! Events travel as the CloudEvents Pub/Sub protocol binding describes it: the payload is the
//! message data as is, and the context attributes are message attributes prefixed with `ce-`
//! (`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`, `ce-subject`, …), with the
//! payload's media type in the `Content-Type` attribute. Binary mode rather than structured mode
//! because it leaves the attributes where Pub/Sub can filter on them
//! (`attributes.ce-type = "com.example.mail.requested"`) and the payload untouched, so a
//! consumer that knows nothing of CloudEvents still reads plain JSON.
//!
//! Every event converge publishes also carries the broker's idempotency attribute
//! ([`IDEMPOTENCY_KEY_ATTRIBUTE`]), and its `ce-id` is that same key: CloudEvents requires
//! `source` + `id` to be unique per distinct event and allows a re-sent duplicate to keep its
//! id, which is exactly what an idempotency key means.
//!
//! Reading is lenient where the specification allows it (attribute names in any case, `time`
//! with any UTC offset, the media type in `ce-datacontenttype` as some producers write it) and
//! strict where a mistake would go unnoticed (missing required attributes, another spec
//! version, two spellings of one attribute).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::event::{Event, JSON_CONTENT_TYPE};
use crate::idempotency::{IDEMPOTENCY_KEY_ATTRIBUTE, IdempotencyKey};
use crate::transport::{Attributes, IncomingMessage, OutgoingMessage};

/// The CloudEvents version written, and the only major version read.
pub const SPEC_VERSION: &str = "1.0";
/// Attribute of the CloudEvents `specversion`.
pub const SPECVERSION_ATTRIBUTE: &str = "ce-specversion";
/// Attribute of the CloudEvents `id` (converge writes the idempotency key here).
pub const ID_ATTRIBUTE: &str = "ce-id";
/// Attribute of the CloudEvents `type` (what the bus dispatches on).
pub const TYPE_ATTRIBUTE: &str = "ce-type";
/// Attribute of the CloudEvents `source`.
pub const SOURCE_ATTRIBUTE: &str = "ce-source";
/// Attribute of the CloudEvents `time` (RFC 3339).
pub const TIME_ATTRIBUTE: &str = "ce-time";
/// Attribute of the CloudEvents `subject`.
pub const SUBJECT_ATTRIBUTE: &str = "ce-subject";
/// Attribute of the CloudEvents `dataschema`.
pub const DATASCHEMA_ATTRIBUTE: &str = "ce-dataschema";
/// The message attribute that carries the CloudEvents `datacontenttype` in binary mode.
pub const CONTENT_TYPE_ATTRIBUTE: &str = "Content-Type";
/// Prefix of every CloudEvents context attribute except `datacontenttype`.
pub const ATTRIBUTE_PREFIX: &str = "ce-";

/// Some producers write `datacontenttype` as a prefixed attribute too; read as a fallback.
const DATACONTENTTYPE_FALLBACK: &str = "ce-datacontenttype";
/// Media types starting with this mean structured content mode.
const STRUCTURED_MEDIA_TYPE_PREFIX: &str = "application/cloudevents";

/// Why an event could not be written as, or read from, a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    /// A required context attribute is absent.
    #[error("missing attribute {name}")]
    MissingAttribute {
        /// The attribute name, e.g. `ce-type`.
        name: &'static str,
    },
    /// A context attribute is present but empty where the specification requires a value.
    #[error("attribute {name} is empty")]
    EmptyAttribute {
        /// The attribute name.
        name: &'static str,
    },
    /// One attribute is present under two spellings (names are case-insensitive).
    #[error("attribute {name} appears more than once (names are case-insensitive)")]
    DuplicateAttribute {
        /// The attribute name, lower case.
        name: String,
    },
    /// The event claims a CloudEvents version this code does not read.
    #[error("unsupported CloudEvents specversion {version:?} (expected {SPEC_VERSION})")]
    UnsupportedSpecVersion {
        /// The version found.
        version: String,
    },
    /// `ce-time` is not an RFC 3339 timestamp.
    #[error("attribute ce-time is not an RFC 3339 timestamp: {value:?}")]
    InvalidTime {
        /// The value found.
        value: String,
    },
    /// The message is a CloudEvent in structured content mode, which is not read here.
    #[error("structured content mode ({content_type}) is not supported; publish in binary mode")]
    StructuredMode {
        /// The `Content-Type` found.
        content_type: String,
    },
    /// The converge idempotency attribute is present but not a valid key.
    #[error("attribute {IDEMPOTENCY_KEY_ATTRIBUTE} is invalid: {0}")]
    InvalidIdempotencyKey(#[from] crate::idempotency::InvalidIdempotencyKey),
    /// An attribute value is longer than Pub/Sub allows (1,024 bytes).
    #[error("attribute {name} is {len} bytes; the limit is {max}", max = converge_core::limits::MAX_ATTRIBUTE_VALUE_BYTES)]
    AttributeTooLong {
        /// The attribute name.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The event is of another type than the one asked for.
    #[error("event type is {found:?}, expected {expected:?}")]
    UnexpectedType {
        /// The Rust type's [`Event::TYPE`].
        expected: &'static str,
        /// The event's `ce-type`.
        found: String,
    },
    /// The payload's media type is not JSON.
    #[error("payload content type {content_type:?} is not JSON")]
    UnsupportedContentType {
        /// The `Content-Type` found.
        content_type: String,
    },
    /// The payload does not deserialize into the event type.
    #[error("payload of {event_type} is not valid: {source}")]
    InvalidData {
        /// The event type.
        event_type: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The event does not serialize (a map with non-string keys, a failing `Serialize` impl).
    #[error("cannot serialize {event_type}: {source}")]
    Serialize {
        /// The event type.
        event_type: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// The context attributes of a CloudEvent: everything but the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `id`: unique per distinct event within `source` (converge writes the idempotency key).
    pub id: String,
    /// `source`: a URI-reference naming where the event happened, e.g. `/signup`.
    pub source: String,
    /// `specversion`: always [`SPEC_VERSION`] once decoded.
    pub spec_version: String,
    /// `type`: what kind of event this is ([`Event::TYPE`]).
    pub event_type: String,
    /// `time`: when the event happened, if the producer said.
    pub time: Option<SystemTime>,
    /// `subject`: what the event is about within its source.
    pub subject: Option<String>,
    /// `datacontenttype`: the payload's media type (the `Content-Type` attribute).
    pub data_content_type: Option<String>,
    /// `dataschema`: a URI of the schema the payload adheres to.
    pub data_schema: Option<String>,
    /// Extension attributes: every other `ce-` attribute, by lower-case name without the prefix.
    pub extensions: BTreeMap<String, String>,
}

impl CloudEvent {
    /// The context of `event` as converge publishes it: `id` is `key`, `type` is
    /// [`Event::TYPE`], JSON payload.
    pub fn for_event<E: Event>(
        event: &E,
        source: &str,
        key: &IdempotencyKey,
        time: SystemTime,
    ) -> Self {
        Self {
            id: key.as_str().to_owned(),
            source: source.to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            event_type: E::TYPE.to_owned(),
            time: Some(time),
            subject: event.subject(),
            data_content_type: Some(JSON_CONTENT_TYPE.to_owned()),
            data_schema: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Writes the context as binary-mode message attributes (`ce-*` and `Content-Type`),
    /// checking what Pub/Sub would otherwise refuse later with a less precise error.
    pub fn write_attributes(&self, attributes: &mut Attributes) -> Result<(), CloudEventError> {
        let mut put = |name: &'static str, value: &str| -> Result<(), CloudEventError> {
            if value.len() > converge_core::limits::MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(CloudEventError::AttributeTooLong {
                    name,
                    len: value.len(),
                });
            }
            attributes.insert(name.to_owned(), value.to_owned());
            Ok(())
        };
        for (name, value) in [
            (ID_ATTRIBUTE, &self.id),
            (SOURCE_ATTRIBUTE, &self.source),
            (TYPE_ATTRIBUTE, &self.event_type),
            (SPECVERSION_ATTRIBUTE, &self.spec_version),
        ] {
            if value.is_empty() {
                return Err(CloudEventError::EmptyAttribute { name });
            }
            put(name, value)?;
        }
        if let Some(time) = self.time {
            put(
                TIME_ATTRIBUTE,
                &humantime::format_rfc3339_micros(time).to_string(),
            )?;
        }
        if let Some(subject) = &self.subject {
            put(SUBJECT_ATTRIBUTE, subject)?;
        }
        if let Some(schema) = &self.data_schema {
            put(DATASCHEMA_ATTRIBUTE, schema)?;
        }
        if let Some(content_type) = &self.data_content_type {
            put(CONTENT_TYPE_ATTRIBUTE, content_type)?;
        }
        for (name, value) in &self.extensions {
            if value.len() > converge_core::limits::MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(CloudEventError::AttributeTooLong {
                    name: "ce- extension",
                    len: value.len(),
                });
            }
            attributes.insert(format!("{ATTRIBUTE_PREFIX}{name}"), value.clone());
        }
        Ok(())
    }

    /// Reads the context from binary-mode message attributes. Names are matched without
    /// regard to case; attributes that are not CloudEvents context attributes are ignored.
    pub fn from_attributes(attributes: &Attributes) -> Result<Self, CloudEventError> {
        let mut context: HashMap<String, &str> = HashMap::new();
        for (name, value) in attributes {
            let lower = name.to_ascii_lowercase();
            let relevant = lower.starts_with(ATTRIBUTE_PREFIX)
                || lower.eq_ignore_ascii_case(CONTENT_TYPE_ATTRIBUTE);
            if relevant && context.insert(lower.clone(), value.as_str()).is_some() {
                return Err(CloudEventError::DuplicateAttribute { name: lower });
            }
        }
        let content_type_key = CONTENT_TYPE_ATTRIBUTE.to_ascii_lowercase();
        let data_content_type = context
            .remove(&content_type_key)
            .or_else(|| context.remove(DATACONTENTTYPE_FALLBACK))
            .map(str::to_owned);
        context.remove(DATACONTENTTYPE_FALLBACK);
        if let Some(content_type) = &data_content_type
            && media_type(content_type).starts_with(STRUCTURED_MEDIA_TYPE_PREFIX)
        {
            return Err(CloudEventError::StructuredMode {
                content_type: content_type.clone(),
            });
        }

        let mut required = |name: &'static str| -> Result<String, CloudEventError> {
            match context.remove(name) {
                None => Err(CloudEventError::MissingAttribute { name }),
                Some("") => Err(CloudEventError::EmptyAttribute { name }),
                Some(value) => Ok(value.to_owned()),
            }
        };
        let spec_version = required(SPECVERSION_ATTRIBUTE)?;
        if spec_version != SPEC_VERSION {
            return Err(CloudEventError::UnsupportedSpecVersion {
                version: spec_version,
            });
        }
        let id = required(ID_ATTRIBUTE)?;
        let source = required(SOURCE_ATTRIBUTE)?;
        let event_type = required(TYPE_ATTRIBUTE)?;
        let time = context
            .remove(TIME_ATTRIBUTE)
            .map(|value| {
                parse_time(value).ok_or_else(|| CloudEventError::InvalidTime {
                    value: value.to_owned(),
                })
            })
            .transpose()?;
        let subject = context.remove(SUBJECT_ATTRIBUTE).map(str::to_owned);
        let data_schema = context.remove(DATASCHEMA_ATTRIBUTE).map(str::to_owned);
        let extensions = context
            .into_iter()
            .map(|(name, value)| (name[ATTRIBUTE_PREFIX.len()..].to_owned(), value.to_owned()))
            .collect();
        Ok(Self {
            id,
            source,
            spec_version,
            event_type,
            time,
            subject,
            data_content_type,
            data_schema,
            extensions,
        })
    }

    /// Whether the payload is JSON: `application/json`, `text/json` or any `+json` media type,
    /// parameters (`; charset=utf-8`) ignored. An event without a content type is taken to
    /// be JSON, as converge and most producers write it.
    pub fn has_json_data(&self) -> bool {
        match &self.data_content_type {
            None => true,
            Some(content_type) => {
                let media = media_type(content_type);
                media == JSON_CONTENT_TYPE || media == "text/json" || media.ends_with("+json")
            }
        }
    }
}

/// The media type of a `Content-Type` value: lower case, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Parses an RFC 3339 timestamp with any UTC offset (`Z`, `+02:00`, `-05:30`), any number of
/// fractional digits, `T`/`Z` in either case.
fn parse_time(value: &str) -> Option<SystemTime> {
    let value = value.to_ascii_uppercase();
    if value.ends_with('Z') {
        return humantime::parse_rfc3339(&value).ok();
    }
    let split = value.len().checked_sub(6)?;
    let (local, offset) = (value.get(..split)?, value.get(split..)?.as_bytes());
    let sign = match offset[0] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return None,
    };
    if offset[3] != b':' || ![1, 2, 4, 5].iter().all(|&i| offset[i].is_ascii_digit()) {
        return None;
    }
    let digit = |i: usize| i64::from(offset[i] - b'0');
    let (hours, minutes) = (digit(1) * 10 + digit(2), digit(4) * 10 + digit(5));
    if hours > 23 || minutes > 59 {
        return None;
    }
    let as_if_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    // Local time = UTC + offset, so UTC = local time - offset.
    let offset = Duration::from_secs(((hours * 60 + minutes) * 60) as u64);
    if sign > 0 {
        as_if_utc.checked_sub(offset)
    } else {
        as_if_utc.checked_add(offset)
    }
}

/// Encodes `event` as a binary-mode CloudEvent message: JSON payload, `ce-*` attributes,
/// `Content-Type`, the idempotency attribute (also the `ce-id`), and the event's ordering key.
///
/// ```
/// use converge::cloudevents;
/// use converge::event::Event;
/// use converge::idempotency::IdempotencyKey;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Signup { email: String }
/// impl Event for Signup { const TYPE: &'static str = "com.example.signup"; }
///
/// let key = IdempotencyKey::new();
/// let message = cloudevents::encode(
///     &Signup { email: "a@example.com".into() },
///     "/signup",
///     &key,
///     std::time::SystemTime::now(),
/// )?;
/// assert_eq!(message.attributes["ce-type"], "com.example.signup");
/// assert_eq!(message.attributes["ce-id"], key.as_str());
/// # Ok::<(), cloudevents::CloudEventError>(())
/// ```
pub fn encode<E: Event>(
    event: &E,
    source: &str,
    key: &IdempotencyKey,
    time: SystemTime,
) -> Result<OutgoingMessage, CloudEventError> {
    let data = serde_json::to_vec(event).map_err(|source| CloudEventError::Serialize {
        event_type: E::TYPE,
        source,
    })?;
    let mut attributes = Attributes::new();
    CloudEvent::for_event(event, source, key, time).write_attributes(&mut attributes)?;
    attributes.insert(
        IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(),
        key.as_str().to_owned(),
    );
    Ok(OutgoingMessage {
        data: Bytes::from(data),
        attributes,
        ordering_key: event.ordering_key().unwrap_or_default(),
    })
}

/// Decodes a received message's CloudEvent context; the payload is returned as is, for
/// [`decode_data`] once the type is known.
pub fn decode(message: &IncomingMessage) -> Result<(CloudEvent, Bytes), CloudEventError> {
    let event = CloudEvent::from_attributes(&message.attributes)?;
    Ok((event, message.data.clone()))
}

/// Deserializes the payload of `event` into `E`, checking that the event is of that type and
/// that its payload is JSON.
pub fn decode_data<E: Event>(event: &CloudEvent, data: &[u8]) -> Result<E, CloudEventError> {
    if event.event_type != E::TYPE {
        return Err(CloudEventError::UnexpectedType {
            expected: E::TYPE,
            found: event.event_type.clone(),
        });
    }
    if !event.has_json_data() {
        return Err(CloudEventError::UnsupportedContentType {
            content_type: event.data_content_type.clone().unwrap_or_default(),
        });
    }
    serde_json::from_slice(data).map_err(|source| CloudEventError::InvalidData {
        event_type: event.event_type.clone(),
        source,
    })
}

/// The idempotency key of a received event: the converge attribute when present (it is what
/// the broker deduplicated on), otherwise one derived from `source` and `id`
/// ([`IdempotencyKey::from_cloud_event`]), which CloudEvents guarantees name one distinct
/// event — so events from producers that know nothing of converge still get stable keys.
pub fn idempotency_key(
    attributes: &Attributes,
    event: &CloudEvent,
) -> Result<IdempotencyKey, CloudEventError> {
    match attributes
        .get(IDEMPOTENCY_KEY_ATTRIBUTE)
        .filter(|k| !k.is_empty())
    {
        Some(key) => Ok(IdempotencyKey::parse(key.as_str())?),
        None => Ok(IdempotencyKey::from_cloud_event(&event.source, &event.id)),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct MailRequested {
        user: u64,
        template: String,
    }

    impl Event for MailRequested {
        const TYPE: &'static str = "com.example.mail.requested";

        fn subject(&self) -> Option<String> {
            Some(format!("user/{}", self.user))
        }

        fn ordering_key(&self) -> Option<String> {
            Some(format!("user-{}", self.user))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Other;

    impl Event for Other {
        const TYPE: &'static str = "com.example.other";
    }

    fn incoming(message: OutgoingMessage) -> IncomingMessage {
        IncomingMessage {
            message_id: "1".into(),
            data: message.data,
            attributes: message.attributes,
            ordering_key: message.ordering_key,
            publish_time: SystemTime::now(),
            delivery_attempt: None,
        }
    }

    fn attributes(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn at(secs: u64, micros: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn encode_writes_binary_mode_attributes() {
        let key = IdempotencyKey::parse("key-1").unwrap();
        let event = MailRequested {
            user: 7,
            template: "welcome".into(),
        };
        let message = encode(&event, "/signup", &key, at(1_583_812_584, 0)).unwrap();
        let expected = attributes(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "key-1"),
            ("ce-type", "com.example.mail.requested"),
            ("ce-source", "/signup"),
            ("ce-time", "2020-03-10T03:56:24.000000Z"),
            ("ce-subject", "user/7"),
            ("Content-Type", "application/json"),
            ("converge-idempotency-key", "key-1"),
        ]);
        assert_eq!(message.attributes, expected);
        assert_eq!(message.ordering_key, "user-7");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&message.data).unwrap(),
            serde_json::json!({"user": 7, "template": "welcome"})
        );
    }

    #[test]
    fn round_trip() {
        let key = IdempotencyKey::new();
        let event = MailRequested {
            user: 42,
            template: "reset".into(),
        };
        let time = at(1_700_000_000, 123_456);
        let message = incoming(encode(&event, "/accounts", &key, time).unwrap());
        let (context, data) = decode(&message).unwrap();
        assert_eq!(
            context,
            CloudEvent {
                id: key.as_str().into(),
                source: "/accounts".into(),
                spec_version: "1.0".into(),
                event_type: MailRequested::TYPE.into(),
                time: Some(time),
                subject: Some("user/42".into()),
                data_content_type: Some("application/json".into()),
                data_schema: None,
                extensions: BTreeMap::new(),
            }
        );
        assert_eq!(
            decode_data::<MailRequested>(&context, &data).unwrap(),
            event
        );
        assert_eq!(idempotency_key(&message.attributes, &context).unwrap(), key);
        assert!(matches!(
            decode_data::<Other>(&context, &data),
            Err(CloudEventError::UnexpectedType {
                expected: "com.example.other",
                ..
            })
        ));
        // And back again: the decoded context writes the same attributes.
        let mut written = Attributes::new();
        context.write_attributes(&mut written).unwrap();
        written.insert(IDEMPOTENCY_KEY_ATTRIBUTE.into(), key.as_str().into());
        assert_eq!(written, message.attributes);
    }

    #[test]
    fn names_are_case_insensitive_and_extensions_kept() {
        let attrs = attributes(&[
            ("CE-SpecVersion", "1.0"),
            ("Ce-Id", "1234-1234-1234"),
            ("ce-TYPE", "com.example.someevent"),
            ("ce-source", "/mycontext/subcontext"),
            ("ce-time", "2020-03-10T05:56:24+02:00"),
            ("ce-datacontenttype", "application/json; charset=utf-8"),
            ("ce-TraceParent", "00-abc-def-01"),
            ("unrelated", "x"),
        ]);
        let event = CloudEvent::from_attributes(&attrs).unwrap();
        assert_eq!(event.id, "1234-1234-1234");
        assert_eq!(event.event_type, "com.example.someevent");
        assert_eq!(event.time, Some(at(1_583_812_584, 0)));
        assert_eq!(
            event.data_content_type.as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert!(event.has_json_data());
        assert_eq!(
            event.extensions,
            BTreeMap::from([("traceparent".to_owned(), "00-abc-def-01".to_owned())])
        );
        // Without the converge attribute, the key comes from source and id, stably.
        assert_eq!(
            idempotency_key(&attrs, &event).unwrap(),
            IdempotencyKey::from_cloud_event("/mycontext/subcontext", "1234-1234-1234")
        );
    }

    #[test]
    fn time_formats() {
        let base = at(1_583_812_584, 0);
        for (value, expected) in [
            ("2020-03-10T03:56:24Z", Some(base)),
            ("2020-03-10t03:56:24z", Some(base)),
            ("2020-03-10T03:56:24+00:00", Some(base)),
            ("2020-03-09T22:26:24-05:30", Some(base)),
            (
                "2020-03-10T03:56:24.5Z",
                Some(base + Duration::from_millis(500)),
            ),
            (
                "2020-03-10T04:56:24.000001+01:00",
                Some(at(1_583_812_584, 1)),
            ),
            ("2020-03-10T03:56:24", None),
            ("2020-03-10T03:56:24+2400", None),
            ("2020-03-10T03:56:24+24:00", None),
            ("yesterday", None),
            ("", None),
        ] {
            assert_eq!(parse_time(value), expected, "{value}");
        }
    }

    #[test]
    fn decode_errors() {
        let valid = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t"),
            ("ce-source", "/s"),
        ];
        let without = |name: &str| {
            attributes(
                &valid
                    .iter()
                    .copied()
                    .filter(|(n, _)| *n != name)
                    .collect::<Vec<_>>(),
            )
        };
        assert!(CloudEvent::from_attributes(&attributes(&valid)).is_ok());
        for name in ["ce-specversion", "ce-id", "ce-type", "ce-source"] {
            let err = CloudEvent::from_attributes(&without(name)).unwrap_err();
            assert!(
                matches!(err, CloudEventError::MissingAttribute { name: n } if n == name),
                "{name}: {err}"
            );
            let mut empty = without(name);
            empty.insert(name.into(), String::new());
            let err = CloudEvent::from_attributes(&empty).unwrap_err();
            assert!(
                matches!(err, CloudEventError::EmptyAttribute { name: n } if n == name),
                "{name}: {err}"
            );
        }
        let mut attrs = attributes(&valid);
        attrs.insert("ce-specversion".into(), "0.3".into());
        assert!(matches!(
            CloudEvent::from_attributes(&attrs),
            Err(CloudEventError::UnsupportedSpecVersion { version }) if version == "0.3"
        ));
        let mut attrs = attributes(&valid);
        attrs.insert("CE-ID".into(), "2".into());
        assert!(matches!(
            CloudEvent::from_attributes(&attrs),
            Err(CloudEventError::DuplicateAttribute { name }) if name == "ce-id"
        ));
        let mut attrs = attributes(&valid);
        attrs.insert("ce-time".into(), "last tuesday".into());
        assert!(matches!(
            CloudEvent::from_attributes(&attrs),
            Err(CloudEventError::InvalidTime { .. })
        ));
        let structured = attributes(&[(
            "Content-Type",
            "application/cloudevents+json; charset=UTF-8",
        )]);
        assert!(matches!(
            CloudEvent::from_attributes(&structured),
            Err(CloudEventError::StructuredMode { .. })
        ));
        let mut attrs = attributes(&valid);
        attrs.insert(IDEMPOTENCY_KEY_ATTRIBUTE.into(), "not a key".into());
        let event = CloudEvent::from_attributes(&attrs).unwrap();
        assert!(matches!(
            idempotency_key(&attrs, &event),
            Err(CloudEventError::InvalidIdempotencyKey(_))
        ));
    }

    #[test]
    fn data_errors() {
        let mut event = CloudEvent::from_attributes(&attributes(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", MailRequested::TYPE),
            ("ce-source", "/s"),
        ]))
        .unwrap();
        assert!(matches!(
            decode_data::<MailRequested>(&event, b"{\"user\": \"seven\"}"),
            Err(CloudEventError::InvalidData { .. })
        ));
        assert!(
            decode_data::<MailRequested>(&event, b"{\"user\": 1, \"template\": \"t\"}").is_ok()
        );
        for (content_type, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.example+json", true),
            ("text/plain", false),
            ("application/octet-stream", false),
        ] {
            event.data_content_type = Some(content_type.into());
            assert_eq!(event.has_json_data(), json, "{content_type}");
        }
        assert!(matches!(
            decode_data::<MailRequested>(&event, b"{}"),
            Err(CloudEventError::UnsupportedContentType { .. })
        ));
    }

    #[test]
    fn encode_refuses_what_pubsub_would() {
        #[derive(Serialize, Deserialize)]
        struct Long(String);
        impl Event for Long {
            const TYPE: &'static str = "com.example.long";
            fn subject(&self) -> Option<String> {
                Some(self.0.clone())
            }
        }
        let key = IdempotencyKey::new();
        let err = encode(&Long("s".repeat(1025)), "/s", &key, SystemTime::now()).unwrap_err();
        assert!(matches!(
            err,
            CloudEventError::AttributeTooLong {
                name: "ce-subject",
                len: 1025
            }
        ));
        let err = encode(&Long("s".into()), "", &key, SystemTime::now()).unwrap_err();
        assert!(matches!(
            err,
            CloudEventError::EmptyAttribute { name: "ce-source" }
        ));
    }
}
