//! svc-auth's schema history. Append only: a released migration is never edited.

use tertulia_plumbing::postgres::Migration;

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "users_tokens_keys",
    sql: include_str!("../../migrations/0001_users_tokens_keys.sql"),
}];
