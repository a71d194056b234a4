//! svc-catalog's failures, by what the caller can do, and their one mapping to `Status`.

use tertulia_plumbing::error as status;
use tonic::Status;

use crate::{domain::Invalid, store::StoreError};

/// Everything a catalog call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The request breaks a rule.
    #[error(transparent)]
    InvalidArgument(#[from] Invalid),
    /// Unknown, or not visible to the caller.
    #[error("video not found")]
    NotFound,
    /// Visible, but only its owner may do this.
    #[error("only the video's owner may {0}")]
    PermissionDenied(&'static str),
    /// Another writer kept winning the race for the document.
    #[error("the video changed concurrently, retry")]
    Contended,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::InvalidArgument(ref e) => Status::invalid_argument(e.to_string()),
            CatalogError::NotFound => Status::not_found(error.to_string()),
            CatalogError::PermissionDenied(_) => Status::permission_denied(error.to_string()),
            CatalogError::Contended => Status::aborted(error.to_string()),
            CatalogError::Store(StoreError::Unavailable(_)) => status::unavailable(&error),
            CatalogError::Store(StoreError::Failed(_)) => status::internal(&error),
        }
    }
}
