//! The gateway's side of delivery: one core NATS subscription to `deliver.<user_id>` per
//! connected user, however many devices they have here, on the gateway's delivery
//! [`Link`], dispatched to a bounded queue per connection. Each event is rendered to a
//! frame once per gateway, then shared by every recipient and connection here.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use prost::Message as _;
use tertulia_plumbing::{
    config::NatsConfig,
    generations::Generations,
    health::Readiness,
    metrics::{Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry, exponential_buckets},
    nats::Nats,
    nats_link::{Inbound, Link, LinkError, Subscription},
    shutdown::Shutdown,
    telemetry,
};
use tertulia_proto::{
    chat::{v1 as chat_v1, v2 as chat_v2},
    events::v1::{Delivery, delivery::Event},
    subjects,
};
use tokio::sync::Mutex;

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
/// `tertulia_realtime_users` (users with a subscription here),
/// `tertulia_realtime_queue_depth` (events waiting in a connection's queue, observed at each
/// enqueue), `tertulia_realtime_slow_consumer_disconnects_total{transport, reason}` and
/// `tertulia_realtime_gaps_total{outcome}` (a message held back after a gap, `held`; a gap
/// read from history, `filled`).
#[derive(Debug, Clone)]
pub struct RealtimeMetrics {
    connections: Family<ConnectionLabels, Gauge>,
    users: Gauge,
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
#[derive(Debug, Default)]
pub struct UserConnections(StdMutex<HashMap<u64, Connection>>);

type Connections = Arc<UserConnections>;

#[derive(Debug)]
struct UserSlot {
    connections: Connections,
    /// Dropping it unsubscribes.
    _subscription: Subscription<UserConnections>,
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
    link: Link<UserConnections>,
    users: Mutex<HashMap<String, UserSlot>>,
    queue: usize,
    next_id: AtomicU64,
    frames_per_second: u32,
    frame_burst: u32,
    metrics: RealtimeMetrics,
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
    /// `config` (namespaced by `nats`), with the queue and frame budget of `realtime`.
    pub async fn connect(
        nats: Nats,
        config: &NatsConfig,
        realtime: &RealtimeConfig,
        metrics: RealtimeMetrics,
    ) -> Result<Arc<Self>, LinkError> {
        let renders = Arc::new(RenderCache::default());
        let handler = {
            let (renders, metrics) = (Arc::clone(&renders), metrics.clone());
            Box::new(move |connections: &UserConnections, message: Inbound| {
                dispatch(connections, message, &renders, &metrics);
            })
        };
        let link = Link::connect(config, "svc-bff deliveries", handler).await?;
        Ok(Arc::new(Self {
            metrics,
            nats,
            link,
            users: Mutex::new(HashMap::new()),
            queue: realtime.outbound_queue.max(1),
            next_id: AtomicU64::new(1),
            frames_per_second: realtime.frames_per_second,
            frame_burst: realtime.frame_burst,
        }))
    }

    /// Registers a connection of `user_id`. When this returns, the user's subscription is
    /// active on the server, so anything published from now on reaches the connection:
    /// history read after this call cannot miss an event.
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
        let mut users = self.users.lock().await;
        let frames = if let Some(slot) = users.get(user_id) {
            lock(&slot.connections).insert(id, connection);
            Arc::clone(&slot.frames)
        } else {
            let subject = self.nats.subject(&subjects::deliver(user_id));
            let connections: Connections = Arc::default();
            lock(&connections).insert(id, connection);
            // Returns once the server has the subscription.
            let subscription = self
                .link
                .subscribe(&subject, Arc::clone(&connections))
                .await
                .map_err(|e| SubscribeError(e.to_string()))?;
            tracing::debug!(message = "Subscribed to deliveries.", user_id);
            let frames = Arc::new(StdMutex::new(TokenBucket::new(
                self.frames_per_second,
                self.frame_burst,
            )));
            users.insert(
                user_id.to_owned(),
                UserSlot {
                    connections,
                    _subscription: subscription,
                    frames: Arc::clone(&frames),
                },
            );
            self.metrics.users.inc();
            frames
        };
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
        if empty && users.remove(user_id).is_some() {
            // Dropping the slot unsubscribed.
            tracing::debug!(message = "Unsubscribed from deliveries.", user_id);
            self.metrics.users.dec();
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
        self.users.lock().await.len()
    }
}

fn lock(connections: &UserConnections) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
    connections
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// Offers a delivery to every connection of its user. A full queue means the client is not
/// keeping up: it is told to go (1013) rather than buffered forever.
fn dispatch(
    connections: &UserConnections,
    message: Inbound,
    cache: &RenderCache,
    metrics: &RealtimeMetrics,
) {
    let span = telemetry::consumer_span(
        subjects::DELIVER_TEMPLATE,
        &message.subject,
        "gateway",
        telemetry::nats_traceparent(message.headers.as_ref()),
    );
    let traceparent: Option<Arc<str>> = telemetry::traceparent(&span).map(Arc::from);
    let _entered = span.enter();
    let Ok(delivery) = Delivery::decode(message.payload) else {
        tracing::warn!(message = "Undecodable delivery dropped.", subject = %message.subject);
        return;
    };
    // Rendered at most once per version, and only for versions connected here.
    let mut rendered: [Option<Option<Arc<LiveEvent>>>; Api::ALL.len()] = Default::default();
    for connection in lock(connections).values() {
        let event = rendered[connection.api.index()]
            .get_or_insert_with(|| cache.render(&delivery, connection.api));
        let Some(event) = event else { continue };
        let queued = Queued {
            event: Arc::clone(event),
            traceparent: traceparent.clone(),
        };
        match connection.queue.try_send(queued) {
            Ok(queued) => {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "queues hold far fewer than 2^52"
                )]
                metrics.queue_depth.observe(queued as f64);
            }
            Err(Refused::Full) => {
                if !connection.too_slow.is_cancelled() {
                    metrics.slow_consumer(connection.transport, "queue_full");
                }
                connection.too_slow.cancel();
            }
            Err(Refused::Closed) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tertulia_proto::{chat::v1 as chat, events::v1::MessageCreated};

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
