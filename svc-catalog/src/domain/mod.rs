//! The catalog's rules: what a video is, who may see it, what a valid edit is, how a media
//! event moves its lifecycle. No tonic, no database driver, no NATS here.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Longest title, in Unicode scalar values.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, in Unicode scalar values.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Most tags on one video.
pub const MAX_TAGS: usize = 20;
/// Longest tag, in Unicode scalar values.
pub const MAX_TAG_CHARS: usize = 40;

/// Who may see a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Everyone; listed and searchable once ready.
    Public,
    /// Anyone with its id; never listed to others.
    Unlisted,
    /// The owner only.
    Private,
}

/// Where a video is in its life: `awaiting_upload → processing → ready | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created; its file has not arrived.
    AwaitingUpload,
    /// The file arrived and is being verified and transcoded.
    Processing,
    /// At least one rendition is playable.
    Ready,
    /// The file is not a playable video, or processing gave up.
    Failed,
}

impl Status {
    /// Position in the lifecycle; events never move a video backwards.
    fn rank(self) -> u8 {
        match self {
            Self::AwaitingUpload => 0,
            Self::Processing => 1,
            Self::Ready | Self::Failed => 2,
        }
    }
}

/// One rung of the HLS ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// e.g. `360p`.
    pub name: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Target video bitrate, bits per second.
    pub bitrate: u32,
}

/// A video's metadata: the document both stores keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Video {
    /// UUIDv7: its order is creation order, which keyset pagination relies on.
    pub id: Uuid,
    /// Who uploaded it.
    pub owner_id: Uuid,
    /// Title, 1..=200 characters.
    pub title: String,
    /// Description, up to 5000 characters.
    pub description: String,
    /// Normalised tags (lowercase, unique).
    pub tags: Vec<String>,
    /// Who may see it.
    pub visibility: Visibility,
    /// Lifecycle state.
    pub status: Status,
    /// Seconds, once probed.
    pub duration_s: Option<f64>,
    /// Source width, once probed.
    pub width: Option<u32>,
    /// Source height, once probed.
    pub height: Option<u32>,
    /// Playable renditions so far.
    pub renditions: Vec<Rendition>,
    /// Why processing failed.
    pub failure_reason: Option<String>,
    /// BLAKE3 hash of the uploaded file.
    pub content_hash: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Tombstone: deleted by its owner, media removal under way.
    pub deleted: bool,
    /// Bumped on every change; stores replace a document only at the revision they read.
    pub revision: i64,
}

/// A rule broken by a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What a create or edit asks for; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct VideoChanges {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New tags (replacing all).
    pub tags: Option<Vec<String>>,
    /// New visibility.
    pub visibility: Option<Visibility>,
}

impl Video {
    /// A new video awaiting its upload.
    pub fn create(
        owner_id: Uuid,
        changes: VideoChanges,
        now: OffsetDateTime,
    ) -> Result<Self, Invalid> {
        let mut video = Self {
            id: Uuid::now_v7(),
            owner_id,
            title: String::new(),
            description: String::new(),
            tags: Vec::new(),
            visibility: Visibility::Private,
            status: Status::AwaitingUpload,
            duration_s: None,
            width: None,
            height: None,
            renditions: Vec::new(),
            failure_reason: None,
            content_hash: None,
            created_at: now,
            deleted: false,
            revision: 1,
        };
        if changes.title.is_none() {
            return Err(Invalid("title is required".into()));
        }
        video.apply(changes)?;
        Ok(video)
    }

    /// Applies an owner's edit (validated as a whole: nothing changes if any part is invalid).
    pub fn apply(&mut self, changes: VideoChanges) -> Result<(), Invalid> {
        let title = changes.title.map(|t| title(&t)).transpose()?;
        let description = changes.description.map(|d| description(&d)).transpose()?;
        let tags = changes.tags.map(|t| tags(&t)).transpose()?;
        if let Some(t) = title {
            self.title = t;
        }
        if let Some(d) = description {
            self.description = d;
        }
        if let Some(t) = tags {
            self.tags = t;
        }
        if let Some(v) = changes.visibility {
            self.visibility = v;
        }
        Ok(())
    }

    /// Whether `viewer` (anonymous when `None`) may see this video by its id.
    #[must_use]
    pub fn visible_to(&self, viewer: Option<Uuid>) -> bool {
        !self.deleted && (viewer == Some(self.owner_id) || self.visibility != Visibility::Private)
    }

    /// Applies a media event. Returns whether anything changed: redelivered or late events
    /// change nothing, and a video never moves back in its lifecycle.
    pub fn on_media(&mut self, event: MediaEvent) -> bool {
        let before = self.clone();
        match event {
            MediaEvent::Uploaded { content_hash } => {
                if self.status.rank() < Status::Processing.rank() {
                    self.status = Status::Processing;
                }
                self.content_hash.get_or_insert(content_hash);
            }
            MediaEvent::Processed {
                duration_s,
                width,
                height,
                renditions,
            } => {
                if self.status != Status::Failed {
                    self.status = Status::Ready;
                    self.duration_s = Some(duration_s);
                    self.width = Some(width);
                    self.height = Some(height);
                    // Later events carry more rungs; a redelivered earlier one never removes any.
                    if renditions.len() > self.renditions.len() {
                        self.renditions = renditions;
                    }
                }
            }
            MediaEvent::Failed { reason } => {
                if self.status != Status::Ready {
                    self.status = Status::Failed;
                    self.failure_reason = Some(reason);
                }
            }
        }
        *self != before
    }
}

/// What svc-media tells the catalog about a video.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The file arrived and is stored under its hash.
    Uploaded {
        /// BLAKE3 hash.
        content_hash: String,
    },
    /// Renditions are playable.
    Processed {
        /// Seconds.
        duration_s: f64,
        /// Source width.
        width: u32,
        /// Source height.
        height: u32,
        /// Every playable rendition so far.
        renditions: Vec<Rendition>,
    },
    /// Processing gave up.
    Failed {
        /// Shown to the owner.
        reason: String,
    },
}

/// Text that holds a NUL character, which no stored or searched text may (PostgreSQL cannot
/// store it), is refused as `what`.
///
/// # Errors
/// [`Invalid`] naming `what`.
pub fn without_nul(what: &str, text: &str) -> Result<(), Invalid> {
    if text.contains('\0') {
        return Err(Invalid(format!("{what} must not contain NUL characters")));
    }
    Ok(())
}

fn title(raw: &str) -> Result<String, Invalid> {
    without_nul("title", raw)?;
    let t = raw.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_TITLE_CHARS {
        return Err(Invalid(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    Ok(t.to_owned())
}

fn description(raw: &str) -> Result<String, Invalid> {
    without_nul("description", raw)?;
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Invalid(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw.trim().to_owned())
}

/// Tags are lowercased and deduplicated; letters, digits, `-` and `_` only, so a tag is one
/// search token.
fn tags(raw: &[String]) -> Result<Vec<String>, Invalid> {
    let mut out: Vec<String> = Vec::new();
    for tag in raw {
        let t = tag.trim().to_lowercase();
        let n = t.chars().count();
        if n == 0
            || n > MAX_TAG_CHARS
            || !t
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Invalid(format!(
                "tag {tag:?} must be 1 to {MAX_TAG_CHARS} letters, digits, '-' or '_'"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(Invalid(format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest first (UUIDv7 ids sort by creation time).
    #[default]
    Newest,
    /// Best text match first (needs a query), ties newest first.
    Relevance,
}

/// Where the next page resumes: after the last result of the previous one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursor {
    /// Videos older than this one.
    Newest(Uuid),
    /// Videos ranked after this score and id: a lower score, or the same score and older.
    Relevance {
        /// The last result's relevance, exactly as the store computed it.
        score: f64,
        /// The last result's id.
        id: Uuid,
    },
}

/// How many matches a relevance search ranks: the newest this many. Ranking every match of a
/// common word reads every matching row (a few hundred thousand in a large catalog, seconds);
/// the newest matches are found by walking the primary key backwards and stop after this
/// many, so a search costs about the same however many videos match. Older matches are
/// still found by `order=newest`.
pub const RELEVANCE_CANDIDATES: usize = 1_000;

/// A search over what one viewer may list: their own videos in any state, and others'
/// public videos once ready.
#[derive(Debug, Clone)]
pub struct Search {
    /// Who is asking (`None`: anonymous).
    pub viewer: Option<Uuid>,
    /// Full-text query over title, description and tags.
    pub text: Option<String>,
    /// Only videos carrying every one of these tags (lower case).
    pub tags: Vec<String>,
    /// Only videos of this owner.
    pub owner_id: Option<Uuid>,
    /// The order of results ([`Order::Relevance`] needs `text`).
    pub order: Order,
    /// Keyset cursor of the same order: resume after it.
    pub after: Option<Cursor>,
    /// Most results.
    pub limit: usize,
    /// A relevance search ranks only the newest this many matches
    /// ([`RELEVANCE_CANDIDATES`] unless a test sets it).
    pub candidates: usize,
}

impl Default for Search {
    fn default() -> Self {
        Self {
            viewer: None,
            text: None,
            tags: Vec::new(),
            owner_id: None,
            order: Order::default(),
            after: None,
            limit: 0,
            candidates: RELEVANCE_CANDIDATES,
        }
    }
}

impl Search {
    /// Whether `video` belongs in this search's results, text and relevance aside (stores
    /// match and rank text with their own index). The rule both stores implement in their
    /// query language.
    #[must_use]
    pub fn admits(&self, video: &Video) -> bool {
        let listable = !video.deleted
            && (self.viewer == Some(video.owner_id)
                || (video.visibility == Visibility::Public && video.status == Status::Ready));
        listable
            && self.owner_id.is_none_or(|o| o == video.owner_id)
            && self.tags.iter().all(|t| video.tags.contains(t))
            && match self.after {
                Some(Cursor::Newest(before)) => video.id < before,
                _ => true,
            }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The video.
    pub video: Video,
    /// How well it matches the query (0 when ordered newest first).
    pub relevance: f64,
}

impl Hit {
    /// The cursor that resumes after this hit in `order`.
    #[must_use]
    pub fn cursor(&self, order: Order) -> Cursor {
        match order {
            Order::Newest => Cursor::Newest(self.video.id),
            Order::Relevance => Cursor::Relevance {
                score: self.relevance,
                id: self.video.id,
            },
        }
    }
}

/// Opaque page tokens: the cursor after the last result of the previous page. Tokens of
/// newest-first pages keep the format v1 always issued (`v1:<id>`), so old tokens still
/// work; relevance tokens carry the score exactly (`r1:<score>:<id>`).
pub mod page_token {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::{Cursor, Invalid, Order};

    const NEWEST: &str = "v1:";
    const RELEVANCE: &str = "r1:";

    /// The token that resumes after `cursor`.
    #[must_use]
    pub fn encode(cursor: Cursor) -> String {
        let raw = match cursor {
            Cursor::Newest(id) => format!("{NEWEST}{id}"),
            // `{}` of an f64 parses back to the same f64.
            Cursor::Relevance { score, id } => format!("{RELEVANCE}{score}:{id}"),
        };
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor inside a token, which must belong to `order`.
    pub fn decode(token: &str, order: Order) -> Result<Cursor, Invalid> {
        let bad = || Invalid("page_token is not valid for this search".into());
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let cursor = match order {
            Order::Newest => text
                .strip_prefix(NEWEST)
                .and_then(|id| id.parse().ok())
                .map(Cursor::Newest),
            Order::Relevance => text
                .strip_prefix(RELEVANCE)
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(score, id)| {
                    let score: f64 = score.parse().ok().filter(|s: &f64| s.is_finite())?;
                    Some(Cursor::Relevance {
                        score,
                        id: id.parse().ok()?,
                    })
                }),
        };
        cursor.ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> Video {
        Video::create(
            Uuid::now_v7(),
            VideoChanges {
                title: Some(" Hello ".into()),
                tags: Some(vec!["Rust".into(), "rust".into(), "video_1".into()]),
                ..VideoChanges::default()
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    #[test]
    fn create_normalises_and_validates() {
        let v = video();
        assert_eq!(v.title, "Hello");
        assert_eq!(v.tags, ["rust", "video_1"]);
        assert_eq!(v.visibility, Visibility::Private);
        assert!(
            Video::create(
                Uuid::now_v7(),
                VideoChanges::default(),
                OffsetDateTime::now_utc()
            )
            .is_err()
        );
        let mut v = video();
        let bad = VideoChanges {
            title: Some("ok".into()),
            tags: Some(vec!["two words".into()]),
            ..VideoChanges::default()
        };
        assert!(v.apply(bad).is_err());
        assert_eq!(v.title, "Hello", "an invalid edit changes nothing");
        assert!(
            v.apply(VideoChanges {
                title: Some("x".repeat(201)),
                ..VideoChanges::default()
            })
            .is_err()
        );
    }

    #[test]
    fn lifecycle_never_moves_back_and_redelivery_changes_nothing() {
        let mut v = video();
        let uploaded = MediaEvent::Uploaded {
            content_hash: "h".into(),
        };
        assert!(v.on_media(uploaded.clone()));
        assert!(!v.on_media(uploaded.clone()));
        let rung = Rendition {
            name: "240p".into(),
            width: 320,
            height: 240,
            bitrate: 400_000,
        };
        let processed = |n: usize| MediaEvent::Processed {
            duration_s: 2.0,
            width: 320,
            height: 240,
            renditions: vec![rung.clone(); n],
        };
        assert!(v.on_media(processed(2)));
        assert_eq!(v.status, Status::Ready);
        assert!(!v.on_media(processed(1)), "an older event removes no rung");
        assert!(!v.on_media(uploaded), "ready never goes back to processing");
        assert!(!v.on_media(MediaEvent::Failed {
            reason: "late".into()
        }));
        let mut w = video();
        assert!(w.on_media(MediaEvent::Failed {
            reason: "not a video".into()
        }));
        assert!(!w.on_media(processed(1)));
        assert_eq!(w.failure_reason.as_deref(), Some("not a video"));
    }

    #[test]
    fn visibility_rules() {
        let mut v = video();
        let other = Some(Uuid::now_v7());
        assert!(v.visible_to(Some(v.owner_id)));
        assert!(!v.visible_to(other) && !v.visible_to(None));
        v.visibility = Visibility::Unlisted;
        assert!(v.visible_to(None));
        let search = Search {
            viewer: other,
            limit: 10,
            ..Search::default()
        };
        assert!(!search.admits(&v), "unlisted is never listed to others");
        v.visibility = Visibility::Public;
        assert!(!search.admits(&v), "public lists once ready");
        v.status = Status::Ready;
        assert!(search.admits(&v));
        v.deleted = true;
        assert!(!search.admits(&v) && !v.visible_to(Some(v.owner_id)));
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        let newest = Cursor::Newest(id);
        assert_eq!(
            page_token::decode(&page_token::encode(newest), Order::Newest).unwrap(),
            newest
        );
        let ranked = Cursor::Relevance {
            score: 0.1 + 0.2,
            id,
        };
        assert_eq!(
            page_token::decode(&page_token::encode(ranked), Order::Relevance).unwrap(),
            ranked,
            "the score survives exactly"
        );
        assert!(
            page_token::decode(&page_token::encode(newest), Order::Relevance).is_err(),
            "a token belongs to its order"
        );
        assert!(page_token::decode(&page_token::encode(ranked), Order::Newest).is_err());
        for garbage in ["nope", "", "cjE6TmFOOng"] {
            assert!(page_token::decode(garbage, Order::Newest).is_err());
            assert!(page_token::decode(garbage, Order::Relevance).is_err());
        }
    }
}
