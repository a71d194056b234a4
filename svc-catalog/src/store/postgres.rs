//! The PostgreSQL adapter: one `videos` table of JSONB documents. A generated `tsvector`
//! column (title weighted over tags over description) is what text matches and ranks on. A
//! search for words that must all match and for tags reads `video_terms`, an inverted index
//! kept by a trigger (one row per word, tag and owner of each listed video) whose primary key
//! lists each term's videos newest first; other text queries (phrases, exclusions,
//! alternatives) take the GIN index on the `tsvector`. A b-tree on `(owner_id, id)` serves
//! the owner filter and the primary key keyset pagination (UUIDv7 ids sort by creation time).

use std::fmt::Write as _;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tertulia_plumbing::postgres::{DbError, Migration};
use tokio_postgres::types::{Json, ToSql, Type};
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
    Migration {
        version: 3,
        name: "search terms",
        // An inverted index the planner can walk newest first: one row per word (a lexeme of
        // `search`), tag and owner of every listed video, kept by a trigger in the writing
        // transaction. The newest videos carrying all of a search's terms are a merge of
        // backwards index-only scans of the primary key that stops once it has enough,
        // whether a term is in most videos or in few (see `PostgresVideos::search`).
        sql: r#"
CREATE TABLE video_terms (
    field "char" NOT NULL, -- 'w' a word, 't' a tag, 'o' the owner
    term text NOT NULL,
    id uuid NOT NULL,
    PRIMARY KEY (field, term, id)
);
CREATE FUNCTION video_terms_of(v videos) RETURNS TABLE (field "char", term text)
LANGUAGE sql STABLE AS $$
    SELECT 'w'::"char", lexeme FROM unnest(tsvector_to_array(v.search)) AS lexeme
    UNION SELECT 't', tag FROM jsonb_array_elements_text(v.doc->'tags') AS tag
    UNION SELECT 'o', v.owner_id::text
$$;
CREATE FUNCTION index_video_terms() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    was_listed boolean := false;
    is_listed boolean := false;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        was_listed := coalesce(NOT OLD.deleted AND OLD.doc->>'visibility' = 'public'
                               AND OLD.doc->>'status' = 'ready', false);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        is_listed := coalesce(NOT NEW.deleted AND NEW.doc->>'visibility' = 'public'
                              AND NEW.doc->>'status' = 'ready', false);
    END IF;
    IF TG_OP = 'UPDATE' AND was_listed = is_listed AND (NOT is_listed OR (
           OLD.search = NEW.search AND OLD.doc->'tags' = NEW.doc->'tags'
           AND OLD.owner_id = NEW.owner_id)) THEN
        RETURN NULL;
    END IF;
    IF was_listed THEN
        DELETE FROM video_terms t USING video_terms_of(OLD) o
         WHERE t.field = o.field AND t.term = o.term AND t.id = OLD.id;
    END IF;
    IF is_listed THEN
        INSERT INTO video_terms (field, term, id)
        SELECT o.field, o.term, NEW.id FROM video_terms_of(NEW) o;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER videos_terms AFTER INSERT OR UPDATE OR DELETE ON videos
    FOR EACH ROW EXECUTE FUNCTION index_video_terms();
INSERT INTO video_terms (field, term, id)
SELECT o.field, o.term, v.id FROM videos v, video_terms_of(v) o
 WHERE NOT v.deleted AND v.doc->>'visibility' = 'public' AND v.doc->>'status' = 'ready';
-- A viewer's own videos that others cannot list, searched beside the terms.
CREATE INDEX videos_unlisted ON videos (owner_id, id DESC)
    WHERE (doc->>'visibility' = 'public' AND doc->>'status' = 'ready') IS NOT TRUE
      AND NOT deleted;
ANALYZE video_terms;
"#,
    },
    Migration {
        version: 4,
        name: "term ranks",
        // Each word's rank in its video (`ts_rank` of the video's text against that word
        // alone), in the index entry beside the id: a search ranks its candidates from the
        // index-only scans that found them and reads the page's videos alone, not every
        // candidate's row (`by_terms`). The index is rebuilt after the rows are written.
        sql: r#"
DROP FUNCTION video_terms_of(videos);
CREATE FUNCTION video_terms_of(v videos) RETURNS TABLE (field "char", term text, rank real)
LANGUAGE sql STABLE AS $$
    SELECT 'w'::"char", lexeme, ts_rank(v.search, (
               '''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery)
    FROM unnest(tsvector_to_array(v.search)) AS lexeme
    UNION SELECT 't', tag, 0 FROM jsonb_array_elements_text(v.doc->'tags') AS tag
    UNION SELECT 'o', v.owner_id::text, 0
$$;
CREATE OR REPLACE FUNCTION index_video_terms() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    was_listed boolean := false;
    is_listed boolean := false;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        was_listed := coalesce(NOT OLD.deleted AND OLD.doc->>'visibility' = 'public'
                               AND OLD.doc->>'status' = 'ready', false);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        is_listed := coalesce(NOT NEW.deleted AND NEW.doc->>'visibility' = 'public'
                              AND NEW.doc->>'status' = 'ready', false);
    END IF;
    IF TG_OP = 'UPDATE' AND was_listed = is_listed AND (NOT is_listed OR (
           OLD.search = NEW.search AND OLD.doc->'tags' = NEW.doc->'tags'
           AND OLD.owner_id = NEW.owner_id)) THEN
        RETURN NULL;
    END IF;
    IF was_listed THEN
        DELETE FROM video_terms t USING video_terms_of(OLD) o
         WHERE t.field = o.field AND t.term = o.term AND t.id = OLD.id;
    END IF;
    IF is_listed THEN
        INSERT INTO video_terms (field, term, id, rank)
        SELECT o.field, o.term, NEW.id, o.rank FROM video_terms_of(NEW) o;
    END IF;
    RETURN NULL;
END
$$;
ALTER TABLE video_terms DROP CONSTRAINT video_terms_pkey;
TRUNCATE video_terms;
ALTER TABLE video_terms ADD COLUMN rank real NOT NULL;
INSERT INTO video_terms (field, term, id, rank)
SELECT o.field, o.term, v.id, o.rank FROM videos v, video_terms_of(v) o
 WHERE NOT v.deleted AND v.doc->>'visibility' = 'public' AND v.doc->>'status' = 'ready';
ALTER TABLE video_terms ADD PRIMARY KEY (field, term, id) INCLUDE (rank);
ANALYZE video_terms;
"#,
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
        let client = self.client().await?;
        let words = match &search.text {
            Some(text) => {
                let row = client
                    .query_typed(
                        "SELECT websearch_to_tsquery('english', $1)::text",
                        &[(text, Type::TEXT)],
                    )
                    .await
                    .map_err(query_failed)?;
                row.first().and_then(|r| conjunction(r.get(0)))
            }
            None => Some(Vec::new()),
        };
        // One statement per shape (how many terms, which order, a cursor or not), prepared
        // once per connection: its plan does not depend on the terms.
        let rows = if let Some(statement) = words.and_then(|words| by_terms(search, &words)) {
            let prepared = client
                .prepare_cached(&statement.sql)
                .await
                .map_err(query_failed)?;
            client.query(&prepared, &statement.params()).await
        } else {
            let statement = by_documents(search);
            client.query(&statement.sql, &statement.params()).await
        }
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

/// Most terms (words, tags and the owner) a search looks up in the index of terms; one with
/// more reads whole documents instead of joining that many walks.
const MOST_TERMS: usize = 8;

/// A statement and the values it binds, numbered as they are bound.
#[derive(Default)]
struct Statement {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Statement {
    /// Binds `value` and returns its placeholder.
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The lexemes of a query that is nothing but lexemes that must all be present (`'a' & 'b'`,
/// as `websearch_to_tsquery` prints it), or `None` for anything else: a phrase, an
/// alternative, an exclusion, or no lexeme at all.
fn conjunction(query: &str) -> Option<Vec<String>> {
    let mut lexemes = Vec::new();
    let mut rest = query;
    loop {
        let mut chars = rest.strip_prefix('\'')?.chars();
        let mut lexeme = String::new();
        // Inside quotes `''` is a quote and a backslash escapes the next character.
        loop {
            match chars.next()? {
                '\'' if chars.as_str().starts_with('\'') => {
                    chars.next();
                    lexeme.push('\'');
                }
                '\'' => break,
                '\\' => lexeme.push(chars.next()?),
                c => lexeme.push(c),
            }
        }
        if !lexemes.contains(&lexeme) {
            lexemes.push(lexeme);
        }
        rest = chars.as_str();
        if rest.is_empty() {
            return Some(lexemes);
        }
        rest = rest.strip_prefix(" & ")?;
    }
}

/// Keyset cursor values: a relevance score and the id to resume after.
fn cursor(search: &Search) -> (Option<f64>, Option<Uuid>) {
    match search.after {
        Some(Cursor::Relevance { score, id }) => (Some(score), Some(id)),
        Some(Cursor::Newest(id)) => (None, Some(id)),
        None => (None, None),
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A page of `candidates` (a query of the newest matches' `id`, `doc` and `search`) in the
/// search's order: `doc` and `relevance`, ranked for a relevance search, whose cursor applies
/// after ranking.
fn page(s: &mut Statement, search: &Search, candidates: &str) -> String {
    let limit = s.bind(count(search.limit));
    match search.order {
        Order::Newest => {
            format!("SELECT doc, 0::float8 FROM ({candidates}) c ORDER BY id DESC LIMIT {limit}")
        }
        // Ranked in float8 so a cursor's score compares exactly.
        Order::Relevance => {
            let text = s.bind(search.text.clone());
            let after = after_score(s, search);
            format!(
                "SELECT doc, relevance FROM (
                     SELECT id, doc,
                            ts_rank(search, (SELECT websearch_to_tsquery('english', {text})))
                                ::float8 AS relevance
                     FROM ({candidates}) c
                 ) ranked {after}
                 ORDER BY relevance DESC, id DESC LIMIT {limit}"
            )
        }
    }
}

/// The cursor of a relevance page, as a condition on the ranked rows' `relevance` and `id`.
fn after_score(s: &mut Statement, search: &Search) -> String {
    match cursor(search) {
        (Some(score), Some(id)) => {
            format!(
                "WHERE (relevance, id) < ({}, {})",
                s.bind(score),
                s.bind(id)
            )
        }
        _ => String::new(),
    }
}

/// How many of the newest matches a statement reads, and the id they must be older than.
fn window(s: &mut Statement, search: &Search) -> (String, Option<String>) {
    match search.order {
        Order::Newest => (
            s.bind(count(search.limit)),
            cursor(search).1.map(|id| s.bind(id)),
        ),
        Order::Relevance => (s.bind(count(search.candidates)), None),
    }
}

/// A search with no word or tag to look up, or a query that is more than words that must all
/// match: the listing indexes (newest listed, an owner's) or the text index, over whole
/// documents, with the rule of `Search::admits` in SQL.
fn by_documents(search: &Search) -> Statement {
    let mut s = Statement::default();
    let viewer = s.bind(search.viewer);
    let owner = s.bind(search.owner_id);
    let tags = s.bind(Json(search.tags.clone()));
    let text = s.bind(search.text.clone());
    let (n, older) = window(&mut s, search);
    let older = older.map_or(String::new(), |id| format!("AND id < {id}::uuid"));
    // For a relevance search: the newest `n` matches (a backwards walk of the primary key
    // that stops early for a common word; the planner takes the text index for a rare one).
    let candidates = format!(
        "SELECT id, doc, search FROM videos
         WHERE NOT deleted
           AND (owner_id = {viewer}::uuid
                OR (doc->>'visibility' = 'public' AND doc->>'status' = 'ready'))
           AND ({owner}::uuid IS NULL OR owner_id = {owner})
           AND doc->'tags' @> {tags}::jsonb
           AND ({text}::text IS NULL OR search @@ websearch_to_tsquery('english', {text}))
           {older}
         ORDER BY id DESC LIMIT {n}"
    );
    s.sql = page(&mut s, search, &candidates);
    s
}

/// A search for videos carrying every one of some terms (the words of a query that are all
/// required, the tags, the owner): the newest listed ones from the index of terms (a merge
/// of one backwards walk per term, which stops once it has enough), beside the viewer's own
/// videos that others cannot list (from their partial index, which holds few per owner).
/// `None` when there is no word or tag to look up, or more than [`MOST_TERMS`] terms.
fn by_terms(search: &Search, words: &[String]) -> Option<Statement> {
    if words.is_empty() && search.tags.is_empty() {
        return None;
    }
    let mut s = Statement::default();
    let (n, older) = window(&mut s, search);
    let mut terms: Vec<(&str, String)> = words.iter().map(|w| ("w", s.bind(w.clone()))).collect();
    terms.extend(search.tags.iter().map(|t| ("t", s.bind(t.clone()))));
    if let Some(owner) = search.owner_id {
        terms.push(("o", s.bind(owner.to_string())));
    }
    if terms.len() > MOST_TERMS {
        return None;
    }
    let older_than = |table: &str| {
        older
            .as_ref()
            .map_or(String::new(), |id| format!("AND {table}.id < {id}::uuid"))
    };
    let ((field, term), others) = terms.split_first()?;
    let mut joins = String::new();
    for (i, (field, term)) in others.iter().enumerate() {
        let t = format!("t{}", i + 1);
        let _ = write!(
            joins,
            " JOIN video_terms {t} ON {t}.id = t0.id AND {t}.field = '{field}'
                AND {t}.term = {term} {}",
            older_than(&t)
        );
    }
    // The words come first among the terms. Relevance is the mean of their ranks, which is
    // `ts_rank` of the video against any of the words (`a | b`).
    let ranked = !words.is_empty() && search.order == Order::Relevance;
    let relevance = if ranked {
        let ranks: Vec<String> = (0..words.len()).map(|i| format!("t{i}.rank")).collect();
        format!("(({}) / {})::float8", ranks.join(" + "), words.len())
    } else {
        "0::float8".to_owned()
    };
    let listed = format!(
        "SELECT t0.id, {relevance} AS relevance FROM video_terms t0{joins}
         WHERE t0.field = '{field}' AND t0.term = {term} {}
         ORDER BY t0.id DESC LIMIT {n}",
        older_than("t0")
    );
    let own = match search.viewer {
        Some(viewer) if search.owner_id.is_none_or(|owner| owner == viewer) => {
            let viewer = s.bind(viewer);
            let tags = s.bind(Json(search.tags.clone()));
            let text = search.text.clone().map_or(String::new(), |text| {
                format!(
                    "AND search @@ (SELECT websearch_to_tsquery('english', {}))",
                    s.bind(text)
                )
            });
            // The ranks of its words as the index of terms would hold them.
            let relevance = if ranked {
                format!(
                    "((SELECT sum(o.rank) FROM video_terms_of(v) o
                       WHERE o.field = 'w' AND o.term = ANY({}::text[])) / {})::float8",
                    s.bind(words.to_vec()),
                    words.len()
                )
            } else {
                "0::float8".to_owned()
            };
            format!(
                " UNION ALL (SELECT id, {relevance} FROM videos v
                 WHERE owner_id = {viewer}::uuid AND NOT deleted
                   AND (doc->>'visibility' = 'public' AND doc->>'status' = 'ready') IS NOT TRUE
                   AND doc->'tags' @> {tags}::jsonb {text} {}
                 ORDER BY id DESC LIMIT {n})",
                older_than("v")
            )
        }
        _ => String::new(),
    };
    let candidates =
        format!("SELECT id, relevance FROM (({listed}){own}) u ORDER BY id DESC LIMIT {n}");
    // Ranked from the index entries; only the page's videos are read.
    s.sql = match search.order {
        Order::Newest => format!(
            "SELECT v.doc, 0::float8 FROM ({candidates}) p JOIN videos v ON v.id = p.id
             ORDER BY p.id DESC"
        ),
        Order::Relevance => {
            let limit = s.bind(count(search.limit));
            let after = after_score(&mut s, search);
            format!(
                "SELECT v.doc, p.relevance
                 FROM (SELECT id, relevance FROM ({candidates}) c {after}
                       ORDER BY relevance DESC, id DESC LIMIT {limit}) p
                 JOIN videos v ON v.id = p.id
                 ORDER BY p.relevance DESC, p.id DESC"
            )
        }
    };
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::conjunction;

    #[test]
    fn a_query_of_required_words_is_a_conjunction_of_its_lexemes() {
        assert_eq!(conjunction("'ocean'"), Some(vec!["ocean".to_owned()]));
        assert_eq!(
            conjunction("'castl' & 'firework' & 'castl'"),
            Some(vec!["castl".to_owned(), "firework".to_owned()])
        );
        assert_eq!(
            conjunction(r"'it''s' & 'a\\b' & 'x & y'"),
            Some(vec![
                "it's".to_owned(),
                r"a\b".to_owned(),
                "x & y".to_owned()
            ])
        );
    }

    #[test]
    fn phrases_exclusions_alternatives_and_nothing_are_not() {
        for query in [
            "",
            "'red' <-> 'fox'",
            "'fox' & !'red'",
            "'kite' | 'grey'",
            "'a' & 'b' | 'c'",
            "'ocean':*",
            "'unterminated",
            "'a' &",
        ] {
            assert_eq!(conjunction(query), None, "{query}");
        }
    }
}
