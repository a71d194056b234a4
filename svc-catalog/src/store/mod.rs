//! Where video documents live: one trait, two adapters. PostgreSQL (JSONB documents with a
//! generated full-text column; the default) and MongoDB (the official driver, a text index).
//! Both implement the same rules ([`crate::domain::Search::admits`]) and pass one contract
//! suite ([`contract`]).

pub mod contract;
pub mod mongo;
pub mod postgres;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{Hit, Search, Video};

/// A store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached right now; the caller may retry.
    #[error("video store unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("video store failed: {0}")]
    Failed(String),
}

/// Video documents.
#[async_trait]
pub trait VideoStore: Send + Sync + 'static {
    /// Stores a new video.
    async fn insert(&self, video: &Video) -> Result<(), StoreError>;
    /// The video with `id`, tombstoned or not.
    async fn get(&self, id: Uuid) -> Result<Option<Video>, StoreError>;
    /// Replaces the stored video with `video` if the stored one is still at `expected_revision`
    /// (optimistic concurrency: an owner's edit and a media event never overwrite each other).
    /// Returns whether it did.
    async fn replace(&self, video: &Video, expected_revision: i64) -> Result<bool, StoreError>;
    /// Videos matching `search` in its order, at most `search.limit`. Relevance ranks the
    /// text match (title over tags over description); ties and newest-first go by id.
    async fn search(&self, search: &Search) -> Result<Vec<Hit>, StoreError>;
    /// Tombstoned videos (media removal still to confirm), oldest first.
    async fn tombstoned(&self, limit: usize) -> Result<Vec<Video>, StoreError>;
    /// Forgets a video for good (after its media is gone).
    async fn remove(&self, id: Uuid) -> Result<(), StoreError>;
}
