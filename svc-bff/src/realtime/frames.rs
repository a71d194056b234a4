//! The JSON frames of the real-time protocol (CONTRACT.md, "Real-time"). Server frames are
//! built as text once and shared by every connection that receives them.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{routes::messages_v2::ContentBody, views::VideoView};

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame: who the client is and where it left off.
    Hello {
        /// An access token.
        token: String,
        /// Last seen `seq` per conversation.
        #[serde(default)]
        resume: HashMap<String, u64>,
    },
    /// Send a message: `text` on v1, `content` on v2.
    Send {
        /// Where.
        conversation_id: String,
        /// The client's idempotency key.
        client_msg_id: String,
        /// What (v1).
        text: Option<String>,
        /// What (v2).
        content: Option<ContentBody>,
        /// The W3C trace context of the user action, continued by the gateway.
        #[serde(default)]
        traceparent: Option<String>,
    },
    /// Move the read position.
    Read {
        /// Where.
        conversation_id: String,
        /// Up to which seq.
        seq: u64,
        /// The W3C trace context of the user action, continued by the gateway.
        #[serde(default)]
        traceparent: Option<String>,
    },
    /// The user is typing.
    Typing {
        /// Where.
        conversation_id: String,
        /// The W3C trace context of the user action, continued by the gateway.
        #[serde(default)]
        traceparent: Option<String>,
    },
    /// Keep-alive; answered with `pong`.
    Ping,
}

impl ClientFrame {
    /// The frame's `type`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Send { .. } => "send",
            Self::Read { .. } => "read",
            Self::Typing { .. } => "typing",
            Self::Ping => "ping",
        }
    }

    /// The trace context the client attached, if any.
    #[must_use]
    pub fn traceparent(&self) -> Option<&str> {
        match self {
            Self::Send { traceparent, .. }
            | Self::Read { traceparent, .. }
            | Self::Typing { traceparent, .. } => traceparent.as_deref(),
            Self::Hello { .. } | Self::Ping => None,
        }
    }
}

/// Parses a client frame; the error text names what is wrong.
pub fn parse(text: &str) -> Result<ClientFrame, String> {
    serde_json::from_str(text).map_err(|e| format!("malformed frame: {e}"))
}

fn text(value: &impl Serialize) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(value).expect("frames serialise"))
}

/// `{"type":"ready","user_id","session_id"}`.
#[must_use]
pub fn ready(user_id: &str, session_id: &str) -> Utf8Bytes {
    text(&json!({"type": "ready", "user_id": user_id, "session_id": session_id}))
}

/// `{"type":"error","code","message","client_msg_id"?}`.
#[must_use]
pub fn error(code: &str, message: &str, client_msg_id: Option<&str>) -> Utf8Bytes {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_msg_id {
        frame["client_msg_id"] = json!(id);
    }
    text(&frame)
}

/// `{"type":"ack","client_msg_id","message"}` (the message in the connection's version).
#[must_use]
pub fn ack(client_msg_id: &str, message: &impl Serialize) -> Utf8Bytes {
    text(&json!({"type": "ack", "client_msg_id": client_msg_id, "message": message}))
}

/// `{"type":"pong"}`.
#[must_use]
pub fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"pong"}"#)
}

/// `{"type":"message"|"message_updated"|"reactions","conversation_id","message"}` (the
/// message in the connection's version; `reactions` is v2 only).
#[must_use]
pub fn message(kind: &'static str, message: &impl Serialize, conversation_id: &str) -> Utf8Bytes {
    text(&json!({"type": kind, "conversation_id": conversation_id, "message": message}))
}

/// `{"type":"receipt","conversation_id","user_id","seq"}`.
#[must_use]
pub fn receipt(conversation_id: &str, user_id: &str, seq: u64) -> Utf8Bytes {
    text(
        &json!({"type": "receipt", "conversation_id": conversation_id, "user_id": user_id, "seq": seq}),
    )
}

/// `{"type":"typing","conversation_id","user_id"}`.
#[must_use]
pub fn typing(conversation_id: &str, user_id: &str) -> Utf8Bytes {
    text(&json!({"type": "typing", "conversation_id": conversation_id, "user_id": user_id}))
}

/// `{"type":"presence","user_id","status","last_seen"?}`.
#[must_use]
pub fn presence(user_id: &str, online: bool, last_seen: Option<String>) -> Utf8Bytes {
    let status = if online { "online" } else { "offline" };
    let mut frame = json!({"type": "presence", "user_id": user_id, "status": status});
    if let Some(at) = last_seen {
        frame["last_seen"] = json!(at);
    }
    text(&frame)
}

/// `{"type":"conversation","conversation"}`.
#[must_use]
pub fn conversation(conversation: &impl Serialize) -> Utf8Bytes {
    text(&json!({"type": "conversation", "conversation": conversation}))
}

/// `{"type":"video","video"}`: one of the user's videos changed state. Media URLs are
/// not included (they are signed per request): `GET /api/v1/videos/{id}` has them.
#[must_use]
pub fn video(video: &VideoView) -> Utf8Bytes {
    text(&json!({"type": "video", "video": video}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_errors_say_why() {
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping)));
        let hello = parse(r#"{"type":"hello","token":"t","resume":{"c":3}}"#).unwrap();
        let ClientFrame::Hello { resume, .. } = hello else {
            panic!("hello")
        };
        assert_eq!(resume["c"], 3);
        assert!(parse("{").unwrap_err().contains("malformed"));
        assert!(parse(r#"{"type":"shout"}"#).unwrap_err().contains("shout"));
        assert!(parse(r#"{"type":"send","conversation_id":"c"}"#).is_err());
        let send = parse(
            r#"{"type":"send","conversation_id":"c","client_msg_id":"m","content":{"type":"video","video_id":"v"}}"#,
        )
        .unwrap();
        assert!(matches!(
            send,
            ClientFrame::Send {
                text: None,
                content: Some(ContentBody::Video { .. }),
                ..
            }
        ));
        assert!(
            parse(r#"{"type":"send","conversation_id":"c","client_msg_id":"m","content":{"type":"gif"}}"#)
                .unwrap_err()
                .contains("gif")
        );
    }
}
