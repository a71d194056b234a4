//! svc-bff is the only public entry for apps: it serves the REST API and the WebSocket of
//! `CONTRACT.md`, verifies access tokens locally from
//! svc-auth's published keys, and translates every call to gRPC with a deadline. It owns
//! nothing durable: each instance subscribes to `deliver.<user_id>` for the users connected
//! to it (see `realtime`).
//!
//! Rooms: `config`, `app` (router and layer stack), `problem` (errors as RFC 9457 problem
//! documents), `extract` (body, query and caller extractors that answer bad input with a
//! problem), `routes/` (one module per area of the API), `web` (the web client's files).

pub mod app;
pub mod config;
pub mod extract;
pub mod problem;
pub mod realtime;
pub mod routes;
pub mod usage;
pub mod versions;
pub mod views;
pub mod web;

pub use app::{App, run};
