//! Ordering and resume for one connection: per conversation, the last `seq` delivered.
//!
//! - `resume` delivers, from history, every message after the client's last seen `seq`.
//! - A live message at or below the last delivered `seq` is a duplicate and is dropped.
//! - A live message beyond the next expected `seq` means the broker dropped or reordered
//!   something: the gap is filled from history first, so the client never sees a hole.
//!
//! PostgreSQL is the source of truth; the broker is only the fast path.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;

use super::{Api, frames, hub::LiveEvent};
use crate::{
    app::AppState,
    problem::ApiError,
    routes::{
        chat::{HistoryRange, list_messages},
        messages_v2::list_messages_v2,
    },
    views::{MessageView, MessageViewV2},
};

/// History page size while catching up.
const PAGE: u32 = 200;

/// One connection's delivery positions.
#[derive(Debug)]
pub struct Feed {
    user_id: String,
    api: Api,
    last: HashMap<String, u64>,
}

impl Feed {
    /// A feed for `user_id`, in `api`'s message shape, with no positions yet.
    #[must_use]
    pub fn new(user_id: String, api: Api) -> Self {
        Self {
            user_id,
            api,
            last: HashMap::new(),
        }
    }

    /// The positions, for transports that hand them back to the client as a cursor.
    #[must_use]
    pub fn positions(&self) -> &HashMap<String, u64> {
        &self.last
    }

    /// Frames for every message after each conversation's given `seq`. A conversation the
    /// user cannot see yields an `error` frame and is skipped.
    pub async fn resume(
        &mut self,
        state: &AppState,
        from: &HashMap<String, u64>,
    ) -> Vec<Utf8Bytes> {
        let mut frames = Vec::new();
        for (conversation_id, after) in from {
            if let Err(error) = self
                .catch_up(state, conversation_id, *after, &mut frames)
                .await
            {
                frames.push(frames::error(
                    error.code(),
                    &format!("cannot resume conversation {conversation_id}"),
                    None,
                ));
            }
        }
        frames
    }

    /// The frames a live event becomes on this connection: none (a duplicate), one, or the
    /// missing history followed by it. When the history cannot be read, the gap cannot be
    /// closed: the caller must end the connection so the client resumes, never skip ahead.
    pub async fn live(
        &mut self,
        state: &AppState,
        event: &LiveEvent,
    ) -> Result<Vec<Utf8Bytes>, ApiError> {
        let (conversation_id, seq, frame) = match event {
            LiveEvent::Other(frame) => return Ok(vec![frame.clone()]),
            LiveEvent::Message {
                conversation_id,
                seq,
                frame,
            } => (conversation_id, *seq, frame),
        };
        let mut frames = Vec::new();
        match self.last.get(conversation_id).copied() {
            Some(last) if seq <= last => {}
            Some(last) if seq > last + 1 => {
                // Boxed: a gap is rare, and its history read would otherwise enlarge every
                // connection's task.
                Box::pin(self.catch_up(state, conversation_id, last, &mut frames)).await?;
                if self.last.get(conversation_id).is_none_or(|l| seq > *l) {
                    self.last.insert(conversation_id.clone(), seq);
                    frames.push(frame.clone());
                }
            }
            _ => {
                self.last.insert(conversation_id.clone(), seq);
                frames.push(frame.clone());
            }
        }
        Ok(frames)
    }

    /// Appends message frames after `after` from history and advances the position.
    async fn catch_up(
        &mut self,
        state: &AppState,
        conversation_id: &str,
        after: u64,
        out: &mut Vec<Utf8Bytes>,
    ) -> Result<(), ApiError> {
        let mut cursor = self
            .last
            .get(conversation_id)
            .copied()
            .unwrap_or(0)
            .max(after);
        loop {
            // (seq, frame) per message, in the connection's version.
            let (user_id, range) = (&self.user_id, HistoryRange::after(cursor, PAGE));
            let page = match self.api {
                Api::V1 => message_frames(
                    conversation_id,
                    list_messages(state, user_id, conversation_id, range).await?,
                    |m| (m.seq, MessageView::from(m)),
                ),
                Api::V2 => message_frames(
                    conversation_id,
                    list_messages_v2(state, user_id, conversation_id, range).await?,
                    |m| (m.seq, MessageViewV2::from(m)),
                ),
            };
            let full = page.len() == PAGE as usize;
            for (seq, frame) in page {
                cursor = cursor.max(seq);
                out.push(frame);
            }
            self.last.insert(conversation_id.to_owned(), cursor);
            if !full {
                return Ok(());
            }
        }
    }
}

/// `message` frames of a history page of `conversation_id`, each with its `seq`.
fn message_frames<M, V: serde::Serialize>(
    conversation_id: &str,
    messages: Vec<M>,
    view: impl Fn(M) -> (u64, V),
) -> Vec<(u64, Utf8Bytes)> {
    messages
        .into_iter()
        .map(view)
        .map(|(seq, v)| (seq, frames::message("message", &v, conversation_id)))
        .collect()
}
