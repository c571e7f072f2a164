//! The Pub/Sub filter language. (Placeholder.)

use crate::message::Attributes;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter;

/// A filter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid filter at position {position}: {message}")]
pub struct FilterError {
    /// Byte offset in the filter text.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl Filter {
    /// Parses a filter.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        let _ = src;
        Ok(Filter)
    }

    /// Whether a message with these attributes passes.
    pub fn matches(&self, attributes: &Attributes) -> bool {
        let _ = attributes;
        true
    }
}
