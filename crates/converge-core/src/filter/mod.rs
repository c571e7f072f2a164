//! The Pub/Sub subscription filter language.
//!
//! A subscription may carry a filter; the broker delivers only the messages whose attributes
//! match it and acknowledges the others on the subscriber's behalf. The language is the one the
//! real service accepts (a subset of the Google API filtering language, AIP-160), restricted to
//! message attributes:
//!
//! | Form                                   | Matches when                                      |
//! |----------------------------------------|---------------------------------------------------|
//! | `attributes:KEY`                       | the message has the attribute `KEY`               |
//! | `attributes.KEY = "v"`                 | `KEY` is present and its value is exactly `v`     |
//! | `attributes.KEY != "v"`                | `KEY` is absent, or present with another value    |
//! | `hasPrefix(attributes.KEY, "p")`       | `KEY` is present and its value starts with `p`    |
//! | `NOT c`, `-c`                          | `c` does not match                                |
//! | `a AND b AND …`, `a OR b OR …`         | all / any of the operands match                   |
//! | `( … )`                                | grouping                                          |
//!
//! Rules of the grammar, as the service enforces them:
//! - keys may be bare (ASCII letters, digits, `_` and `-`, not starting with `-`) or quoted
//!   string literals (`attributes."iana.org/language_tag"`); values are always string literals;
//! - string literals use `"` or `'` and support the escapes ``\a \b \f \n \r \t \v \\ \' \" \? \` ``,
//!   `\xHH`, octal `\ooo`, `\uHHHH` and `\UHHHHHHHH`; control characters must be escaped;
//! - the operators `AND`, `OR` and `NOT` are upper case; `AND` and `OR` need whitespace on
//!   both sides, `NOT` needs whitespace after it, and `-` sits directly before its operand;
//! - `AND` and `OR` cannot be mixed in one expression without parentheses;
//! - a condition carries at most one negation (`NOT (NOT c)` needs the parentheses);
//! - a filter is at most [`MAX_FILTER_BYTES`] bytes long, and the empty string is not a filter
//!   (callers treat an empty filter field as "no filter").
//!
//! [`Filter`]'s `Display` prints a canonical form that parses back to an equal [`Filter`].

mod ast;
mod eval;
mod lexer;
mod parser;
mod print;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use crate::message::Attributes;

use ast::Expr;

/// The longest filter, in bytes, the service accepts. Pub/Sub documents this limit; enforcing it
/// here keeps parse and evaluation cost (and recursion depth) small and bounded.
pub const MAX_FILTER_BYTES: usize = 256;

/// A parsed, valid subscription filter.
///
/// Parsing once at subscription creation (rather than at every delivery) both rejects invalid
/// filters with a precise error up front and makes matching a cheap tree walk. Equality is
/// structural: two filters are equal when they have the same syntax tree, whatever whitespace or
/// redundant parentheses their texts had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    root: Expr,
}

/// Why a filter text is not a valid filter.
///
/// Carries the byte position so that an API client can point at the offending spot; the
/// `Display` form (`Invalid filter at position N: …`) is what the server returns as the
/// `INVALID_ARGUMENT` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid filter at position {position}: {message}")]
pub struct FilterError {
    /// 0-based byte offset in the filter text of the offending token (the text's length when the
    /// text ended too early).
    pub position: usize,
    /// What is wrong, phrased as what was expected.
    pub message: String,
}

impl FilterError {
    /// Builds an error; internal because only the parser decides what is invalid.
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

impl Filter {
    /// Parses filter text, enforcing the length limit and every rule of the real grammar.
    ///
    /// The empty string is an error: an empty filter field means "no filter", which callers
    /// represent without a `Filter`.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        if src.len() > MAX_FILTER_BYTES {
            return Err(FilterError::new(
                MAX_FILTER_BYTES,
                format!(
                    "the filter is {} bytes long; the maximum is {MAX_FILTER_BYTES} bytes",
                    src.len()
                ),
            ));
        }
        Self::parse_unbounded(src)
    }

    /// Parses without the length limit, so that tests can round-trip trees of any size.
    fn parse_unbounded(src: &str) -> Result<Filter, FilterError> {
        parser::parse(src).map(|root| Filter { root })
    }

    /// Whether a message with these attributes passes the filter (and so is delivered).
    pub fn matches(&self, attributes: &Attributes) -> bool {
        self.root.matches(attributes)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    /// Same as [`Filter::parse`]; lets callers write `text.parse::<Filter>()`.
    fn from_str(src: &str) -> Result<Self, Self::Err> {
        Filter::parse(src)
    }
}

impl fmt::Display for Filter {
    /// Prints the canonical text of the filter: it parses back to an equal `Filter`, so it can
    /// be stored or shown to users in place of the original text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root, f)
    }
}
