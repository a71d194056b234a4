//! Group commit for sends. Sends that arrive while others are being stored queue up, and the
//! next free batch takes them all (up to [`MAX_BATCH`]) into one transaction, so one WAL
//! flush is shared by many messages instead of paid by each.
//!
//! A batch's sends into conversations this process stored into before ([`Remembered`]:
//! their last seq, members and members' version), by senders among those members, are
//! built from memory and written in one round trip: one statement, its own transaction,
//! that checks under the row locks that what was remembered is still true and fails as a
//! whole otherwise. These go out on one connection in the order their seqs were taken, so a
//! conversation's writes commit in that order. The batch's other sends (and those of a write
//! whose check failed) read first, in two round trips: `BEGIN` with the lock of all their
//! conversations, the idempotency check and the member lists; then the writes with
//! `COMMIT`. A repeated `client_msg_id` fails the one-round-trip write (the unique key) and
//! is found by the two-round-trip one.
//! While a batch reads into a conversation, sends into it wait in memory (they would only
//! wait for its row locks, or be built on what it is about to change); once it ends, they
//! are taken again, from memory.
//!
//! Before its commit, a batch hands its events to the outbox relay in memory
//! ([`Handoff`]), in the order its conversations' seqs were taken, and confirms once the
//! commit succeeded: the relay publishes them without claiming them from the table.
//!
//! Nothing is answered before its batch commits. When a batch fails as a whole (a lost
//! connection, a deadlock), each of its sends is tried again in a transaction of its own, so
//! one bad send cannot fail the others; a send whose first try did commit is found again by
//! its `client_msg_id`.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    task::Poll,
    time::{Duration, Instant},
};

use tertulia_plumbing::postgres::{DbError, Durability, PgPool, PipelinedTransaction};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_postgres::{Statement, error::SqlState, types::ToSql};
use uuid::Uuid;

use super::{MESSAGE_COLUMNS, OutboxRow, Sent, message_from};
use crate::{
    domain::Message,
    events::{self, Handoff},
};

/// Most sends one transaction takes.
const MAX_BATCH: usize = 128;
/// Batches in flight at once (each holds a database connection). Two, not four: sends
/// that wait for a free slot make the next batch larger, and each batch is a statement and a
/// WAL flush of its own (at 5,000 msg/s into groups of 10, PostgreSQL's CPU fell by 8% and
/// the delivery p50 by a sixth).
const CONCURRENT_BATCHES: usize = 2;
/// Conversations remembered at most; past it, the memory starts again empty.
const REMEMBERED: usize = 100_000;
/// How long a conversation found stale is not remembered (see [`Memory::shared`]).
const SHARED_FOR: Duration = Duration::from_secs(10);
/// Connections of the pool of short statements: one per batch in flight, one for the batches
/// written from memory, one for the outbox relay's claim and one for its marks of what was
/// handed over. Their statements have
/// one good plan whatever the values (a batch's are keyed by its arrays), so the pool plans
/// them once per connection
/// ([`Plans::Generic`](tertulia_plumbing::postgres::Plans)); PostgreSQL's default would plan
/// them again at every use, estimating from the values: 0.3 ms of the relay's every round.
pub const BATCH_CONNECTIONS: usize = CONCURRENT_BATCHES + 3;
/// Sends waiting for a batch before their senders wait too.
pub(super) const QUEUE: usize = 4096;

/// One send, as asked.
#[derive(Debug, Clone)]
pub(super) struct NewSend {
    pub(super) actor: Uuid,
    pub(super) conversation_id: Uuid,
    pub(super) client_msg_id: String,
    pub(super) text: String,
    pub(super) video_id: Option<Uuid>,
    /// The trace of the call, for the event's publish.
    pub(super) traceparent: Option<String>,
}

/// A queued send and where its answer goes.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) send: NewSend,
    pub(super) reply: oneshot::Sender<Result<Sent, DbError>>,
}

/// Where sends are stored, and where their events go once committed.
#[derive(Debug, Clone)]
pub(super) struct Committer {
    pub(super) pool: PgPool,
    pub(super) handoff: Handoff,
    pub(super) remembered: Remembered,
}

/// What a conversation was at its last commit by this process (or, for a batch in flight,
/// will be after it).
#[derive(Debug, Clone)]
struct Conversation {
    last_seq: i64,
    members_version: i64,
    /// Sorted by id, as the events name them.
    members: Arc<[Uuid]>,
}

/// The conversations this process stored sends into, shared by its batches, and those a
/// batch that reads is storing into.
#[derive(Debug, Clone)]
pub(super) struct Remembered {
    memory: Arc<Mutex<Memory>>,
    /// Where the sends that waited for a batch that reads go once it ends: back to the loop
    /// that takes batches ([`run`]).
    again: mpsc::UnboundedSender<Vec<Queued>>,
}

#[derive(Debug, Default)]
struct Memory {
    conversations: HashMap<Uuid, Conversation>,
    /// Conversations whose remembered state was found stale, and since when: another
    /// instance stores into them too (the gateways balance sends over the instances), so
    /// for [`SHARED_FOR`] their batches read rather than fail a check first.
    shared: HashMap<Uuid, Instant>,
    /// Conversations a batch that reads is storing into, and the sends into them that came
    /// meanwhile. Those wait for it: had they read too, they would only have waited for its
    /// row locks; built from memory, they would have been built on what it was about to
    /// change, and failed their check. Once it ends, they are taken again, from memory now.
    reading: HashMap<Uuid, Vec<Queued>>,
    /// Sends waiting in `reading`.
    waiting: usize,
}

impl Memory {
    /// Keeps back the sends of `batch` into conversations a batch that reads is storing
    /// into; gives back the others.
    fn defer(&mut self, batch: Vec<Queued>) -> Vec<Queued> {
        let mut rest = Vec::with_capacity(batch.len());
        for queued in batch {
            match self.reading.get_mut(&queued.send.conversation_id) {
                Some(waiting) => {
                    waiting.push(queued);
                    self.waiting += 1;
                }
                None => rest.push(queued),
            }
        }
        rest
    }

    /// Marks the conversations of `sends` as being read into, until the returned guard
    /// drops.
    fn start_reading(&mut self, remembered: &Remembered, sends: &[Queued]) -> Reading {
        let mut ids: Vec<Uuid> = sends.iter().map(|q| q.send.conversation_id).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            self.reading.entry(*id).or_default();
        }
        Reading {
            remembered: remembered.clone(),
            ids,
        }
    }
}

/// The conversations a batch that reads is storing into. Dropped when the batch ends,
/// however it ends: the sends that waited for them go back to the loop that takes batches.
pub(super) struct Reading {
    remembered: Remembered,
    ids: Vec<Uuid>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut memory = self.remembered.lock();
        let mut waited = Vec::new();
        for id in &self.ids {
            if let Some(sends) = memory.reading.remove(id) {
                memory.waiting -= sends.len();
                waited.extend(sends);
            }
        }
        // Sent under the lock, even when empty: once nothing is being read, whatever waited
        // is in the channel, and the loop, woken, can tell it has nothing left to wait for.
        // (Closed only once the loop has ended, at shutdown: a send dropped then has its
        // caller store it on its own.)
        let _ = self.remembered.again.send(waited);
    }
}

impl Remembered {
    /// An empty memory, and where the sends that waited for a batch that reads come back.
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Vec<Queued>>) {
        let (again, waited) = mpsc::unbounded_channel();
        let remembered = Self {
            memory: Arc::default(),
            again,
        };
        (remembered, waited)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, id: Uuid, conversation: Conversation) {
        let mut memory = self.lock();
        if memory
            .shared
            .get(&id)
            .is_some_and(|since| since.elapsed() < SHARED_FOR)
        {
            return;
        }
        if memory.conversations.len() >= REMEMBERED && !memory.conversations.contains_key(&id) {
            memory.conversations.clear();
            memory
                .shared
                .retain(|_, since| since.elapsed() < SHARED_FOR);
        }
        memory.shared.remove(&id);
        memory.conversations.insert(id, conversation);
    }

    /// Forgets `ids`; `stale`: what was remembered of them was no longer true.
    fn forget(&self, ids: impl IntoIterator<Item = Uuid>, stale: bool) {
        let mut memory = self.lock();
        let now = Instant::now();
        for id in ids {
            memory.conversations.remove(&id);
            if stale {
                memory.shared.insert(id, now);
            }
        }
    }

    /// Sends waiting for a batch that reads, and whether any such batch is in flight.
    fn waiting(&self) -> (usize, bool) {
        let memory = self.lock();
        (memory.waiting, !memory.reading.is_empty())
    }

    /// Splits `batch` without memory: the sends into conversations a batch that reads is
    /// storing into wait for it; the others are to be read, their conversations marked.
    fn read(&self, batch: Vec<Queued>) -> (Vec<Queued>, Option<Reading>) {
        let mut memory = self.lock();
        let rest = memory.defer(batch);
        let reading = (!rest.is_empty()).then(|| memory.start_reading(self, &rest));
        (rest, reading)
    }

    /// Splits `batch`: the sends into conversations a batch that reads is storing into,
    /// which wait for it; those into conversations that are remembered, with every sender
    /// among the members, built from memory (their seqs taken); and the rest, which must
    /// read. A conversation's sends all go the same way, so they keep their order.
    fn take(&self, batch: Vec<Queued>, now: OffsetDateTime) -> Taken {
        let mut memory = self.lock();
        let batch = memory.defer(batch);
        let mut taken = Taken::default();
        let remembered = &mut memory.conversations;
        let mut fits: HashMap<Uuid, bool> = HashMap::new();
        for queued in &batch {
            let send = &queued.send;
            let fit = remembered
                .get(&send.conversation_id)
                .is_some_and(|c| c.members.contains(&send.actor));
            *fits.entry(send.conversation_id).or_insert(fit) &= fit;
        }
        let (from_memory, rest): (Vec<Queued>, Vec<Queued>) = batch
            .into_iter()
            .partition(|q| fits.get(&q.send.conversation_id) == Some(&true));
        if !rest.is_empty() {
            taken.reading = Some(memory.start_reading(self, &rest));
            taken.rest = rest;
        }
        if from_memory.is_empty() {
            return taken;
        }
        let remembered = &mut memory.conversations;
        let mut last_seq = HashMap::new();
        let mut members = HashMap::new();
        let mut checks = Vec::new();
        for (id, conversation) in fits
            .iter()
            .filter(|(_, fit)| **fit)
            .filter_map(|(id, _)| remembered.get(id).map(|c| (*id, c)))
        {
            last_seq.insert(id, conversation.last_seq);
            members.insert(id, Arc::clone(&conversation.members));
            checks.push((id, conversation.last_seq, conversation.members_version));
        }
        let sends: Vec<&NewSend> = from_memory.iter().map(|q| &q.send).collect();
        let (results, writes) = plan(&sends, &mut last_seq, &members, now, HashMap::new());
        for (id, _, _) in &checks {
            if let (Some(conversation), Some(seq)) = (remembered.get_mut(id), last_seq.get(id)) {
                conversation.last_seq = *seq;
            }
        }
        let planned = Planned {
            results,
            writes,
            checks,
        };
        taken.from_memory = Some((from_memory, planned));
        taken
    }
}

/// A batch split by [`Remembered::take`].
#[derive(Default)]
struct Taken {
    /// The sends built from memory, with what they write.
    from_memory: Option<(Vec<Queued>, Planned)>,
    /// The sends that read, and their conversations marked as being read into.
    rest: Vec<Queued>,
    reading: Option<Reading>,
}

/// A batch built from memory: its answers, its writes, and for each conversation the last
/// seq and members' version it was built on.
struct Planned {
    results: Vec<Sent>,
    writes: Writes,
    checks: Vec<(Uuid, i64, i64)>,
}

/// The connection that writes batches built from memory, in order, and its statement.
struct Sequencer {
    client: Arc<deadpool_postgres::Object>,
    write: Statement,
}

impl Sequencer {
    async fn connect(pool: &PgPool) -> Result<Self, DbError> {
        let client = pool.get().await?;
        let write = client.prepare_cached(&WRITE_CHECKED).await?;
        Ok(Self {
            client: Arc::new(client),
            write,
        })
    }
}

/// Takes queued sends in batches until every sender is gone and nothing waits for a batch
/// that reads; `waited`: the sends that waited, coming back (see [`Remembered::new`]).
pub(super) async fn run(
    committer: Committer,
    mut queue: mpsc::Receiver<Queued>,
    mut waited: mpsc::UnboundedReceiver<Vec<Queued>>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    let mut sequencer: Option<Sequencer> = None;
    let mut open = true;
    loop {
        let (waiting, reading) = committer.remembered.waiting();
        if !open && !reading && waited.is_empty() {
            return;
        }
        let mut batch = tokio::select! {
            biased;
            Some(sends) = waited.recv() => sends,
            // Sends that wait count against the queue: past it, senders wait instead.
            queued = queue.recv(), if open && waiting < QUEUE => queued.map_or_else(
                || {
                    open = false;
                    Vec::new()
                },
                |queued| vec![queued],
            ),
            // Not reached: the memory keeps a sender of `waited`.
            else => return,
        };
        if batch.is_empty() {
            continue;
        }
        // Wait for a free slot before taking more: while all are busy, sends accumulate and
        // the next batch is larger.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let (batch, reading, slot) =
            write_remembered(&committer, &mut sequencer, batch, slot).await;
        if batch.is_empty() {
            continue;
        }
        let slot = match slot {
            Some(slot) => slot,
            None => match Arc::clone(&slots).acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let committer = committer.clone();
        tokio::spawn(async move {
            store_batch(&committer, batch).await;
            drop((reading, slot));
        });
    }
}

/// Writes the sends of `batch` into remembered conversations from memory, in one round trip:
/// sent before this returns (so writes reach the database in the order their seqs were
/// taken), answered by a task of its own that holds `slot`. Gives back the sends that must
/// be read first with their conversations' mark, and the slot when it was not used; sends
/// into conversations being read into wait for that.
async fn write_remembered(
    committer: &Committer,
    sequencer: &mut Option<Sequencer>,
    batch: Vec<Queued>,
    slot: OwnedSemaphorePermit,
) -> (Vec<Queued>, Option<Reading>, Option<OwnedSemaphorePermit>) {
    if sequencer.as_ref().is_none_or(|s| s.client.is_closed()) {
        *sequencer = Sequencer::connect(&committer.pool).await.ok();
    }
    let Some(sequencer) = sequencer.as_ref() else {
        let (rest, reading) = committer.remembered.read(batch);
        return (rest, reading, Some(slot));
    };
    // Truncated to what the column keeps, so the event says what history will.
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let Taken {
        from_memory,
        rest,
        reading,
    } = committer.remembered.take(batch, now);
    let Some((
        batch,
        Planned {
            results,
            writes,
            checks,
        },
    )) = from_memory
    else {
        return (rest, reading, Some(slot));
    };
    let handed = committer.handoff.hand(writes.outbox.clone());
    let mut write = writes.write_checked(sequencer, &checks, committer.handoff.relay());
    // The first poll sends it.
    let sent = match futures::poll!(&mut write) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    };
    let committer = committer.clone();
    tokio::spawn(async move {
        let result = match sent {
            Some(result) => result,
            None => write.await,
        };
        match result {
            Ok(_) => {
                handed.committed();
                for (queued, result) in batch.into_iter().zip(results) {
                    queued.reply.send(Ok(result)).ok();
                }
            }
            Err(error) => {
                // What it was built on changed (another instance, a membership change, a
                // batch before it that failed) or a `client_msg_id` came again: read.
                drop(handed);
                let stale = error.code().map(SqlState::code) == Some(REMEMBERED_CHANGED);
                committer
                    .remembered
                    .forget(checks.iter().map(|(id, _, _)| *id), stale);
                let (batch, reading) = committer.remembered.read(batch);
                if !batch.is_empty() {
                    store_batch(&committer, batch).await;
                }
                drop(reading);
            }
        }
        drop(slot);
    });
    (rest, reading, None)
}

async fn store_batch(committer: &Committer, batch: Vec<Queued>) {
    let sends: Vec<&NewSend> = batch.iter().map(|q| &q.send).collect();
    match store(committer, &sends).await {
        Ok(results) => {
            for (queued, result) in batch.into_iter().zip(results) {
                // A caller that went away has its answer in the database.
                queued.reply.send(Ok(result)).ok();
            }
        }
        Err(error) if batch.len() > 1 => {
            tracing::warn!(message = "Send batch failed; storing its sends one by one.", sends = batch.len(), error = %tertulia_plumbing::error::chain(&error));
            futures::future::join_all(batch.into_iter().map(|queued| async move {
                let result = store_one(committer, &queued.send).await;
                queued.reply.send(result).ok();
            }))
            .await;
        }
        Err(error) => {
            if let Some(queued) = batch.into_iter().next() {
                queued.reply.send(Err(error)).ok();
            }
        }
    }
}

/// Stores one send in a transaction of its own.
pub(super) async fn store_one(committer: &Committer, send: &NewSend) -> Result<Sent, DbError> {
    let mut results = store(committer, &[send]).await?;
    Ok(results.remove(0))
}

/// Stores `sends` in one transaction; one answer per send, in order. Their events are
/// handed to the relay in memory too, under the conversations' locks.
async fn store(committer: &Committer, sends: &[&NewSend]) -> Result<Vec<Sent>, DbError> {
    let tx = PipelinedTransaction::new(committer.pool.get().await?, Durability::Flushed);
    let client = tx.client();
    let mut conversations: Vec<Uuid> = sends.iter().map(|s| s.conversation_id).collect();
    conversations.sort_unstable();
    conversations.dedup();
    // Each lookup is its own index probe (`LIMIT 1` keeps the planner from turning them into
    // one join, which it may plan as a scan of all messages while the table is small and
    // then keep for the connection's life).
    let earlier_sql = format!(
        "SELECT m.* FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(c, s, id),
         LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE conversation_id = k.c AND sender_id = k.s AND client_msg_id = k.id
                  LIMIT 1) AS m"
    );
    let (lock, members, earlier) = tokio::try_join!(
        // In one order, so batches that share conversations cannot deadlock.
        client.prepare_cached(
            "SELECT conversation_id, last_seq, now(), members_version FROM conversations
             WHERE conversation_id = ANY($1) ORDER BY conversation_id FOR UPDATE",
        ),
        client.prepare_cached(
            "SELECT k.c, ARRAY(SELECT user_id FROM members WHERE conversation_id = k.c
                              ORDER BY user_id)
             FROM unnest($1::uuid[]) AS k(c)",
        ),
        client.prepare_cached(&earlier_sql),
    )?;
    let keys = (
        sends.iter().map(|s| s.conversation_id).collect::<Vec<_>>(),
        sends.iter().map(|s| s.actor).collect::<Vec<_>>(),
        sends
            .iter()
            .map(|s| s.client_msg_id.as_str())
            .collect::<Vec<_>>(),
    );
    // Pipelined behind the lock, so they read what committed before it was granted.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&conversations];
    let earlier_params: [&(dyn ToSql + Sync); 3] = [&keys.0, &keys.1, &keys.2];
    let (locked, members, earlier) = tx
        .begin_with(async {
            tokio::try_join!(
                client.query(&lock, &lock_params),
                client.query(&members, &lock_params),
                client.query(&earlier, &earlier_params),
            )
        })
        .await?;
    let mut last_seq: HashMap<Uuid, i64> = locked.iter().map(|r| (r.get(0), r.get(1))).collect();
    let now: Option<OffsetDateTime> = locked.first().map(|r| r.get(2));
    let members: HashMap<Uuid, Vec<Uuid>> = members.iter().map(|r| (r.get(0), r.get(1))).collect();
    let known: HashMap<(Uuid, Uuid, String), Message> = earlier
        .iter()
        .map(message_from)
        .map(|m| ((m.conversation_id, m.sender_id, m.client_msg_id.clone()), m))
        .collect();
    let Some(now) = now else {
        // None of the conversations exists.
        tx.rollback();
        return Ok(sends.iter().map(|_| Sent::NotMember).collect());
    };
    let (results, writes) = plan(sends, &mut last_seq, &members, now, known);
    if writes.is_empty() {
        // Every send was stored before, or refused: nothing to commit.
        tx.rollback();
    } else {
        let handed = committer.handoff.hand(writes.outbox.clone());
        writes.apply(&tx, committer.handoff.relay()).await?;
        handed.committed();
    }
    // Remembered as committed, so the next batch into them can be written from memory.
    for row in &locked {
        let id: Uuid = row.get(0);
        if let (Some(seq), Some(members)) = (last_seq.get(&id), members.get(&id)) {
            committer.remembered.set(
                id,
                Conversation {
                    last_seq: *seq,
                    members_version: row.get(3),
                    members: members.as_slice().into(),
                },
            );
        }
    }
    Ok(results)
}

/// The answers to `sends` and the rows they write, from each conversation's `last_seq`
/// (advanced here) and `members`, at `now`, `known` holding the messages sent before.
fn plan<M: AsRef<[Uuid]>>(
    sends: &[&NewSend],
    last_seq: &mut HashMap<Uuid, i64>,
    members: &HashMap<Uuid, M>,
    now: OffsetDateTime,
    mut known: HashMap<(Uuid, Uuid, String), Message>,
) -> (Vec<Sent>, Writes) {
    let mut results = Vec::with_capacity(sends.len());
    let mut writes = Writes::default();
    for send in sends {
        let member_ids = members
            .get(&send.conversation_id)
            .map(AsRef::as_ref)
            .filter(|ids| ids.contains(&send.actor));
        let (Some(member_ids), Some(seq)) = (member_ids, last_seq.get_mut(&send.conversation_id))
        else {
            results.push(Sent::NotMember);
            continue;
        };
        let key = (send.conversation_id, send.actor, send.client_msg_id.clone());
        let message = match known.entry(key) {
            // Sent before, or earlier in this batch.
            Entry::Occupied(first) => {
                results.push(Sent::Existing(first.get().clone()));
                continue;
            }
            Entry::Vacant(slot) => {
                *seq += 1;
                slot.insert(Message {
                    message_id: Uuid::now_v7(),
                    conversation_id: send.conversation_id,
                    seq: *seq,
                    sender_id: send.actor,
                    client_msg_id: send.client_msg_id.clone(),
                    text: send.text.clone(),
                    sent_at: now,
                    edited_at: None,
                    deleted: false,
                    video_id: send.video_id,
                    reactions: Vec::new(),
                })
                .clone()
            }
        };
        writes.add(&message, member_ids, send.traceparent.clone());
        results.push(Sent::Created(message));
    }
    (results, writes)
}

/// The statement that writes a batch's rows into all four tables (each a data-modifying
/// `WITH`); its outbox rows name the relay they are handed to (`$18`). `checked`: it also
/// fails unless each conversation's `last_seq` and `members_version` are still what the
/// batch was built on (`$19`, `$20`, in the order of `$1`), as read under the row lock.
fn write_sql(checked: bool) -> String {
    // A checked write locks its conversations first, in id order as a batch that reads does
    // (were two batches to lock in other orders, one would fail as a deadlock after a
    // second, and read).
    let (lock, from, check, select) = if checked {
        (
            "locked AS (
                 SELECT conversation_id, last_seq, members_version FROM conversations
                 WHERE conversation_id = ANY($1) ORDER BY conversation_id FOR UPDATE
             ), ",
            "unnest($1::uuid[], $2::int8[], $19::int8[], $20::int8[]) AS v(id, seq, was, version)
             JOIN locked l ON l.conversation_id = v.id",
            "AND l.last_seq = v.was AND l.members_version = v.version RETURNING 1",
            "SELECT expect_remembered(count(*) = cardinality($1::uuid[])) FROM bump",
        )
    } else {
        (
            "",
            "unnest($1::uuid[], $2::int8[]) AS v(id, seq)",
            "",
            "SELECT",
        )
    };
    format!(
        "WITH {lock}bump AS (
             UPDATE conversations c SET last_seq = v.seq, last_activity_at = now()
             FROM {from}
             WHERE c.conversation_id = v.id {check}
         ), insert AS (
             INSERT INTO messages (conversation_id, seq, message_id, sender_id,
                                   client_msg_id, text, video_id, sent_at)
             SELECT * FROM unnest($3::uuid[], $4::int8[], $5::uuid[], $6::uuid[],
                                  $7::text[], $8::text[], $9::uuid[], $10::timestamptz[])
         ), read AS (
             UPDATE members m SET read_seq = v.seq
             FROM unnest($11::uuid[], $12::uuid[], $13::int8[]) AS v(c, u, seq)
             WHERE m.conversation_id = v.c AND m.user_id = v.u
         ), outbox AS (
             INSERT INTO outbox (event_id, subject, payload, traceparent, relay)
             SELECT e.*, $18::uuid
             FROM unnest($14::uuid[], $15::text[], $16::bytea[], $17::text[]) AS e
         )
         {select}"
    )
}

/// The rows a batch writes, column by column.
#[derive(Default)]
struct Writes {
    /// Newest seq per conversation.
    last_seq: HashMap<Uuid, i64>,
    /// Senders have read what they wrote: newest seq per (conversation, sender).
    read_seq: HashMap<(Uuid, Uuid), i64>,
    messages: Vec<Message>,
    outbox: Vec<OutboxRow>,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn add(&mut self, message: &Message, members: &[Uuid], traceparent: Option<String>) {
        self.last_seq.insert(message.conversation_id, message.seq);
        self.read_seq
            .insert((message.conversation_id, message.sender_id), message.seq);
        self.outbox.push(OutboxRow::new(
            events::message_created(message, members),
            traceparent,
        ));
        self.messages.push(message.clone());
    }

    /// One statement for all four tables, with the commit behind it; the outbox rows are
    /// handed to `relay`.
    async fn apply(self, tx: &PipelinedTransaction, relay: Uuid) -> Result<(), DbError> {
        let client = tx.client();
        let write = client.prepare_cached(&WRITE).await?;
        let columns = Columns::of(self, &[], relay);
        // Prepared above, so it is sent when first polled, ahead of the commit.
        tx.commit_with(client.execute(&write, &columns.params()))
            .await?;
        Ok(())
    }

    /// The checked write of a batch built from memory on `checks` (conversation, last seq,
    /// members' version), a transaction of its own on the sequencer's connection; sent when
    /// first polled.
    fn write_checked(
        self,
        sequencer: &Sequencer,
        checks: &[(Uuid, i64, i64)],
        relay: Uuid,
    ) -> Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>> {
        let client = Arc::clone(&sequencer.client);
        let statement = sequencer.write.clone();
        let columns = Columns::of(self, checks, relay);
        Box::pin(async move { client.execute(&statement, &columns.params()).await })
    }
}

/// What `expect_remembered` raises.
const REMEMBERED_CHANGED: &str = "TC001";

/// The write of a batch, and the checked one.
static WRITE: LazyLock<String> = LazyLock::new(|| write_sql(false));
static WRITE_CHECKED: LazyLock<String> = LazyLock::new(|| write_sql(true));

/// A batch's rows as the write's parameters, column by column; conversations in id order (the
/// order their rows are locked in).
struct Columns {
    conversations: Vec<Uuid>,
    seqs: Vec<i64>,
    message_conversations: Vec<Uuid>,
    message_seqs: Vec<i64>,
    message_ids: Vec<Uuid>,
    senders: Vec<Uuid>,
    client_ids: Vec<String>,
    texts: Vec<String>,
    videos: Vec<Option<Uuid>>,
    sent_at: Vec<OffsetDateTime>,
    read_conversations: Vec<Uuid>,
    read_users: Vec<Uuid>,
    read_seqs: Vec<i64>,
    event_ids: Vec<Uuid>,
    subjects: Vec<String>,
    payloads: Vec<Vec<u8>>,
    traces: Vec<Option<String>>,
    relay: Uuid,
    /// For a checked write: each conversation's last seq and members' version as built on.
    was: Vec<i64>,
    versions: Vec<i64>,
}

impl Columns {
    fn of(writes: Writes, checks: &[(Uuid, i64, i64)], relay: Uuid) -> Self {
        let mut bumps: Vec<(Uuid, i64)> = writes.last_seq.into_iter().collect();
        bumps.sort_unstable();
        let checked: HashMap<Uuid, (i64, i64)> = checks
            .iter()
            .map(|(id, was, v)| (*id, (*was, *v)))
            .collect();
        let (was, versions) = bumps
            .iter()
            .filter_map(|(id, _)| checked.get(id).copied())
            .unzip();
        let (conversations, seqs) = bumps.into_iter().unzip();
        let (readers, read_seqs): (Vec<(Uuid, Uuid)>, Vec<i64>) =
            writes.read_seq.into_iter().unzip();
        let (read_conversations, read_users) = readers.into_iter().unzip();
        let m = writes.messages;
        let column = |f: fn(&Message) -> Uuid| m.iter().map(f).collect::<Vec<_>>();
        let o = writes.outbox;
        Self {
            conversations,
            seqs,
            message_conversations: column(|m| m.conversation_id),
            message_seqs: m.iter().map(|m| m.seq).collect(),
            message_ids: column(|m| m.message_id),
            senders: column(|m| m.sender_id),
            client_ids: m.iter().map(|m| m.client_msg_id.clone()).collect(),
            texts: m.iter().map(|m| m.text.clone()).collect(),
            videos: m.iter().map(|m| m.video_id).collect(),
            sent_at: m.iter().map(|m| m.sent_at).collect(),
            read_conversations,
            read_users,
            read_seqs,
            event_ids: o.iter().map(|r| r.event_id).collect(),
            subjects: o.iter().map(|r| r.subject.clone()).collect(),
            traces: o.iter().map(|r| r.traceparent.clone()).collect(),
            payloads: o.into_iter().map(|r| r.payload).collect(),
            relay,
            was,
            versions,
        }
    }

    /// `$1` to `$18`, and `$19`, `$20` for a checked write.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.conversations,
            &self.seqs,
            &self.message_conversations,
            &self.message_seqs,
            &self.message_ids,
            &self.senders,
            &self.client_ids,
            &self.texts,
            &self.videos,
            &self.sent_at,
            &self.read_conversations,
            &self.read_users,
            &self.read_seqs,
            &self.event_ids,
            &self.subjects,
            &self.payloads,
            &self.traces,
            &self.relay,
        ];
        if !self.was.is_empty() {
            params.push(&self.was);
            params.push(&self.versions);
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(conversation_id: Uuid, actor: Uuid, n: u32) -> Queued {
        Queued {
            send: NewSend {
                actor,
                conversation_id,
                client_msg_id: format!("m{n}"),
                text: format!("message {n}"),
                video_id: None,
                traceparent: None,
            },
            reply: oneshot::channel().0,
        }
    }

    fn remember(memory: &Remembered, id: Uuid, last_seq: i64, members: &[Uuid]) {
        memory.set(
            id,
            Conversation {
                last_seq,
                members_version: 1,
                members: members.into(),
            },
        );
    }

    /// A conversation a batch is reading into takes no other batch meanwhile: built from
    /// memory, its sends would have been built on what that batch was about to change and
    /// failed their check (the memory then shunned the conversation for ten seconds); read,
    /// they would only have waited for its row locks.
    #[test]
    fn sends_into_a_conversation_being_read_wait_for_it_then_go_from_memory() {
        let (memory, mut waited) = Remembered::new();
        let (read, other, ana) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        remember(&memory, other, 7, &[ana]);
        let now = OffsetDateTime::now_utc();

        let first = memory.take(vec![queued(read, ana, 1), queued(read, ana, 2)], now);
        assert!(first.from_memory.is_none());
        assert_eq!(first.rest.len(), 2, "not remembered: read");
        let reading = first.reading.expect("marked as being read into");

        // Meanwhile: a send into it waits; one into a remembered conversation does not.
        let second = memory.take(vec![queued(read, ana, 3), queued(other, ana, 4)], now);
        assert!(second.rest.is_empty() && second.reading.is_none());
        let (sends, planned) = second.from_memory.expect("the other one from memory");
        assert_eq!(sends.len(), 1);
        assert_eq!(planned.checks, vec![(other, 7, 1)]);
        assert_eq!(memory.waiting(), (1, true));
        assert!(
            waited.try_recv().is_err(),
            "nothing back before the read ends"
        );

        // The read commits (and is remembered), then ends: the send that waited comes back
        // and is built from memory, on what the read committed.
        remember(&memory, read, 2, &[ana]);
        drop(reading);
        let back = waited.try_recv().expect("the send that waited comes back");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].send.client_msg_id, "m3");
        assert_eq!(memory.waiting(), (0, false));
        let third = memory.take(back, now);
        assert!(third.rest.is_empty());
        let (_, planned) = third.from_memory.expect("from memory now");
        assert_eq!(planned.checks, vec![(read, 2, 1)]);
        let Sent::Created(message) = &planned.results[0] else {
            panic!("a member's send is created");
        };
        assert_eq!(message.seq, 3);
    }

    /// A read that ends without committing (a failed batch) sends back what waited too: read
    /// again, not lost.
    #[test]
    fn sends_that_waited_for_a_failed_read_come_back_to_be_read() {
        let (memory, mut waited) = Remembered::new();
        let (id, ana) = (Uuid::now_v7(), Uuid::now_v7());
        let now = OffsetDateTime::now_utc();
        let first = memory.take(vec![queued(id, ana, 1)], now);
        let reading = first.reading.expect("being read into");
        let second = memory.take(vec![queued(id, ana, 2)], now);
        assert!(second.from_memory.is_none() && second.rest.is_empty());
        drop(reading);
        let back = waited.try_recv().expect("back");
        let third = memory.take(back, now);
        assert_eq!(third.rest.len(), 1, "nothing remembered: read");
        assert!(third.reading.is_some());
    }
}
