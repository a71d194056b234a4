//! The gateway's side of delivery: one core NATS subscription to `deliver.<user_id>` per
//! connected user, however many devices they have here, and one to
//! `deliver.conversation.<id>` per group with a member connected here (a group's new
//! messages come once per gateway, naming their recipients), on the gateway's delivery
//! [`Link`], dispatched to a bounded queue per connection. Each event is rendered to a
//! frame once per gateway, then shared by every recipient and connection here.
//!
//! A user's groups are read from svc-chat when the user's first connection registers;
//! groups joined or left later come as membership events on the user's subject.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex as StdMutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use prost::Message as _;
use tertulia_plumbing::{
    config::NatsConfig,
    generations::Generations,
    health::Readiness,
    metrics::{Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry, exponential_buckets},
    nats::Nats,
    nats_link::{Confirmation, Inbound, Link, LinkError, Subscription},
    shutdown::Shutdown,
    telemetry,
};
use tertulia_proto::{
    chat::{v1 as chat_v1, v2 as chat_v2},
    events::v1::{Delivery, delivery::Event},
    subjects,
};
use tokio::sync::{Mutex, mpsc};

use super::{
    Api, RealtimeConfig, frames,
    queue::{self, Refused},
};
use crate::views::{ConversationView, MessageView, MessageViewV2, VideoView, rfc3339};

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
    /// The user joined a group whose last message then was `seq`, and the group's subject
    /// is being subscribed here: its later messages start from there.
    Joining {
        /// The group.
        conversation_id: String,
        /// Its last `seq` when the user joined.
        seq: u64,
    },
    /// The group's subject is subscribed: messages that passed by before are read from
    /// history.
    Joined {
        /// The group.
        conversation_id: String,
    },
}

/// Renders a delivery into the frame clients of `api` receive; `None` for events they do
/// not get.
#[must_use]
pub fn render(delivery: &Delivery, api: Api) -> Option<LiveEvent> {
    Some(match delivery.event.as_ref()? {
        Event::MessageCreated(e) => {
            let (conversation_id, seq, view) =
                message_view(api, e.message.as_ref(), e.message_v2.as_ref())?;
            LiveEvent::Message {
                frame: frames::message("message", &view, &conversation_id),
                conversation_id,
                seq,
            }
        }
        Event::MessageUpdated(e) => {
            let (conversation_id, _, view) =
                message_view(api, e.message.as_ref(), e.message_v2.as_ref())?;
            LiveEvent::Other(frames::message("message_updated", &view, &conversation_id))
        }
        Event::ReceiptUpdated(e) => {
            LiveEvent::Other(frames::receipt(&e.conversation_id, &e.user_id, e.seq))
        }
        Event::MembershipChanged(e) => LiveEvent::Other(match (api, &e.conversation_v2) {
            (Api::V2, Some(c)) => {
                frames::conversation(&ConversationView::<MessageViewV2>::from(c.clone()))
            }
            // v1, or an event from a producer older than v2 (its last message in v1's shape).
            _ => frames::conversation(&ConversationView::<MessageView>::from(
                e.conversation.clone()?,
            )),
        }),
        Event::TypingStarted(e) => LiveEvent::Other(frames::typing(&e.conversation_id, &e.user_id)),
        Event::PresenceChanged(e) => LiveEvent::Other(frames::presence(
            &e.user_id,
            e.online,
            rfc3339(e.last_seen.as_ref()),
        )),
        Event::VideoChanged(e) => {
            LiveEvent::Other(frames::video(&VideoView::from(e.video.clone()?)))
        }
        Event::ReactionsChanged(e) => match api {
            // v1 connections never see reactions.
            Api::V1 => return None,
            Api::V2 => {
                let message = MessageViewV2::from(e.message.clone()?);
                LiveEvent::Other(frames::message(
                    "reactions",
                    &message,
                    message.conversation_id(),
                ))
            }
        },
    })
}

/// A message event's conversation, `seq` and view in `api`'s shape. An event without the v2
/// shape (from a producer older than v2) shows v2 clients the v1 text.
fn message_view(
    api: Api,
    v1: Option<&chat_v1::Message>,
    v2: Option<&chat_v2::Message>,
) -> Option<(String, u64, serde_json::Value)> {
    let view = match (api, v2) {
        (Api::V2, Some(m)) => serde_json::to_value(MessageViewV2::from(m.clone())),
        (Api::V2, None) => {
            // v1's view with its text as text content and no reactions.
            let mut view = serde_json::to_value(MessageView::from(v1?.clone())).ok()?;
            let text = view.as_object_mut()?.remove("text")?;
            view["content"] = serde_json::json!({"type": "text", "text": text});
            view["reactions"] = serde_json::json!([]);
            Ok(view)
        }
        (Api::V1, _) => serde_json::to_value(MessageView::from(v1?.clone())),
    }
    .ok()?;
    let (conversation_id, seq) = match (v1, v2) {
        (Some(m), _) => (m.conversation_id.clone(), m.seq),
        (None, Some(m)) => (m.conversation_id.clone(), m.seq),
        (None, None) => return None,
    };
    Some((conversation_id, seq, view))
}

/// Labels of open connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    transport: &'static str,
    api: &'static str,
}

/// Labels of slow-consumer disconnects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlowLabels {
    transport: &'static str,
    reason: &'static str,
}

/// Labels of gaps in a conversation's live messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GapLabels {
    outcome: &'static str,
}

/// What the gateway's real-time side measures: `tertulia_realtime_connections{transport, api}`,
/// `tertulia_realtime_users` (users with a subscription here), `tertulia_realtime_groups`
/// (groups with a subscription here),
/// `tertulia_realtime_queue_depth` (events waiting in a connection's queue, observed at each
/// enqueue), `tertulia_realtime_slow_consumer_disconnects_total{transport, reason}` and
/// `tertulia_realtime_gaps_total{outcome}` (a message held back after a gap, `held`; a gap
/// read from history, `filled`).
#[derive(Debug, Clone)]
pub struct RealtimeMetrics {
    connections: Family<ConnectionLabels, Gauge>,
    users: Gauge,
    groups: Gauge,
    queue_depth: Histogram,
    slow: Family<SlowLabels, Counter>,
    gaps: Family<GapLabels, Counter>,
}

impl RealtimeMetrics {
    /// The series, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections: Family::default(),
            users: Gauge::default(),
            groups: Gauge::default(),
            queue_depth: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            slow: Family::default(),
            gaps: Family::default(),
        };
        for outcome in ["held", "filled"] {
            drop(metrics.gaps.get_or_create(&GapLabels { outcome }));
        }
        // Every transport and reason from 0, so rates work before the first event.
        for transport in ["ws", "sse", "poll"] {
            for reason in ["queue_full", "send_timeout"] {
                drop(
                    metrics
                        .slow
                        .get_or_create(&SlowLabels { transport, reason }),
                );
            }
        }
        registry.register(
            "tertulia_realtime_connections",
            "Open real-time connections (WebSocket, SSE, long polls waiting)",
            metrics.connections.clone(),
        );
        registry.register(
            "tertulia_realtime_users",
            "Users with a delivery subscription on this gateway",
            metrics.users.clone(),
        );
        registry.register(
            "tertulia_realtime_groups",
            "Groups whose delivery subject is subscribed on this gateway",
            metrics.groups.clone(),
        );
        registry.register(
            "tertulia_realtime_queue_depth",
            "Events waiting in a connection's queue, observed at each enqueue",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "tertulia_realtime_slow_consumer_disconnects",
            "Connections closed because the client read too slowly",
            metrics.slow.clone(),
        );
        registry.register(
            "tertulia_realtime_gaps",
            "Gaps in a conversation's live messages: held back (held), read from history (filled)",
            metrics.gaps.clone(),
        );
        metrics
    }

    /// A gap in a conversation's live messages: a message `held` back, or a gap `filled`
    /// from history.
    pub fn gap(&self, outcome: &'static str) {
        self.gaps.get_or_create(&GapLabels { outcome }).inc();
    }

    /// A client of `transport` read too slowly and was disconnected (`reason`:
    /// `queue_full` or `send_timeout`).
    pub fn slow_consumer(&self, transport: &'static str, reason: &'static str) {
        self.slow
            .get_or_create(&SlowLabels { transport, reason })
            .inc();
    }
}

/// An event on its way to one connection, with the trace of the delivery that brought it
/// (when traces are exported), so the socket write joins the sender's trace.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The rendered event.
    pub event: Arc<LiveEvent>,
    /// The `traceparent` of the gateway's consumer span for the delivery.
    pub traceparent: Option<Arc<str>>,
}

#[derive(Debug)]
struct Connection {
    queue: queue::Sender,
    too_slow: Shutdown,
    api: Api,
    transport: &'static str,
}

/// A user's connections on this gateway, by connection id.
#[derive(Debug)]
pub struct UserConnections {
    /// Shared with the hub's table of users and the groups' tables of members.
    user_id: Arc<str>,
    connections: StdMutex<HashMap<u64, Connection>>,
}

type Connections = Arc<UserConnections>;

impl UserConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event` (with no trace of its own) on every connection.
    fn notify(&self, event: LiveEvent, metrics: &RealtimeMetrics) {
        let queued = Queued {
            event: Arc::new(event),
            traceparent: None,
        };
        for connection in self.lock().values() {
            connection.offer(queued.clone(), metrics);
        }
    }
}

/// A group's members connected to this gateway, by user id.
#[derive(Debug, Default)]
pub struct GroupMembers(StdMutex<HashMap<Arc<str>, Connections>>);

impl GroupMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Connections>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one delivery subscription feeds.
#[derive(Debug)]
pub enum Target {
    /// `deliver.<user_id>`: every event for one user.
    User(Connections),
    /// `deliver.conversation.<conversation_id>`: a group's new messages, for those of its
    /// members connected here whom the message names.
    Group(Arc<GroupMembers>),
}

#[derive(Debug)]
struct UserSlot {
    connections: Connections,
    /// Dropping it unsubscribes.
    _subscription: Subscription<Target>,
    frames: Arc<StdMutex<TokenBucket>>,
    /// The groups whose subjects this user is subscribed to here (a few: a list).
    groups: Vec<String>,
    /// Whether the user's subscriptions (their own and their groups') are active here yet.
    state: UserState,
}

/// Where a user's subscriptions stand on this gateway.
#[derive(Debug)]
enum UserState {
    /// On their way: every connection of the user waits for this (let go once settled:
    /// a connected user holds no allocation for it).
    Subscribing(Ready),
    /// Active.
    Subscribed,
    /// They could not be made: the user's connections fail, and retry.
    Failed,
}

#[derive(Debug)]
struct GroupSlot {
    members: Arc<GroupMembers>,
    /// Dropping it unsubscribes.
    _subscription: Subscription<Target>,
    /// Whether the server has the subscription: members who join while it is on its way
    /// wait for the same answer.
    ready: Ready,
}

/// Resolves once a subscription is active on the server, or with why it could not be made.
type Ready = Shared<BoxFuture<'static, Result<(), String>>>;

/// A confirmation any number of waiters can share.
fn shared(confirmation: Confirmation) -> Ready {
    async move { confirmation.confirmed().await.map_err(|e| e.to_string()) }
        .boxed()
        .shared()
}

/// The users connected here and the groups subscribed for them.
#[derive(Debug, Default)]
struct Local {
    users: HashMap<Arc<str>, UserSlot>,
    groups: HashMap<String, GroupSlot>,
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

/// Reads the ids of a user's group conversations (from svc-chat).
pub type GroupsOf =
    Box<dyn Fn(String) -> BoxFuture<'static, Result<Vec<String>, String>> + Send + Sync>;

/// A connected user joined or left a group: its subject is subscribed or let go here.
#[derive(Debug)]
struct GroupChange {
    user_id: String,
    conversation_id: String,
    /// The group's last `seq` when the user joined; `None`: the user left.
    joined_after: Option<u64>,
}

/// Subscriptions of the users connected to this gateway, and of their groups.
pub struct DeliveryHub {
    nats: Nats,
    link: Link<Target>,
    local: Mutex<Local>,
    groups_of: GroupsOf,
    queue: usize,
    next_id: AtomicU64,
    frames_per_second: u32,
    frame_burst: u32,
    metrics: RealtimeMetrics,
}

impl std::fmt::Debug for DeliveryHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHub")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// The NATS subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to deliveries: {0}")]
pub struct SubscribeError(String);

/// One connection's place in the hub; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    /// Events for this connection, in arrival order.
    pub events: queue::Receiver,
    /// Trips when the queue overflowed: the client reads too slowly.
    pub too_slow: Shutdown,
    frames: Arc<StdMutex<TokenBucket>>,
    hub: Arc<DeliveryHub>,
    user_id: String,
    id: u64,
    open: Gauge,
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
        self.open.dec();
        let hub = Arc::clone(&self.hub);
        let (user_id, id) = (std::mem::take(&mut self.user_id), self.id);
        tokio::spawn(async move { hub.unregister(&user_id, id).await });
    }
}

impl DeliveryHub {
    /// A hub whose subscriptions are made on a [`Link`] of its own to the servers of
    /// `config` (namespaced by `nats`), with the queue and frame budget of `realtime`;
    /// `groups_of` reads the groups of a user who connects.
    pub async fn connect(
        nats: Nats,
        config: &NatsConfig,
        realtime: &RealtimeConfig,
        metrics: RealtimeMetrics,
        groups_of: GroupsOf,
    ) -> Result<Arc<Self>, LinkError> {
        let renders = Arc::new(RenderCache::default());
        let (to_follow, changed) = mpsc::unbounded_channel();
        let handler = {
            let (renders, metrics) = (Arc::clone(&renders), metrics.clone());
            Box::new(move |target: &Target, message: Inbound| match target {
                Target::User(connections) => {
                    if let Some(change) = dispatch(connections, message, &renders, &metrics) {
                        // The hub is gone only when the gateway stops.
                        let _ = to_follow.send(change);
                    }
                }
                Target::Group(members) => dispatch_group(members, message, &renders, &metrics),
            })
        };
        let link = Link::connect(config, "svc-bff deliveries", handler).await?;
        let hub = Arc::new(Self {
            metrics,
            nats,
            link,
            local: Mutex::new(Local::default()),
            groups_of,
            queue: realtime.outbound_queue.max(1),
            next_id: AtomicU64::new(1),
            frames_per_second: realtime.frames_per_second,
            frame_burst: realtime.frame_burst,
        });
        tokio::spawn(Self::follow_groups(Arc::downgrade(&hub), changed));
        Ok(hub)
    }

    /// Registers a connection of `user_id`. When this returns, the user's subscription and
    /// those of the user's groups are active on the server, so anything published from now
    /// on reaches the connection: history read after this call cannot miss an event.
    pub async fn register(
        self: &Arc<Self>,
        user_id: &str,
        api: Api,
        transport: &'static str,
    ) -> Result<Registration, SubscribeError> {
        let (queue, events) = queue::bounded(self.queue);
        let too_slow = Shutdown::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            queue,
            too_slow: too_slow.clone(),
            api,
            transport,
        };
        // Subscriptions are sent under the lock and confirmed outside it, so that the
        // registrations of a storm wait for their round trips side by side.
        let mut local = self.local.lock().await;
        let (frames, subscribed) = if let Some(slot) = local.users.get(user_id) {
            let subscribed = match &slot.state {
                UserState::Subscribing(ready) => Some(ready.clone()),
                UserState::Subscribed => None,
                // Until the user's failed connections are gone; the client retries.
                UserState::Failed => {
                    return Err(SubscribeError("the user's subscriptions failed".into()));
                }
            };
            slot.connections.lock().insert(id, connection);
            (Arc::clone(&slot.frames), subscribed)
        } else {
            let subject = self.nats.subject(&subjects::deliver(user_id));
            let connections = Arc::new(UserConnections {
                user_id: user_id.into(),
                connections: StdMutex::new(HashMap::from([(id, connection)])),
            });
            let (subscription, confirmation) = self
                .link
                .subscribe_unconfirmed(&subject, Arc::new(Target::User(Arc::clone(&connections))))
                .map_err(|e| SubscribeError(e.to_string()))?;
            // Once the user's subject is subscribed, their groups are; groups joined
            // meanwhile come as membership events on the user's subject. Whichever of the
            // user's connections is waiting carries this on.
            let ready = {
                // Weak: the hub holds this while it lasts.
                let (hub, user_id) = (Arc::downgrade(self), user_id.to_owned());
                async move {
                    let hub = hub.upgrade().ok_or("the gateway is stopping")?;
                    hub.subscribe_groups(&user_id, confirmation)
                        .await
                        .map_err(|e| e.0)
                }
                .boxed()
                .shared()
            };
            let frames = Arc::new(StdMutex::new(TokenBucket::new(
                self.frames_per_second,
                self.frame_burst,
            )));
            local.users.insert(
                Arc::clone(&connections.user_id),
                UserSlot {
                    connections,
                    _subscription: subscription,
                    frames: Arc::clone(&frames),
                    groups: Vec::new(),
                    state: UserState::Subscribing(ready.clone()),
                },
            );
            self.metrics.users.inc();
            (frames, Some(ready))
        };
        drop(local);
        if let Some(ready) = subscribed
            && let Err(error) = ready.await
        {
            self.unregister(user_id, id).await;
            return Err(SubscribeError(error));
        }
        let open = self
            .metrics
            .connections
            .get_or_create(&ConnectionLabels {
                transport,
                api: match api {
                    Api::V1 => "v1",
                    Api::V2 => "v2",
                },
            })
            .clone();
        open.inc();
        Ok(Registration {
            open,
            events,
            too_slow,
            frames,
            hub: Arc::clone(self),
            user_id: user_id.to_owned(),
            id,
        })
    }

    /// Once the user's own subscription is confirmed, subscribes the subjects of
    /// `user_id`'s groups that are not subscribed here yet, waits until the server has them,
    /// and records how that went.
    async fn subscribe_groups(
        &self,
        user_id: &str,
        confirmation: Confirmation,
    ) -> Result<(), SubscribeError> {
        let (listed, user) = tokio::join!(
            (self.groups_of)(user_id.to_owned()),
            confirmation.confirmed()
        );
        let subscribed = async {
            user.map_err(|e| SubscribeError(e.to_string()))?;
            tracing::debug!(message = "Subscribed to deliveries.", user_id);
            let groups = listed.map_err(SubscribeError)?;
            let ready = {
                let mut local = self.local.lock().await;
                let mut ready = Vec::with_capacity(groups.len());
                for conversation_id in groups {
                    ready.extend(self.join(&mut local, user_id, conversation_id)?);
                }
                ready
            };
            // Sent together, so confirmed together: one round trip in all.
            for group in ready {
                group.await.map_err(SubscribeError)?;
            }
            Ok(())
        }
        .await;
        if let Some(user) = self.local.lock().await.users.get_mut(user_id) {
            user.state = match subscribed {
                Ok(()) => UserState::Subscribed,
                Err(_) => UserState::Failed,
            };
        }
        subscribed
    }

    /// Adds `user_id` (connected here) to the members of `conversation_id` here, sending
    /// the subscription of its subject if it is the group's first (or the last attempt
    /// failed). Gives what tells when the subscription is active; `None` when the user is
    /// not connected here.
    fn join(
        &self,
        local: &mut Local,
        user_id: &str,
        conversation_id: String,
    ) -> Result<Option<Ready>, SubscribeError> {
        let Some(user) = local.users.get_mut(user_id) else {
            return Ok(None);
        };
        let connections = Arc::clone(&user.connections);
        let member = Arc::clone(&connections.user_id);
        let known = user.groups.contains(&conversation_id);
        let usable = local
            .groups
            .get(&conversation_id)
            .filter(|group| !matches!(group.ready.peek(), Some(Err(_))));
        let ready = if let Some(group) = usable {
            group.members.lock().insert(member, connections);
            group.ready.clone()
        } else {
            let members = Arc::new(GroupMembers::default());
            members.lock().insert(member, connections);
            let subject = self
                .nats
                .subject(&subjects::deliver_conversation(&conversation_id));
            let (subscription, confirmation) = self
                .link
                .subscribe_unconfirmed(&subject, Arc::new(Target::Group(Arc::clone(&members))))
                .map_err(|e| SubscribeError(e.to_string()))?;
            let ready = shared(confirmation);
            let slot = GroupSlot {
                members,
                _subscription: subscription,
                ready: ready.clone(),
            };
            // A slot whose subscription failed is replaced: its members fail and retry.
            if local.groups.insert(conversation_id.clone(), slot).is_none() {
                self.metrics.groups.inc();
            }
            ready
        };
        if !known && let Some(user) = local.users.get_mut(user_id) {
            user.groups.push(conversation_id);
        }
        Ok(Some(ready))
    }

    /// Takes `user_id` out of the members of `conversation_id` here, letting its subject go
    /// if nobody is left.
    fn leave(&self, local: &mut Local, user_id: &str, conversation_id: &str) {
        let Some(group) = local.groups.get(conversation_id) else {
            return;
        };
        let empty = {
            let mut members = group.members.lock();
            members.remove(user_id);
            members.is_empty()
        };
        if empty && local.groups.remove(conversation_id).is_some() {
            // Dropping the slot unsubscribed.
            self.metrics.groups.dec();
        }
    }

    /// Follows the groups connected users join and leave, one change at a time.
    async fn follow_groups(hub: Weak<Self>, mut changed: mpsc::UnboundedReceiver<GroupChange>) {
        while let Some(change) = changed.recv().await {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            hub.change_groups(change).await;
        }
    }

    /// A connected user joined a group: until its subject is subscribed here, the group's
    /// messages may pass by, so the user's connections are first told where the group was
    /// when the user joined (a later message shows a gap, filled from history), and once it
    /// is subscribed, to read anything they missed in between.
    async fn change_groups(&self, change: GroupChange) {
        let GroupChange {
            user_id,
            conversation_id,
            joined_after,
        } = change;
        let mut local = self.local.lock().await;
        let Some(after) = joined_after else {
            if let Some(user) = local.users.get_mut(user_id.as_str()) {
                user.groups.retain(|group| *group != conversation_id);
            }
            self.leave(&mut local, &user_id, &conversation_id);
            return;
        };
        let Some(connections) = local
            .users
            .get(user_id.as_str())
            .filter(|user| !user.groups.contains(&conversation_id))
            .map(|user| Arc::clone(&user.connections))
        else {
            return;
        };
        connections.notify(
            LiveEvent::Joining {
                conversation_id: conversation_id.clone(),
                seq: after,
            },
            &self.metrics,
        );
        let joined = self.join(&mut local, &user_id, conversation_id.clone());
        drop(local);
        let subscribed = match joined {
            Ok(Some(ready)) => ready.await.map_err(SubscribeError),
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        match subscribed {
            Ok(()) => connections.notify(LiveEvent::Joined { conversation_id }, &self.metrics),
            Err(error) => {
                // The connections cannot receive the group's messages: they end, and the
                // clients resume.
                tracing::warn!(message = "Cannot subscribe to a group.", %error, user_id);
                for connection in connections.lock().values() {
                    connection.too_slow.cancel();
                }
            }
        }
    }

    async fn unregister(&self, user_id: &str, id: u64) {
        let mut local = self.local.lock().await;
        let Some(slot) = local.users.get(user_id) else {
            return;
        };
        let empty = {
            let mut connections = slot.connections.lock();
            connections.remove(&id);
            connections.is_empty()
        };
        if !empty {
            return;
        }
        if let Some(slot) = local.users.remove(user_id) {
            // Dropping the slot unsubscribed.
            tracing::debug!(message = "Unsubscribed from deliveries.", user_id);
            self.metrics.users.dec();
            for conversation_id in &slot.groups {
                self.leave(&mut local, user_id, conversation_id);
            }
        }
    }

    /// What the hub measures (transports add their own slow-reader disconnects).
    #[must_use]
    pub fn metrics(&self) -> &RealtimeMetrics {
        &self.metrics
    }

    /// `readiness` with a probe that fails while the delivery link is reconnecting
    /// (deliveries cannot arrive then).
    #[must_use]
    pub fn probe(self: &Arc<Self>, readiness: Readiness) -> Readiness {
        let hub = Arc::clone(self);
        readiness.with("nats deliveries", move || {
            let up = hub.link.is_connected();
            async move { up.then_some(()).ok_or_else(|| "reconnecting".to_owned()) }
        })
    }

    /// Users with at least one connection here.
    pub async fn connected_users(&self) -> usize {
        self.local.lock().await.users.len()
    }
}

impl Connection {
    /// Queues `queued`. A full queue means the client is not keeping up: it is told to go
    /// (1013) rather than buffered forever.
    fn offer(&self, queued: Queued, metrics: &RealtimeMetrics) {
        match self.queue.try_send(queued) {
            Ok(queued) => {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "queues hold far fewer than 2^52"
                )]
                metrics.queue_depth.observe(queued as f64);
            }
            Err(Refused::Full) => {
                if !self.too_slow.is_cancelled() {
                    metrics.slow_consumer(self.transport, "queue_full");
                }
                self.too_slow.cancel();
            }
            Err(Refused::Closed) => {}
        }
    }
}

/// Rendered frames by event id, so an event delivered to many users on this gateway is turned
/// into JSON once, not once per recipient. Entries live a few seconds: long enough for one
/// fan-out to pass through.
#[derive(Debug)]
pub struct RenderCache {
    frames: StdMutex<Generations<RenderKey, Arc<LiveEvent>>>,
}

impl Default for RenderCache {
    fn default() -> Self {
        Self {
            frames: StdMutex::new(Generations::new(RENDER_TTL, RENDER_GENERATION_MAX)),
        }
    }
}

/// An event id and the version it was rendered for.
type RenderKey = (String, Api);

/// How long a rendered frame is kept for other recipients, at least.
const RENDER_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Entries in the newer generation that start the next one early, whatever its age.
const RENDER_GENERATION_MAX: usize = 64 * 1024;

impl RenderCache {
    /// The shared rendering of `delivery` for `api`; events without an id (typing,
    /// presence) are rendered each time.
    pub fn render(&self, delivery: &Delivery, api: Api) -> Option<Arc<LiveEvent>> {
        let Some(id) = event_id(delivery) else {
            return render(delivery, api).map(Arc::new);
        };
        let key = (id, api);
        let mut frames = self
            .frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(event) = frames.get(&key) {
            return Some(event);
        }
        let event = Arc::new(render(delivery, api)?);
        frames.insert(key, Arc::clone(&event));
        Some(event)
    }
}

fn event_id(delivery: &Delivery) -> Option<String> {
    let id = match delivery.event.as_ref()? {
        Event::MessageCreated(e) => &e.event_id,
        Event::MessageUpdated(e) => &e.event_id,
        Event::ReceiptUpdated(e) => &e.event_id,
        Event::MembershipChanged(e) => &e.event_id,
        Event::ReactionsChanged(e) => &e.event_id,
        Event::TypingStarted(_) | Event::PresenceChanged(_) | Event::VideoChanged(_) => {
            return None;
        }
    };
    Some(id.clone()).filter(|id| !id.is_empty())
}

/// A delivery on its way to the connections here: decoded once, rendered at most once per
/// version, whoever it reaches.
struct Offer<'a> {
    delivery: Delivery,
    traceparent: Option<Arc<str>>,
    /// Per version: `None` for an event its clients do not get.
    rendered: [std::cell::OnceCell<Option<Arc<LiveEvent>>>; Api::ALL.len()],
    cache: &'a RenderCache,
    metrics: &'a RealtimeMetrics,
}

impl<'a> Offer<'a> {
    /// The delivery in `message`, received on a subject of `template`, in the gateway's
    /// consumer span (entered while the guard lives); `None` (logged) when it cannot be
    /// decoded.
    fn receive(
        template: &str,
        message: Inbound,
        cache: &'a RenderCache,
        metrics: &'a RealtimeMetrics,
    ) -> (tracing::span::EnteredSpan, Option<Self>) {
        let span = telemetry::consumer_span(
            template,
            &message.subject,
            "gateway",
            telemetry::nats_traceparent(message.headers.as_ref()),
        );
        let traceparent = telemetry::traceparent(&span).map(Arc::from);
        let entered = span.entered();
        let subject = message.subject;
        let offer = Delivery::decode(message.payload)
            .inspect_err(|_| tracing::warn!(message = "Undecodable delivery dropped.", %subject))
            .ok()
            .map(|delivery| Self {
                delivery,
                traceparent,
                rendered: Default::default(),
                cache,
                metrics,
            });
        (entered, offer)
    }

    /// Offers the delivery to every connection of one user, rendered only for the versions
    /// connected here.
    fn to(&self, user: &UserConnections) {
        for connection in user.lock().values() {
            let event = self.rendered[connection.api.index()]
                .get_or_init(|| self.cache.render(&self.delivery, connection.api));
            let Some(event) = event else { continue };
            let queued = Queued {
                event: Arc::clone(event),
                traceparent: self.traceparent.clone(),
            };
            connection.offer(queued, self.metrics);
        }
    }
}

/// Offers a delivery on a user's subject to every connection of the user. A membership
/// change of a group comes back as the change it makes to the user's groups here.
fn dispatch(
    connections: &UserConnections,
    message: Inbound,
    cache: &RenderCache,
    metrics: &RealtimeMetrics,
) -> Option<GroupChange> {
    let (_span, offer) = Offer::receive(subjects::DELIVER_TEMPLATE, message, cache, metrics);
    let offer = offer?;
    offer.to(connections);
    group_change(&connections.user_id, &offer.delivery)
}

/// Offers a message on a group's subject to the members connected here whom it names.
fn dispatch_group(
    members: &GroupMembers,
    message: Inbound,
    cache: &RenderCache,
    metrics: &RealtimeMetrics,
) {
    let template = subjects::DELIVER_CONVERSATION_TEMPLATE;
    let (_span, offer) = Offer::receive(template, message, cache, metrics);
    let Some(mut offer) = offer else {
        return;
    };
    let Some(Event::MessageCreated(created)) = &mut offer.delivery.event else {
        tracing::warn!(message = "Only new messages go to a group's subject; dropped.");
        return;
    };
    // Taken out: the frames clients get never name the other recipients.
    // The fan-out names each recipient once.
    let named = std::mem::take(&mut created.recipient_ids);
    let members = members.lock();
    for connections in named
        .iter()
        .filter_map(|user_id| members.get(user_id.as_str()))
    {
        offer.to(connections);
    }
}

/// How a membership change of a group changes `user_id`'s groups: joined (or still a
/// member), or left.
fn group_change(user_id: &str, delivery: &Delivery) -> Option<GroupChange> {
    let Some(Event::MembershipChanged(changed)) = &delivery.event else {
        return None;
    };
    let group = changed.conversation.as_ref()?;
    if group.kind() != chat_v1::ConversationKind::Group {
        return None;
    }
    let member = group.member_ids.iter().any(|id| id == user_id);
    let removed = changed.removed_user_ids.iter().any(|id| id == user_id);
    (member || removed).then(|| GroupChange {
        user_id: user_id.to_owned(),
        conversation_id: group.conversation_id.clone(),
        joined_after: member.then_some(group.last_seq),
    })
}

#[cfg(test)]
mod tests {
    use tertulia_proto::{
        chat::v1 as chat,
        events::v1::{MembershipChanged, MessageCreated},
    };

    use super::*;

    fn created(event_id: &str, seq: u64) -> Delivery {
        Delivery {
            event: Some(Event::MessageCreated(MessageCreated {
                event_id: event_id.into(),
                message: Some(chat::Message {
                    conversation_id: "c".into(),
                    seq,
                    ..Default::default()
                }),
                message_v2: None,
                recipient_ids: Vec::new(),
            })),
        }
    }

    /// A user with one connection here, and the connection's queue.
    fn connected(user_id: &str) -> (Connections, queue::Receiver) {
        let (queue, events) = queue::bounded(8);
        let connection = Connection {
            queue,
            too_slow: Shutdown::new(),
            api: Api::V1,
            transport: "ws",
        };
        let connections = Arc::new(UserConnections {
            user_id: user_id.into(),
            connections: StdMutex::new(HashMap::from([(1, connection)])),
        });
        (connections, events)
    }

    fn metrics() -> RealtimeMetrics {
        RealtimeMetrics::new(&mut Registry::default())
    }

    #[test]
    fn a_groups_message_reaches_only_the_members_connected_here_whom_it_names() {
        let (ana, mut ana_events) = connected("ana");
        let (cat, mut cat_events) = connected("cat");
        let members = GroupMembers::default();
        members.lock().insert("ana".into(), ana);
        members.lock().insert("cat".into(), cat);
        let mut delivery = created("e1", 1);
        if let Some(Event::MessageCreated(created)) = &mut delivery.event {
            created.recipient_ids = vec!["ana".into(), "ben".into()];
        }
        let inbound = Inbound {
            subject: "deliver.conversation.c".into(),
            headers: None,
            payload: delivery.encode_to_vec().into(),
        };
        dispatch_group(&members, inbound, &RenderCache::default(), &metrics());
        let queued = ana_events.try_recv().expect("Ana is named");
        assert!(matches!(&*queued.event, LiveEvent::Message { seq: 1, .. }));
        assert!(ana_events.try_recv().is_none(), "once");
        assert!(
            cat_events.try_recv().is_none(),
            "Cat is not named (she left)"
        );
    }

    #[test]
    fn a_groups_membership_changes_which_groups_a_user_follows() {
        let changed = |kind: chat_v1::ConversationKind, members: &[&str], removed: &[&str]| {
            let conversation = chat_v1::Conversation {
                conversation_id: "c".into(),
                kind: kind.into(),
                member_ids: members.iter().map(|m| (*m).to_owned()).collect(),
                last_seq: 7,
                ..Default::default()
            };
            Delivery {
                event: Some(Event::MembershipChanged(MembershipChanged {
                    conversation: Some(conversation),
                    removed_user_ids: removed.iter().map(|m| (*m).to_owned()).collect(),
                    ..Default::default()
                })),
            }
        };
        let group = chat_v1::ConversationKind::Group;
        let joined = group_change("dan", &changed(group, &["ana", "dan"], &[])).unwrap();
        assert_eq!(joined.conversation_id, "c");
        assert_eq!(
            joined.joined_after,
            Some(7),
            "from the group's last message then"
        );
        let left = group_change("dan", &changed(group, &["ana"], &["dan"])).unwrap();
        assert_eq!(left.joined_after, None);
        assert!(group_change("eve", &changed(group, &["ana"], &["dan"])).is_none());
        let direct = chat_v1::ConversationKind::Direct;
        assert!(group_change("dan", &changed(direct, &["ana", "dan"], &[])).is_none());
        assert!(group_change("dan", &created("e1", 1)).is_none());
    }

    #[test]
    fn old_renderings_are_dropped_a_generation_at_a_time() {
        let cache = RenderCache::default();
        let first = cache.render(&created("first", 1), Api::V1).unwrap();
        for n in 0..RENDER_GENERATION_MAX {
            cache.render(&created(&format!("a{n}"), 2), Api::V1);
        }
        let again = cache.render(&created("first", 1), Api::V1).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "kept for one more generation");
        for n in 0..=RENDER_GENERATION_MAX {
            cache.render(&created(&format!("b{n}"), 3), Api::V1);
        }
        let again = cache.render(&created("first", 1), Api::V1).unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "rendered anew");
        assert!(cache.frames.lock().unwrap().len() <= 2 * RENDER_GENERATION_MAX);
    }

    #[test]
    fn one_event_is_rendered_once_for_all_recipients() {
        let cache = RenderCache::default();
        let first = cache.render(&created("e1", 1), Api::V1).unwrap();
        let second = cache.render(&created("e1", 1), Api::V1).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let v2 = cache.render(&created("e1", 1), Api::V2).unwrap();
        assert!(!Arc::ptr_eq(&first, &v2), "one rendering per version");
        let LiveEvent::Message { frame, .. } = &*v2 else {
            panic!("a message event");
        };
        let frame: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(
            frame["message"]["content"],
            serde_json::json!({"type": "text", "text": ""}),
            "a v1-only event shows v2 clients its text: {frame}"
        );
        let other = cache.render(&created("e2", 2), Api::V1).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        let LiveEvent::Message { seq, frame, .. } = &*other else {
            panic!("a message event");
        };
        assert_eq!(*seq, 2);
        assert!(frame.as_str().contains(r#""type":"message""#));
    }
}
