//! The converge broker server. (Being written.)
