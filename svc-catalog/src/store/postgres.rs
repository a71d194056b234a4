//! The PostgreSQL adapter: one `videos` table of JSONB documents. A generated `tsvector`
//! column (title weighted over tags over description) with a GIN index serves full-text
//! search; a GIN index on the tags and a b-tree on `(owner_id, id)` serve the filters; the
//! primary key serves keyset pagination (UUIDv7 ids sort by creation time).

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tertulia_plumbing::postgres::{DbError, Migration};
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::{StoreError, VideoStore};
use crate::domain::{Cursor, Hit, Order, Search, Video};

/// Schema migrations, applied in order at start.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "videos",
        sql: r"
CREATE TABLE videos (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    doc jsonb NOT NULL,
    deleted boolean GENERATED ALWAYS AS ((doc->>'deleted')::boolean) STORED,
    search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, coalesce(doc->>'title', '')), 'A') ||
        setweight(to_tsvector('english'::regconfig, coalesce(doc->>'tags', '')), 'B') ||
        setweight(to_tsvector('english'::regconfig, coalesce(doc->>'description', '')), 'C')
    ) STORED
);
CREATE INDEX videos_search ON videos USING gin (search);
CREATE INDEX videos_tags ON videos USING gin ((doc->'tags'));
CREATE INDEX videos_owner ON videos (owner_id, id DESC);
CREATE INDEX videos_listed ON videos (id DESC)
    WHERE doc->>'visibility' = 'public' AND doc->>'status' = 'ready' AND NOT deleted;
CREATE INDEX videos_tombstoned ON videos (id) WHERE deleted;
",
    },
    Migration {
        version: 2,
        name: "listing statistics",
        // Without statistics on the listing expressions the planner guesses that almost no
        // video is public and ready, and plans every listing as "fetch all listable videos,
        // then sort" (hundreds of ms on 200,000 videos) instead of walking the primary key
        // backwards and stopping after a page (well under 1 ms).
        sql: r"
CREATE STATISTICS videos_listing ON (doc->>'visibility'), (doc->>'status') FROM videos;
ANALYZE videos;
",
    },
];

/// Videos in PostgreSQL.
#[derive(Clone)]
pub struct PostgresVideos {
    pool: Pool,
}

impl PostgresVideos {
    /// A store over a migrated pool.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| from_db(&DbError::from(e)))
    }
}

fn from_db(error: &DbError) -> StoreError {
    let chain = tertulia_plumbing::error::chain(error);
    if error.is_unavailable() {
        StoreError::Unavailable(chain)
    } else {
        StoreError::Failed(chain)
    }
}

fn query_failed(error: tokio_postgres::Error) -> StoreError {
    from_db(&DbError::from(error))
}

fn documents(rows: &[tokio_postgres::Row]) -> Vec<Video> {
    rows.iter().map(|r| r.get::<_, Json<Video>>(0).0).collect()
}

#[async_trait]
impl VideoStore for PostgresVideos {
    async fn insert(&self, video: &Video) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO videos (id, owner_id, doc) VALUES ($1, $2, $3)",
                &[&video.id, &video.owner_id, &Json(video)],
            )
            .await
            .map_err(query_failed)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Video>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT doc FROM videos WHERE id = $1", &[&id])
            .await
            .map_err(query_failed)?;
        Ok(documents(&rows).pop())
    }

    async fn replace(&self, video: &Video, expected_revision: i64) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE videos SET doc = $2 WHERE id = $1 AND (doc->>'revision')::bigint = $3",
                &[&video.id, &Json(video), &expected_revision],
            )
            .await
            .map_err(query_failed)?;
        Ok(n == 1)
    }

    async fn search(&self, search: &Search) -> Result<Vec<Hit>, StoreError> {
        // The same rule as `Search::admits`, in SQL; `$4` is the query (or NULL).
        const LISTABLE: &str = "NOT deleted
               AND (owner_id = $1::uuid
                    OR (doc->>'visibility' = 'public' AND doc->>'status' = 'ready'))
               AND ($2::uuid IS NULL OR owner_id = $2)
               AND doc->'tags' @> $3::jsonb
               AND ($4::text IS NULL OR search @@ websearch_to_tsquery('english', $4))";
        let limit = i64::try_from(search.limit).unwrap_or(i64::MAX);
        let candidates = i64::try_from(search.candidates).unwrap_or(i64::MAX);
        let tags = Json(&search.tags);
        let (score, id) = match search.after {
            Some(Cursor::Relevance { score, id }) => (Some(score), Some(id)),
            Some(Cursor::Newest(id)) => (None, Some(id)),
            None => (None, None),
        };
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&search.viewer, &search.owner_id, &tags, &search.text];
        let sql = match search.order {
            Order::Newest => {
                params.extend([&id as &(dyn ToSql + Sync), &limit]);
                format!(
                    "SELECT doc, 0::float8 FROM videos
                     WHERE {LISTABLE} AND ($5::uuid IS NULL OR id < $5)
                     ORDER BY id DESC LIMIT $6"
                )
            }
            // The newest `candidates` matches (a backwards walk of the primary key that stops
            // early for a common word; the planner takes the text index for a rare one),
            // ranked in float8 so a cursor's score compares exactly.
            Order::Relevance => {
                params.extend([&score as &(dyn ToSql + Sync), &id, &limit, &candidates]);
                format!(
                    "SELECT doc, relevance FROM (
                         SELECT id, doc,
                                ts_rank(search, websearch_to_tsquery('english', $4))::float8
                                    AS relevance
                         FROM (SELECT id, doc, search FROM videos WHERE {LISTABLE}
                               ORDER BY id DESC LIMIT $8) newest
                     ) ranked
                     WHERE $5::float8 IS NULL OR (relevance, id) < ($5, $6::uuid)
                     ORDER BY relevance DESC, id DESC LIMIT $7"
                )
            }
        };
        let rows = self
            .client()
            .await?
            .query(&sql, &params)
            .await
            .map_err(query_failed)?;
        Ok(rows
            .iter()
            .map(|r| Hit {
                video: r.get::<_, Json<Video>>(0).0,
                relevance: r.get(1),
            })
            .collect())
    }

    async fn tombstoned(&self, limit: usize) -> Result<Vec<Video>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT doc FROM videos WHERE deleted ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(query_failed)?;
        Ok(documents(&rows))
    }

    async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM videos WHERE id = $1", &[&id])
            .await
            .map_err(query_failed)?;
        Ok(())
    }
}
