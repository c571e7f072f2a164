//! Codecs for the well-known types the Pub/Sub messages embed: `Duration`, `Timestamp`,
//! `FieldMask` and `Struct`, each of which has a special (non-object) proto3 JSON form.
//!
//! The text formats come from `prost-types` (its `Display`/`FromStr` impls follow the proto3
//! JSON mapping); this module adds the range checks and the stricter input rules it lacks.

use std::borrow::Cow;

use prost_types::value::Kind;
use prost_types::{Duration, FieldMask, ListValue, Struct, Timestamp};
use serde_json::{Map as JsonMap, Number, Value};

use super::codec::Codec;
use super::error::{JsonError, json_text};
use super::names::{field_mask_from_str, field_mask_to_string};

/// The largest magnitude, in seconds, a `google.protobuf.Duration` may have (10 000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;
/// `0001-01-01T00:00:00Z`, the earliest valid `google.protobuf.Timestamp`.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// `9999-12-31T23:59:59Z`, the latest valid `google.protobuf.Timestamp` second.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// `google.protobuf.Duration` as `"10s"` / `"1.500s"` (0, 3, 6 or 9 fractional digits).
pub(crate) struct Dur;

impl Codec for Dur {
    type Value = Duration;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("type.googleapis.com/google.protobuf.Duration")
    }
    fn is_default(_: &Duration) -> bool {
        false
    }
    fn write(value: &Duration) -> Value {
        Value::String(value.to_string())
    }
    fn read(json: &Value) -> Result<Duration, JsonError> {
        json.as_str()
            .and_then(|text| text.parse::<Duration>().ok())
            .filter(|d| d.seconds.abs() <= MAX_DURATION_SECONDS)
            .ok_or_else(|| JsonError::invalid_value(Self::type_name(), json_text(json)))
    }
}

/// `google.protobuf.Timestamp` as RFC 3339 in UTC (`"2024-01-01T00:00:00.123Z"`) on output;
/// any RFC 3339 offset accepted on input.
pub(crate) struct Ts;

impl Ts {
    /// Whether `text` has the full `date 'T' time` shape; `prost-types` also accepts a bare
    /// date or a space separator, which RFC 3339 (and Google) reject.
    fn has_time_part(text: &str) -> bool {
        matches!(text.as_bytes().get(10), Some(b'T' | b't'))
    }
}

impl Codec for Ts {
    type Value = Timestamp;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("type.googleapis.com/google.protobuf.Timestamp")
    }
    fn is_default(_: &Timestamp) -> bool {
        false
    }
    fn write(value: &Timestamp) -> Value {
        Value::String(value.to_string())
    }
    fn read(json: &Value) -> Result<Timestamp, JsonError> {
        json.as_str()
            .filter(|text| Self::has_time_part(text))
            .and_then(|text| text.parse::<Timestamp>().ok())
            .filter(|ts| (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds))
            .ok_or_else(|| JsonError::invalid_value(Self::type_name(), json_text(json)))
    }
}

/// `google.protobuf.FieldMask` as one comma-separated string of lowerCamelCase paths; the
/// parsed paths are snake_case.
pub(crate) struct Mask;

impl Codec for Mask {
    type Value = FieldMask;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("type.googleapis.com/google.protobuf.FieldMask")
    }
    fn is_default(_: &FieldMask) -> bool {
        false
    }
    fn write(value: &FieldMask) -> Value {
        Value::String(field_mask_to_string(value))
    }
    fn read(json: &Value) -> Result<FieldMask, JsonError> {
        json.as_str()
            .map(field_mask_from_str)
            .ok_or_else(|| JsonError::invalid_value(Self::type_name(), json_text(json)))
    }
}

/// `google.protobuf.Struct` as the JSON object it models.
pub(crate) struct StructCodec;

/// The JSON a `google.protobuf.Value` stands for. Non-finite numbers have no JSON form and an
/// unset kind has no meaning; both become `null`.
fn value_to_json(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

/// The `google.protobuf.Value` any JSON value stands for.
fn json_to_value(json: &Value) -> prost_types::Value {
    let kind = match json {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(object_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn struct_to_json(value: &Struct) -> Value {
    let object: JsonMap<String, Value> = value
        .fields
        .iter()
        .map(|(key, item)| (key.clone(), value_to_json(item)))
        .collect();
    Value::Object(object)
}

fn object_to_struct(object: &JsonMap<String, Value>) -> Struct {
    let fields = object
        .iter()
        .map(|(key, item)| (key.clone(), json_to_value(item)))
        .collect();
    Struct { fields }
}

impl Codec for StructCodec {
    type Value = Struct;
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("type.googleapis.com/google.protobuf.Struct")
    }
    fn is_default(_: &Struct) -> bool {
        false
    }
    fn write(value: &Struct) -> Value {
        struct_to_json(value)
    }
    fn read(json: &Value) -> Result<Struct, JsonError> {
        json.as_object()
            .map(object_to_struct)
            .ok_or_else(|| JsonError::invalid_value(Self::type_name(), json_text(json)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_format_with_3_6_or_9_digits() {
        let cases = [
            ((10, 0), "10s"),
            ((1, 500_000_000), "1.500s"),
            ((0, 1_500), "0.000001500s"),
            ((0, 120_000), "0.000120s"),
            ((-1, -500_000_000), "-1.500s"),
        ];
        for ((seconds, nanos), text) in cases {
            let d = Duration { seconds, nanos };
            assert_eq!(Dur::write(&d), json!(text));
            assert_eq!(Dur::read(&json!(text)).unwrap(), d, "{text}");
        }
        assert_eq!(
            Dur::read(&json!("1.5s")).unwrap(),
            Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn durations_reject_bad_text_and_range() {
        for bad in [
            json!("10"),
            json!("1.5m"),
            json!(10),
            json!("315576000001s"),
        ] {
            assert!(Dur::read(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_format_utc_and_accept_offsets() {
        let ts = Timestamp {
            seconds: 1_704_067_200,
            nanos: 123_000_000,
        };
        assert_eq!(Ts::write(&ts), json!("2024-01-01T00:00:00.123Z"));
        assert_eq!(
            Ts::read(&json!("2024-01-01T01:00:00.123+01:00")).unwrap(),
            ts
        );
        let whole = Timestamp {
            seconds: 1_704_067_200,
            nanos: 0,
        };
        assert_eq!(Ts::write(&whole), json!("2024-01-01T00:00:00Z"));
        for bad in [
            json!("2024-01-01"),
            json!("2024-01-01 00:00:00Z"),
            json!(0),
            json!("0000-01-01T00:00:00Z"),
        ] {
            assert!(Ts::read(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn structs_map_to_plain_json() {
        let value = json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": {}}});
        let parsed = StructCodec::read(&value).unwrap();
        assert_eq!(StructCodec::write(&parsed), value);
        assert!(StructCodec::read(&json!([1])).is_err());
    }
}
