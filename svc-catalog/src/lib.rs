//! svc-catalog owns video metadata and search. It serves `tertulia.catalog.v1.CatalogService`
//! and, beside it, `tertulia.catalog.v2.CatalogService` (search with several tags and
//! relevance order) over gRPC: one core, v1 `ListVideos` an adapter over the v2 search.
//!
//! Videos are documents in a store behind one trait ([`store::VideoStore`]): PostgreSQL
//! JSONB with full-text search (the default) or MongoDB with a text index; both pass one
//! contract suite. Visibility is enforced on every read. The lifecycle (`awaiting_upload →
//! processing → ready | failed`) moves only on events from svc-media (JetStream stream
//! `MEDIA`, durable consumer `catalog`); each change is pushed to the owner's live
//! connections on `deliver.<owner_id>`. Deleting is a saga (tombstone, then media removal
//! through svc-media, then forget) finished by a reconciler when a step fails.
//!
//! Rooms: `domain/` (rules), `store/` (adapters and their contract), `catalog` (use cases),
//! `deletion` (the saga), `events` (consume and announce), `grpc` (protobuf translation),
//! `app` (wiring).

pub mod app;
pub mod catalog;
pub mod config;
pub mod deletion;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod store;

pub use app::{App, run};
pub use config::CatalogConfig;
