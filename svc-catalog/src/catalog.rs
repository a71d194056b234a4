//! The catalog's use cases over a [`VideoStore`]: create, read, search, edit and delete for
//! users, and the lifecycle moves that media events make.

use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        Hit, Invalid, MAX_TAGS, MediaEvent, Order, RELEVANCE_CANDIDATES, Search, Video,
        VideoChanges, page_token, without_nul,
    },
    error::CatalogError,
    store::VideoStore,
};

/// Default and largest page sizes.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE: usize = 200;
/// Attempts at a read-modify-write before giving up with `Contended`.
const ATTEMPTS: usize = 5;

/// A page of search results.
#[derive(Debug)]
pub struct Page {
    /// The results, in `order`.
    pub hits: Vec<Hit>,
    /// Resumes after the last one, when more may follow.
    pub next_page_token: Option<String>,
    /// The order applied.
    pub order: Order,
}

/// What a search asks for, raw from the wire (v1 `ListVideos` is the special case of at
/// most one tag, newest first).
#[derive(Debug, Default)]
pub struct SearchRequest {
    /// Full-text query (empty: none).
    pub query: String,
    /// Only videos with every one of these tags (empty strings ignored).
    pub tags: Vec<String>,
    /// Owner filter (empty: none).
    pub owner_id: String,
    /// The order (`None`: relevance with a query, newest first without).
    pub order: Option<Order>,
    /// Opaque cursor of the same order (empty: first page).
    pub page_token: String,
    /// Page size (0: default).
    pub limit: usize,
}

/// The catalog.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn VideoStore>,
}

/// An actor id from the wire: empty means anonymous.
pub fn viewer(actor_id: &str) -> Result<Option<Uuid>, Invalid> {
    if actor_id.is_empty() {
        return Ok(None);
    }
    actor_id
        .parse()
        .map(Some)
        .map_err(|_| Invalid("actor_id is not a valid id".into()))
}

/// Only the owner may `action`; those who cannot even see the video learn nothing.
fn owned_by(video: &Video, viewer: Option<Uuid>, action: &'static str) -> Result<(), CatalogError> {
    if !video.visible_to(viewer) {
        return Err(CatalogError::NotFound);
    }
    if viewer != Some(video.owner_id) {
        return Err(CatalogError::PermissionDenied(action));
    }
    Ok(())
}

/// A video id from the wire; a malformed id names no video.
fn video_id(raw: &str) -> Result<Uuid, CatalogError> {
    raw.parse().map_err(|_| CatalogError::NotFound)
}

impl Catalog {
    /// A catalog over `store`.
    #[must_use]
    pub fn new(store: Arc<dyn VideoStore>) -> Self {
        Self { store }
    }

    /// The store, for tests and the reconciler.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn VideoStore> {
        &self.store
    }

    /// Records a new video of `actor_id`, awaiting its upload.
    pub async fn create(
        &self,
        actor_id: &str,
        changes: VideoChanges,
    ) -> Result<Video, CatalogError> {
        let owner = viewer(actor_id)?.ok_or_else(|| Invalid("actor_id is required".into()))?;
        let video = Video::create(owner, changes, OffsetDateTime::now_utc())?;
        self.store.insert(&video).await?;
        Ok(video)
    }

    /// One video, if `actor_id` may see it.
    pub async fn get(&self, actor_id: &str, id: &str) -> Result<Video, CatalogError> {
        let viewer = viewer(actor_id)?;
        match self.store.get(video_id(id)?).await? {
            Some(v) if v.visible_to(viewer) => Ok(v),
            _ => Err(CatalogError::NotFound),
        }
    }

    /// Searches what `actor_id` may list.
    pub async fn search(
        &self,
        actor_id: &str,
        request: SearchRequest,
    ) -> Result<Page, CatalogError> {
        let limit = match request.limit {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => return Err(Invalid(format!("limit must be 1 to {MAX_PAGE}")).into()),
        };
        let non_empty = |s: String| {
            let s = s.trim().to_owned();
            (!s.is_empty()).then_some(s)
        };
        without_nul("query", &request.query)?;
        for tag in &request.tags {
            without_nul("a tag", tag)?;
        }
        let owner_id = match non_empty(request.owner_id) {
            None => None,
            Some(o) => Some(
                o.parse()
                    .map_err(|_| Invalid("owner_id is not a valid id".into()))?,
            ),
        };
        let mut tags: Vec<String> = Vec::new();
        for tag in request.tags.into_iter().filter_map(non_empty) {
            let tag = tag.to_lowercase();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(Invalid(format!("at most {MAX_TAGS} tags")).into());
        }
        let text = non_empty(request.query);
        let order = match (request.order, &text) {
            (Some(Order::Relevance), None) => {
                return Err(Invalid("ordering by relevance needs a query".into()).into());
            }
            (Some(order), _) => order,
            (None, Some(_)) => Order::Relevance,
            (None, None) => Order::Newest,
        };
        let after = match non_empty(request.page_token) {
            None => None,
            Some(t) => Some(page_token::decode(&t, order)?),
        };
        let search = Search {
            viewer: viewer(actor_id)?,
            text,
            tags,
            owner_id,
            order,
            after,
            // One more than asked tells whether another page follows.
            limit: limit + 1,
            candidates: RELEVANCE_CANDIDATES,
        };
        let mut hits = self.store.search(&search).await?;
        let next_page_token = if hits.len() > limit {
            hits.truncate(limit);
            hits.last().map(|h| page_token::encode(h.cursor(order)))
        } else {
            None
        };
        Ok(Page {
            hits,
            next_page_token,
            order,
        })
    }

    /// Edits a video (owner only).
    pub async fn update(
        &self,
        actor_id: &str,
        id: &str,
        changes: VideoChanges,
    ) -> Result<Video, CatalogError> {
        let viewer = viewer(actor_id)?;
        let id = video_id(id)?;
        self.modify(id, |video| {
            owned_by(video, viewer, "edit it")?;
            video.apply(changes.clone())?;
            Ok(true)
        })
        .await?
        .ok_or(CatalogError::NotFound)
    }

    /// Tombstones a video (owner only): the first step of the delete saga. The video is gone
    /// for every reader from here on; removing its media follows.
    pub async fn tombstone(&self, actor_id: &str, id: &str) -> Result<Video, CatalogError> {
        let viewer = viewer(actor_id)?;
        let id = video_id(id)?;
        self.modify(id, |video| {
            owned_by(video, viewer, "delete it")?;
            video.deleted = true;
            Ok(true)
        })
        .await?
        .ok_or(CatalogError::NotFound)
    }

    /// Applies a media event; returns the video when it changed. Unknown or tombstoned
    /// videos ignore events (their media is being removed).
    pub async fn on_media(
        &self,
        id: Uuid,
        event: MediaEvent,
    ) -> Result<Option<Video>, CatalogError> {
        let changed = self
            .modify(id, |video| {
                Ok(!video.deleted && video.on_media(event.clone()))
            })
            .await?;
        Ok(changed)
    }

    /// Read, change, write back at the read revision; again on a lost race. `change`
    /// answers whether it changed anything. Returns the stored video when it did, and
    /// `None` when the video is unknown or nothing changed.
    async fn modify(
        &self,
        id: Uuid,
        mut change: impl FnMut(&mut Video) -> Result<bool, CatalogError>,
    ) -> Result<Option<Video>, CatalogError> {
        for _ in 0..ATTEMPTS {
            let Some(mut video) = self.store.get(id).await? else {
                return Ok(None);
            };
            let read = video.revision;
            if !change(&mut video)? {
                return Ok(None);
            }
            video.revision = read + 1;
            if self.store.replace(&video, read).await? {
                return Ok(Some(video));
            }
        }
        Err(CatalogError::Contended)
    }
}
