//! Tests of the service layer: the pure conversions and rules, and every RPC over the real
//! embedded engine, in memory.

mod pure;
mod rpc;
