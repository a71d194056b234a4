//! The use cases of svc-chat: validate with the domain rules, run one store transaction,
//! wake the outbox relay. `grpc.rs` only translates to and from protobuf.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    domain::{self, Content, Conversation, ConversationKind, Message},
    error::ChatError,
    store::{Changed, ChatStore, Membership, Sent},
};

/// Largest page of history or conversations.
pub const MAX_PAGE: u32 = 200;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;

/// Conversations, members and messages.
#[derive(Debug, Clone)]
pub struct Conversations {
    store: ChatStore,
    relay: Arc<Notify>,
    max_text_chars: usize,
}

/// A page of conversations and the token of the next one.
#[derive(Debug)]
pub struct ConversationPage {
    /// Newest activity first.
    pub conversations: Vec<Conversation>,
    /// Empty when this is the last page.
    pub next_page_token: String,
}

fn id(raw: &str, what: &'static str) -> Result<Uuid, ChatError> {
    Uuid::parse_str(raw).map_err(|_| ChatError::NotFound(what))
}

fn actor(raw: &str) -> Result<Uuid, ChatError> {
    Uuid::parse_str(raw)
        .map_err(|_| ChatError::InvalidArgument("actor_id must be a user id".into()))
}

fn page(limit: u32) -> Result<i64, ChatError> {
    match limit {
        0 => Ok(i64::from(DEFAULT_PAGE)),
        1..=MAX_PAGE => Ok(i64::from(limit)),
        _ => Err(ChatError::InvalidArgument(format!(
            "limit must be 1 to {MAX_PAGE}"
        ))),
    }
}

fn seq(raw: u64, what: &str) -> Result<i64, ChatError> {
    i64::try_from(raw).map_err(|_| ChatError::InvalidArgument(format!("{what} is out of range")))
}

impl Conversations {
    /// Use cases over `store`; `relay` is woken after every commit that wrote events (but a
    /// send's, which hands its event over itself).
    #[must_use]
    pub fn new(store: ChatStore, relay: Arc<Notify>, max_text_chars: usize) -> Self {
        Self {
            store,
            relay,
            max_text_chars,
        }
    }

    fn committed<T>(&self, value: T) -> T {
        self.relay.notify_one();
        value
    }

    /// Creates a group, or finds or creates the direct conversation with the one other
    /// member; `true` when created now.
    pub async fn create(
        &self,
        actor_id: &str,
        kind: ConversationKind,
        member_ids: &[String],
        title: &str,
    ) -> Result<(Conversation, bool), ChatError> {
        let actor = actor(actor_id)?;
        let title = domain::title(title).map_err(ChatError::InvalidArgument)?;
        let mut others = Vec::with_capacity(member_ids.len());
        for raw in member_ids {
            let user = Uuid::parse_str(raw).map_err(|_| {
                ChatError::InvalidArgument(format!("member id {raw:?} is not a user id"))
            })?;
            if user != actor && !others.contains(&user) {
                others.push(user);
            }
        }
        if others.len() > domain::MAX_INITIAL_MEMBERS {
            return Err(ChatError::InvalidArgument(format!(
                "at most {} members at creation",
                domain::MAX_INITIAL_MEMBERS
            )));
        }
        let result = match kind {
            ConversationKind::Direct => {
                let [other] = others[..] else {
                    return Err(ChatError::InvalidArgument(
                        "a direct conversation has exactly one other member".into(),
                    ));
                };
                self.store
                    .find_or_create_direct(actor, other, title)
                    .await?
            }
            ConversationKind::Group => {
                (self.store.create_group(actor, &others, title).await?, true)
            }
        };
        Ok(self.committed(result))
    }

    /// One conversation as the actor sees it.
    pub async fn get(
        &self,
        actor_id: &str,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        self.store
            .conversation(actor, conversation)
            .await?
            .ok_or(ChatError::NotFound("conversation"))
    }

    /// The actor's conversations, newest activity first.
    pub async fn list(
        &self,
        actor_id: &str,
        limit: u32,
        page_token: &str,
    ) -> Result<ConversationPage, ChatError> {
        let actor = actor(actor_id)?;
        let limit = page(limit)?;
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_cursor(page_token)?)
        };
        let rows = self.store.conversations(actor, limit, after).await?;
        let next_page_token = match rows.last() {
            Some((c, at)) if rows.len() as i64 == limit => encode_cursor(*at, c.conversation_id),
            _ => String::new(),
        };
        Ok(ConversationPage {
            conversations: rows.into_iter().map(|(c, _)| c).collect(),
            next_page_token,
        })
    }

    /// Adds a member to a group.
    pub async fn add_member(
        &self,
        actor_id: &str,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<(), ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let user = Uuid::parse_str(user_id)
            .map_err(|_| ChatError::InvalidArgument("user_id must be a user id".into()))?;
        let outcome = self.store.add_member(actor, conversation, user).await?;
        self.membership(outcome)
    }

    /// Removes a member (self, or anyone by the creator).
    pub async fn remove_member(
        &self,
        actor_id: &str,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<(), ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let user = id(user_id, "member")?;
        let outcome = self.store.remove_member(actor, conversation, user).await?;
        self.membership(outcome)
    }

    fn membership(&self, outcome: Membership) -> Result<(), ChatError> {
        match outcome {
            Membership::Changed => {
                self.relay.notify_one();
                Ok(())
            }
            Membership::Unchanged => Ok(()),
            Membership::NotFound => Err(ChatError::NotFound("conversation or member")),
            Membership::NotGroup => Err(ChatError::Conflict(
                "members of a direct conversation cannot change",
            )),
            Membership::NotAllowed => Err(ChatError::PermissionDenied(
                "only the creator may remove other members",
            )),
        }
    }

    /// Stores a message; `false` when the `client_msg_id` was seen before and the first
    /// message is returned.
    pub async fn send(
        &self,
        actor_id: &str,
        conversation_id: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<(Message, bool), ChatError> {
        self.send_content(
            actor_id,
            conversation_id,
            client_msg_id,
            Content::Text(text.to_owned()),
        )
        .await
    }

    /// Stores a message with structured content (v2): text, or a catalog video.
    pub async fn send_content(
        &self,
        actor_id: &str,
        conversation_id: &str,
        client_msg_id: &str,
        content: Content,
    ) -> Result<(Message, bool), ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let client_msg_id =
            domain::client_msg_id(client_msg_id).map_err(ChatError::InvalidArgument)?;
        if let Content::Text(text) = &content {
            domain::message_text(text, self.max_text_chars).map_err(ChatError::InvalidArgument)?;
        }
        match self
            .store
            .send(actor, conversation, client_msg_id, &content)
            .await?
        {
            // Its event went to the relay with the commit (`events::Handoff`).
            Sent::Created(message) => Ok((message, true)),
            Sent::Existing(message) => Ok((message, false)),
            Sent::NotMember => Err(ChatError::NotFound("conversation")),
        }
    }

    /// A page of history, ascending by seq.
    pub async fn history(
        &self,
        actor_id: &str,
        conversation_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let after = after_seq.map(|s| seq(s, "after_seq")).transpose()?;
        let before = before_seq.map(|s| seq(s, "before_seq")).transpose()?;
        self.store
            .history(actor, conversation, after, before, page(limit)?)
            .await?
            .ok_or(ChatError::NotFound("conversation"))
    }

    /// A page of history with reactions (v2).
    pub async fn history_with_reactions(
        &self,
        actor_id: &str,
        conversation_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, ChatError> {
        let mut messages = self
            .history(actor_id, conversation_id, after_seq, before_seq, limit)
            .await?;
        self.store.load_reactions(&mut messages).await?;
        Ok(messages)
    }

    /// Replaces the text of the actor's message; returns it with its reactions (v2).
    pub async fn edit_with_reactions(
        &self,
        actor_id: &str,
        conversation_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<Message, ChatError> {
        let mut message = self
            .edit(actor_id, conversation_id, message_id, text)
            .await?;
        self.store
            .load_reactions(std::slice::from_mut(&mut message))
            .await?;
        Ok(message)
    }

    /// Adds (`add`) or removes the actor's reaction; returns the message with its reactions.
    pub async fn react(
        &self,
        actor_id: &str,
        conversation_id: &str,
        message_id: &str,
        emoji: &str,
        add: bool,
    ) -> Result<Message, ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let message = id(message_id, "message")?;
        let emoji = domain::emoji(emoji).map_err(ChatError::InvalidArgument)?;
        match self
            .store
            .react(actor, conversation, message, emoji, add)
            .await?
        {
            Changed::Done(message) => Ok(self.committed(message)),
            Changed::NotFound | Changed::NotSender => Err(ChatError::NotFound("message")),
            Changed::Deleted => Err(ChatError::Conflict("the message was deleted")),
            Changed::NotText => Err(ChatError::Conflict("only text messages can be edited")),
        }
    }

    /// Replaces the text of the actor's message.
    pub async fn edit(
        &self,
        actor_id: &str,
        conversation_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<Message, ChatError> {
        let text =
            domain::message_text(text, self.max_text_chars).map_err(ChatError::InvalidArgument)?;
        self.change(actor_id, conversation_id, message_id, Some(text))
            .await
    }

    /// Tombstones the actor's message.
    pub async fn delete(
        &self,
        actor_id: &str,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<Message, ChatError> {
        self.change(actor_id, conversation_id, message_id, None)
            .await
    }

    async fn change(
        &self,
        actor_id: &str,
        conversation_id: &str,
        message_id: &str,
        text: Option<&str>,
    ) -> Result<Message, ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let message = id(message_id, "message")?;
        match self
            .store
            .change(actor, conversation, message, text)
            .await?
        {
            Changed::Done(message) => Ok(self.committed(message)),
            Changed::NotFound => Err(ChatError::NotFound("message")),
            Changed::NotSender => Err(ChatError::PermissionDenied(
                "only the sender may change a message",
            )),
            Changed::Deleted => Err(ChatError::Conflict("a deleted message cannot be edited")),
            Changed::NotText => Err(ChatError::Conflict("only text messages can be edited")),
        }
    }

    /// Moves the actor's read position forward; returns where it is now.
    pub async fn mark_read(
        &self,
        actor_id: &str,
        conversation_id: &str,
        read_seq: u64,
    ) -> Result<u64, ChatError> {
        let actor = actor(actor_id)?;
        let conversation = id(conversation_id, "conversation")?;
        let read = self
            .store
            .mark_read(actor, conversation, seq(read_seq, "seq")?)
            .await?
            .ok_or(ChatError::NotFound("conversation"))?;
        Ok(self.committed(read.unsigned_abs()))
    }

    /// Member ids of a conversation (for gateways).
    pub async fn members(&self, conversation_id: &str) -> Result<Vec<Uuid>, ChatError> {
        let conversation = id(conversation_id, "conversation")?;
        Ok(self.store.member_ids(conversation).await?)
    }

    /// Ids of the group conversations `actor_id` is a member of (for gateways).
    pub async fn groups(&self, actor_id: &str) -> Result<Vec<Uuid>, ChatError> {
        Ok(self.store.group_ids(actor(actor_id)?).await?)
    }
}

/// Page tokens are opaque to clients: `<activity unix nanos>.<conversation id>`.
fn encode_cursor(at: OffsetDateTime, id: Uuid) -> String {
    format!("{}.{}", at.unix_timestamp_nanos(), id.simple())
}

fn decode_cursor(token: &str) -> Result<(OffsetDateTime, Uuid), ChatError> {
    let bad = || ChatError::InvalidArgument("page_token is invalid".into());
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    let at = at
        .parse::<i128>()
        .ok()
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        assert!(decode_cursor("nope").is_err());
        assert!(decode_cursor("1.nope").is_err());
    }
}
