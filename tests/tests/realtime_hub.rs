//! The gateway's hub against a real nats-server, with the user's groups read through a
//! stand-in for svc-chat's `ListGroups`: a user's connections wait for the same
//! subscriptions, and a failed registration leaves nothing behind that refuses the next.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use svc_bff::realtime::{
    Api, RealtimeConfig,
    hub::{DeliveryHub, GroupsOf, RealtimeMetrics},
};
use tertulia_plumbing::metrics::Registry;
use tertulia_tests::fresh_nats;
use tokio::{sync::Semaphore, time::timeout};

/// Long enough for any registration here; a second read of the groups would wait forever.
const IN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A hub whose `ListGroups` answers `["g1", "g2"]` once `gate` gives a permit, or fails
/// while `failing` is set.
async fn hub(gate: Arc<Semaphore>, failing: Arc<AtomicBool>) -> Arc<DeliveryHub> {
    let config = fresh_nats();
    let nats = tertulia_plumbing::nats::connect(&config, "hub-test")
        .await
        .unwrap();
    let groups_of: GroupsOf = Box::new(move |_user| {
        let (gate, failing) = (Arc::clone(&gate), Arc::clone(&failing));
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            if failing.load(Ordering::SeqCst) {
                Err("cannot read the user's groups: unavailable".to_owned())
            } else {
                Ok(vec!["g1".to_owned(), "g2".to_owned()])
            }
        })
    });
    DeliveryHub::connect(
        nats,
        &config,
        &RealtimeConfig::standard(),
        RealtimeMetrics::new(&mut Registry::default()),
        groups_of,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_users_second_connection_waits_for_the_groups_the_first_subscribes() {
    let gate = Arc::new(Semaphore::new(0));
    let hub = hub(Arc::clone(&gate), Arc::default()).await;
    let first = tokio::spawn({
        let hub = Arc::clone(&hub);
        async move { hub.register("ann", Api::V2, "ws").await }
    });
    let second = tokio::spawn({
        let hub = Arc::clone(&hub);
        async move { hub.register("ann", Api::V2, "ws").await }
    });
    // Both are in, neither is done: the groups have not been read.
    while hub.connected_users().await == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!first.is_finished() && !second.is_finished());
    // One read of the groups serves both connections.
    gate.add_permits(1);
    let both = timeout(IN_TIME, async {
        (first.await.unwrap(), second.await.unwrap())
    });
    let (first, second) = both.await.expect("one read of the groups for both");
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    assert_eq!(gate.available_permits(), 0);
    assert_eq!(hub.connected_users().await, 1);
    // A third connection has nothing left to wait for.
    let third = timeout(IN_TIME, hub.register("ann", Api::V1, "sse")).await;
    assert!(third.expect("no second read").is_ok());
    assert_eq!(gate.available_permits(), 0);
}

#[tokio::test]
async fn a_failed_read_of_the_groups_fails_every_waiting_connection_and_not_the_next() {
    let gate = Arc::new(Semaphore::new(0));
    let failing = Arc::new(AtomicBool::new(true));
    let hub = hub(Arc::clone(&gate), Arc::clone(&failing)).await;
    gate.add_permits(1);
    let both = async {
        tokio::join!(
            hub.register("bob", Api::V2, "ws"),
            hub.register("bob", Api::V2, "ws")
        )
    };
    let (first, second) = timeout(IN_TIME, both).await.expect("one read for both");
    assert!(first.is_err() && second.is_err(), "{first:?} {second:?}");
    assert_eq!(hub.connected_users().await, 0);
    // svc-chat answers again: the client's retry gets in.
    failing.store(false, Ordering::SeqCst);
    gate.add_permits(1);
    let third = timeout(IN_TIME, hub.register("bob", Api::V2, "ws")).await;
    assert!(matches!(third, Ok(Ok(_))), "{third:?}");
    assert_eq!(hub.connected_users().await, 1);
}
