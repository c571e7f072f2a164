//! The error a proto3 JSON body can fail with, worded like Google's front end.
//!
//! Clients (and their tests) match on Google's wording, so the [`Display`](std::fmt::Display) of
//! [`JsonError`] reproduces it: `Invalid JSON payload received. Unknown name "foo" at 'topic':
//! Cannot find field.` or `Invalid value at 'messages[0].data' (TYPE_BYTES), Base64 decoding
//! failed for "..."`. The path is built bottom-up: each enclosing field prefixes its own name as
//! the error travels out of the nested parser, so no parser needs to know where it is.

use std::borrow::Cow;
use std::fmt;

/// Which of Google's message shapes an error renders as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// The body as a whole is unusable (not JSON, a field given twice, a oneof given twice):
    /// `Invalid JSON payload received. {message}[ at '{path}'].`
    Payload,
    /// A key the message does not have, or a list where one value belongs:
    /// `Invalid JSON payload received. Unknown name "{name}"[ at '{path}']: {message}`.
    UnknownName {
        /// The key exactly as the client wrote it.
        name: String,
    },
    /// A value of the wrong JSON type or format:
    /// `Invalid value at '{path}' ({type_name}), {message}`.
    InvalidValue {
        /// The protobuf type expected, e.g. `TYPE_INT32` or
        /// `type.googleapis.com/google.protobuf.Duration`.
        type_name: String,
    },
}

/// A proto3 JSON body that could not be mapped onto a `google.pubsub.v1` message.
///
/// `path` is the snake_case field path (`subscription.push_config`, `messages[0].data`) so the
/// REST layer can report it as a `BadRequest.FieldViolation.field`; `message` is the detail after
/// the path. [`Display`](fmt::Display) renders the whole Google-style sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct JsonError {
    /// Which message shape this is.
    pub kind: JsonErrorKind,
    /// Field path from the root message, snake_case, with `[i]` for list elements and `[key]`
    /// for map entries; empty for the root itself.
    pub path: String,
    /// The detail text (the offending value, or the reason).
    pub message: String,
}

impl JsonError {
    /// A body-level problem such as unparsable JSON.
    pub(crate) fn payload(message: impl Into<String>) -> Self {
        Self {
            kind: JsonErrorKind::Payload,
            path: String::new(),
            message: message.into(),
        }
    }

    /// A key the enclosing message does not know, or cannot take in this form.
    pub(crate) fn unknown_name(name: &str, message: impl Into<String>) -> Self {
        Self {
            kind: JsonErrorKind::UnknownName {
                name: name.to_owned(),
            },
            path: String::new(),
            message: message.into(),
        }
    }

    /// A value that does not fit the field's type; `detail` is usually the JSON value itself.
    pub(crate) fn invalid_value(type_name: Cow<'_, str>, detail: impl Into<String>) -> Self {
        Self {
            kind: JsonErrorKind::InvalidValue {
                type_name: type_name.into_owned(),
            },
            path: String::new(),
            message: detail.into(),
        }
    }

    /// The same error seen from one level up: `segment` is a field name or an `[index]`.
    pub(crate) fn within(mut self, segment: &str) -> Self {
        debug_assert!(!segment.is_empty(), "path segments are never empty");
        self.path = if self.path.is_empty() {
            segment.to_owned()
        } else if self.path.starts_with('[') {
            format!("{segment}{}", self.path)
        } else {
            format!("{segment}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PREFIX: &str = "Invalid JSON payload received.";
        let path = &self.path;
        let message = &self.message;
        match &self.kind {
            JsonErrorKind::Payload if path.is_empty() => write!(f, "{PREFIX} {message}."),
            JsonErrorKind::Payload => write!(f, "{PREFIX} {message} at '{path}'."),
            JsonErrorKind::UnknownName { name } if path.is_empty() => {
                write!(f, "{PREFIX} Unknown name \"{name}\": {message}")
            }
            JsonErrorKind::UnknownName { name } => {
                write!(f, "{PREFIX} Unknown name \"{name}\" at '{path}': {message}")
            }
            // Only a message can fail with no path at all: the body is not an object.
            JsonErrorKind::InvalidValue { .. } if path.is_empty() => {
                write!(
                    f,
                    "{PREFIX} Unknown name \"\": Root element must be a message."
                )
            }
            JsonErrorKind::InvalidValue { type_name } => {
                write!(f, "Invalid value at '{path}' ({type_name}), {message}")
            }
        }
    }
}

/// The compact JSON text of a value, as Google quotes the offending value in its messages.
pub(crate) fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}
