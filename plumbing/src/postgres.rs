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
    ///
    /// The statements are keyed lookups, so their tables are not scanned whole where an
    /// index serves (`enable_seqscan = off`): a plan made while a table is small would scan
    /// it (cheaper then), and keep scanning it as it grows, until a new `ANALYZE` of the
    /// table (autovacuum's, where it runs) has the statement planned again.
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
        options.push_str(" -c plan_cache_mode=force_generic_plan -c enable_seqscan=off");
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
    // `IF NOT EXISTS` does not make two instances starting together safe (the second fails
    // on the catalog's unique key): they take turns under an advisory lock, held until the
    // statements' implicit transaction ends.
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('{schema}'));
             CREATE SCHEMA IF NOT EXISTS {schema}",
            schema = config.schema
        ))
        .await?;
    Ok(pool)
}

/// A transaction whose `BEGIN` travels with its first statements and whose `COMMIT` with
/// its last, so a transaction of reads then writes costs two round trips instead of four.
///
/// PostgreSQL runs what one connection sends in order, and `tokio-postgres` sends a
/// statement when its future is first polled; so `BEGIN` polled before the first
/// statements, and `COMMIT` after the last, wrap them as a transaction. A statement that
/// fails aborts the transaction, and the `COMMIT` behind it then rolls back.
///
/// Unless [`commit_with`](Self::commit_with) succeeded or [`rollback`](Self::rollback) was
/// called, dropping it closes the connection instead of handing it back to the pool (the
/// server rolls back what the connection had begun), so no connection goes back to the pool
/// inside a transaction, whatever went wrong.
pub struct PipelinedTransaction {
    /// `None` once the connection is back in the pool.
    client: Option<deadpool_postgres::Object>,
    /// What starts it.
    begin: &'static str,
    /// The commit succeeded: the connection may go back to the pool.
    committed: std::sync::atomic::AtomicBool,
}

/// When a commit counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once its WAL is on disk: what was answered survives a crash of the server.
    Flushed,
    /// Before its WAL is on disk (`synchronous_commit = off`): a crash of the server may
    /// lose the last fraction of a second of such commits, never anyone else's. Only for
    /// writes that are done again when lost, such as marking outbox rows published.
    Deferred,
}

impl PipelinedTransaction {
    /// A transaction on `client`, not yet begun: prepare statements with
    /// [`client`](Self::client), then [`begin_with`](Self::begin_with).
    #[must_use]
    pub fn new(client: deadpool_postgres::Object, durability: Durability) -> Self {
        Self {
            client: Some(client),
            begin: match durability {
                Durability::Flushed => "BEGIN",
                Durability::Deferred => "BEGIN; SET LOCAL synchronous_commit TO off",
            },
            committed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The connection, for preparing statements and for the futures of those it runs.
    ///
    /// # Panics
    ///
    /// Never: the connection is only taken by [`rollback`](Self::rollback) and `drop`, which
    /// consume the transaction.
    pub fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("a transaction holds its connection until it is over")
    }

    /// Sends `BEGIN` (and the durability's setting) and, behind it, `first`: the
    /// transaction's first statements.
    ///
    /// # Errors
    ///
    /// `BEGIN` or one of `first`'s statements failed; drop the transaction.
    pub async fn begin_with<T>(
        &self,
        first: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let ((), value) = futures::try_join!(self.client().batch_execute(self.begin), first)?;
        Ok(value)
    }

    /// Sends `last`, the transaction's last statements, and `COMMIT` behind them; once the
    /// commit succeeded, dropping the transaction hands the connection back to the pool.
    ///
    /// `last` must send all of its statements when first polled: statements already
    /// prepared, not a block that prepares one (whose statement would go after the `COMMIT`).
    ///
    /// # Errors
    ///
    /// One of `last`'s statements or the commit failed: nothing of the transaction is
    /// stored, or, when the connection was lost during the commit, it may be.
    pub async fn commit_with<T>(
        &self,
        last: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let (value, ()) = futures::try_join!(last, self.client().batch_execute("COMMIT"))?;
        self.committed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(value)
    }

    /// Rolls back, without waiting: the connection goes back to the pool at once, and
    /// whatever it is asked next goes after the `ROLLBACK`.
    pub fn rollback(mut self) {
        if let Some(client) = self.client.take() {
            // Polled once, the request is sent; its answer is not needed.
            drop(futures::FutureExt::now_or_never(
                client.batch_execute("ROLLBACK"),
            ));
        }
    }
}

impl Drop for PipelinedTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !self.committed.load(std::sync::atomic::Ordering::Relaxed)
        {
            // Out of the pool, the connection closes and the server rolls back.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl std::fmt::Debug for PipelinedTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinedTransaction")
            .field("begin", &self.begin)
            .field(
                "committed",
                &self.committed.load(std::sync::atomic::Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
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
