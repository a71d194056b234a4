//! Typing indicators: relayed at once to the other members' delivery subjects over core NATS,
//! never stored, and limited to one per user and conversation every [`TYPING_EVERY`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use prost::Message as _;
use tertulia_plumbing::{client::with_deadline, nats::Nats};
use tertulia_proto::{
    chat::v1 as chat_pb,
    events::v1::{Delivery, TypingStarted, delivery::Event},
    subjects,
};

use crate::{app::AppState, problem::ApiError};

/// Least time between two relayed typing indicators of one user in one conversation.
pub const TYPING_EVERY: Duration = Duration::from_secs(3);
/// Entries kept before old ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Relays typing indicators.
#[derive(Debug)]
pub struct TypingRelay {
    nats: Nats,
    last: Mutex<HashMap<(String, String), Instant>>,
}

impl TypingRelay {
    /// A relay publishing on `nats`.
    #[must_use]
    pub fn new(nats: Nats) -> Self {
        Self {
            nats,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `user_id` is typing in `conversation_id`: tell the other members, unless this user was
    /// relayed there less than [`TYPING_EVERY`] ago (then it is silently dropped).
    pub async fn started(
        &self,
        state: &AppState,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), ApiError> {
        if !self.admit(user_id, conversation_id) {
            return Ok(());
        }
        // Also the membership check: non-members get 404 like everywhere else.
        let request = chat_pb::GetConversationRequest {
            actor_id: user_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
        };
        let members = state
            .chat
            .clone()
            .get_conversation(with_deadline(request, state.call_deadline))
            .await?
            .into_inner()
            .conversation
            .map(|c| c.member_ids)
            .unwrap_or_default();
        let payload: bytes::Bytes = Delivery {
            event: Some(Event::TypingStarted(TypingStarted {
                conversation_id: conversation_id.to_owned(),
                user_id: user_id.to_owned(),
            })),
        }
        .encode_to_vec()
        .into();
        for member in members.iter().filter(|m| *m != user_id) {
            let subject = self.nats.subject(&subjects::deliver(member));
            self.nats
                .client
                .publish(subject, payload.clone())
                .await
                .map_err(|_| ApiError::unavailable("typing relay unavailable"))?;
        }
        Ok(())
    }

    fn admit(&self, user_id: &str, conversation_id: &str) -> bool {
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.len() > MAX_TRACKED {
            last.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        }
        let key = (user_id.to_owned(), conversation_id.to_owned());
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}
