//! Reading and writing one JSON object field by field, and the macro that derives a message's
//! [`ProtoJson`](super::ProtoJson) impl from a list of its fields and their codecs.
//!
//! [`Writer`] skips proto3 defaults; [`Reader`] accepts both spellings of each name, treats
//! `null` as "not set", and remembers which keys it consumed so that whatever is left over can
//! be rejected as an unknown field, the way Google's front end does.

use serde_json::{Map as JsonMap, Value};

use super::codec::Codec;
use super::error::{JsonError, json_text};
use super::names::{lower_camel, proto_name};

/// Builds a message's JSON object, omitting fields that hold their proto3 default.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    object: JsonMap<String, Value>,
}

impl Writer {
    /// An empty object.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Writes a plain field under its lowerCamelCase name unless it holds its default.
    pub(crate) fn field<C: Codec>(&mut self, ident: &str, value: &C::Value) {
        if C::is_default(value) {
            return;
        }
        self.member::<C>(ident, value);
    }

    /// Writes a field that has presence (a set oneof member) even if its value is a default.
    pub(crate) fn member<C: Codec>(&mut self, ident: &str, value: &C::Value) {
        self.object
            .insert(lower_camel(proto_name(ident)), C::write(value));
    }

    /// The finished object.
    pub(crate) fn finish(self) -> Value {
        Value::Object(self.object)
    }
}

/// Reads a message's fields out of a JSON object, tracking consumed keys.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    object: &'a JsonMap<String, Value>,
    seen: Vec<&'a str>,
}

impl<'a> Reader<'a> {
    /// Starts reading `json` as the message `full_name` (e.g. `google.pubsub.v1.Topic`).
    pub(crate) fn new(json: &'a Value, full_name: &str) -> Result<Self, JsonError> {
        let Some(object) = json.as_object() else {
            let type_name = format!("type.googleapis.com/{full_name}");
            return Err(JsonError::invalid_value(type_name.into(), json_text(json)));
        };
        Ok(Self {
            object,
            seen: Vec::with_capacity(object.len()),
        })
    }

    /// Takes the field `ident` (a Rust field name) if the object sets it to something other
    /// than `null`, under either its lowerCamelCase or its snake_case name.
    pub(crate) fn take<C: Codec>(&mut self, ident: &str) -> Result<Option<C::Value>, JsonError> {
        let name = proto_name(ident);
        let camel = lower_camel(name);
        let by_camel = self.object.get_key_value(camel.as_str());
        let by_snake = if camel == name {
            None
        } else {
            self.object.get_key_value(name)
        };
        let (key, json) = match (by_camel, by_snake) {
            (None, None) => return Ok(None),
            (Some(entry), None) | (None, Some(entry)) => entry,
            (Some(_), Some(_)) => {
                let message =
                    format!("Field \"{name}\" is given twice, as \"{camel}\" and \"{name}\"");
                return Err(JsonError::payload(message));
            }
        };
        self.seen.push(key.as_str());
        if json.is_null() {
            return Ok(None);
        }
        if json.is_array() && !C::REPEATED {
            return Err(JsonError::unknown_name(
                key,
                "Proto field is not repeating, cannot start list.",
            ));
        }
        C::read(json).map(Some).map_err(|e| e.within(name))
    }

    /// Fails on the first key no field consumed.
    pub(crate) fn finish(self) -> Result<(), JsonError> {
        let unknown = self
            .object
            .keys()
            .find(|key| !self.seen.contains(&key.as_str()));
        match unknown {
            Some(key) => Err(JsonError::unknown_name(key, "Cannot find field.")),
            None => Ok(()),
        }
    }
}

/// The error for a second member of oneof `oneof` being set.
pub(crate) fn oneof_conflict(oneof: &str) -> JsonError {
    JsonError::payload(format!("More than one field of oneof \"{oneof}\" is set"))
}

/// Implements [`ProtoJson`](super::ProtoJson) for a prost message from its field list:
///
/// ```ignore
/// proto_message! {
///     PushConfig = "google.pubsub.v1.PushConfig" {
///         push_endpoint: Str,
///         attributes: Map<Str>,
///     }
///     oneof wrapper {
///         pubsub_wrapper => push_config::Wrapper::PubsubWrapper: Msg<push_config::PubsubWrapper>,
///         no_wrapper => push_config::Wrapper::NoWrapper: Msg<push_config::NoWrapper>,
///     }
/// }
/// ```
///
/// Every field of the prost struct must be listed (plain fields, then each oneof with all its
/// members): the generated `match` on each oneof is exhaustive, so a forgotten member does not
/// compile.
macro_rules! proto_message {
    (
        $ty:ty = $full_name:literal {
            $($field:ident: $codec:ty),* $(,)?
        }
        $(oneof $oneof:ident {
            $($member:ident => $variant:path: $member_codec:ty),+ $(,)?
        })*
    ) => {
        impl $crate::rest::json::ProtoJson for $ty {
            // Deprecated fields (`returnImmediately`, `enabled`) are still part of the wire form.
            #[allow(unused_mut, deprecated)]
            fn to_json(&self) -> ::serde_json::Value {
                let mut writer = $crate::rest::json::object::Writer::new();
                $(writer.field::<$codec>(stringify!($field), &self.$field);)*
                $(match &self.$oneof {
                    $(Some($variant(value)) => {
                        writer.member::<$member_codec>(stringify!($member), value);
                    })+
                    None => {}
                })*
                writer.finish()
            }

            #[allow(unused_mut, deprecated)]
            fn from_json(
                json: &::serde_json::Value,
            ) -> ::std::result::Result<Self, $crate::rest::json::JsonError> {
                let mut reader = $crate::rest::json::object::Reader::new(json, $full_name)?;
                let mut out = <Self as ::std::default::Default>::default();
                $(if let Some(value) = reader.take::<$codec>(stringify!($field))? {
                    out.$field = value;
                })*
                $($(if let Some(value) = reader.take::<$member_codec>(stringify!($member))? {
                    if out.$oneof.is_some() {
                        return Err($crate::rest::json::object::oneof_conflict(stringify!($oneof)));
                    }
                    out.$oneof = Some($variant(value));
                })+)*
                reader.finish()?;
                Ok(out)
            }
        }
    };
}

pub(crate) use proto_message;
