//! Tests of the proto3 JSON mapping: round trips of every covered message with all fields set,
//! golden JSON, accepted input variants, and every error path with its message text.

mod errors;
mod fixtures;
mod golden;
mod input;
mod roundtrip;

use std::fmt::Debug;

use super::{JsonError, ProtoJson, from_slice, to_vec};

/// Parses `json` as `T`, panicking with the error text on failure.
fn parse<T: ProtoJson>(json: serde_json::Value) -> T {
    T::from_json(&json).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

/// The error `json` fails to parse as `T` with.
fn parse_err<T: ProtoJson + Debug>(json: serde_json::Value) -> JsonError {
    match T::from_json(&json) {
        Ok(value) => panic!("{json} parsed as {value:?}"),
        Err(e) => e,
    }
}
