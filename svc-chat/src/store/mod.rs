//! svc-chat's tables over deadpool-postgres. Every write and the events it causes commit in
//! one transaction (the outbox), so an acknowledged change always has its event.

mod batch;

pub use batch::BATCH_CONNECTIONS;

use deadpool_postgres::Transaction;
use tertulia_plumbing::postgres::{DbError, Durability, Migration, PgPool, PipelinedTransaction};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Row, types::ToSql};
use uuid::Uuid;

use crate::{
    domain::{Content, Conversation, ConversationKind, Message, Reaction, direct_key},
    events::{self, OutboxEvent},
};

/// svc-chat's schema history. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "conversations_messages_outbox",
        sql: include_str!("../../migrations/0001_conversations_messages_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "content_and_reactions",
        sql: include_str!("../../migrations/0002_content_and_reactions.sql"),
    },
    Migration {
        version: 3,
        name: "outbox_traceparent",
        sql: include_str!("../../migrations/0003_outbox_traceparent.sql"),
    },
    Migration {
        version: 4,
        name: "members_version",
        sql: include_str!("../../migrations/0004_members_version.sql"),
    },
    Migration {
        version: 5,
        name: "outbox_relay",
        sql: include_str!("../../migrations/0005_outbox_relay.sql"),
    },
];

/// Bumps a conversation's `members_version` (in the transaction of a membership change), so
/// that a send built from its remembered members fails over to a fresh read.
const BUMP_MEMBERS_VERSION: &str =
    "UPDATE conversations SET members_version = members_version + 1 WHERE conversation_id = $1";

/// Marks rows published, by their ids. Not `AND published_at IS NULL`: that matches the
/// partial index of pending rows, which a plan made while the outbox is small prefers to the
/// primary key, and then reads whole at every mark (its dead entries too) as the outbox
/// grows. A row marked twice (claimed late by another instance) only moves its time.
const MARK_PUBLISHED: &str = "UPDATE outbox SET published_at = now() WHERE event_id = ANY($1)";

/// What a relay's claim takes ([`ChatStore::claim_outbox`]).
#[derive(Debug, Clone)]
pub struct Claim {
    /// Most rows it takes.
    pub limit: i64,
    /// The relay claiming: rows handed over to it are its own.
    pub relay: Uuid,
    /// How old a row handed over to another relay must be before it is taken.
    pub others_after: std::time::Duration,
    /// Rows its handoff holds, left to it.
    pub in_hand: Vec<Uuid>,
}

/// A committed event waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its id, the `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// Subject without namespace.
    pub subject: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Seconds since it was committed, when claimed (0 for a row handed over in memory).
    pub age_s: f64,
    /// The trace of the call that committed it, if traces were exported.
    pub traceparent: Option<String>,
}

impl OutboxRow {
    /// The row of `event`, written by the call of `traceparent`.
    #[must_use]
    pub fn new(event: OutboxEvent, traceparent: Option<String>) -> Self {
        Self {
            event_id: event.event_id,
            subject: event.subject,
            payload: event.payload,
            age_s: 0.0,
            traceparent,
        }
    }
}

/// What a send did.
#[derive(Debug)]
pub enum Sent {
    /// Stored now.
    Created(Message),
    /// The same `client_msg_id` was sent before: the first message.
    Existing(Message),
    /// The sender is not a member (or the conversation does not exist).
    NotMember,
}

/// What an edit or delete did.
#[derive(Debug)]
pub enum Changed {
    /// Done; the message as it is now.
    Done(Message),
    /// No such message visible to the actor.
    NotFound,
    /// Someone else's message.
    NotSender,
    /// Already deleted: it cannot be edited.
    Deleted,
    /// Only text can be edited; the message shares a video.
    NotText,
}

/// What a membership change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Done.
    Changed,
    /// Nothing to do (already a member).
    Unchanged,
    /// No such conversation visible to the actor, or the target is not a member.
    NotFound,
    /// Direct conversations have fixed members.
    NotGroup,
    /// Only the creator may remove others.
    NotAllowed,
}

/// Access to svc-chat's schema.
#[derive(Debug, Clone)]
pub struct ChatStore {
    pool: PgPool,
    /// Short statements planned once ([`BATCH_CONNECTIONS`]), for the outbox relay.
    relay: PgPool,
    /// The queue of the group commit of sends.
    sends: mpsc::Sender<batch::Queued>,
    /// Where a send outside the group commit stores, and hands over, its message.
    committer: batch::Committer,
}

/// The columns of a [`Message`] (a macro, so statements can be made of it at compile time).
macro_rules! message_columns {
    () => {
        "message_id, conversation_id, seq, sender_id, client_msg_id, text, sent_at, edited_at, \
         deleted, video_id"
    };
}
const MESSAGE_COLUMNS: &str = message_columns!();

const IS_MEMBER: &str = "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2";

/// A page of history between two seqs (exclusive), oldest first or newest first.
macro_rules! history_page {
    ($order:literal) => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq ",
            $order,
            " LIMIT $4"
        )
    };
}
const HISTORY_ASCENDING: &str = history_page!("ASC");
const HISTORY_DESCENDING: &str = history_page!("DESC");

fn message_from(row: &Row) -> Message {
    Message {
        message_id: row.get("message_id"),
        conversation_id: row.get("conversation_id"),
        seq: row.get("seq"),
        sender_id: row.get("sender_id"),
        client_msg_id: row.get("client_msg_id"),
        text: row.get("text"),
        sent_at: row.get("sent_at"),
        edited_at: row.get("edited_at"),
        deleted: row.get("deleted"),
        video_id: row.get("video_id"),
        reactions: Vec::new(),
    }
}

/// A conversation as `$1` sees it; callers add the WHERE/ORDER tail.
const CONVERSATION_VIEW: &str = "
    SELECT c.conversation_id, c.kind, c.title, c.creator_id, c.created_at, c.last_seq,
           c.last_activity_at, m.read_seq,
           ARRAY(SELECT x.user_id FROM members x WHERE x.conversation_id = c.conversation_id
                 ORDER BY x.joined_at, x.user_id) AS member_ids,
           lm.message_id AS lm_message_id, lm.seq AS lm_seq, lm.sender_id AS lm_sender_id,
           lm.client_msg_id AS lm_client_msg_id, lm.text AS lm_text, lm.sent_at AS lm_sent_at,
           lm.edited_at AS lm_edited_at, lm.deleted AS lm_deleted, lm.video_id AS lm_video_id
    FROM members m
    JOIN conversations c ON c.conversation_id = m.conversation_id
    LEFT JOIN messages lm ON lm.conversation_id = c.conversation_id AND lm.seq = c.last_seq
    WHERE m.user_id = $1";

fn conversation_from(row: &Row) -> Conversation {
    let conversation_id: Uuid = row.get("conversation_id");
    let last_seq: i64 = row.get("last_seq");
    let read_seq: i64 = row.get("read_seq");
    let last_message = row
        .get::<_, Option<Uuid>>("lm_message_id")
        .map(|message_id| Message {
            message_id,
            conversation_id,
            seq: row.get("lm_seq"),
            sender_id: row.get("lm_sender_id"),
            client_msg_id: row.get("lm_client_msg_id"),
            text: row.get("lm_text"),
            sent_at: row.get("lm_sent_at"),
            edited_at: row.get("lm_edited_at"),
            deleted: row.get("lm_deleted"),
            video_id: row.get("lm_video_id"),
            reactions: Vec::new(),
        });
    Conversation {
        conversation_id,
        kind: ConversationKind::from_stored(row.get("kind")),
        title: row.get("title"),
        creator_id: row.get("creator_id"),
        member_ids: row.get("member_ids"),
        created_at: row.get("created_at"),
        last_seq,
        last_message,
        unread: (last_seq - read_seq).max(0),
    }
}

/// Locks a message of the conversation for the rest of the transaction, when `actor` is a
/// member (writes to one message are serialised, so each event carries its whole state).
async fn lock_message(
    tx: &Transaction<'_>,
    conversation_id: Uuid,
    message_id: Uuid,
    actor: Uuid,
) -> Result<Option<Message>, DbError> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages msg
                 WHERE msg.conversation_id = $1 AND msg.message_id = $2
                   AND EXISTS (SELECT 1 FROM members m
                               WHERE m.conversation_id = $1 AND m.user_id = $3)
                 FOR UPDATE"
            ),
            &[&conversation_id, &message_id, &actor],
        )
        .await?;
    Ok(row.as_ref().map(message_from))
}

/// Reads the reactions of `ids` and puts them on the matching `messages`.
async fn fill_reactions(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
    messages: &mut [Message],
) -> Result<(), DbError> {
    let statement = client
        .prepare_cached(
            "SELECT message_id, emoji, array_agg(user_id ORDER BY reacted_at, user_id) AS users
             FROM reactions WHERE message_id = ANY($1)
             GROUP BY message_id, emoji
             ORDER BY message_id, min(reacted_at), emoji",
        )
        .await?;
    let rows = client.query(&statement, &[&ids]).await?;
    for m in messages.iter_mut() {
        m.reactions = rows
            .iter()
            .filter(|r| r.get::<_, Uuid>("message_id") == m.message_id)
            .map(|r| Reaction {
                emoji: r.get("emoji"),
                user_ids: r.get("users"),
            })
            .collect();
    }
    Ok(())
}

const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (event_id, subject, payload, traceparent) VALUES ($1, $2, $3, $4)";

/// Stores `event` with the trace of the current call, so its publish joins that trace.
async fn insert_outbox(tx: &Transaction<'_>, event: &OutboxEvent) -> Result<(), DbError> {
    let traceparent = tertulia_plumbing::telemetry::current_traceparent();
    tx.execute(
        &tx.prepare_cached(INSERT_OUTBOX).await?,
        &[
            &event.event_id,
            &event.subject,
            &event.payload,
            &traceparent,
        ],
    )
    .await?;
    Ok(())
}

async fn view_in(
    tx: &Transaction<'_>,
    viewer: Uuid,
    conversation_id: Uuid,
) -> Result<Option<Conversation>, DbError> {
    let sql = format!("{CONVERSATION_VIEW} AND c.conversation_id = $2");
    Ok(tx
        .query_opt(&sql, &[&viewer, &conversation_id])
        .await?
        .as_ref()
        .map(conversation_from))
}

/// Locks the conversation row when `actor` is a member; returns its kind, creator and
/// last seq.
async fn lock_as_member(
    tx: &Transaction<'_>,
    conversation_id: Uuid,
    actor: Uuid,
) -> Result<Option<(ConversationKind, Uuid, i64)>, DbError> {
    let row = tx
        .query_opt(
            "SELECT c.kind, c.creator_id, c.last_seq FROM conversations c
             JOIN members m ON m.conversation_id = c.conversation_id AND m.user_id = $2
             WHERE c.conversation_id = $1
             FOR UPDATE OF c",
            &[&conversation_id, &actor],
        )
        .await?;
    Ok(row.map(|r| (ConversationKind::from_stored(r.get(0)), r.get(1), r.get(2))))
}

/// Locks a group conversation `actor` belongs to and returns its creator; or the outcome
/// that ends a membership change (not visible, or not a group).
async fn lock_group(
    tx: &Transaction<'_>,
    conversation_id: Uuid,
    actor: Uuid,
) -> Result<Result<Uuid, Membership>, DbError> {
    Ok(match lock_as_member(tx, conversation_id, actor).await? {
        None => Err(Membership::NotFound),
        Some((ConversationKind::Direct, _, _)) => Err(Membership::NotGroup),
        Some((ConversationKind::Group, creator, _)) => Ok(creator),
    })
}

impl ChatStore {
    /// A store over `pool` (already migrated). Starts the group commit of sends on the
    /// current Tokio runtime, on the connections of `batches` (see [`BATCH_CONNECTIONS`]);
    /// it ends when the last clone of the store is dropped. Sends hand their events to the
    /// relay through `handoff` as well as writing them to the outbox.
    #[must_use]
    pub fn new(pool: PgPool, batches: PgPool, handoff: events::Handoff) -> Self {
        let (sends, queue) = mpsc::channel(batch::QUEUE);
        let (remembered, waited) = batch::Remembered::new();
        let committer = batch::Committer {
            pool: batches.clone(),
            handoff,
            remembered,
        };
        tokio::spawn(batch::run(committer.clone(), queue, waited));
        Self {
            committer: batch::Committer {
                pool: pool.clone(),
                ..committer
            },
            pool,
            relay: batches,
            sends,
        }
    }

    /// The pool of the outbox relay's transactions (the group commit's, which keeps a
    /// connection for it).
    #[must_use]
    pub fn relay_pool(&self) -> &PgPool {
        &self.relay
    }

    /// The relay this store's sends hand their outbox rows to ([`crate::events::Handoff`]).
    #[must_use]
    pub fn relay(&self) -> Uuid {
        self.committer.handoff.relay()
    }

    /// Where this store's sends hand their outbox rows over.
    pub(crate) fn handoff(&self) -> &events::Handoff {
        &self.committer.handoff
    }

    /// Creates a group of `actor` and `others`.
    pub async fn create_group(
        &self,
        actor: Uuid,
        others: &[Uuid],
        title: &str,
    ) -> Result<Conversation, DbError> {
        let mut members = vec![actor];
        members.extend(others.iter().copied().filter(|u| *u != actor));
        members.dedup();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO conversations (conversation_id, kind, title, creator_id)
             VALUES ($1, 'group', $2, $3)",
            &[&id, &title, &actor],
        )
        .await?;
        // joined_at increases with ordinality so members list in the order given.
        tx.execute(
            "INSERT INTO members (conversation_id, user_id, joined_at)
             SELECT $1, u, now() + (n * interval '1 microsecond')
             FROM unnest($2::uuid[]) WITH ORDINALITY AS t(u, n)
             ON CONFLICT DO NOTHING",
            &[&id, &members],
        )
        .await?;
        let view = view_in(&tx, actor, id)
            .await?
            .expect("the creator is a member");
        insert_outbox(&tx, &events::membership(&view, &view.member_ids, &[])).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// The direct conversation of `actor` and `other`, created when missing; `true` when
    /// created now.
    pub async fn find_or_create_direct(
        &self,
        actor: Uuid,
        other: Uuid,
        title: &str,
    ) -> Result<(Conversation, bool), DbError> {
        let key = direct_key(actor, other);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = Uuid::now_v7();
        let inserted = tx
            .execute(
                "INSERT INTO conversations (conversation_id, kind, title, creator_id, direct_key)
                 VALUES ($1, 'direct', $2, $3, $4) ON CONFLICT (direct_key) DO NOTHING",
                &[&id, &title, &actor, &key],
            )
            .await?;
        if inserted == 0 {
            let existing: Uuid = tx
                .query_one(
                    "SELECT conversation_id FROM conversations WHERE direct_key = $1",
                    &[&key],
                )
                .await?
                .get(0);
            let view = view_in(&tx, actor, existing)
                .await?
                .expect("both members of a direct conversation stay members");
            tx.commit().await?;
            return Ok((view, false));
        }
        tx.execute(
            "INSERT INTO members (conversation_id, user_id, joined_at)
             VALUES ($1, $2, now()), ($1, $3, now() + interval '1 microsecond')",
            &[&id, &actor, &other],
        )
        .await?;
        let view = view_in(&tx, actor, id)
            .await?
            .expect("the creator is a member");
        insert_outbox(&tx, &events::membership(&view, &view.member_ids, &[])).await?;
        tx.commit().await?;
        Ok((view, true))
    }

    /// The conversation as `viewer` sees it; `None` for non-members.
    pub async fn conversation(
        &self,
        viewer: Uuid,
        conversation_id: Uuid,
    ) -> Result<Option<Conversation>, DbError> {
        let client = self.pool.get().await?;
        let sql = format!("{CONVERSATION_VIEW} AND c.conversation_id = $2");
        Ok(client
            .query_opt(&sql, &[&viewer, &conversation_id])
            .await?
            .as_ref()
            .map(conversation_from))
    }

    /// `viewer`'s conversations, newest activity first, after the `(activity, id)` cursor.
    /// Each comes with its activity time, the cursor of the next page.
    pub async fn conversations(
        &self,
        viewer: Uuid,
        limit: i64,
        after: Option<(OffsetDateTime, Uuid)>,
    ) -> Result<Vec<(Conversation, OffsetDateTime)>, DbError> {
        let client = self.pool.get().await?;
        let (at, id) = after.unzip();
        let sql = format!(
            "{CONVERSATION_VIEW}
               AND ($2::timestamptz IS NULL OR (c.last_activity_at, c.conversation_id) < ($2, $3))
             ORDER BY c.last_activity_at DESC, c.conversation_id DESC
             LIMIT $4"
        );
        let rows = client.query(&sql, &[&viewer, &at, &id, &limit]).await?;
        Ok(rows
            .iter()
            .map(|r| (conversation_from(r), r.get("last_activity_at")))
            .collect())
    }

    /// Adds `user` to a group `actor` belongs to.
    pub async fn add_member(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        user: Uuid,
    ) -> Result<Membership, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Err(outcome) = lock_group(&tx, conversation_id, actor).await? {
            return Ok(outcome);
        }
        let added = tx
            .execute(
                "INSERT INTO members (conversation_id, user_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&conversation_id, &user],
            )
            .await?;
        if added == 0 {
            return Ok(Membership::Unchanged);
        }
        tx.execute(BUMP_MEMBERS_VERSION, &[&conversation_id])
            .await?;
        let view = view_in(&tx, actor, conversation_id)
            .await?
            .expect("the actor is a member");
        insert_outbox(&tx, &events::membership(&view, &[user], &[])).await?;
        tx.commit().await?;
        Ok(Membership::Changed)
    }

    /// Removes `user` from a group: themselves, or anyone when `actor` is the creator.
    pub async fn remove_member(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        user: Uuid,
    ) -> Result<Membership, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let creator = match lock_group(&tx, conversation_id, actor).await? {
            Ok(creator) => creator,
            Err(outcome) => return Ok(outcome),
        };
        if user != actor && actor != creator {
            return Ok(Membership::NotAllowed);
        }
        let removed = tx
            .execute(
                "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation_id, &user],
            )
            .await?;
        if removed == 0 {
            return Ok(Membership::NotFound);
        }
        tx.execute(BUMP_MEMBERS_VERSION, &[&conversation_id])
            .await?;
        // The view of a remaining member (or of the creator's record) for the event.
        let row = tx
            .query_one(
                "SELECT title, creator_id, created_at, last_seq,
                        ARRAY(SELECT user_id FROM members WHERE conversation_id = $1
                              ORDER BY joined_at, user_id) AS member_ids
                 FROM conversations WHERE conversation_id = $1",
                &[&conversation_id],
            )
            .await?;
        let view = Conversation {
            conversation_id,
            kind: ConversationKind::Group,
            title: row.get("title"),
            creator_id: row.get("creator_id"),
            member_ids: row.get("member_ids"),
            created_at: row.get("created_at"),
            last_seq: row.get("last_seq"),
            last_message: None,
            unread: 0,
        };
        insert_outbox(&tx, &events::membership(&view, &[], &[user])).await?;
        tx.commit().await?;
        Ok(Membership::Changed)
    }

    /// Stores a message, or finds the earlier one with the same `client_msg_id`. The
    /// conversation row lock serialises sends, so `seq` is gap-free and a retry racing its
    /// original finds it.
    ///
    /// Sends are group-committed (see [`batch`]): concurrent ones share a transaction,
    /// whatever the batch and group sizes. Into conversations this process stored into
    /// before, it is one round trip (one statement that checks what was remembered and
    /// writes every table); otherwise two (`BEGIN`, the lock of their conversations and,
    /// pipelined behind it, the idempotency check and the member lists; the write and
    /// `COMMIT`). The answer comes after the commit.
    pub async fn send(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        client_msg_id: &str,
        content: &Content,
    ) -> Result<Sent, DbError> {
        let (text, video_id) = match content {
            Content::Text(text) => (text.clone(), None),
            Content::Video(video) => (String::new(), Some(*video)),
        };
        let send = batch::NewSend {
            actor,
            conversation_id,
            client_msg_id: client_msg_id.to_owned(),
            text,
            video_id,
            traceparent: tertulia_plumbing::telemetry::current_traceparent(),
        };
        let (reply, answer) = oneshot::channel();
        let queued = batch::Queued {
            send: send.clone(),
            reply,
        };
        if self.sends.send(queued).await.is_ok()
            && let Ok(result) = answer.await
        {
            return result;
        }
        // Only while the store shuts down: a transaction of its own (a copy that did
        // commit is found by its client_msg_id).
        batch::store_one(&self.committer, &send).await
    }

    /// A page of history in ascending `seq`: the oldest `limit` after `after`, or else the
    /// newest `limit` before `before` (or overall). `None` for non-members.
    pub async fn history(
        &self,
        viewer: Uuid,
        conversation_id: Uuid,
        after: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<Message>>, DbError> {
        let client = self.pool.get().await?;
        // Prepared once per connection; the bounds are never null, so the plan does not
        // depend on which were given.
        let ascending = after.is_some();
        let page = if ascending {
            HISTORY_ASCENDING
        } else {
            HISTORY_DESCENDING
        };
        let (is_member, page) = tokio::try_join!(
            client.prepare_cached(IS_MEMBER),
            client.prepare_cached(page)
        )?;
        // Both in one round trip; the page is thrown away for a non-member.
        let (after, before) = (after.unwrap_or(0), before.unwrap_or(i64::MAX));
        let member_params: [&(dyn ToSql + Sync); 2] = [&conversation_id, &viewer];
        let page_params: [&(dyn ToSql + Sync); 4] = [&conversation_id, &after, &before, &limit];
        let (member, rows) = tokio::try_join!(
            client.query_opt(&is_member, &member_params),
            client.query(&page, &page_params),
        )?;
        if member.is_none() {
            return Ok(None);
        }
        let mut messages: Vec<Message> = rows.iter().map(message_from).collect();
        if !ascending {
            messages.reverse();
        }
        Ok(Some(messages))
    }

    /// Edits (`Some(text)`) or deletes (`None`) the actor's own message.
    pub async fn change(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        message_id: Uuid,
        text: Option<&str>,
    ) -> Result<Changed, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(current) = lock_message(&tx, conversation_id, message_id, actor).await? else {
            return Ok(Changed::NotFound);
        };
        if current.sender_id != actor {
            return Ok(Changed::NotSender);
        }
        if text.is_some() && current.video_id.is_some() {
            return Ok(Changed::NotText);
        }
        let updated = match (text, current.deleted) {
            (Some(_), true) => return Ok(Changed::Deleted),
            // Deleting twice changes nothing and publishes nothing.
            (None, true) => return Ok(Changed::Done(current)),
            (Some(text), false) => {
                tx.query_one(
                    &format!(
                        "UPDATE messages SET text = $3, edited_at = now()
                         WHERE conversation_id = $1 AND message_id = $2
                         RETURNING {MESSAGE_COLUMNS}"
                    ),
                    &[&conversation_id, &message_id, &text],
                )
                .await?
            }
            (None, false) => {
                tx.query_one(
                    &format!(
                        "UPDATE messages SET text = '', deleted = true, edited_at = now()
                         WHERE conversation_id = $1 AND message_id = $2
                         RETURNING {MESSAGE_COLUMNS}"
                    ),
                    &[&conversation_id, &message_id],
                )
                .await?
            }
        };
        let message = message_from(&updated);
        insert_outbox(&tx, &events::message_updated(&message)).await?;
        tx.commit().await?;
        Ok(Changed::Done(message))
    }

    /// The reactions of `messages`, filled in place (v2 views).
    pub async fn load_reactions(&self, messages: &mut [Message]) -> Result<(), DbError> {
        if messages.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
        fill_reactions(&client, &ids, messages).await
    }

    /// Adds (`add`) or removes the actor's `emoji` on a message; publishes the new reactions
    /// when they changed. Reactions on a deleted message are refused.
    pub async fn react(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        message_id: Uuid,
        emoji: &str,
        add: bool,
    ) -> Result<Changed, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Locking the message row serialises reactions on it, so each event carries the
        // complete, current set.
        let Some(mut message) = lock_message(&tx, conversation_id, message_id, actor).await? else {
            return Ok(Changed::NotFound);
        };
        if message.deleted {
            return Ok(Changed::Deleted);
        }
        let changed = if add {
            tx.execute(
                "INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&message_id, &emoji, &actor],
            )
            .await?
        } else {
            tx.execute(
                "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
                &[&message_id, &emoji, &actor],
            )
            .await?
        };
        fill_reactions(&tx, &[message_id], std::slice::from_mut(&mut message)).await?;
        if changed > 0 {
            insert_outbox(&tx, &events::reactions_changed(&message)).await?;
        }
        tx.commit().await?;
        Ok(Changed::Done(message))
    }

    /// Moves `actor`'s read position to `seq` (capped at the last message) when that is
    /// forward; returns the position after the call, `None` for non-members.
    pub async fn mark_read(
        &self,
        actor: Uuid,
        conversation_id: Uuid,
        seq: i64,
    ) -> Result<Option<i64>, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let moved = tx
            .query_opt(
                "UPDATE members m SET read_seq = LEAST($3, c.last_seq)
                 FROM conversations c
                 WHERE m.conversation_id = $1 AND m.user_id = $2
                   AND c.conversation_id = m.conversation_id
                   AND LEAST($3, c.last_seq) > m.read_seq
                 RETURNING m.read_seq",
                &[&conversation_id, &actor, &seq],
            )
            .await?;
        if let Some(row) = moved {
            let read: i64 = row.get(0);
            insert_outbox(&tx, &events::receipt(conversation_id, actor, read)).await?;
            tx.commit().await?;
            return Ok(Some(read));
        }
        let current = tx
            .query_opt(
                "SELECT read_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation_id, &actor],
            )
            .await?;
        Ok(current.map(|r| r.get(0)))
    }

    /// Current members of a conversation.
    pub async fn member_ids(&self, conversation_id: Uuid) -> Result<Vec<Uuid>, DbError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT user_id FROM members WHERE conversation_id = $1")
            .await?;
        let rows = client.query(&statement, &[&conversation_id]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Ids of the group conversations `user_id` is a member of.
    pub async fn group_ids(&self, user_id: Uuid) -> Result<Vec<Uuid>, DbError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT m.conversation_id FROM members m \
                 JOIN conversations c ON c.conversation_id = m.conversation_id \
                 WHERE m.user_id = $1 AND c.kind = 'group'",
            )
            .await?;
        let rows = client.query(&statement, &[&user_id]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Begins a transaction and claims in it unpublished outbox rows, oldest first, as
    /// [`Claim`] says: skipping rows another claim holds, rows the handoff holds, and rows
    /// handed over to another relay that are not late yet (that relay publishes them).
    pub async fn claim_outbox(
        tx: &PipelinedTransaction,
        claim: &Claim,
    ) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
        // `NOT IN` a subquery is one hashed lookup per row, however many rows are in hand.
        let statement = tx
            .client()
            .prepare_cached(
                "SELECT event_id, subject, payload,
                        extract(epoch FROM clock_timestamp() - created_at)::float8,
                        traceparent
                 FROM outbox
                 WHERE published_at IS NULL
                   AND (relay IS NULL OR relay = $2
                        OR created_at < now() - make_interval(secs => $3))
                   AND event_id NOT IN (SELECT unnest($4::uuid[]))
                 ORDER BY created_at, event_id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED",
            )
            .await?;
        let others_after = claim.others_after.as_secs_f64();
        let rows = tx
            .begin_with(tx.client().query(
                &statement,
                &[&claim.limit, &claim.relay, &others_after, &claim.in_hand],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                event_id: r.get(0),
                subject: r.get(1),
                payload: r.get(2),
                age_s: r.get(3),
                traceparent: r.get(4),
            })
            .collect())
    }

    /// Marks claimed rows published and commits the claim.
    pub async fn commit_published(
        tx: &PipelinedTransaction,
        ids: &[Uuid],
    ) -> Result<(), tokio_postgres::Error> {
        let statement = tx.client().prepare_cached(MARK_PUBLISHED).await?;
        tx.commit_with(tx.client().execute(&statement, &[&ids]))
            .await?;
        Ok(())
    }

    /// Marks rows published that were handed over in memory (not claimed): a transaction of
    /// its own, one round trip, which does not wait for the disk either.
    pub async fn mark_published(&self, ids: &[Uuid]) -> Result<(), DbError> {
        let tx = PipelinedTransaction::new(self.relay.get().await?, Durability::Deferred);
        let statement = tx.client().prepare_cached(MARK_PUBLISHED).await?;
        let params: [&(dyn ToSql + Sync); 1] = [&ids];
        // Polled in order: `BEGIN`, the mark and `COMMIT` leave together.
        futures::try_join!(
            tx.begin_with(async { Ok(()) }),
            tx.commit_with(tx.client().execute(&statement, &params)),
        )?;
        Ok(())
    }

    /// Rows still waiting to be published (for tests and the outbox-lag metric).
    pub async fn pending_outbox(&self) -> Result<i64, DbError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await?
            .get(0))
    }

    /// Deletes rows published more than an hour ago (JetStream holds the events now).
    pub async fn purge_published(&self) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM outbox WHERE published_at < now() - interval '1 hour'",
                &[],
            )
            .await?)
    }
}
