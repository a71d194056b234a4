//! svc-auth's failures, by what the caller can do about them, and their one mapping to
//! `tonic::Status`.

use std::time::Duration;

use tertulia_plumbing::{error as status, postgres::DbError};
use tonic::Status;

use crate::domain::{credentials::HashError, tokens::SignError};

/// Everything an auth call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request breaks a rule; the message says which.
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// The username is taken.
    #[error("username is already taken")]
    UsernameTaken,
    /// Unknown user or wrong password: one answer for both.
    #[error("invalid username or password")]
    BadCredentials,
    /// The refresh token is unknown, expired, spent or revoked.
    #[error("invalid refresh token")]
    BadRefreshToken,
    /// No such user.
    #[error("user not found")]
    UserNotFound,
    /// The user is not among the caller's contacts.
    #[error("user is not a contact")]
    NotAContact,
    /// Too many login attempts; retry after the given time.
    #[error("too many login attempts")]
    RateLimited {
        /// Until the window ends.
        retry_after: Duration,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Password hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Token signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidArgument(msg) => Status::invalid_argument(msg),
            AuthError::UsernameTaken => Status::already_exists(error.to_string()),
            AuthError::BadCredentials | AuthError::BadRefreshToken => {
                Status::unauthenticated(error.to_string())
            }
            AuthError::UserNotFound | AuthError::NotAContact => {
                Status::not_found(error.to_string())
            }
            AuthError::RateLimited { retry_after } => {
                status::rate_limited(error.to_string(), retry_after)
            }
            AuthError::Db(ref e) if e.is_unavailable() => status::unavailable(&error),
            AuthError::Db(_) | AuthError::Hash(_) | AuthError::Sign(_) => status::internal(&error),
        }
    }
}
