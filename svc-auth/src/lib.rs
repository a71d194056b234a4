//! svc-auth owns users, contacts, password hashes, refresh-token families and the keys that
//! sign access tokens (PostgreSQL schema `auth`). It serves `tertulia.auth.v1.AuthService`
//! over gRPC and publishes its public keys through `GetJwks`, so other services verify
//! access tokens locally. It publishes and consumes no events.
//!
//! Rooms: `domain/` holds the rules (credentials, tokens), `store/` the tables, `accounts` the
//! use cases that combine them, `grpc` the protobuf translation, `app` the wiring.

pub mod accounts;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

pub use app::{App, run};
