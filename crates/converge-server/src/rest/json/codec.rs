//! Per-field codecs: how one proto field type is written to and read from proto3 JSON.
//!
//! A codec is a zero-sized marker type (`Str`, `I64`, `Repeated<Msg<Topic>>`, ...) naming the
//! proto type of a field; the message macro pairs each Rust field with its codec, so the rules
//! for, say, int64-as-string or base64 bytes live here once instead of in every message.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map as JsonMap, Value};

use super::ProtoJson;
use super::enums::ProtoEnum;
use super::error::{JsonError, json_text};

/// How one proto field type maps to proto3 JSON.
pub(crate) trait Codec {
    /// The Rust (prost) type of the field.
    type Value: Default;
    /// Whether the field is `repeated`, i.e. whether a JSON array is acceptable.
    const REPEATED: bool = false;
    /// The proto type name quoted in `Invalid value` errors.
    fn type_name() -> Cow<'static, str>;
    /// Whether the value is the proto3 default, which is omitted on output.
    fn is_default(value: &Self::Value) -> bool;
    /// The proto3 JSON of the value.
    fn write(value: &Self::Value) -> Value;
    /// Parses a non-null JSON value; errors carry a path relative to this value.
    fn read(json: &Value) -> Result<Self::Value, JsonError>;
}

/// The `Invalid value` error for `json` under codec `C`, quoting the value.
fn invalid<C: Codec>(json: &Value) -> JsonError {
    JsonError::invalid_value(C::type_name(), json_text(json))
}

/// `string`.
pub(crate) struct Str;

impl Codec for Str {
    type Value = String;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_STRING")
    }
    fn is_default(value: &String) -> bool {
        value.is_empty()
    }
    fn write(value: &String) -> Value {
        Value::String(value.clone())
    }
    fn read(json: &Value) -> Result<String, JsonError> {
        json.as_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid::<Self>(json))
    }
}

/// `bool`: only JSON `true`/`false`.
pub(crate) struct Bool;

impl Codec for Bool {
    type Value = bool;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_BOOL")
    }
    fn is_default(value: &bool) -> bool {
        !value
    }
    fn write(value: &bool) -> Value {
        Value::Bool(*value)
    }
    fn read(json: &Value) -> Result<bool, JsonError> {
        json.as_bool().ok_or_else(|| invalid::<Self>(json))
    }
}

/// An integral float, if it is one and fits an `i64`.
fn integral_f64(value: f64) -> Option<i64> {
    // 2^63 is exactly representable; every finite float below it (and >= -2^63) fits an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let integral = value.is_finite() && value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value);
    #[allow(clippy::cast_possible_truncation)] // range-checked just above
    integral.then_some(value as i64)
}

/// The integer a JSON number or numeric string denotes; proto3 JSON accepts both for every
/// integer type, including exponent forms such as `1e3`, as long as the value is integral.
fn integer(json: &Value) -> Option<i64> {
    match json {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().and_then(integral_f64)),
        Value::String(text) => text
            .parse::<i64>()
            .ok()
            .or_else(|| text.parse::<f64>().ok().and_then(integral_f64)),
        _ => None,
    }
}

/// `int32`: a JSON number on output, a number or numeric string on input.
pub(crate) struct I32;

impl Codec for I32 {
    type Value = i32;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_INT32")
    }
    fn is_default(value: &i32) -> bool {
        *value == 0
    }
    fn write(value: &i32) -> Value {
        Value::from(*value)
    }
    fn read(json: &Value) -> Result<i32, JsonError> {
        integer(json)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| invalid::<Self>(json))
    }
}

/// `int64`: a decimal string on output (JSON numbers lose precision past 2^53), a string or
/// number on input.
pub(crate) struct I64;

impl Codec for I64 {
    type Value = i64;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_INT64")
    }
    fn is_default(value: &i64) -> bool {
        *value == 0
    }
    fn write(value: &i64) -> Value {
        Value::String(value.to_string())
    }
    fn read(json: &Value) -> Result<i64, JsonError> {
        integer(json).ok_or_else(|| invalid::<Self>(json))
    }
}

/// Decodes standard or URL-safe base64, padded or not, as proto3 JSON requires of parsers.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    // The URL-safe alphabet differs only in these two characters.
    let standard: String = text
        .chars()
        .map(|ch| match ch {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    LENIENT.decode(standard).ok()
}

/// `bytes`: standard base64 with padding on output; see [`decode_base64`] for input.
pub(crate) struct Bytes;

impl Codec for Bytes {
    type Value = Vec<u8>;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_BYTES")
    }
    fn is_default(value: &Vec<u8>) -> bool {
        value.is_empty()
    }
    fn write(value: &Vec<u8>) -> Value {
        Value::String(base64::engine::general_purpose::STANDARD.encode(value))
    }
    fn read(json: &Value) -> Result<Vec<u8>, JsonError> {
        let Some(text) = json.as_str() else {
            return Err(invalid::<Self>(json));
        };
        decode_base64(text).ok_or_else(|| {
            JsonError::invalid_value(
                Self::type_name(),
                format!("Base64 decoding failed for {}", json_text(json)),
            )
        })
    }
}

/// An enum field (stored by prost as `i32`): its value name on output (its number when the
/// number has no name), a name or a number on input.
pub(crate) struct Enum<E>(PhantomData<E>);

impl<E: ProtoEnum> Codec for Enum<E> {
    type Value = i32;
    fn type_name() -> Cow<'static, str> {
        Cow::Owned(format!("type.googleapis.com/{}", E::FULL_NAME))
    }
    fn is_default(value: &i32) -> bool {
        *value == 0
    }
    fn write(value: &i32) -> Value {
        E::name_of(*value).map_or_else(|| Value::from(*value), Value::from)
    }
    fn read(json: &Value) -> Result<i32, JsonError> {
        let number = match json {
            Value::String(name) => E::number_of(name),
            Value::Number(_) => integer(json).and_then(|n| i32::try_from(n).ok()),
            _ => None,
        };
        number.ok_or_else(|| invalid::<Self>(json))
    }
}

/// A message field, which prost wraps in `Option`: written whenever present, even when empty,
/// because message fields have presence.
pub(crate) struct Opt<C>(PhantomData<C>);

impl<C: Codec> Codec for Opt<C> {
    type Value = Option<C::Value>;
    fn type_name() -> Cow<'static, str> {
        C::type_name()
    }
    fn is_default(value: &Self::Value) -> bool {
        value.is_none()
    }
    fn write(value: &Self::Value) -> Value {
        value.as_ref().map_or(Value::Null, C::write)
    }
    fn read(json: &Value) -> Result<Self::Value, JsonError> {
        C::read(json).map(Some)
    }
}

/// A nested message, through its [`ProtoJson`] impl.
pub(crate) struct Msg<T>(PhantomData<T>);

impl<T: ProtoJson + Default> Codec for Msg<T> {
    type Value = T;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("TYPE_MESSAGE")
    }
    /// Messages have presence: a bare message is never "default" (wrap it in [`Opt`]).
    fn is_default(_: &T) -> bool {
        false
    }
    fn write(value: &T) -> Value {
        value.to_json()
    }
    fn read(json: &Value) -> Result<T, JsonError> {
        T::from_json(json)
    }
}

/// `repeated` field: a JSON array; omitted when empty.
pub(crate) struct Repeated<C>(PhantomData<C>);

impl<C: Codec> Codec for Repeated<C> {
    type Value = Vec<C::Value>;
    const REPEATED: bool = true;
    fn type_name() -> Cow<'static, str> {
        C::type_name()
    }
    fn is_default(value: &Self::Value) -> bool {
        value.is_empty()
    }
    fn write(value: &Self::Value) -> Value {
        Value::Array(value.iter().map(C::write).collect())
    }
    fn read(json: &Value) -> Result<Self::Value, JsonError> {
        let Some(items) = json.as_array() else {
            return Err(invalid::<Self>(json));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| C::read(item).map_err(|e| e.within(&format!("[{index}]"))))
            .collect()
    }
}

/// `map<string, V>` field: a JSON object; omitted when empty.
pub(crate) struct Map<C>(PhantomData<C>);

impl<C: Codec> Codec for Map<C> {
    type Value = HashMap<String, C::Value>;
    fn type_name() -> Cow<'static, str> {
        Cow::Owned(format!("map<string, {}>", C::type_name()))
    }
    fn is_default(value: &Self::Value) -> bool {
        value.is_empty()
    }
    fn write(value: &Self::Value) -> Value {
        // Sorted, so the same map always serializes to the same bytes.
        let mut entries: Vec<_> = value.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let object: JsonMap<String, Value> = entries
            .into_iter()
            .map(|(key, item)| (key.clone(), C::write(item)))
            .collect();
        Value::Object(object)
    }
    fn read(json: &Value) -> Result<Self::Value, JsonError> {
        let Some(object) = json.as_object() else {
            return Err(invalid::<Self>(json));
        };
        object
            .iter()
            .map(|(key, item)| {
                let item = C::read(item).map_err(|e| e.within(&format!("[{key}]")))?;
                Ok((key.clone(), item))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_every_alphabet_and_padding() {
        // 0xfb 0xff encodes to "+/8=" in standard and "-_8" in URL-safe unpadded base64.
        for text in ["+/8=", "+/8", "-_8=", "-_8"] {
            assert_eq!(decode_base64(text), Some(vec![0xfb, 0xff]), "{text}");
        }
        assert_eq!(decode_base64("not base64!"), None);
    }

    #[test]
    fn integers_accept_numbers_strings_and_integral_floats() {
        assert_eq!(integer(&Value::from(7)), Some(7));
        assert_eq!(integer(&Value::from("-12")), Some(-12));
        assert_eq!(integer(&serde_json::json!(1e3)), Some(1000));
        assert_eq!(integer(&Value::from("2.5")), None);
        assert_eq!(integer(&Value::from(u64::MAX)), None);
        assert_eq!(integer(&Value::Bool(true)), None);
    }
}
