//! The MongoDB adapter (official `mongodb` driver): collection `videos`, one document per
//! video keyed by its id (`_id`, the UUIDv7 as a string, which sorts by creation time), a
//! text index over title (weight 10), tags (5) and description (1), and indexes for the
//! owner, tag and public-listing filters.

use async_trait::async_trait;
use futures::TryStreamExt as _;
use mongodb::{
    Client, Collection, IndexModel,
    bson::{self, Document, doc},
    options::IndexOptions,
};
use uuid::Uuid;

use super::{StoreError, VideoStore};
use crate::domain::{Cursor, Hit, Order, Search, Video};

/// The field a relevance search ranks by (never stored).
const RELEVANCE: &str = "_relevance";

/// Videos in MongoDB.
#[derive(Clone)]
pub struct MongoVideos {
    videos: Collection<Document>,
}

fn failed(error: &mongodb::error::Error) -> StoreError {
    use mongodb::error::ErrorKind;
    match *error.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Failed(error.to_string()),
    }
}

fn encode(video: &Video) -> Result<Document, StoreError> {
    // Through JSON, so ids and timestamps are the same strings in both stores.
    let json = serde_json::to_value(video).map_err(|e| StoreError::Failed(e.to_string()))?;
    let mut document = bson::to_document(&json).map_err(|e| StoreError::Failed(e.to_string()))?;
    document.insert("_id", video.id.to_string());
    Ok(document)
}

fn decode(mut document: Document) -> Result<Video, StoreError> {
    document.remove("_id");
    let json: serde_json::Value =
        bson::from_document(document).map_err(|e| StoreError::Failed(e.to_string()))?;
    serde_json::from_value(json).map_err(|e| StoreError::Failed(e.to_string()))
}

impl MongoVideos {
    /// Connects to `url`, uses `database`, and creates the indexes (idempotent).
    pub async fn connect(url: &str, database: &str) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(url).await.map_err(|e| failed(&e))?;
        let videos = client.database(database).collection::<Document>("videos");
        let indexes = [
            IndexModel::builder()
                .keys(doc! {"title": "text", "tags": "text", "description": "text"})
                .options(
                    IndexOptions::builder()
                        .name("videos_text".to_owned())
                        .weights(doc! {"title": 10, "tags": 5, "description": 1})
                        .default_language("english".to_owned())
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"owner_id": 1, "_id": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"tags": 1, "_id": -1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"visibility": 1, "status": 1, "deleted": 1, "_id": -1})
                .build(),
        ];
        videos
            .create_indexes(indexes)
            .await
            .map_err(|e| failed(&e))?;
        Ok(Self { videos })
    }

    async fn find(
        &self,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<Video>, StoreError> {
        let documents: Vec<Document> = self
            .videos
            .find(filter)
            .sort(sort)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| failed(&e))?
            .try_collect()
            .await
            .map_err(|e| failed(&e))?;
        documents.into_iter().map(decode).collect()
    }
}

#[async_trait]
impl VideoStore for MongoVideos {
    async fn insert(&self, video: &Video) -> Result<(), StoreError> {
        self.videos
            .insert_one(encode(video)?)
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Video>, StoreError> {
        let found = self
            .videos
            .find_one(doc! {"_id": id.to_string()})
            .await
            .map_err(|e| failed(&e))?;
        found.map(decode).transpose()
    }

    async fn replace(&self, video: &Video, expected_revision: i64) -> Result<bool, StoreError> {
        let result = self
            .videos
            .replace_one(
                doc! {"_id": video.id.to_string(), "revision": expected_revision},
                encode(video)?,
            )
            .await
            .map_err(|e| failed(&e))?;
        Ok(result.matched_count == 1)
    }

    async fn search(&self, search: &Search) -> Result<Vec<Hit>, StoreError> {
        // The same rule as `Search::admits`, as a query document.
        let mut may_list = vec![doc! {"visibility": "public", "status": "ready"}];
        if let Some(viewer) = search.viewer {
            may_list.push(doc! {"owner_id": viewer.to_string()});
        }
        let mut filter = doc! {"deleted": false, "$or": may_list};
        if let Some(owner) = search.owner_id {
            filter.insert("owner_id", owner.to_string());
        }
        if !search.tags.is_empty() {
            filter.insert("tags", doc! {"$all": &search.tags});
        }
        if let Some(text) = &search.text {
            filter.insert("$text", doc! {"$search": text});
        }
        let limit = i64::try_from(search.limit).unwrap_or(i64::MAX);
        let pipeline = match (search.order, search.after) {
            (Order::Relevance, after) => {
                // The newest `candidates` matches, then ranked (as the PostgreSQL store).
                let candidates = i64::try_from(search.candidates).unwrap_or(i64::MAX);
                let mut stages = vec![
                    doc! {"$match": filter},
                    doc! {"$sort": {"_id": -1}},
                    doc! {"$limit": candidates},
                    doc! {"$addFields": {RELEVANCE: {"$meta": "textScore"}}},
                ];
                if let Some(Cursor::Relevance { score, id }) = after {
                    stages.push(doc! {"$match": {"$or": [
                        {RELEVANCE: {"$lt": score}},
                        {RELEVANCE: score, "_id": {"$lt": id.to_string()}},
                    ]}});
                }
                stages.push(doc! {"$sort": {RELEVANCE: -1, "_id": -1}});
                stages.push(doc! {"$limit": limit});
                stages
            }
            (Order::Newest, after) => {
                if let Some(Cursor::Newest(before)) = after {
                    filter.insert("_id", doc! {"$lt": before.to_string()});
                }
                vec![
                    doc! {"$match": filter},
                    doc! {"$sort": {"_id": -1}},
                    doc! {"$limit": limit},
                ]
            }
        };
        let documents: Vec<Document> = self
            .videos
            .aggregate(pipeline)
            .await
            .map_err(|e| failed(&e))?
            .try_collect()
            .await
            .map_err(|e| failed(&e))?;
        documents
            .into_iter()
            .map(|mut d| {
                let relevance = d.remove(RELEVANCE).and_then(|r| r.as_f64()).unwrap_or(0.0);
                Ok(Hit {
                    video: decode(d)?,
                    relevance,
                })
            })
            .collect()
    }

    async fn tombstoned(&self, limit: usize) -> Result<Vec<Video>, StoreError> {
        self.find(doc! {"deleted": true}, doc! {"_id": 1}, limit)
            .await
    }

    async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        self.videos
            .delete_one(doc! {"_id": id.to_string()})
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }
}
