//! svc-presence knows who is online and when users were last seen. Gateways send a
//! heartbeat per connected session and a disconnect when it ends; state lives in NATS KV
//! (bucket `PRESENCE`, compare-and-set per user, expiring on its own; bucket `LAST_SEEN`), so
//! users of a crashed gateway go offline within the session TTL with no one telling us. A
//! sweeper announces those expiries. Online/offline changes are pushed as `PresenceChanged`
//! to the user's contacts and conversation peers on their `deliver.<user_id>` subjects
//! (core NATS: ephemeral, never stored).
//!
//! Rooms: `store` (the KV buckets), `presence` (use cases and pushes), `grpc`, `app`.

pub mod app;
pub mod config;
pub mod grpc;
pub mod presence;
pub mod store;

pub use app::{App, run};
pub use config::PresenceConfig;
