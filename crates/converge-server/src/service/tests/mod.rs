//! Tests of the service layer: the pure conversions and rules, and every RPC over a small
//! in-memory fake store (the real engines are tested in their own crates and end to end).

mod fake_store;
mod pure;
mod rpc;
