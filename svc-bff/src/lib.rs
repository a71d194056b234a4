//! svc-bff is the only public entry for apps: it serves the REST API of `CONTRACT.md` (and,
//! as the other services land, WebSocket and SSE), verifies access tokens locally from
//! svc-auth's published keys, and translates every call to gRPC with a deadline. It owns
//! nothing durable.
//!
//! Rooms: `config`, `app` (router and layer stack), `problem` (errors as RFC 9457 problem
//! documents), `extract` (body, query and caller extractors that answer bad input with a
//! problem), `routes/` (one module per area of the API).

pub mod app;
pub mod config;
pub mod extract;
pub mod problem;
pub mod routes;
pub mod views;

pub use app::{App, run};
