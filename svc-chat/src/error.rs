//! svc-chat's failures, by what the caller can do, and their one mapping to `Status`.

use tertulia_plumbing::{error as status, postgres::DbError};
use tonic::Status;

/// Everything a chat call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The request breaks a rule.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not found, or not visible to the caller (non-members learn nothing).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Visible, but the caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// The conversation's state does not allow it.
    #[error("{0}")]
    Conflict(&'static str),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<ChatError> for Status {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ChatError::NotFound(_) => Status::not_found(error.to_string()),
            ChatError::PermissionDenied(msg) => Status::permission_denied(msg),
            ChatError::Conflict(msg) => Status::failed_precondition(msg),
            ChatError::Db(ref e) if e.is_unavailable() => status::unavailable(&error),
            ChatError::Db(_) => status::internal(&error),
        }
    }
}
