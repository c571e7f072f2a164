//! The converge broker's network surfaces.
//!
//! One port serves gRPC (`google.pubsub.v1`, h2c) and its REST/JSON mapping (HTTP/1.1 and h2c),
//! plus `/healthz`, `/readyz` and `/metrics`. Both API surfaces are thin doors into one
//! [`service`] layer, so every rule lives in one place. Start reading at [`run()`].

pub mod admin;
pub mod config;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod push;
pub mod rest;
pub mod run;
pub mod service;
pub mod state;

pub use config::ServerConfig;
pub use run::{app, run, start};

/// The prost types of `google.pubsub.v1` (the server stubs are in [`grpc::stubs`]).
pub mod proto {
    pub use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::*;
}
