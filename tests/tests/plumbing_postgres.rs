//! The PostgreSQL plumbing against the real server: schemas, migrations, error classes.

use tertulia_plumbing::postgres::{self, DbError, Migration};
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
    let pool = postgres::connect(&config).await.unwrap();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { postgres::migrate(&pool, MIGRATIONS).await })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
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
    for (plans, expected) in [
        (postgres::Plans::ByValue, "auto"),
        (postgres::Plans::Generic, "force_generic_plan"),
    ] {
        let pool = postgres::connect_planned(&config, plans).await.unwrap();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT current_setting('plan_cache_mode'), current_setting('jit')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, String>(0).as_str(),
                row.get::<_, String>(1).as_str()
            ),
            (expected, "off"),
            "{plans:?}"
        );
    }
}
