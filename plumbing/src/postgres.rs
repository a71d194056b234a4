//! PostgreSQL pools whose connections live in one schema, and versioned migrations.
//!
//! Each service owns one schema (`auth`, `chat`, ...) in a shared or dedicated database; tests
//! use a fresh schema each, so they run in parallel against one server.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret as _;
use tokio_postgres::NoTls;

use crate::config::PostgresConfig;

pub use deadpool_postgres::Pool as PgPool;

/// How long a caller waits for a free connection before the call fails.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One versioned migration: applied once, in `version` order, never edited after release.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing version.
    pub version: i64,
    /// Short description, recorded with the version.
    pub name: &'static str,
    /// The SQL, run in the service's schema.
    pub sql: &'static str,
}

/// Failures talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL or schema name is unusable.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// No connection could be had from the pool.
    #[error("no database connection available")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database statement failed")]
    Statement(#[from] tokio_postgres::Error),
    /// An applied migration differs from the code's list (edited after release).
    #[error("migration {version} is recorded as {recorded:?} but the code names it {expected:?}")]
    MigrationMismatch {
        /// The version.
        version: i64,
        /// Name in the database.
        recorded: String,
        /// Name in the code.
        expected: &'static str,
    },
}

impl DbError {
    /// True when the database is unreachable rather than the statement wrong: callers answer
    /// `UNAVAILABLE` instead of `INTERNAL`.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Statement(e) => e.is_closed() || e.code().is_none(),
            Self::Config(_) | Self::MigrationMismatch { .. } => false,
        }
    }

    /// The SQLSTATE of a failed statement, if any.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Self::Statement(e) => e.code(),
            _ => None,
        }
    }
}

/// How a pool's prepared statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's default: a plan for each execution's values until a generic plan looks
    /// as good. For statements whose best plan depends on the values (search).
    ByValue,
    /// One generic plan per statement, made once: for short statements whose plan is the
    /// same whatever the values. PostgreSQL's default keeps re-planning statements over
    /// arrays (`unnest($1)`), whose estimates it can only make from the values.
    Generic,
}

/// Builds a pool whose connections use `config.schema` as `search_path`, creating the schema
/// when missing; statements are planned by value.
pub async fn connect(config: &PostgresConfig) -> Result<Pool, DbError> {
    connect_planned(config, Plans::ByValue).await
}

/// [`connect`], with statements planned as `plans` says.
pub async fn connect_planned(config: &PostgresConfig, plans: Plans) -> Result<Pool, DbError> {
    validate_schema_name(&config.schema)?;
    let mut pg: tokio_postgres::Config = config
        .url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
    // No JIT: every statement here is short, and compiling one costs tens of milliseconds
    // (PostgreSQL's default turns it on for any plan its estimates call expensive).
    let mut options = format!("-c search_path={} -c jit=off", config.schema);
    if plans == Plans::Generic {
        options.push_str(" -c plan_cache_mode=force_generic_plan");
    }
    pg.options(options);
    pg.connect_timeout(CONNECT_TIMEOUT);
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.max_connections)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Config(e.to_string()))?;
    let client = pool.get().await?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", config.schema))
        .await?;
    Ok(pool)
}

/// Applies the migrations not yet recorded in the schema, in order, in one transaction under
/// an advisory lock, so several instances starting together migrate once.
pub async fn migrate(pool: &Pool, migrations: &[Migration]) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    match apply_missing(&tx, migrations).await {
        Ok(()) => Ok(tx.commit().await?),
        Err(error) => {
            // Roll back now rather than on drop, so the advisory lock is released before we
            // return and nothing waits on it.
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

async fn apply_missing(
    tx: &deadpool_postgres::Transaction<'_>,
    migrations: &[Migration],
) -> Result<(), DbError> {
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema()));
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let applied = tx
        .query("SELECT version, name FROM schema_migrations", &[])
        .await?;
    for migration in migrations {
        let recorded = applied
            .iter()
            .find(|row| row.get::<_, i64>(0) == migration.version);
        if let Some(row) = recorded {
            let name: String = row.get(1);
            if name != migration.name {
                return Err(DbError::MigrationMismatch {
                    version: migration.version,
                    recorded: name,
                    expected: migration.name,
                });
            }
            continue;
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            message = "Migration applied.",
            version = migration.version,
            name = migration.name
        );
    }
    Ok(())
}

/// Schema names are spliced into SQL, so only plain identifiers pass.
fn validate_schema_name(schema: &str) -> Result<(), DbError> {
    let mut chars = schema.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63;
    if valid {
        Ok(())
    } else {
        Err(DbError::Config(format!(
            "schema {schema:?} must match [a-z_][a-z0-9_]{{0,62}}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema_name("auth").is_ok());
        assert!(validate_schema_name("t_0199ab").is_ok());
        assert!(validate_schema_name("").is_err());
        assert!(validate_schema_name("Auth").is_err());
        assert!(validate_schema_name("x; DROP TABLE users").is_err());
        assert!(validate_schema_name("1abc").is_err());
    }
}
