//! The bounded queue of events on their way to one connection.
//!
//! An idle connection's queue is a hundred bytes: the slots are allocated as events arrive
//! and released when the queue drains, where a channel would allocate a block of slots up
//! front for every connection, most of which never hold more than a few events at a time.
//! One sender (the user's dispatch on the hub) and one receiver (the connection).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

use super::hub::Queued;

/// Slots a drained queue may keep; a burst larger than this gives its memory back.
const KEPT_SLOTS: usize = 8;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug)]
struct State {
    events: VecDeque<Queued>,
    capacity: usize,
    sender: bool,
    receiver: bool,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `capacity` events: the connection reads too slowly.
    Full,
    /// The connection is gone.
    Closed,
}

/// The hub's end.
#[derive(Debug)]
pub struct Sender(Arc<Shared>);

/// The connection's end.
#[derive(Debug)]
pub struct Receiver(Arc<Shared>);

/// A queue with room for `capacity` events (at least one).
#[must_use]
pub fn bounded(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            sender: true,
            receiver: true,
        }),
        ready: Notify::new(),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sender {
    /// Queues `event` without waiting; on success, the events now waiting.
    pub fn try_send(&self, event: Queued) -> Result<usize, Refused> {
        let depth = {
            let mut state = self.0.state();
            if !state.receiver {
                return Err(Refused::Closed);
            }
            if state.events.len() >= state.capacity {
                return Err(Refused::Full);
            }
            state.events.push_back(event);
            state.events.len()
        };
        self.0.ready.notify_one();
        Ok(depth)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.state().sender = false;
        self.0.ready.notify_one();
    }
}

impl Receiver {
    /// The next event, waiting for one; `None` once the sender is gone and the queue is
    /// empty. Cancel-safe: an event is taken only by the call that returns it.
    pub async fn recv(&mut self) -> Option<Queued> {
        loop {
            // A notification sent after this check is kept as a permit by `notify_one`, so the
            // wait below cannot miss it.
            {
                let mut state = self.0.state();
                if let Some(event) = take(&mut state) {
                    return Some(event);
                }
                if !state.sender {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Queued> {
        take(&mut self.0.state())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.receiver = false;
        state.events = VecDeque::new();
    }
}

fn take(state: &mut State) -> Option<Queued> {
    let event = state.events.pop_front()?;
    if state.events.is_empty() && state.events.capacity() > KEPT_SLOTS {
        state.events = VecDeque::new();
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::realtime::hub::LiveEvent;

    fn event(n: u64) -> Queued {
        Queued {
            event: Arc::new(LiveEvent::Message {
                conversation_id: "c".into(),
                seq: n,
                frame: format!("{n}").into(),
            }),
            traceparent: None,
        }
    }

    fn seq(queued: &Queued) -> u64 {
        match &*queued.event {
            LiveEvent::Message { seq, .. } => *seq,
            other => panic!("a message, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = bounded(3);
        assert_eq!(tx.try_send(event(1)), Ok(1));
        assert_eq!(tx.try_send(event(2)), Ok(2));
        assert_eq!(tx.try_send(event(3)), Ok(3));
        assert_eq!(tx.try_send(event(4)), Err(Refused::Full));
        assert_eq!(seq(&rx.recv().await.unwrap()), 1);
        assert_eq!(tx.try_send(event(5)), Ok(3), "room again after a take");
        let rest: Vec<u64> = std::iter::from_fn(|| rx.try_recv())
            .map(|q| seq(&q))
            .collect();
        assert_eq!(rest, [2, 3, 5]);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_event() {
        let (tx, mut rx) = bounded(4);
        let waiting = tokio::spawn(async move { rx.recv().await.map(|q| seq(&q)) });
        tokio::task::yield_now().await;
        tx.try_send(event(7)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (tx, mut rx) = bounded(4);
        // A wait given up (as a `select!` does when another branch wins)...
        let gave_up = tokio::time::timeout(Duration::from_millis(1), rx.recv()).await;
        assert!(gave_up.is_err());
        // ...and an event sent afterwards is still there for the next wait.
        tx.try_send(event(1)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("not lost");
        assert_eq!(got.map(|q| seq(&q)), Some(1));
    }

    #[tokio::test]
    async fn each_end_sees_the_other_go() {
        let (tx, mut rx) = bounded(4);
        tx.try_send(event(1)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.map(|q| seq(&q)), Some(1), "drained first");
        assert!(rx.recv().await.is_none());

        let (tx, rx) = bounded(4);
        drop(rx);
        assert_eq!(tx.try_send(event(1)), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_slots_back() {
        let (tx, mut rx) = bounded(100);
        for n in 0..50 {
            tx.try_send(event(n)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.state().events.capacity(), 0);
    }
}
