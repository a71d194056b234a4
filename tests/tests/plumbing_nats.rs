//! The NATS plumbing against the project's own nats-server with JetStream.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use tertulia_plumbing::{config::NatsConfig, nats};
use tertulia_tests::fresh_nats;

#[tokio::test]
async fn streams_are_namespaced_idempotent_and_deduplicate_by_message_id() {
    let config = fresh_nats();
    let conn = nats::connect(&config, "plumbing-test").await.unwrap();
    let window = Duration::from_mins(2);
    let info = conn
        .ensure_stream("CHAT", &["chat.v1.conv.>"], 1, window)
        .await
        .unwrap();
    assert_eq!(
        info.config.name,
        format!("{}_CHAT", config.namespace.to_ascii_uppercase())
    );
    assert_eq!(
        info.config.subjects,
        [format!("{}.chat.v1.conv.>", config.namespace)]
    );
    // A second instance starting up finds the same stream.
    conn.ensure_stream("CHAT", &["chat.v1.conv.>"], 1, window)
        .await
        .unwrap();

    let subject = conn.subject("chat.v1.conv.c1.message");
    for _ in 0..2 {
        conn.jetstream
            .send_publish(
                subject.clone(),
                PublishMessage::build()
                    .message_id("event-1")
                    .payload("hello".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut stream = conn
        .jetstream
        .get_stream(conn.stream_name("CHAT"))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    conn.jetstream
        .delete_stream(conn.stream_name("CHAT"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let config = NatsConfig {
        url: "nats://127.0.0.1:1".into(),
        namespace: String::new(),
    };
    let err = nats::connect(&config, "plumbing-test").await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

/// With `order_by`, messages of one key are handled one after another in stream order, while
/// other keys go on concurrently.
#[tokio::test]
async fn ordered_consumers_keep_each_keys_order_and_run_keys_concurrently() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use tertulia_plumbing::{
        nats::{DurableConsumer, Handled},
        shutdown::Shutdown,
    };

    let config = fresh_nats();
    let conn = nats::connect(&config, "plumbing-test").await.unwrap();
    conn.ensure_stream("CHAT", &["chat.v1.conv.>"], 1, Duration::from_mins(2))
        .await
        .unwrap();
    let keys = ["a", "b", "c", "d"];
    let per_key = 25;
    for i in 0..per_key {
        for key in keys {
            conn.jetstream
                .publish(
                    conn.subject(&format!("chat.v1.conv.{key}.message")),
                    i.to_string().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let handled: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let shutdown = Shutdown::new();
    let consumer = DurableConsumer {
        stream: "CHAT",
        name: "ordered",
        filter: None,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        concurrency: 8,
        order_by: Some(|subject| subject.rsplit('.').nth(1)),
        max_pending: 1000,
    };
    let work = {
        let (handled, running, most, shutdown) = (
            handled.clone(),
            running.clone(),
            most.clone(),
            shutdown.clone(),
        );
        let conn = conn.clone();
        async move {
            conn.consume(&consumer, &shutdown.clone(), |message| {
                let (handled, running, most, shutdown) = (
                    handled.clone(),
                    running.clone(),
                    most.clone(),
                    shutdown.clone(),
                );
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let n: u32 = std::str::from_utf8(&message.payload)
                        .unwrap()
                        .parse()
                        .unwrap();
                    // Uneven work, so a later message of a key could overtake an earlier one
                    // (it does without `order_by`).
                    tokio::time::sleep(Duration::from_millis(u64::from((n * 7) % 5))).await;
                    let key = message.subject.rsplit('.').nth(1).unwrap().to_owned();
                    let mut all = handled.lock().unwrap();
                    all.push((key, n));
                    if all.len() == 4 * 25 {
                        shutdown.cancel();
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    Handled::Done
                }
            })
            .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("every message is handled");
    let all = handled.lock().unwrap().clone();
    for key in keys {
        let order: Vec<u32> = all
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, (0..per_key).collect::<Vec<_>>(), "key {key}");
    }
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "different keys were handled at once"
    );
    conn.jetstream
        .delete_stream(conn.stream_name("CHAT"))
        .await
        .unwrap();
}
