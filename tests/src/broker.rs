//! Playing the broker: deliveries published straight to a user's delivery subject, in any
//! order and with any content, to see what the gateway makes of them.

use futures::StreamExt as _;
use prost::Message as _;
use serde_json::Value;
use tertulia_proto::{
    chat::v1 as chat_pb,
    events::v1::{Delivery, MessageCreated, delivery::Event},
};

use crate::{Session, Stack};

/// A conversation of Ana and Ben with three messages stored (text "x"), whose real
/// deliveries went by before Ben connected, and a way to play the broker: publish a
/// `MessageCreated` of one of them, with any text, on Ben's delivery subject.
pub struct Broker {
    /// The stack.
    pub stack: Stack,
    nats: tertulia_plumbing::nats::Nats,
    subject: String,
    ana: Session,
    /// Ben, who receives.
    pub ben: Session,
    /// The conversation.
    pub conversation: String,
    sent: Vec<Value>,
}

impl Broker {
    /// The conversation on `stack`, Ben not connected yet.
    pub async fn start(stack: Stack) -> Self {
        let ana = stack.signed_up("ana").await;
        let ben = stack.signed_up("ben").await;
        let conversation = stack.group(&ana, &[&ben]).await;
        let nats = tertulia_plumbing::nats::connect(&stack.nats, "test")
            .await
            .unwrap();
        let subject = nats.subject(&tertulia_proto::subjects::deliver(&ben.user_id));
        let mut real = nats.client.subscribe(subject.clone()).await.unwrap();
        nats.client.flush().await.unwrap();
        let mut sent = Vec::new();
        for n in 1..=3 {
            sent.push(stack.send(&ana, &conversation, &format!("g{n}"), "x").await);
        }
        let mut delivered = 0;
        while delivered < 3 {
            let raw = tokio::time::timeout(crate::FRAME_WAIT, real.next())
                .await
                .unwrap()
                .unwrap();
            if let Some(Event::MessageCreated(_)) = Delivery::decode(raw.payload).unwrap().event {
                delivered += 1;
            }
        }
        Self {
            stack,
            nats,
            subject,
            ana,
            ben,
            conversation,
            sent,
        }
    }

    /// "Delivers" message `seq` with `text`, in the order of the calls.
    pub async fn deliver(&self, seq: u64, text: &str) {
        let stored = &self.sent[usize::try_from(seq).unwrap() - 1];
        let message = chat_pb::Message {
            message_id: stored["id"].as_str().unwrap().to_owned(),
            conversation_id: self.conversation.clone(),
            seq,
            sender_id: self.ana.user_id.clone(),
            client_msg_id: format!("g{seq}"),
            text: text.into(),
            ..Default::default()
        };
        let delivery = Delivery {
            event: Some(Event::MessageCreated(MessageCreated {
                event_id: uuid::Uuid::now_v7().to_string(),
                message: Some(message),
                message_v2: None,
                recipient_ids: Vec::new(),
            })),
        };
        self.nats
            .client
            .publish(self.subject.clone(), delivery.encode_to_vec().into())
            .await
            .unwrap();
        self.nats.client.flush().await.unwrap();
    }
}
