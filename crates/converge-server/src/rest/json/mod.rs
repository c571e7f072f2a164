//! The proto3 JSON mapping of the `google.pubsub.v1` messages served over REST.
//!
//! The prost types converge uses have no serde impls and the protos may not be vendored, so
//! the mapping is written here, once, as [`ProtoJson`] impls for every message the REST surface
//! reads or writes. It follows the protobuf JSON mapping exactly: lowerCamelCase names on output
//! (either spelling on input), defaults omitted, int64 as strings, bytes as base64, enums by
//! name, well-known types in their string forms, unknown fields rejected with Google's wording
//! (see [`JsonError`]).
//!
//! Layout: `codec` holds one codec per proto field type, `wkt` the well-known types,
//! `object` the field-by-field reader/writer and the `proto_message!` macro, and the
//! `publisher`, `subscriber`, `snapshot` and `schema` modules list each message's fields.

mod codec;
mod enums;
mod error;
mod iam;
mod names;
pub(crate) mod object;
mod publisher;
mod schema;
mod snapshot;
mod subscriber;
mod wkt;

#[cfg(test)]
mod tests;

pub use enums::{ProtoEnum, parse_enum};
pub use error::{JsonError, JsonErrorKind};
pub use names::{field_mask_from_str, field_mask_to_string};

/// A message with a proto3 JSON form.
///
/// Implemented for every `google.pubsub.v1` message the REST surface exchanges, and for `()`
/// (`google.protobuf.Empty`, which tonic maps to unit).
pub trait ProtoJson: Sized {
    /// proto3 JSON of the value (lowerCamelCase names, defaults omitted).
    fn to_json(&self) -> serde_json::Value;
    /// Parses proto3 JSON; accepts lowerCamelCase and the original snake_case field names.
    fn from_json(value: &serde_json::Value) -> Result<Self, JsonError>;
}

/// `google.protobuf.Empty` is `{}`: written as such, and read from an object with no fields.
impl ProtoJson for () {
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
    fn from_json(value: &serde_json::Value) -> Result<Self, JsonError> {
        object::Reader::new(value, "google.protobuf.Empty")?.finish()
    }
}

/// Parses a request body; an empty (or all-whitespace) body is the default message `{}`, as
/// Google accepts for bodies whose fields are all optional.
pub fn from_slice<T: ProtoJson>(body: &[u8]) -> Result<T, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return T::from_json(&serde_json::Value::Object(serde_json::Map::new()));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| JsonError::payload(format!("Malformed JSON: {e}")))?;
    T::from_json(&value)
}

/// Serializes a response body as compact proto3 JSON.
pub fn to_vec<T: ProtoJson>(value: &T) -> Vec<u8> {
    // Serializing a `Value` cannot fail: its map keys are always strings.
    serde_json::to_vec(&value.to_json()).unwrap_or_default()
}
