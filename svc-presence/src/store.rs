//! Presence state in NATS KV.
//!
//! - Bucket `PRESENCE`: one key per online user, holding their live sessions and when each
//!   expires. Writes are compare-and-set on the key's revision, so gateways racing on one user
//!   never lose a session. The bucket's `max_age` (twice the session TTL) drops the key of a
//!   user whose every gateway died, so state cleans itself up even with no sweeper running.
//! - Bucket `LAST_SEEN`: one key per user, the last time any of their sessions was seen.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::jetstream::kv::{self, Operation, Store};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tertulia_plumbing::nats::Nats;
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// The live sessions of one user.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Session id → (gateway, expiry in Unix milliseconds).
    pub sessions: BTreeMap<String, SessionEntry>,
}

/// One session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The gateway holding it.
    pub gateway: String,
    /// When it expires without another heartbeat, Unix milliseconds.
    pub expires_ms: i64,
}

impl Record {
    fn live(&self, now_ms: i64) -> usize {
        self.sessions
            .values()
            .filter(|s| s.expires_ms > now_ms)
            .count()
    }
}

/// A change to one user's record, and how many live sessions there were before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Sessions in the record before, expired or not.
    pub recorded_before: usize,
    /// Live sessions before.
    pub live_before: usize,
    /// Live sessions after.
    pub live_after: usize,
}

/// KV failures.
#[derive(Debug, Clone, thiserror::Error)]
#[error("presence store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Attempts at a compare-and-set write before giving up.
const CAS_ATTEMPTS: usize = 16;

/// Unix milliseconds now.
#[must_use]
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The two buckets.
#[derive(Debug, Clone)]
pub struct PresenceStore {
    sessions: Store,
    last_seen: Store,
    /// Changes waiting for their user's next write ([`PresenceStore::modify`]).
    waiting: Arc<Mutex<HashMap<String, Vec<Waiting>>>>,
}

/// A change to a user's record.
pub type Change = Box<dyn Fn(&mut Record) + Send + Sync>;

/// A change waiting for its user's next write, and where its answer goes.
struct Waiting {
    change: Change,
    answer: oneshot::Sender<Result<Transition, StoreError>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

/// The writer of one user's queue. Should it end before the queue is empty (a change that
/// panics, a runtime shutting down), dropping it forgets the queue: its callers are told the
/// write was abandoned, and the user's next change starts a writer of its own instead of
/// queueing behind one that is gone.
struct Writer<'a> {
    store: &'a PresenceStore,
    user: &'a str,
    /// The queue was found empty and removed.
    done: bool,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.lock_waiting().remove(self.user);
        }
    }
}

impl PresenceStore {
    /// Creates or opens the buckets.
    pub async fn open(nats: &Nats, ttl: Duration, replicas: usize) -> Result<Self, StoreError> {
        let sessions = nats
            .jetstream
            .create_or_update_key_value(kv::Config {
                bucket: nats.stream_name("PRESENCE"),
                description: "live sessions per user".into(),
                history: 1,
                max_age: ttl * 2,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let last_seen = nats
            .jetstream
            .create_or_update_key_value(kv::Config {
                bucket: nats.stream_name("LAST_SEEN"),
                description: "last time each user was seen".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        Ok(Self {
            sessions,
            last_seen,
            waiting: Arc::default(),
        })
    }

    /// Reads, changes and writes back `user`'s record with compare-and-set; expired sessions
    /// are dropped on the way. An empty record deletes the key.
    ///
    /// Changes to one user that arrive while a write of theirs is under way are written
    /// together, as if one after the other, in the next write: ten devices of one user
    /// reconnecting at once cost two writes, not ten writers racing on one revision (where
    /// each lost race costs a read and a write more, about 45 extra for ten). The writes
    /// run on a task of their own, so a caller that goes away strands no one behind it.
    pub async fn modify(&self, user: &str, change: Change) -> Result<Transition, StoreError> {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut waiting = self.lock_waiting();
            let first = !waiting.contains_key(user);
            waiting
                .entry(user.to_owned())
                .or_default()
                .push(Waiting { change, answer });
            first
        };
        if first {
            let store = self.clone();
            let user = user.to_owned();
            tokio::spawn(async move { store.write_waiting(&user).await });
        }
        answered
            .await
            .map_err(|_| err("the presence write was abandoned"))?
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `user`'s waiting changes, a batch at a time, until none are left (the entry
    /// stays in the map while a write is under way, so later changes queue behind it).
    async fn write_waiting(&self, user: &str) {
        let mut queue = Writer {
            store: self,
            user,
            done: false,
        };
        loop {
            let batch = {
                let mut waiting = self.lock_waiting();
                match waiting.get_mut(user) {
                    Some(queued) if !queued.is_empty() => std::mem::take(queued),
                    _ => {
                        waiting.remove(user);
                        queue.done = true;
                        return;
                    }
                }
            };
            let changes: Vec<&Change> = batch.iter().map(|w| &w.change).collect();
            match self.write(user, &changes).await {
                Ok(transitions) => {
                    for (waiting, transition) in batch.into_iter().zip(transitions) {
                        waiting.answer.send(Ok(transition)).ok();
                    }
                }
                Err(error) => {
                    for waiting in batch {
                        waiting.answer.send(Err(error.clone())).ok();
                    }
                }
            }
        }
    }

    /// Applies `changes` in order and writes the record once (compare-and-set, tried again
    /// from a fresh read when another writer got there first); each change's transition.
    async fn write(&self, user: &str, changes: &[&Change]) -> Result<Vec<Transition>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.sessions.entry(user).await.map_err(err)?;
            let (mut record, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice::<Record>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (Record::default(), Some(e.revision)),
                None => (Record::default(), None),
            };
            let now = now_ms();
            let transitions: Vec<Transition> = changes
                .iter()
                .map(|change| {
                    let recorded_before = record.sessions.len();
                    let live_before = record.live(now);
                    change(&mut record);
                    record.sessions.retain(|_, s| s.expires_ms > now);
                    Transition {
                        recorded_before,
                        live_before,
                        live_after: record.sessions.len(),
                    }
                })
                .collect();
            let written = if record.sessions.is_empty() {
                match (&entry, revision) {
                    (Some(e), Some(rev)) if e.operation == Operation::Put => self
                        .sessions
                        .delete_expect_revision(user, Some(rev))
                        .await
                        .is_ok(),
                    _ => true,
                }
            } else {
                let bytes = serde_json::to_vec(&record).map_err(err)?.into();
                match revision {
                    Some(rev) => self.sessions.update(user, bytes, rev).await.is_ok(),
                    None => self.sessions.create(user, bytes).await.is_ok(),
                }
            };
            if written {
                return Ok(transitions);
            }
        }
        Err(StoreError(format!("too much contention on {user}")))
    }

    /// Whether `user` has a live session.
    pub async fn online(&self, user: &str) -> Result<bool, StoreError> {
        let Some(value) = self.sessions.get(user).await.map_err(err)? else {
            return Ok(false);
        };
        let record: Record = serde_json::from_slice(&value).unwrap_or_default();
        Ok(record.live(now_ms()) > 0)
    }

    /// When `user` was last seen, Unix milliseconds.
    pub async fn last_seen(&self, user: &str) -> Result<Option<i64>, StoreError> {
        let value = self.last_seen.get(user).await.map_err(err)?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Records that `user` was seen now.
    pub async fn seen(&self, user: &str) -> Result<(), StoreError> {
        self.last_seen
            .put(user, now_ms().to_string().into())
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Users with a record (online, or with sessions that expired unnoticed).
    pub async fn recorded_users(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = self.sessions.keys().await.map_err(err)?;
        let mut users = Vec::new();
        while let Some(key) = keys.next().await {
            users.push(key.map_err(err)?);
        }
        Ok(users)
    }
}
