//! What svc-chat publishes and consumes.
//!
//! - Publishes (through the outbox, and for sends through the in-memory [`Handoff`] beside
//!   it) to the JetStream stream `CHAT`, subjects
//!   `chat.v1.conv.<conversation_id>.<event>`, payloads from `tertulia.events.v1`, with
//!   `Nats-Msg-Id` = event id so a re-publish after a crash is deduplicated by the server.
//! - Consumes `CHAT` with the durable consumer `fanout` (explicit acks) and publishes one
//!   `Delivery` per event to each member's core NATS subject `deliver.<user_id>`; a new
//!   message to more than two members goes once to `deliver.conversation.<id>` instead.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use prost::Message as _;
use tertulia_plumbing::{
    metrics::{Counter, Gauge, Histogram, Registry, latency, sample_until},
    nats::{DurableConsumer, Handled, Nats},
    postgres::{DbError, Durability, PipelinedTransaction},
    shutdown::Shutdown,
    telemetry,
    wire::timestamp,
};
use tertulia_proto::{
    chat::{v1 as chat_pb, v2 as chat_v2},
    events::v1::{self as pb, delivery::Event},
    subjects::{self, chat_event},
};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    domain::{Conversation, Message},
    store::{ChatStore, Claim, OutboxRow},
};

/// Recipients from which a new message goes out once on its conversation's delivery
/// subject instead of once per recipient: more than two, which only a group has (a direct
/// conversation has exactly two members).
const GROUP_SUBJECT_FROM: usize = 3;
/// Name of the fan-out's durable consumer.
pub const FANOUT_CONSUMER: &str = "fanout";
/// Events the fan-out handles at once (of different conversations).
const FANOUT_CONCURRENCY: usize = 32;
/// Largest batch the relay publishes per transaction.
const RELAY_BATCH: i64 = 256;
/// How often the relay looks for rows when nobody told it about new ones (another instance
/// committed them, or a publish failed and must be retried).
const RELAY_POLL: Duration = Duration::from_millis(250);
/// Pause after a failed relay round, so an outage is not a busy loop.
const RELAY_BACKOFF: Duration = Duration::from_millis(500);
/// Transactions whose rows may wait in memory for their commit and publish; a transaction
/// that finds the queue full leaves its rows to the relay's claim.
const HANDOFF_QUEUE: usize = 1024;
/// Most handed-over transactions published in one round (one wait for the acks, one mark).
const HANDOFF_ROUND: usize = 64;
/// How long the relay waits for a handed-over transaction's commit before leaving its rows
/// to the claim, so that one stuck transaction does not hold up those queued behind it.
const HANDOFF_WAIT: Duration = Duration::from_secs(1);
/// How long rows published from the handoff wait for their mark, so that one `UPDATE` marks
/// the rows of many rounds instead of each round paying a transaction of its own.
const MARK_DELAY: Duration = Duration::from_millis(100);
/// Published rows that are marked at once, without waiting for [`MARK_DELAY`].
const MARK_BATCH: usize = 512;
/// Publishes of one round or claim that may wait for their acks at once. The JetStream
/// context lends at most 5,000 (async-nats' `max_ack_inflight`), and a publish waits until
/// one is free: a round that published more than that before awaiting any ack waited on
/// itself, and held up every claim (which holds its rows' locks) behind it, for good. Both
/// the handoff and the claim stay far below it, together.
const ACKS_IN_FLIGHT: usize = 256;
/// How old a row handed over to another instance's relay must be before a claim here takes
/// it (that relay stopped, or cannot publish): until then, its own relay publishes it in
/// order and marks it. Well above [`HANDOFF_WAIT`] and [`MARK_DELAY`].
pub const CLAIM_OTHERS_AFTER: Duration = Duration::from_secs(5);

/// An event ready for the outbox.
#[derive(Debug)]
pub struct OutboxEvent {
    /// Its id (also the `Nats-Msg-Id`).
    pub event_id: Uuid,
    /// Subject without namespace.
    pub subject: String,
    /// Encoded `tertulia.events.v1` payload.
    pub payload: Vec<u8>,
}

/// The wire form of a message.
#[must_use]
pub fn message_pb(m: &Message) -> chat_pb::Message {
    chat_pb::Message {
        message_id: m.message_id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq.unsigned_abs(),
        sender_id: m.sender_id.to_string(),
        client_msg_id: m.client_msg_id.clone(),
        text: m.v1_text(),
        sent_at: Some(timestamp(m.sent_at)),
        edited_at: m.edited_at.map(timestamp),
        deleted: m.deleted,
    }
}

/// The v2 wire form of a message: structured content and reactions.
#[must_use]
pub fn message_v2_pb(m: &Message) -> chat_v2::Message {
    let kind = match m.video_id.filter(|_| !m.deleted) {
        Some(video) => chat_v2::content::Kind::Video(chat_v2::VideoRef {
            video_id: video.to_string(),
        }),
        None => chat_v2::content::Kind::Text(chat_v2::Text {
            text: m.text.clone(),
        }),
    };
    chat_v2::Message {
        message_id: m.message_id.to_string(),
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq.unsigned_abs(),
        sender_id: m.sender_id.to_string(),
        client_msg_id: m.client_msg_id.clone(),
        content: Some(chat_v2::Content { kind: Some(kind) }),
        reactions: m
            .reactions
            .iter()
            .map(|r| chat_v2::Reaction {
                emoji: r.emoji.clone(),
                user_ids: r.user_ids.iter().map(Uuid::to_string).collect(),
            })
            .collect(),
        sent_at: Some(timestamp(m.sent_at)),
        edited_at: m.edited_at.map(timestamp),
        deleted: m.deleted,
    }
}

/// `fn $name(&Conversation) -> $pkg::Conversation`, its last message by `$message`: the
/// wire form of a conversation in a package whose `Conversation` has v1's fields (v2 keeps
/// them; only its message differs).
macro_rules! conversation_to_wire {
    ($name:ident, $($pkg:ident)::+, $message:path) => {
        /// The wire form of a conversation.
        #[must_use]
        pub fn $name(c: &Conversation) -> $($pkg)::+::Conversation {
            use $($pkg)::+ as wire;
            let kind = match c.kind {
                crate::domain::ConversationKind::Direct => wire::ConversationKind::Direct,
                crate::domain::ConversationKind::Group => wire::ConversationKind::Group,
            };
            wire::Conversation {
                conversation_id: c.conversation_id.to_string(),
                kind: kind.into(),
                title: c.title.clone(),
                member_ids: c.member_ids.iter().map(Uuid::to_string).collect(),
                created_at: Some(timestamp(c.created_at)),
                last_seq: c.last_seq.unsigned_abs(),
                last_message: c.last_message.as_ref().map($message),
                unread: c.unread.unsigned_abs(),
                creator_id: c.creator_id.to_string(),
            }
        }
    };
}

conversation_to_wire!(conversation_pb, tertulia_proto::chat::v1, message_pb);
conversation_to_wire!(conversation_v2_pb, tertulia_proto::chat::v2, message_v2_pb);

fn event(conversation_id: Uuid, kind: &str, encode: impl FnOnce(String) -> Vec<u8>) -> OutboxEvent {
    let event_id = Uuid::now_v7();
    OutboxEvent {
        subject: subjects::chat_conversation(&conversation_id.to_string(), kind),
        payload: encode(event_id.to_string()),
        event_id,
    }
}

/// `MessageCreated` for `m`, to be delivered to `recipients` (the members when it was stored).
#[must_use]
pub fn message_created(m: &Message, recipients: &[Uuid]) -> OutboxEvent {
    event(m.conversation_id, chat_event::MESSAGE, |event_id| {
        pb::MessageCreated {
            event_id,
            message: Some(message_pb(m)),
            message_v2: Some(message_v2_pb(m)),
            recipient_ids: recipients.iter().map(Uuid::to_string).collect(),
        }
        .encode_to_vec()
    })
}

/// `MessageUpdated` for `m` (edited or deleted).
#[must_use]
pub fn message_updated(m: &Message) -> OutboxEvent {
    event(m.conversation_id, chat_event::MESSAGE_UPDATED, |event_id| {
        pb::MessageUpdated {
            event_id,
            message: Some(message_pb(m)),
            message_v2: Some(message_v2_pb(m)),
        }
        .encode_to_vec()
    })
}

/// `ReactionsChanged` for `m` (its reactions loaded).
#[must_use]
pub fn reactions_changed(m: &Message) -> OutboxEvent {
    event(m.conversation_id, chat_event::REACTIONS, |event_id| {
        pb::ReactionsChanged {
            event_id,
            message: Some(message_v2_pb(m)),
        }
        .encode_to_vec()
    })
}

/// `ReceiptUpdated`: `user_id` has read `conversation_id` up to `seq`.
#[must_use]
pub fn receipt(conversation_id: Uuid, user_id: Uuid, seq: i64) -> OutboxEvent {
    event(conversation_id, chat_event::RECEIPT, |event_id| {
        pb::ReceiptUpdated {
            event_id,
            conversation_id: conversation_id.to_string(),
            user_id: user_id.to_string(),
            seq: seq.unsigned_abs(),
        }
        .encode_to_vec()
    })
}

/// `MembershipChanged` for `conversation` (as it is now).
#[must_use]
pub fn membership(conversation: &Conversation, added: &[Uuid], removed: &[Uuid]) -> OutboxEvent {
    event(
        conversation.conversation_id,
        chat_event::MEMBERSHIP,
        |event_id| {
            let mut view = conversation_pb(conversation);
            let mut view_v2 = conversation_v2_pb(conversation);
            // Per-viewer fields mean nothing in a broadcast.
            (view.unread, view_v2.unread) = (0, 0);
            pb::MembershipChanged {
                event_id,
                conversation: Some(view),
                conversation_v2: Some(view_v2),
                added_user_ids: added.iter().map(Uuid::to_string).collect(),
                removed_user_ids: removed.iter().map(Uuid::to_string).collect(),
            }
            .encode_to_vec()
        },
    )
}

/// The in-memory way from a transaction's commit to the relay, beside the outbox: a
/// transaction hands its rows over while it still holds its conversations' row locks, just
/// before `COMMIT`, and confirms once the commit succeeded. A conversation's next transaction
/// can only take the lock after that commit, so the queue holds a conversation's rows in
/// commit order, and [`OutboxRelay::publish_handed`] publishes them without claiming them
/// from the table first. The rows are in the outbox all the same: whatever is not published
/// this way (a full queue, a failed publish, a crash) is claimed by a later relay round.
#[derive(Debug, Clone)]
pub struct Handoff {
    queue: mpsc::Sender<Committing>,
    wake: Arc<Notify>,
    in_hand: InHand,
    /// Which relay publishes what is handed over: written on each row, so the claims of
    /// other instances leave it to this one (unless it is older than [`CLAIM_OTHERS_AFTER`]).
    relay: Uuid,
}

/// The ids of the rows the handoff holds: from the moment they are handed over until they
/// are marked published, or let go (their transaction did not commit in time, or their
/// publish failed). The relay's claim leaves them alone: had it locked them, the handoff's
/// mark would have waited for its locks, and it would have published again what the
/// handoff was publishing.
#[derive(Debug, Clone, Default)]
pub(crate) struct InHand(Arc<Mutex<HashSet<Uuid>>>);

impl InHand {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn ids(&self) -> Vec<Uuid> {
        self.lock().iter().copied().collect()
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.lock().contains(id)
    }

    fn let_go<'a>(&self, ids: impl IntoIterator<Item = &'a Uuid>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
    }
}

/// Rows handed over, and the commit they wait for.
#[derive(Debug)]
pub struct Committing {
    rows: Vec<OutboxRow>,
    /// When the commit succeeded; dropped when it did not, or its outcome is unknown.
    committed: oneshot::Receiver<Instant>,
}

/// The handed-over rows' side of a transaction: [`Handed::committed`] once it committed,
/// dropped otherwise.
#[derive(Debug)]
#[must_use = "the rows wait for `committed`"]
pub struct Handed {
    committed: Option<oneshot::Sender<Instant>>,
    wake: Arc<Notify>,
}

/// A handoff that wakes the relay `wake` for the rows it cannot take, and the queue
/// [`OutboxRelay::publish_handed`] reads.
#[must_use]
pub fn handoff(wake: Arc<Notify>) -> (Handoff, mpsc::Receiver<Committing>) {
    let (queue, handed) = mpsc::channel(HANDOFF_QUEUE);
    let relay = Uuid::now_v7();
    let in_hand = InHand::default();
    (
        Handoff {
            queue,
            wake,
            in_hand,
            relay,
        },
        handed,
    )
}

impl Handoff {
    /// The id of the relay that publishes what is handed over (one per process run).
    #[must_use]
    pub fn relay(&self) -> Uuid {
        self.relay
    }

    /// The rows this handoff holds.
    pub(crate) fn in_hand(&self) -> &InHand {
        &self.in_hand
    }

    /// Hands over the rows of a transaction that holds its locks and is about to commit.
    pub fn hand(&self, rows: Vec<OutboxRow>) -> Handed {
        let (committed, waiting) = oneshot::channel();
        // Held before they are queued: the reader may let them go as soon as they are.
        let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        self.in_hand.lock().extend(&ids);
        let taken = self
            .queue
            .try_send(Committing {
                rows,
                committed: waiting,
            })
            .is_ok();
        if !taken {
            self.in_hand.let_go(&ids);
        }
        Handed {
            committed: taken.then_some(committed),
            wake: Arc::clone(&self.wake),
        }
    }
}

impl Handed {
    /// The transaction committed: publish its rows (or, when the queue did not take them,
    /// have the relay claim them now).
    pub fn committed(self) {
        let taken = self
            .committed
            .is_some_and(|committed| committed.send(Instant::now()).is_ok());
        if !taken {
            self.wake.notify_one();
        }
    }
}

/// Publishes committed outbox rows to JetStream and marks them after the server's ack.
/// Several instances may run at once: each round claims rows with `FOR UPDATE SKIP LOCKED`.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    store: ChatStore,
    nats: Nats,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
    /// The rows the handoff holds, which claims leave alone.
    in_hand: InHand,
    mark_delay: Duration,
}

/// What the relay measures: `tertulia_outbox_relayed_total`, `tertulia_outbox_lag_seconds`
/// (commit to pick-up by a relay, per event) and `tertulia_outbox_pending` (rows waiting,
/// sampled).
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    relayed: Counter,
    lag: Histogram,
    pending: Gauge,
}

impl RelayMetrics {
    /// The series, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            relayed: Counter::default(),
            lag: latency(),
            pending: Gauge::default(),
        };
        registry.register(
            "tertulia_outbox_relayed",
            "Outbox events published to JetStream and acknowledged",
            metrics.relayed.clone(),
        );
        registry.register(
            "tertulia_outbox_lag_seconds",
            "Time from an event's commit to its pick-up by a relay",
            metrics.lag.clone(),
        );
        registry.register(
            "tertulia_outbox_pending",
            "Outbox events committed and not yet published (sampled)",
            metrics.pending.clone(),
        );
        metrics
    }
}

impl OutboxRelay {
    /// A relay over `store` publishing to `nats`, measured into `metrics`, whose rounds
    /// `wake` starts at once.
    #[must_use]
    pub fn new(store: ChatStore, nats: Nats, metrics: RelayMetrics, wake: Arc<Notify>) -> Self {
        let in_hand = store.handoff().in_hand().clone();
        Self {
            in_hand,
            store,
            nats,
            wake,
            metrics,
            mark_delay: MARK_DELAY,
        }
    }

    /// The relay, marking rows published from the handoff `delay` after the first of them
    /// (unless [`MARK_BATCH`] of them are waiting sooner).
    #[must_use]
    pub fn with_mark_delay(self, delay: Duration) -> Self {
        Self {
            mark_delay: delay,
            ..self
        }
    }

    /// Samples [`Self::backlog`] until `shutdown` trips.
    pub async fn sample_pending(self, shutdown: Shutdown) {
        sample_until(shutdown, || async {
            match self.backlog().await {
                Ok(n) => {
                    self.metrics.pending.set(n);
                }
                Err(error) => tracing::debug!(message = "Outbox not sampled.", %error),
            }
        })
        .await;
    }

    /// Rows waiting to be published: unmarked rows, less those the handoff holds (they are
    /// being published, or wait at most [`MARK_DELAY`] for their mark, and are no backlog).
    pub async fn backlog(&self) -> Result<i64, DbError> {
        let pending = self.store.pending_outbox().await?;
        let held = i64::try_from(self.in_hand.len()).unwrap_or(i64::MAX);
        Ok(pending.saturating_sub(held).max(0))
    }

    /// Rows the handoff holds: being published, or published and waiting for their mark.
    #[must_use]
    pub fn in_hand(&self) -> usize {
        self.in_hand.len()
    }

    /// Wakes the relay at once (after this instance commits a row).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Relays until `shutdown` trips.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            match self.relay_once().await {
                // A full batch: there may be more right away.
                Ok(n) if n as i64 == RELAY_BATCH => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(message = "Outbox relay round failed.", error = %tertulia_plumbing::error::chain(&error));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RELAY_BACKOFF) => continue,
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RELAY_POLL) => {}
            }
        }
    }

    /// Claims one batch of pending rows the handoff does not hold, publishes them and marks
    /// them. Returns how many rows it claimed.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let client = self.store.relay_pool().get().await.map_err(DbError::from)?;
        // A mark lost in a crash of the database publishes its rows again: JetStream drops
        // them as duplicates (by `Nats-Msg-Id`) within its window, and past it members
        // dedupe by seq as for any redelivery. So the commit need not wait for the disk.
        let tx = PipelinedTransaction::new(client, Durability::Deferred);
        let claim = Claim {
            limit: RELAY_BATCH,
            relay: self.store.relay(),
            others_after: CLAIM_OTHERS_AFTER,
            in_hand: self.in_hand.ids(),
        };
        let rows = ChatStore::claim_outbox(&tx, &claim)
            .await
            .map_err(DbError::from)?;
        // A row handed over since the claim read what the handoff holds is the handoff's
        // to publish and mark.
        let fresh: Vec<&OutboxRow> = rows
            .iter()
            .filter(|r| !self.in_hand.contains(&r.event_id))
            .collect();
        if fresh.is_empty() {
            tx.rollback();
            return Ok(rows.len());
        }
        if let Err(error) = self.publish_all(&fresh).await {
            // The claim ends; the rows wait for the next round.
            tx.rollback();
            return Err(error);
        }
        let ids: Vec<Uuid> = fresh.iter().map(|r| r.event_id).collect();
        ChatStore::commit_published(&tx, &ids)
            .await
            .map_err(DbError::from)?;
        for row in &fresh {
            self.metrics.lag.observe(row.age_s.max(0.0));
        }
        self.metrics.relayed.inc_by(fresh.len() as u64);
        Ok(rows.len())
    }

    /// Publishes the rows of `handed` in the order they were handed over, each once its
    /// transaction committed (one that did not, or not within [`HANDOFF_WAIT`], is skipped:
    /// its rows are not there, or the claim finds them), until `shutdown` trips. What was
    /// handed over together is published together, with one wait for the acks. Published
    /// rows are marked [`MARK_DELAY`] after the first of them (or once [`MARK_BATCH`] wait),
    /// by one `UPDATE` that runs while the next rounds publish; stopping marks what is left.
    pub async fn publish_handed(self, mut handed: mpsc::Receiver<Committing>, shutdown: Shutdown) {
        let mut marking: Option<tokio::task::JoinHandle<()>> = None;
        let mut unmarked: Vec<Uuid> = Vec::new();
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let mark_due = tertulia_plumbing::clock::until(due);
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                next = handed.recv() => match next {
                    Some(first) => Some(first),
                    None => break,
                },
                () = mark_due => None,
            };
            if let Some(first) = first {
                let mut round = vec![first];
                while round.len() < HANDOFF_ROUND
                    && let Ok(next) = handed.try_recv()
                {
                    round.push(next);
                }
                let round = self.publish_round(round);
                tokio::pin!(round);
                // A stop lets the round finish, unless the broker keeps it waiting: then its
                // rows are left to the next claim.
                let (published, stopping) = tokio::select! {
                    published = &mut round => (published, false),
                    () = shutdown.cancelled() => match tokio::time::timeout(HANDOFF_WAIT, round).await {
                        Ok(published) => (published, true),
                        Err(_) => break,
                    },
                };
                if unmarked.is_empty() && !published.is_empty() {
                    due = Some(tokio::time::Instant::now() + self.mark_delay);
                }
                unmarked.extend(published);
                if stopping {
                    break;
                }
                if unmarked.len() < MARK_BATCH {
                    continue;
                }
            }
            if let Some(previous) = marking.take() {
                previous.await.ok();
            }
            marking = Some(self.mark(std::mem::take(&mut unmarked)));
            due = None;
        }
        if let Some(previous) = marking.take() {
            previous.await.ok();
        }
        if !unmarked.is_empty() {
            self.mark(unmarked).await.ok();
        }
    }

    /// Marks `ids` published, in a task of its own.
    fn mark(&self, ids: Vec<Uuid>) -> tokio::task::JoinHandle<()> {
        let (store, in_hand) = (self.store.clone(), self.in_hand.clone());
        tokio::spawn(async move {
            if let Err(error) = store.mark_published(&ids).await {
                // Let go, the rows are claimed and published again, and JetStream drops the
                // copies.
                tracing::warn!(message = "Published outbox rows not marked.", error = %error);
            }
            in_hand.let_go(&ids);
        })
    }

    /// Publishes the committed transactions of `round`; the ids JetStream acknowledged.
    /// The others are let go: rows that did not commit are not there, and a claim takes
    /// those whose commit came late or whose publish failed.
    async fn publish_round(&self, round: Vec<Committing>) -> Vec<Uuid> {
        let mut acks = AckWindow::default();
        let mut failed = false;
        let mut handed: Vec<Uuid> = Vec::new();
        for committing in round {
            handed.extend(committing.rows.iter().map(|r| r.event_id));
            let Ok(Ok(committed_at)) =
                tokio::time::timeout(HANDOFF_WAIT, committing.committed).await
            else {
                continue;
            };
            for row in &committing.rows {
                self.metrics
                    .lag
                    .observe(committed_at.elapsed().as_secs_f64());
                match self.publish(row).await {
                    Ok(ack) => acks.push(row.event_id, ack).await,
                    Err(error) => {
                        failed = true;
                        tracing::warn!(message = "Handed-over event not published.", %error);
                    }
                }
            }
        }
        let (published, unacknowledged) = acks.finish().await;
        self.metrics.relayed.inc_by(published.len() as u64);
        if published.len() < handed.len() {
            let kept: HashSet<&Uuid> = published.iter().collect();
            self.in_hand
                .let_go(handed.iter().filter(|id| !kept.contains(id)));
        }
        if failed || unacknowledged.is_some() {
            // Its claim retries them (after its backoff while the broker is away).
            self.wake.notify_one();
        }
        published
    }

    /// Publishes all, awaiting the acks as they come ([`ACKS_IN_FLIGHT`] at most waiting):
    /// about one round trip of latency for the batch.
    async fn publish_all(&self, rows: &[&OutboxRow]) -> Result<(), RelayError> {
        let mut acks = AckWindow::default();
        for row in rows {
            acks.push(row.event_id, self.publish(row).await?).await;
        }
        match acks.finish().await {
            (_, None) => Ok(()),
            (_, Some(error)) => Err(RelayError::Publish(error)),
        }
    }

    /// Publishes one row in a producer span that continues the trace of the call that
    /// committed it; the span's `traceparent` travels in the message headers.
    async fn publish(
        &self,
        row: &OutboxRow,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, RelayError> {
        let subject = self.nats.subject(&row.subject);
        let span = telemetry::producer_span(subjects::CHAT_STREAM, &subject);
        telemetry::follow(&span, row.traceparent.as_deref());
        span.record("messaging.message.id", row.event_id.to_string());
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", row.event_id.to_string().as_str());
        telemetry::inject_nats(&span, &mut headers);
        self.nats
            .jetstream
            .publish_with_headers(subject, headers, row.payload.clone().into())
            .instrument(span)
            .await
            .map_err(|e| RelayError::Publish(e.to_string()))
    }
}

/// Publishes waiting for their acks, oldest first: at most [`ACKS_IN_FLIGHT`], so a path
/// that publishes more awaits the oldest ack before its next publish.
#[derive(Default)]
struct AckWindow {
    waiting: std::collections::VecDeque<(Uuid, async_nats::jetstream::context::PublishAckFuture)>,
    acked: Vec<Uuid>,
    /// The last failure, if an ack did not come.
    failure: Option<String>,
}

impl AckWindow {
    async fn push(
        &mut self,
        event_id: Uuid,
        ack: async_nats::jetstream::context::PublishAckFuture,
    ) {
        self.waiting.push_back((event_id, ack));
        if self.waiting.len() >= ACKS_IN_FLIGHT {
            self.settle_oldest().await;
        }
    }

    async fn settle_oldest(&mut self) {
        let Some((event_id, ack)) = self.waiting.pop_front() else {
            return;
        };
        match ack.await {
            Ok(_) => self.acked.push(event_id),
            Err(error) => {
                tracing::warn!(message = "Event not acknowledged.", %error);
                self.failure = Some(error.to_string());
            }
        }
    }

    /// Awaits the rest: the ids acknowledged, and the last failure, if any.
    async fn finish(mut self) -> (Vec<Uuid>, Option<String>) {
        while !self.waiting.is_empty() {
            self.settle_oldest().await;
        }
        (self.acked, self.failure)
    }
}

/// A relay round failed; the rows stay pending and are retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error("outbox database error")]
    Db(#[from] DbError),
    /// JetStream did not accept or acknowledge a publish.
    #[error("publish to JetStream failed: {0}")]
    Publish(String),
}

/// Reads `CHAT` and publishes each event once to every member's delivery subject (or a
/// group's new message once to the group's).
#[derive(Debug, Clone)]
pub struct FanOut {
    store: ChatStore,
    nats: Nats,
}

impl FanOut {
    /// A fan-out reading with the durable consumer [`FANOUT_CONSUMER`].
    #[must_use]
    pub fn new(store: ChatStore, nats: Nats) -> Self {
        Self { store, nats }
    }

    /// Consumes until `shutdown` trips; reconnects after errors. Events of one conversation
    /// are handled one after another, so each member receives them in stream order; events of
    /// different conversations go concurrently ([`FANOUT_CONCURRENCY`] at a time), so one
    /// event's member lookup does not hold up the others.
    pub async fn run(self, shutdown: Shutdown) {
        let consumer = DurableConsumer {
            stream: subjects::CHAT_STREAM,
            name: FANOUT_CONSUMER,
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            concurrency: FANOUT_CONCURRENCY,
            // The conversation orders its events.
            order_by: Some(conversation_of),
            max_pending: 10_000,
        };
        let this = &self;
        self.nats
            .consume(&consumer, &shutdown, |message| async move {
                match this.deliver(&message.subject, &message.payload).await {
                    Ok(()) => Handled::Done,
                    Err(FanOutError::Poison(reason)) => Handled::Poison(reason),
                    Err(FanOutError::Retry(reason)) => Handled::Retry(reason),
                }
            })
            .await;
    }

    /// Publishes one event to its recipients. Encodes the `Delivery` once for all of them.
    /// A new message to more than two members (only groups have more) goes out once, on
    /// the conversation's subject, naming its recipients: each gateway with a member
    /// connected receives one copy, not one per member.
    async fn deliver(&self, subject: &str, payload: &[u8]) -> Result<(), FanOutError> {
        let (conversation_id, mut delivery, recipients) = decode(subject, payload)?;
        let mut recipients = match recipients {
            Recipients::Listed(listed) => listed,
            Recipients::MembersAnd(extra) => {
                let mut members = self
                    .store
                    .member_ids(conversation_id)
                    .await
                    .map_err(|e| FanOutError::Retry(e.to_string()))?;
                members.extend(extra);
                members
            }
        };
        recipients.sort_unstable();
        recipients.dedup();
        let (template, subjects): (_, Vec<String>) = match &mut delivery.event {
            Some(Event::MessageCreated(created)) if recipients.len() >= GROUP_SUBJECT_FROM => {
                created.recipient_ids = recipients.iter().map(Uuid::to_string).collect();
                (
                    subjects::DELIVER_CONVERSATION_TEMPLATE,
                    vec![subjects::deliver_conversation(&conversation_id.to_string())],
                )
            }
            _ => (
                subjects::DELIVER_TEMPLATE,
                recipients
                    .iter()
                    .map(|user| subjects::deliver(&user.to_string()))
                    .collect(),
            ),
        };
        let bytes: bytes::Bytes = delivery.encode_to_vec().into();
        // One producer span for the whole fan-out; every copy carries its context.
        let span = telemetry::producer_span(template, template);
        let headers = telemetry::nats_headers(&span);
        async {
            for subject in subjects {
                let subject = self.nats.subject(&subject);
                let published = match &headers {
                    Some(headers) => {
                        self.nats
                            .client
                            .publish_with_headers(subject, headers.clone(), bytes.clone())
                            .await
                    }
                    None => self.nats.client.publish(subject, bytes.clone()).await,
                };
                published.map_err(|e| FanOutError::Retry(e.to_string()))?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

enum FanOutError {
    /// The event cannot be decoded: retrying will not help.
    Poison(String),
    /// A dependency failed: retry later.
    Retry(String),
}

/// The conversation id in an event's subject, `…chat.<conversation_id>.<kind>`.
fn conversation_of(subject: &str) -> Option<&str> {
    subject.rsplit('.').nth(1)
}

/// Who an event goes to.
enum Recipients {
    /// Exactly these, named in the event when it was stored.
    Listed(Vec<Uuid>),
    /// The current members, and these too (removed users hear about their own removal).
    MembersAnd(Vec<Uuid>),
}

fn uuids(ids: &[String]) -> Vec<Uuid> {
    ids.iter().filter_map(|id| id.parse().ok()).collect()
}

/// The conversation, the delivery (without the recipient list), and who it goes to.
fn decode(subject: &str, payload: &[u8]) -> Result<(Uuid, pb::Delivery, Recipients), FanOutError> {
    let poison = |e: &dyn std::fmt::Display| FanOutError::Poison(e.to_string());
    let kind = subject.rsplit('.').next().unwrap_or_default();
    let conversation_id: Uuid = conversation_of(subject)
        .unwrap_or_default()
        .parse()
        .map_err(|e| poison(&e))?;
    let mut recipients = Recipients::MembersAnd(Vec::new());
    let event = match kind {
        chat_event::MESSAGE => {
            let mut created = pb::MessageCreated::decode(payload).map_err(|e| poison(&e))?;
            // Members need not learn who else was a member from every message.
            let listed = std::mem::take(&mut created.recipient_ids);
            if !listed.is_empty() {
                recipients = Recipients::Listed(uuids(&listed));
            }
            Event::MessageCreated(created)
        }
        chat_event::MESSAGE_UPDATED => {
            Event::MessageUpdated(pb::MessageUpdated::decode(payload).map_err(|e| poison(&e))?)
        }
        chat_event::REACTIONS => {
            Event::ReactionsChanged(pb::ReactionsChanged::decode(payload).map_err(|e| poison(&e))?)
        }
        chat_event::RECEIPT => {
            Event::ReceiptUpdated(pb::ReceiptUpdated::decode(payload).map_err(|e| poison(&e))?)
        }
        chat_event::MEMBERSHIP => {
            let changed = pb::MembershipChanged::decode(payload).map_err(|e| poison(&e))?;
            recipients = Recipients::MembersAnd(uuids(&changed.removed_user_ids));
            Event::MembershipChanged(changed)
        }
        other => return Err(FanOutError::Poison(format!("unknown event kind {other:?}"))),
    };
    Ok((
        conversation_id,
        pb::Delivery { event: Some(event) },
        recipients,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn message() -> Message {
        Message {
            message_id: Uuid::now_v7(),
            conversation_id: Uuid::now_v7(),
            seq: 1,
            sender_id: Uuid::now_v7(),
            client_msg_id: "c1".into(),
            text: "hola".into(),
            sent_at: OffsetDateTime::now_utc(),
            edited_at: None,
            deleted: false,
            video_id: None,
            reactions: Vec::new(),
        }
    }

    #[test]
    fn a_new_message_goes_to_the_members_it_names_who_are_not_told_of_each_other() {
        let m = message();
        let members = [m.sender_id, Uuid::now_v7()];
        let event = message_created(&m, &members);
        let Ok((conversation, delivery, Recipients::Listed(listed))) =
            decode(&event.subject, &event.payload)
        else {
            panic!("the event names its recipients");
        };
        assert_eq!(conversation, m.conversation_id);
        assert_eq!(listed, members);
        let Some(Event::MessageCreated(created)) = delivery.event else {
            panic!("a message delivery");
        };
        assert!(created.recipient_ids.is_empty());
        assert_eq!(created.message.unwrap().text, "hola");
    }

    #[test]
    fn an_event_without_recipients_goes_to_the_current_members() {
        let m = message();
        let event = message_created(&m, &[]);
        assert!(matches!(
            decode(&event.subject, &event.payload),
            Ok((_, _, Recipients::MembersAnd(extra))) if extra.is_empty()
        ));
    }
}
