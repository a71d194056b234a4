//! The PostgreSQL plumbing against the real server: schemas, migrations, error classes.

use tertulia_plumbing::postgres::{self, DbError, Durability, Migration, PipelinedTransaction};
use tertulia_tests::{drop_schema, fresh_database};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_things",
        sql: "CREATE TABLE things (id INT PRIMARY KEY)",
    },
    Migration {
        version: 2,
        name: "add_label",
        sql: "ALTER TABLE things ADD COLUMN label TEXT",
    },
];

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        drop_schema(&self.0);
    }
}

#[tokio::test]
async fn migrations_apply_once_in_order_even_when_instances_race() {
    let config = fresh_database();
    let _guard = Schema(config.schema.clone());
    // Each racer is an instance starting: its own pool, which creates the schema.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                let pool = postgres::connect(&config).await?;
                postgres::migrate(&pool, MIGRATIONS).await
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let pool = postgres::connect(&config).await.unwrap();
    postgres::migrate(&pool, MIGRATIONS).await.unwrap();

    let client = pool.get().await.unwrap();
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    // The table lives in the service's schema, found through search_path.
    client
        .execute("INSERT INTO things (id, label) VALUES (1, 'x')", &[])
        .await
        .unwrap();
    let schema: String = client
        .query_one("SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'things' AND table_schema = current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, config.schema);
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let config = fresh_database();
    let _guard = Schema(config.schema.clone());
    let pool = postgres::connect(&config).await.unwrap();
    postgres::migrate(&pool, &MIGRATIONS[..1]).await.unwrap();
    let edited = [Migration {
        name: "renamed",
        ..MIGRATIONS[0]
    }];
    let err = postgres::migrate(&pool, &edited).await.unwrap_err();
    assert!(
        matches!(err, DbError::MigrationMismatch { version: 1, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let mut config = fresh_database();
    config.schema = "Robert'); DROP TABLE students;--".into();
    let err = postgres::connect(&config).await.unwrap_err();
    assert!(matches!(err, DbError::Config(_)), "{err}");

    let mut config = fresh_database();
    config.url = "postgres://postgres@127.0.0.1:1/postgres".to_owned().into();
    let err = postgres::connect(&config).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn pools_plan_by_value_or_generically_as_asked_and_never_compile() {
    let config = fresh_database();
    let _schema = Schema(config.schema.clone());
    for (plans, expected, scans) in [
        (postgres::Plans::ByValue, "auto", "on"),
        (postgres::Plans::Generic, "force_generic_plan", "off"),
    ] {
        let pool = postgres::connect_planned(&config, plans).await.unwrap();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT current_setting('plan_cache_mode'), current_setting('jit'),
                        current_setting('enable_seqscan')",
                &[],
            )
            .await
            .unwrap();
        let settings: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            settings,
            (expected.to_owned(), "off".to_owned(), scans.to_owned()),
            "{plans:?}"
        );
    }
}

#[tokio::test]
async fn a_generic_plan_made_while_a_table_is_small_still_uses_its_index() {
    // A plan made once is kept for the connection's life: made on a table of a few rows, it
    // would read the whole table at every use however large the table grew.
    let config = fresh_database();
    let _schema = Schema(config.schema.clone());
    let pool = postgres::connect_planned(&config, postgres::Plans::Generic)
        .await
        .unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE keyed (id INT PRIMARY KEY, v TEXT);
             INSERT INTO keyed SELECT n, 'v' FROM generate_series(1, 20) AS n;
             ANALYZE keyed;
             PREPARE lookup(INT[]) AS SELECT v FROM keyed WHERE id = ANY($1);",
        )
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query("EXPLAIN EXECUTE lookup('{1,2}')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("keyed_pkey") && !plan.contains("Seq Scan"),
        "{plan}"
    );
}

/// A pool of at most `size` connections over a fresh schema with a table `things`.
async fn things_pool(size: usize) -> (postgres::PgPool, Schema) {
    let mut config = fresh_database();
    config.max_connections = size;
    let schema = Schema(config.schema.clone());
    let pool = postgres::connect(&config).await.unwrap();
    postgres::migrate(&pool, &MIGRATIONS[..1]).await.unwrap();
    (pool, schema)
}

async fn backend(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn things(pool: &postgres::PgPool) -> Vec<i32> {
    pool.get()
        .await
        .unwrap()
        .query("SELECT id FROM things ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn setting(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn insert_thing(client: &tokio_postgres::Client) -> tokio_postgres::Statement {
    client
        .prepare("INSERT INTO things (id) VALUES ($1)")
        .await
        .unwrap()
}

/// A transaction on the only connection of `pool`, and that connection's backend.
async fn transaction_on(pool: &postgres::PgPool) -> (PipelinedTransaction, i32) {
    let first = backend(&pool.get().await.unwrap()).await;
    let tx = PipelinedTransaction::new(pool.get().await.unwrap(), Durability::Flushed);
    (tx, first)
}

#[tokio::test]
async fn a_pipelined_transaction_commits_its_statements_together_and_returns_its_connection() {
    let (pool, _schema) = things_pool(1).await;
    let (tx, first) = transaction_on(&pool).await;
    let client = tx.client();
    let insert = insert_thing(client).await;
    let count: i64 = tx
        .begin_with(client.query_one("SELECT count(*) FROM things", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    tx.commit_with(async {
        futures::try_join!(
            client.execute(&insert, &[&1i32]),
            client.execute(&insert, &[&2i32])
        )
    })
    .await
    .unwrap();
    drop(tx);
    assert_eq!(things(&pool).await, [1, 2]);
    // Back in the pool of one, outside any transaction.
    let again = pool.get().await.unwrap();
    assert_eq!(backend(&again).await, first);
    assert_eq!(setting(&again, "synchronous_commit").await, "on");
}

#[tokio::test]
async fn a_failed_pipelined_transaction_stores_nothing_and_its_connection_is_closed() {
    let (pool, _schema) = things_pool(1).await;
    let (tx, first) = transaction_on(&pool).await;
    let client = tx.client();
    let insert = insert_thing(client).await;
    tx.begin_with(client.execute(&insert, &[&1i32]))
        .await
        .unwrap();
    // The second statement fails (the same key): the commit behind it rolls back.
    let error = tx
        .commit_with(async {
            futures::try_join!(
                client.execute(&insert, &[&2i32]),
                client.execute(&insert, &[&2i32])
            )
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{error}"
    );
    drop(tx);
    assert_eq!(things(&pool).await, Vec::<i32>::new());
    // The pool of one made a new connection: the failed one was not handed back.
    assert_ne!(backend(&pool.get().await.unwrap()).await, first);

    // Dropped before its commit (a caller that went away): nothing stored either.
    let tx = PipelinedTransaction::new(pool.get().await.unwrap(), Durability::Flushed);
    tx.begin_with(
        tx.client()
            .execute("INSERT INTO things (id) VALUES (3)", &[]),
    )
    .await
    .unwrap();
    drop(tx);
    assert_eq!(things(&pool).await, Vec::<i32>::new());
}

#[tokio::test]
async fn a_rolled_back_pipelined_transaction_hands_its_connection_back_at_once() {
    let (pool, _schema) = things_pool(2).await;
    let tx = PipelinedTransaction::new(pool.get().await.unwrap(), Durability::Deferred);
    let client = tx.client();
    let first = backend(client).await;
    let inside: String = tx
        .begin_with(async {
            client
                .execute("INSERT INTO things (id) VALUES (1)", &[])
                .await?;
            client
                .query_one("SELECT current_setting('synchronous_commit')", &[])
                .await
        })
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, "off", "deferred durability is the transaction's");
    tx.rollback();
    let again = pool.get().await.unwrap();
    assert_eq!(
        backend(&again).await,
        first,
        "the same connection, back in the pool"
    );
    // Outside any transaction: what it writes now is seen at once by another connection.
    again
        .execute("INSERT INTO things (id) VALUES (2)", &[])
        .await
        .unwrap();
    let other = pool.get().await.unwrap();
    assert_ne!(backend(&other).await, first);
    let seen: Vec<i32> = other
        .query("SELECT id FROM things ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, [2], "the rolled-back row is gone");
    assert_eq!(setting(&again, "synchronous_commit").await, "on");
}
