//! Ordering and resume for one connection: per conversation, the last `seq` delivered.
//!
//! - `resume` delivers, from history, every message after the client's last seen `seq`.
//! - A live message at or below the last delivered `seq` is a duplicate and is dropped.
//! - A live message beyond the next expected `seq` means the broker dropped or reordered
//!   something. A feed that holds gaps (WebSocket and SSE) keeps it back for a short wait:
//!   when the missing messages arrive in that time (several fan-out instances deliver one
//!   conversation's events out of order), everything goes out in `seq` order without a
//!   read. Otherwise, and at once in a feed that does not hold, the gap is filled from
//!   history first, so the client never sees a hole.
//!
//! PostgreSQL is the source of truth; the broker is only the fast path.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

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

/// Messages held back at most, over all conversations; past this the gaps are filled from
/// history at once.
const MAX_HELD: usize = 256;

/// The longest hold a configuration may ask for (longer asks are cut to it).
const LONGEST_HOLD: Duration = Duration::from_hours(1);

/// One connection's delivery positions.
#[derive(Debug)]
pub struct Feed {
    user_id: String,
    api: Api,
    last: HashMap<String, u64>,
    /// How long a message after a gap is held back; `None`: gaps are filled at once.
    hold: Option<Duration>,
    /// Boxed: nothing is held on almost every connection almost all the time.
    held: Option<Box<Held>>,
}

/// Messages that arrived after a gap, waiting for the messages before them.
#[derive(Debug)]
struct Held {
    /// When the gaps are filled from history if they have not closed by then (the first
    /// hold's deadline: nothing waits longer than one wait).
    until: Instant,
    /// By conversation, by `seq`.
    frames: HashMap<String, BTreeMap<u64, Utf8Bytes>>,
    /// Messages held, over all conversations.
    count: usize,
}

impl Feed {
    /// A feed for `user_id`, in `api`'s message shape, with no positions yet.
    #[must_use]
    pub fn new(user_id: String, api: Api) -> Self {
        Self {
            user_id,
            api,
            last: HashMap::new(),
            hold: None,
            held: None,
        }
    }

    /// This feed holds a message that arrives after a gap for up to `wait` before it reads
    /// the gap from history; the transport must call [`Feed::release`] at
    /// [`Feed::held_until`].
    #[must_use]
    pub fn holding_gaps(mut self, wait: Duration) -> Self {
        self.hold = Some(wait.min(LONGEST_HOLD)).filter(|wait| !wait.is_zero());
        self
    }

    /// When held messages must be released, if any are held.
    #[must_use]
    pub fn held_until(&self) -> Option<Instant> {
        self.held.as_ref().map(|held| held.until)
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
            LiveEvent::Joining {
                conversation_id,
                seq,
            } => {
                self.joining(conversation_id, *seq);
                return Ok(Vec::new());
            }
            LiveEvent::Joined { conversation_id } => {
                return Box::pin(self.joined(state, conversation_id)).await;
            }
        };
        let mut frames = Vec::new();
        match self.last.get(conversation_id).copied() {
            Some(last) if seq <= last => {}
            Some(last) if seq > last + 1 => {
                if self.hold(conversation_id, seq, frame) {
                    state.hub.metrics().gap("held");
                    return Ok(frames);
                }
                state.hub.metrics().gap("filled");
                // Boxed: a gap is rare, and its history read would otherwise enlarge every
                // connection's task.
                Box::pin(self.catch_up(state, conversation_id, last, &mut frames)).await?;
                self.push_after_fill(conversation_id, seq, frame, &mut frames);
                self.take_in_order(conversation_id, &mut frames);
            }
            _ => {
                self.last.insert(conversation_id.clone(), seq);
                frames.push(frame.clone());
                self.take_in_order(conversation_id, &mut frames);
            }
        }
        Ok(frames)
    }

    /// The user joined `conversation_id` when its last message was `seq`: unless a position
    /// is known, the group starts there, so a later message after a gap is not taken as
    /// the first.
    fn joining(&mut self, conversation_id: &str, seq: u64) {
        if !self.last.contains_key(conversation_id) {
            self.last.insert(conversation_id.to_owned(), seq);
        }
    }

    /// A group's subject is subscribed: what passed by since the user joined, from history,
    /// then what was held after it. Left again meanwhile, there is nothing to read.
    async fn joined(
        &mut self,
        state: &AppState,
        conversation_id: &str,
    ) -> Result<Vec<Utf8Bytes>, ApiError> {
        let mut frames = Vec::new();
        let after = self.last.get(conversation_id).copied().unwrap_or(0);
        match self
            .catch_up(state, conversation_id, after, &mut frames)
            .await
        {
            Err(error) if error.status() == axum::http::StatusCode::NOT_FOUND => {}
            read => read?,
        }
        self.take_in_order(conversation_id, &mut frames);
        Ok(frames)
    }

    /// Fills every held gap from history and sends what was held after it (the deadline
    /// passed, or too much is held).
    pub async fn release(&mut self, state: &AppState) -> Result<Vec<Utf8Bytes>, ApiError> {
        let mut frames = Vec::new();
        let Some(held) = self.held.take() else {
            return Ok(frames);
        };
        for (conversation_id, waiting) in held.frames {
            state.hub.metrics().gap("filled");
            let after = self.last.get(&conversation_id).copied().unwrap_or(0);
            Box::pin(self.catch_up(state, &conversation_id, after, &mut frames)).await?;
            for (seq, frame) in waiting {
                self.push_after_fill(&conversation_id, seq, &frame, &mut frames);
            }
        }
        Ok(frames)
    }

    /// Holds `frame` (after a gap) if this feed holds gaps and has room; false otherwise.
    fn hold(&mut self, conversation_id: &str, seq: u64, frame: &Utf8Bytes) -> bool {
        let Some(wait) = self.hold else {
            return false;
        };
        let held = self.held.get_or_insert_with(|| {
            Box::new(Held {
                until: Instant::now() + wait,
                frames: HashMap::new(),
                count: 0,
            })
        });
        if held.count >= MAX_HELD {
            // Due now: the transport releases everything at its next turn.
            held.until = Instant::now();
            return false;
        }
        let waiting = held.frames.entry(conversation_id.to_owned()).or_default();
        if waiting.insert(seq, frame.clone()).is_none() {
            held.count += 1;
        }
        true
    }

    /// After `conversation_id` advanced: the held messages that now follow on without a
    /// gap, in order; those at or below the position are dropped as duplicates.
    fn take_in_order(&mut self, conversation_id: &str, out: &mut Vec<Utf8Bytes>) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let Some(waiting) = held.frames.get_mut(conversation_id) else {
            return;
        };
        let Some(last) = self.last.get_mut(conversation_id) else {
            return;
        };
        while let Some(next) = waiting.first_entry() {
            if *next.key() > *last + 1 {
                break;
            }
            if *next.key() == *last + 1 {
                *last += 1;
                out.push(next.get().clone());
            }
            next.remove();
            held.count -= 1;
        }
        if waiting.is_empty() {
            held.frames.remove(conversation_id);
            if held.frames.is_empty() {
                self.held = None;
            }
        }
    }

    /// After a gap of `conversation_id` was filled from history: `frame` (message `seq`)
    /// unless the history already had it.
    fn push_after_fill(
        &mut self,
        conversation_id: &str,
        seq: u64,
        frame: &Utf8Bytes,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if self.last.get(conversation_id).is_none_or(|l| seq > *l) {
            self.last.insert(conversation_id.to_owned(), seq);
            out.push(frame.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("{{\"seq\":{seq}}}"))
    }

    #[tokio::test]
    async fn held_messages_follow_the_missing_one_in_order_and_duplicates_are_dropped() {
        let mut feed = Feed::new("u".into(), Api::V1).holding_gaps(Duration::from_millis(50));
        feed.last.insert("c".into(), 1);
        for seq in [4, 3, 1, 6] {
            assert!(feed.hold("c", seq, &frame(seq)));
        }
        assert!(feed.held_until().is_some());
        // 2 arrives: 3 and 4 follow it; 1 was a duplicate; 6 still waits for 5.
        feed.last.insert("c".into(), 2);
        let mut out = Vec::new();
        feed.take_in_order("c", &mut out);
        assert_eq!(out, [frame(3), frame(4)]);
        assert_eq!(feed.positions()["c"], 4);
        assert!(feed.held_until().is_some(), "6 is still held");
        feed.last.insert("c".into(), 5);
        feed.take_in_order("c", &mut out);
        assert_eq!(out.last(), Some(&frame(6)));
        assert!(feed.held_until().is_none(), "nothing left");
    }

    #[test]
    fn a_group_joined_starts_where_it_was_and_a_known_position_stays() {
        let mut feed = Feed::new("u".into(), Api::V1);
        feed.last.insert("known".into(), 9);
        feed.joining("c", 5);
        feed.joining("known", 3);
        assert_eq!(
            feed.positions()["c"],
            5,
            "a message after 6 now shows a gap"
        );
        assert_eq!(feed.positions()["known"], 9);
    }

    #[tokio::test]
    async fn any_configured_wait_is_held_without_overflow_and_zero_holds_nothing() {
        let mut feed = Feed::new("u".into(), Api::V1).holding_gaps(Duration::MAX);
        assert!(feed.hold("c", 3, &frame(3)));
        assert!(feed.held_until().is_some());
        let mut at_once = Feed::new("u".into(), Api::V1).holding_gaps(Duration::ZERO);
        assert!(!at_once.hold("c", 3, &frame(3)));
    }

    #[tokio::test]
    async fn past_the_most_it_holds_everything_is_due_at_once() {
        let mut feed = Feed::new("u".into(), Api::V1).holding_gaps(Duration::from_hours(1));
        for seq in 0..MAX_HELD as u64 {
            assert!(feed.hold("c", seq + 10, &frame(seq + 10)));
        }
        assert!(!feed.hold("c", 9_999, &frame(9_999)), "full: read now");
        assert!(feed.held_until().unwrap() <= Instant::now());
    }
}
