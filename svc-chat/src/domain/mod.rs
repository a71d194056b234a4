//! The rules of conversations and messages. Imports no tonic, no database driver, no NATS.

use time::OffsetDateTime;
use uuid::Uuid;

/// Largest group at creation.
pub const MAX_INITIAL_MEMBERS: usize = 1024;
/// Longest conversation title, in characters.
pub const MAX_TITLE_CHARS: usize = 128;
/// Longest `client_msg_id`, in characters.
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 64;

/// Direct (exactly two people, one per pair) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// Two people; created once per pair.
    Direct,
    /// Any number of members, who may add others.
    Group,
}

impl ConversationKind {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }

    /// From the stored name.
    #[must_use]
    pub fn from_stored(raw: &str) -> Self {
        if raw == "direct" {
            Self::Direct
        } else {
            Self::Group
        }
    }
}

/// A conversation as one member sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Its id.
    pub conversation_id: Uuid,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Empty for direct conversations unless set.
    pub title: String,
    /// Who created it.
    pub creator_id: Uuid,
    /// Current members.
    pub member_ids: Vec<Uuid>,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// The newest message's seq (0 when none).
    pub last_seq: i64,
    /// The newest message.
    pub last_message: Option<Message>,
    /// Messages after the viewer's read position.
    pub unread: i64,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub message_id: Uuid,
    /// Where it was sent.
    pub conversation_id: Uuid,
    /// Its place in the conversation: gap-free, from 1.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: Uuid,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Its text; empty once deleted.
    pub text: String,
    /// When it was stored.
    pub sent_at: OffsetDateTime,
    /// When it was last edited.
    pub edited_at: Option<OffsetDateTime>,
    /// Whether it was deleted (a tombstone stays in history).
    pub deleted: bool,
    /// The catalog video it shares (v2 content); `text` is empty then.
    pub video_id: Option<Uuid>,
    /// Reactions, oldest emoji first; loaded only for v2 views.
    pub reactions: Vec<Reaction>,
}

/// Who reacted with one emoji, in the order they did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who, oldest first.
    pub user_ids: Vec<Uuid>,
}

/// What a message says (v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text.
    Text(String),
    /// A catalog video.
    Video(Uuid),
}

impl Message {
    /// What v1 callers read: the text, or for a video message a text fallback that names the
    /// video (v1 has no structured content).
    #[must_use]
    pub fn v1_text(&self) -> String {
        match self.video_id {
            Some(video) if !self.deleted => format!("[video] /api/v1/videos/{video}"),
            _ => self.text.clone(),
        }
    }
}

/// Longest emoji, in Unicode scalar values (sequences with modifiers and joiners included).
pub const MAX_EMOJI_CHARS: usize = 16;

/// A reaction: 1 to 16 Unicode scalar values, no whitespace or control characters, no ASCII
/// letters or digits (reactions are emoji, not words).
pub fn emoji(raw: &str) -> Result<&str, String> {
    let len = raw.chars().count();
    let ok = (1..=MAX_EMOJI_CHARS).contains(&len)
        && !raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c.is_ascii_alphanumeric());
    if ok {
        Ok(raw)
    } else {
        Err(format!(
            "emoji must be 1 to {MAX_EMOJI_CHARS} characters of an emoji"
        ))
    }
}

/// Message text: 1 to `max` Unicode scalar values, not only whitespace.
pub fn message_text(raw: &str, max: usize) -> Result<&str, String> {
    let len = raw.chars().count();
    if len == 0 || raw.trim().is_empty() {
        return Err("text must not be empty".into());
    }
    if len > max {
        return Err(format!("text must be at most {max} characters"));
    }
    Ok(raw)
}

/// A client's idempotency key: 1 to 64 characters, no control characters.
pub fn client_msg_id(raw: &str) -> Result<&str, String> {
    let len = raw.chars().count();
    if (1..=MAX_CLIENT_MSG_ID_CHARS).contains(&len) && !raw.chars().any(char::is_control) {
        Ok(raw)
    } else {
        Err(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_CHARS} characters"
        ))
    }
}

/// A title: up to 128 characters without control characters, trimmed.
pub fn title(raw: &str) -> Result<&str, String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() <= MAX_TITLE_CHARS && !trimmed.chars().any(char::is_control) {
        Ok(trimmed)
    } else {
        Err(format!(
            "title must be at most {MAX_TITLE_CHARS} characters"
        ))
    }
}

/// The key that makes a direct conversation unique per pair, whatever the order.
#[must_use]
pub fn direct_key(a: Uuid, b: Uuid) -> String {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_counts_scalar_values_and_refuses_blank() {
        assert!(message_text("hi", 4000).is_ok());
        assert!(message_text("", 4000).is_err());
        assert!(message_text("  \n", 4000).is_err());
        assert!(message_text(&"\u{1f600}".repeat(4000), 4000).is_ok());
        assert!(message_text(&"a".repeat(4001), 4000).is_err());
    }

    #[test]
    fn client_msg_ids_and_titles() {
        assert!(client_msg_id("c-1").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id(&"x".repeat(65)).is_err());
        assert!(client_msg_id("a\nb").is_err());
        assert_eq!(title("  Team  ").unwrap(), "Team");
        assert!(title(&"t".repeat(129)).is_err());
    }

    #[test]
    fn direct_keys_ignore_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(direct_key(a, b), direct_key(b, a));
    }
}
