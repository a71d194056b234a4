//! The use cases: heartbeats and disconnects from gateways, presence queries, and pushing
//! online/offline changes to the user's contacts and conversation peers.

use std::{collections::BTreeSet, time::Duration};

use prost::Message as _;
use tertulia_plumbing::telemetry::Upstream as Channel;
use tertulia_plumbing::{client::with_deadline, nats::Nats, wire::timestamp};
use tertulia_proto::{
    auth::v1::{ListContactsRequest, auth_service_client::AuthServiceClient},
    chat::v1::{ListConversationsRequest, chat_service_client::ChatServiceClient},
    events::v1::{Delivery, PresenceChanged, delivery::Event},
    subjects,
};
use time::OffsetDateTime;

use crate::store::{PresenceStore, SessionEntry, StoreError, now_ms};

/// Conversations whose members hear about a user's presence.
const PEER_CONVERSATIONS: u32 = 200;

/// One user's presence as answered to queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPresence {
    /// Who.
    pub user_id: String,
    /// Whether any session is live.
    pub online: bool,
    /// When last seen, Unix milliseconds.
    pub last_seen_ms: Option<i64>,
}

/// Presence over the KV store.
#[derive(Debug, Clone)]
pub struct Presence {
    store: PresenceStore,
    nats: Nats,
    auth: AuthServiceClient<Channel>,
    chat: ChatServiceClient<Channel>,
    ttl: Duration,
    call_deadline: Duration,
}

impl Presence {
    /// Presence with sessions living `ttl` past their last heartbeat.
    #[must_use]
    pub fn new(
        store: PresenceStore,
        nats: Nats,
        auth: Channel,
        chat: Channel,
        ttl: Duration,
        call_deadline: Duration,
    ) -> Self {
        Self {
            store,
            nats,
            auth: AuthServiceClient::new(auth),
            chat: ChatServiceClient::new(chat),
            ttl,
            call_deadline,
        }
    }

    /// The session TTL.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A gateway says `session` of `user` is alive.
    pub async fn heartbeat(
        &self,
        user: &str,
        session: &str,
        gateway: &str,
    ) -> Result<(), StoreError> {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let entry = SessionEntry {
            gateway: gateway.to_owned(),
            expires_ms: now_ms().saturating_add(ttl_ms),
        };
        let session = session.to_owned();
        let change = self
            .store
            .modify(
                user,
                Box::new(move |record| {
                    record.sessions.insert(session.clone(), entry.clone());
                }),
            )
            .await?;
        self.store.seen(user).await?;
        if change.live_before == 0 {
            self.push(user, true).await;
        }
        Ok(())
    }

    /// A gateway says `session` of `user` ended.
    pub async fn disconnect(&self, user: &str, session: &str) -> Result<(), StoreError> {
        let session = session.to_owned();
        let change = self
            .store
            .modify(
                user,
                Box::new(move |record| {
                    record.sessions.remove(&session);
                }),
            )
            .await?;
        self.store.seen(user).await?;
        if change.live_before > 0 && change.live_after == 0 {
            self.push(user, false).await;
        }
        Ok(())
    }

    /// Presence of each of `users`, in order.
    pub async fn get(&self, users: &[String]) -> Result<Vec<UserPresence>, StoreError> {
        let mut answer = Vec::with_capacity(users.len());
        for user in users {
            answer.push(UserPresence {
                user_id: user.clone(),
                online: self.store.online(user).await?,
                last_seen_ms: self.store.last_seen(user).await?,
            });
        }
        Ok(answer)
    }

    /// Finds users whose sessions all expired (their gateway died) and announces them
    /// offline. Several instances may sweep at once: the compare-and-set delete lets exactly
    /// one of them see the transition and push it.
    pub async fn sweep(&self) -> Result<(), StoreError> {
        for user in self.store.recorded_users().await? {
            let change = self.store.modify(&user, Box::new(|_| {})).await?;
            if change.recorded_before > 0 && change.live_before == 0 && change.live_after == 0 {
                self.push(&user, false).await;
            }
        }
        Ok(())
    }

    /// Publishes the change to every contact and conversation peer of `user`, encoded once.
    /// Ephemeral: a failure is logged and the change is not retried.
    async fn push(&self, user: &str, online: bool) {
        let peers = match self.peers(user).await {
            Ok(peers) => peers,
            Err(status) => {
                tracing::warn!(message = "Cannot resolve presence peers.", user, error = %status);
                return;
            }
        };
        let last_seen = self
            .store
            .last_seen(user)
            .await
            .ok()
            .flatten()
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .map(timestamp);
        let payload: bytes::Bytes = Delivery {
            event: Some(Event::PresenceChanged(PresenceChanged {
                user_id: user.to_owned(),
                online,
                last_seen,
            })),
        }
        .encode_to_vec()
        .into();
        for peer in peers {
            let subject = self.nats.subject(&subjects::deliver(&peer));
            if let Err(error) = self.nats.client.publish(subject, payload.clone()).await {
                tracing::warn!(message = "Presence push failed.", %error);
                return;
            }
        }
    }

    async fn peers(&self, user: &str) -> Result<BTreeSet<String>, tonic::Status> {
        let contacts = self
            .auth
            .clone()
            .list_contacts(with_deadline(
                ListContactsRequest {
                    owner_id: user.to_owned(),
                },
                self.call_deadline,
            ))
            .await?
            .into_inner()
            .contacts;
        let conversations = self
            .chat
            .clone()
            .list_conversations(with_deadline(
                ListConversationsRequest {
                    actor_id: user.to_owned(),
                    limit: PEER_CONVERSATIONS,
                    page_token: String::new(),
                },
                self.call_deadline,
            ))
            .await?
            .into_inner()
            .conversations;
        let mut peers: BTreeSet<String> = contacts.into_iter().map(|c| c.user_id).collect();
        peers.extend(conversations.into_iter().flat_map(|c| c.member_ids));
        peers.remove(user);
        Ok(peers)
    }
}
