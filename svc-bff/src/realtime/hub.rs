//! The gateway's side of delivery: one core NATS subscription to `deliver.<user_id>` per
//! connected user, however many devices they have here, dispatched to a bounded queue per
//! connection. Each delivery is decoded and rendered to a frame once, then shared.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use tertulia_plumbing::{nats::Nats, shutdown::Shutdown};
use tertulia_proto::{
    events::v1::{Delivery, delivery::Event},
    subjects,
};
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinHandle,
};

use super::frames;
use crate::views::{ConversationView, MessageView, rfc3339};

/// One event for a connection.
#[derive(Debug)]
pub enum LiveEvent {
    /// A new message: ordered by `seq` within its conversation.
    Message {
        /// Where.
        conversation_id: String,
        /// Its place.
        seq: u64,
        /// The rendered `message` frame.
        frame: Utf8Bytes,
    },
    /// Anything else, delivered as it comes.
    Other(Utf8Bytes),
}

/// Renders a delivery into the frame clients receive; `None` for events clients do not get.
#[must_use]
pub fn render(delivery: Delivery) -> Option<LiveEvent> {
    Some(match delivery.event? {
        Event::MessageCreated(e) => {
            let message = e.message?;
            let (conversation_id, seq) = (message.conversation_id.clone(), message.seq);
            LiveEvent::Message {
                frame: frames::message("message", &MessageView::from(message), &conversation_id),
                conversation_id,
                seq,
            }
        }
        Event::MessageUpdated(e) => {
            let message = e.message?;
            let conversation_id = message.conversation_id.clone();
            LiveEvent::Other(frames::message(
                "message_updated",
                &MessageView::from(message),
                &conversation_id,
            ))
        }
        Event::ReceiptUpdated(e) => {
            LiveEvent::Other(frames::receipt(&e.conversation_id, &e.user_id, e.seq))
        }
        Event::MembershipChanged(e) => LiveEvent::Other(frames::conversation(
            &ConversationView::from(e.conversation?),
        )),
        Event::TypingStarted(e) => LiveEvent::Other(frames::typing(&e.conversation_id, &e.user_id)),
        Event::PresenceChanged(e) => LiveEvent::Other(frames::presence(
            &e.user_id,
            e.online,
            rfc3339(e.last_seen.as_ref()),
        )),
        Event::VideoChanged(_) => return None,
    })
}

#[derive(Debug, Clone)]
struct Connection {
    queue: mpsc::Sender<Arc<LiveEvent>>,
    too_slow: Shutdown,
}

type Connections = Arc<StdMutex<HashMap<u64, Connection>>>;

#[derive(Debug)]
struct UserSlot {
    connections: Connections,
    dispatch: JoinHandle<()>,
    frames: Arc<StdMutex<TokenBucket>>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(per_second),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Subscriptions of the users connected to this gateway.
#[derive(Debug)]
pub struct DeliveryHub {
    nats: Nats,
    users: Mutex<HashMap<String, UserSlot>>,
    queue: usize,
    next_id: AtomicU64,
    frames_per_second: u32,
    frame_burst: u32,
}

/// The NATS subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to deliveries: {0}")]
pub struct SubscribeError(String);

/// One connection's place in the hub; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    /// Events for this connection, in arrival order.
    pub events: mpsc::Receiver<Arc<LiveEvent>>,
    /// Trips when the queue overflowed: the client reads too slowly.
    pub too_slow: Shutdown,
    frames: Arc<StdMutex<TokenBucket>>,
    hub: Arc<DeliveryHub>,
    user_id: String,
    id: u64,
}

impl Registration {
    /// Whether the user may send another frame now: the budget is per user, shared by all
    /// their connections on this gateway.
    #[must_use]
    pub fn admit_frame(&self) -> bool {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let hub = Arc::clone(&self.hub);
        let (user_id, id) = (std::mem::take(&mut self.user_id), self.id);
        tokio::spawn(async move { hub.unregister(&user_id, id).await });
    }
}

impl DeliveryHub {
    /// A hub over `nats` with `queue` events of room per connection and a budget of client
    /// frames per user.
    #[must_use]
    pub fn new(nats: Nats, queue: usize, frames_per_second: u32, frame_burst: u32) -> Arc<Self> {
        Arc::new(Self {
            nats,
            users: Mutex::new(HashMap::new()),
            queue: queue.max(1),
            next_id: AtomicU64::new(1),
            frames_per_second,
            frame_burst,
        })
    }

    /// Registers a connection of `user_id`. When this returns, the user's subscription is
    /// active on the server, so anything published from now on reaches the connection:
    /// history read after this call cannot miss an event.
    pub async fn register(self: &Arc<Self>, user_id: &str) -> Result<Registration, SubscribeError> {
        let (queue, events) = mpsc::channel(self.queue);
        let too_slow = Shutdown::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            queue,
            too_slow: too_slow.clone(),
        };
        let mut users = self.users.lock().await;
        let frames = if let Some(slot) = users.get(user_id) {
            lock(&slot.connections).insert(id, connection);
            Arc::clone(&slot.frames)
        } else {
            let subject = self.nats.subject(&subjects::deliver(user_id));
            let subscriber = self
                .nats
                .client
                .subscribe(subject)
                .await
                .map_err(|e| SubscribeError(e.to_string()))?;
            self.nats
                .sync()
                .await
                .map_err(|e| SubscribeError(e.to_string()))?;
            let connections: Connections =
                Arc::new(StdMutex::new(HashMap::from([(id, connection)])));
            tracing::debug!(message = "Subscribed to deliveries.", user_id);
            let dispatch = tokio::spawn(dispatch(subscriber, Arc::clone(&connections)));
            let frames = Arc::new(StdMutex::new(TokenBucket::new(
                self.frames_per_second,
                self.frame_burst,
            )));
            users.insert(
                user_id.to_owned(),
                UserSlot {
                    connections,
                    dispatch,
                    frames: Arc::clone(&frames),
                },
            );
            frames
        };
        Ok(Registration {
            events,
            too_slow,
            frames,
            hub: Arc::clone(self),
            user_id: user_id.to_owned(),
            id,
        })
    }

    async fn unregister(&self, user_id: &str, id: u64) {
        let mut users = self.users.lock().await;
        let Some(slot) = users.get(user_id) else {
            return;
        };
        let empty = {
            let mut connections = lock(&slot.connections);
            connections.remove(&id);
            connections.is_empty()
        };
        if empty && let Some(slot) = users.remove(user_id) {
            tracing::debug!(message = "Unsubscribed from deliveries.", user_id);
            // Dropping the subscriber unsubscribes.
            slot.dispatch.abort();
        }
    }

    /// Users with at least one connection here.
    pub async fn connected_users(&self) -> usize {
        self.users.lock().await.len()
    }
}

fn lock(connections: &Connections) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
    connections
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Renders each delivery once and offers it to every connection of the user. A full queue
/// means the client is not keeping up: it is told to go (1013) rather than buffered forever.
async fn dispatch(mut subscriber: async_nats::Subscriber, connections: Connections) {
    while let Some(message) = subscriber.next().await {
        let Ok(delivery) = Delivery::decode(message.payload) else {
            tracing::warn!(message = "Undecodable delivery dropped.", subject = %message.subject);
            continue;
        };
        let Some(event) = render(delivery) else {
            continue;
        };
        let event = Arc::new(event);
        tracing::debug!(message = "Delivery dispatched.", subject = %message.subject);
        for connection in lock(&connections).values() {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                connection.queue.try_send(Arc::clone(&event))
            {
                connection.too_slow.cancel();
            }
        }
    }
}
