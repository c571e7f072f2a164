//! Storage engines of converge, each an implementation of [`converge_core::Store`].
//!
//! - [`embedded`]: the default engine, in-process, on a segmented append-only log with group
//!   commit. Also serves `--memory` (the same engine with persistence turned off).

#[cfg(test)]
pub mod conformance;
pub mod embedded;
pub mod postgres;
