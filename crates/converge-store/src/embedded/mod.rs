//! The embedded engine. (Being written.)
