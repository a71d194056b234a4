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
