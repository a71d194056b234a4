//! Plumbing that every Tertulia service repeats, and nothing else: configuration loading,
//! structured logging and traces, the gRPC server stack (health, reflection, layers, graceful shutdown),
//! gRPC client channels with deadlines, PostgreSQL pools with versioned migrations, NATS and
//! JetStream connections, local verification of access tokens, and the one mapping from
//! internal failures to `tonic::Status`.
//!
//! **Invariant:** no domain type lives here. If a type names a user, a message or a video, it
//! belongs to a service.

pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod generations;
pub mod grpc;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod logging;
pub mod main_loop;
pub mod metrics;
pub mod nats;
pub mod nats_link;
pub mod net;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod wire;

pub use main_loop::{StartError, run_service};
