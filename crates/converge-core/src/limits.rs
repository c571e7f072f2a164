//! Limits of the real service, enforced on every request. (Placeholder.)
