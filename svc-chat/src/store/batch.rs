//! Group commit for sends. Sends that arrive while others are being stored queue up, and the
//! next free batch takes them all (up to [`MAX_BATCH`]) into one transaction: one lock
//! statement for all their conversations, one statement that writes all their rows, and
//! one commit, so one WAL flush is shared by many messages instead of paid by each. A lone
//! send is a batch of one: two round trips, `BEGIN` with the reads and `COMMIT` with the
//! writes.
//!
//! Just before `COMMIT`, still holding the locks, a batch hands its events to the outbox
//! relay in memory ([`Handoff`]), and confirms once the commit succeeded: the relay
//! publishes them without claiming them from the table.
//!
//! Nothing is answered before its batch commits. When a batch fails as a whole (a lost
//! connection, a deadlock), each of its sends is tried again in a transaction of its own, so
//! one bad send cannot fail the others; a send whose first try did commit is found again by
//! its `client_msg_id`.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::Arc,
};

use tertulia_plumbing::postgres::{DbError, Durability, PgPool, PipelinedTransaction};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{MESSAGE_COLUMNS, OutboxRow, Sent, message_from};
use crate::{
    domain::Message,
    events::{self, Handoff},
};

/// Most sends one transaction takes.
const MAX_BATCH: usize = 128;
/// Batches in flight at once (each holds a database connection).
const CONCURRENT_BATCHES: usize = 4;
/// Connections of the pool of short statements: one per batch in flight, one for the
/// outbox relay's claim and one for its marks of what was handed over. Their statements have
/// one good plan whatever the values (a batch's are keyed by its arrays), so the pool plans
/// them once per connection
/// ([`Plans::Generic`](tertulia_plumbing::postgres::Plans)); PostgreSQL's default would plan
/// them again at every use, estimating from the values: 0.3 ms of the relay's every round.
pub const BATCH_CONNECTIONS: usize = CONCURRENT_BATCHES + 2;
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
}

/// Takes queued sends in batches until every sender is gone.
pub(super) async fn run(committer: Committer, mut queue: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before taking more: while all are busy, sends accumulate and
        // the next batch is larger.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let committer = committer.clone();
        tokio::spawn(async move {
            store_batch(&committer, batch).await;
            drop(slot);
        });
    }
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
            "SELECT conversation_id, last_seq, now() FROM conversations
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
    let mut known: HashMap<(Uuid, Uuid, String), Message> = earlier
        .iter()
        .map(message_from)
        .map(|m| ((m.conversation_id, m.sender_id, m.client_msg_id.clone()), m))
        .collect();
    let mut results = Vec::with_capacity(sends.len());
    let mut writes = Writes::default();
    for send in sends {
        let member_ids = members
            .get(&send.conversation_id)
            .filter(|ids| ids.contains(&send.actor));
        let (Some(member_ids), Some(seq), Some(now)) =
            (member_ids, last_seq.get_mut(&send.conversation_id), now)
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
                    // The transaction's start, as the column's default would have it.
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
    if writes.is_empty() {
        // Every send was stored before, or refused: nothing to commit.
        tx.rollback();
    } else {
        let handed = committer.handoff.hand(writes.outbox.clone());
        writes.apply(&tx).await?;
        handed.committed();
    }
    Ok(results)
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

    /// One statement for all four tables (each write a data-modifying `WITH`), with the
    /// commit behind it.
    async fn apply(self, tx: &PipelinedTransaction) -> Result<(), DbError> {
        let client = tx.client();
        let write = client
            .prepare_cached(
                "WITH bump AS (
                     UPDATE conversations c SET last_seq = v.seq, last_activity_at = now()
                     FROM unnest($1::uuid[], $2::int8[]) AS v(id, seq)
                     WHERE c.conversation_id = v.id
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
                     INSERT INTO outbox (event_id, subject, payload, traceparent)
                     SELECT * FROM unnest($14::uuid[], $15::text[], $16::bytea[], $17::text[])
                 )
                 SELECT",
            )
            .await?;
        let (conversations, seqs): (Vec<Uuid>, Vec<i64>) = self.last_seq.into_iter().unzip();
        let (readers, read_seqs): (Vec<(Uuid, Uuid)>, Vec<i64>) = self.read_seq.into_iter().unzip();
        let (read_conversations, read_users): (Vec<Uuid>, Vec<Uuid>) = readers.into_iter().unzip();
        let m = &self.messages;
        let column = |f: fn(&Message) -> Uuid| m.iter().map(f).collect::<Vec<_>>();
        let message_ids = column(|m| m.message_id);
        let message_conversations = column(|m| m.conversation_id);
        let senders = column(|m| m.sender_id);
        let message_seqs: Vec<i64> = m.iter().map(|m| m.seq).collect();
        let client_ids: Vec<&str> = m.iter().map(|m| m.client_msg_id.as_str()).collect();
        let texts: Vec<&str> = m.iter().map(|m| m.text.as_str()).collect();
        let videos: Vec<Option<Uuid>> = m.iter().map(|m| m.video_id).collect();
        let sent_at: Vec<OffsetDateTime> = m.iter().map(|m| m.sent_at).collect();
        let o = &self.outbox;
        let event_ids: Vec<Uuid> = o.iter().map(|r| r.event_id).collect();
        let subjects: Vec<&str> = o.iter().map(|r| r.subject.as_str()).collect();
        let payloads: Vec<&[u8]> = o.iter().map(|r| r.payload.as_slice()).collect();
        let traces: Vec<Option<&str>> = o.iter().map(|r| r.traceparent.as_deref()).collect();
        let params: [&(dyn ToSql + Sync); 17] = [
            &conversations,
            &seqs,
            &message_conversations,
            &message_seqs,
            &message_ids,
            &senders,
            &client_ids,
            &texts,
            &videos,
            &sent_at,
            &read_conversations,
            &read_users,
            &read_seqs,
            &event_ids,
            &subjects,
            &payloads,
            &traces,
        ];
        // Prepared above, so it is sent when first polled, ahead of the commit.
        tx.commit_with(client.execute(&write, &params)).await?;
        Ok(())
    }
}
