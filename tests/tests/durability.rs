//! Nothing acknowledged is lost when the broker or svc-chat goes down: sends keep being
//! acknowledged (the outbox holds their events), and once things are back every message
//! reaches its recipients, live and through resume.

use futures::StreamExt as _;
use prost::Message as _;
use serde_json::json;
use tertulia_proto::events::v1::{Delivery, delivery::Event};
use tertulia_tests::{FRAME_WAIT, Session, Stack, TestNats, TestPostgres};

async fn send(stack: &Stack, who: &Session, conversation: &str, key: &str) -> u16 {
    stack
        .post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &json!({"client_msg_id": key, "text": key}),
            Some(&who.access_token),
        )
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn messages_acked_while_the_broker_and_chat_were_down_are_delivered_after() {
    let mut broker = TestNats::start().await;
    let mut stack = Stack::start_on_nats(&broker.url).await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ben_ws = stack.ws(&ben, &json!({})).await;
    assert_eq!(send(&stack, &ana, &conversation, "m1").await, 201);
    assert_eq!(ben_ws.frame_of("message").await["message"]["seq"], 1);

    // The broker dies: sends are still acknowledged, because they only need PostgreSQL.
    broker.kill().await;
    assert_eq!(send(&stack, &ana, &conversation, "m2").await, 201);
    assert_eq!(send(&stack, &ana, &conversation, "m3").await, 201);
    assert_eq!(stack.chat_store.pending_outbox().await.unwrap(), 2);

    // svc-chat goes down too, with the events still in its outbox.
    stack.stop_chat().await;
    broker.restart().await;
    let watcher = tertulia_plumbing::nats::connect(&stack.nats, "watcher")
        .await
        .unwrap();
    let subject = watcher.subject(&tertulia_proto::subjects::deliver(&ben.user_id));
    let mut inbox = watcher.client.subscribe(subject).await.unwrap();
    watcher.sync().await.unwrap();

    // A new svc-chat instance relays the old rows; the fan-out delivers them.
    stack.start_chat_again().await;
    // At least once: a killed broker may redeliver what it had not persisted as acked.
    let mut seqs = std::collections::BTreeSet::new();
    while !(seqs.contains(&2) && seqs.contains(&3)) {
        let raw = tokio::time::timeout(FRAME_WAIT, inbox.next())
            .await
            .expect("the held events are delivered")
            .unwrap();
        if let Some(Event::MessageCreated(m)) = Delivery::decode(raw.payload).unwrap().event {
            seqs.insert(m.message.unwrap().seq);
        }
    }

    // Ben, resuming from what he saw, gets exactly the rest.
    drop(ben_ws);
    let mut ben_ws = stack.ws(&ben, &json!({ conversation.clone(): 1 })).await;
    let mut resumed = Vec::new();
    while resumed.len() < 2 {
        let frame = ben_ws.frame_of("message").await;
        resumed.push(frame["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(resumed, [2, 3]);
    assert_eq!(send(&stack, &ana, &conversation, "m4").await, 201);
    assert_eq!(ben_ws.frame_of("message").await["message"]["seq"], 4);
}

#[tokio::test]
async fn two_chat_instances_relay_one_outbox_without_duplicates() {
    let stack = Stack::start().await;
    stack.another_chat().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ben_ws = stack.ws(&ben, &json!({})).await;
    for n in 0..30 {
        let answer = stack
            .post(
                &format!("/api/v1/conversations/{conversation}/messages"),
                &json!({"client_msg_id": format!("k{n}"), "text": "x"}),
                Some(&ana.access_token),
            )
            .await;
        assert_eq!(answer.status(), 201);
    }
    let mut seqs = Vec::new();
    while seqs.len() < 30 {
        let frame = ben_ws.frame_of("message").await;
        seqs.push(frame["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    ben_ws.send(&json!({"type": "ping"})).await;
    assert_eq!(
        ben_ws.frame().await["type"],
        "pong",
        "no duplicate came before the pong"
    );
}

#[tokio::test]
async fn acknowledged_messages_survive_a_database_crash_and_unacknowledged_ones_can_be_retried() {
    let database = TestPostgres::start().await;
    let stack = Stack::start_with_chat_database(&database.url).await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    assert_eq!(send(&stack, &ana, &conversation, "m1").await, 201);
    assert_eq!(send(&stack, &ana, &conversation, "m2").await, 201);

    // The database crashes: a send cannot be stored, so it is refused, not acknowledged.
    database.crash().await;
    let refused = send(&stack, &ana, &conversation, "m3").await;
    assert_eq!(refused, 503);

    database.restart().await;
    // The client retries with the same client_msg_id: stored once.
    assert_eq!(send(&stack, &ana, &conversation, "m3").await, 201);
    assert_eq!(send(&stack, &ana, &conversation, "m3").await, 200);

    let mut ben_ws = stack.ws(&ben, &json!({ conversation.clone(): 0 })).await;
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let frame = ben_ws.frame_of("message").await;
        seqs.push(frame["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
}

/// Outbox rows of a transaction (a read receipt each: any event will do).
fn rows(conversation: uuid::Uuid) -> Vec<svc_chat::store::OutboxRow> {
    let event = svc_chat::events::receipt(conversation, uuid::Uuid::now_v7(), 1);
    vec![svc_chat::store::OutboxRow::new(event, None)]
}

#[tokio::test]
async fn handed_over_events_are_published_in_commit_order_and_only_when_committed() {
    // The relay waits a second for the transaction that never ends.
    use svc_chat::events::{OutboxRelay, RelayMetrics, handoff};
    use tertulia_plumbing::{postgres, shutdown::Shutdown};

    let database = tertulia_tests::fresh_database();
    let nats_config = tertulia_tests::fresh_nats();
    let pool = postgres::connect(&database).await.unwrap();
    postgres::migrate(&pool, svc_chat::store::MIGRATIONS)
        .await
        .unwrap();
    let nats = tertulia_plumbing::nats::connect(&nats_config, "test")
        .await
        .unwrap();
    nats.ensure_event_stream(
        tertulia_proto::subjects::CHAT_STREAM,
        tertulia_proto::subjects::CHAT_STREAM_SUBJECTS,
        1,
    )
    .await
    .unwrap();
    let mut published = nats.client.subscribe(nats.subject("chat.>")).await.unwrap();
    nats.sync().await.unwrap();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let (handoff, handed) = handoff(std::sync::Arc::clone(&wake));
    let store = svc_chat::store::ChatStore::new(pool.clone(), pool.clone(), handoff.clone());
    let metrics = RelayMetrics::new(&mut tertulia_plumbing::metrics::Registry::default());
    let relay = OutboxRelay::new(store.clone(), nats.clone(), metrics, wake);

    // Four transactions hand their rows over in lock order; the first and the last commit
    // (the last one first), the second fails and the third never ends. Only committed rows
    // are in the outbox.
    let conversation = uuid::Uuid::now_v7();
    let (first, failed, stuck, last) = (
        rows(conversation),
        rows(uuid::Uuid::now_v7()),
        rows(uuid::Uuid::now_v7()),
        rows(conversation),
    );
    let client = pool.get().await.unwrap();
    for row in first.iter().chain(&last) {
        client
            .execute(
                "INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3)",
                &[&row.event_id, &row.subject, &row.payload],
            )
            .await
            .unwrap();
    }
    let ids = [first[0].event_id, last[0].event_id];
    let first = handoff.hand(first);
    let failed = handoff.hand(failed);
    let stuck = handoff.hand(stuck);
    let last = handoff.hand(last);
    let shutdown = Shutdown::new();
    let publishing = tokio::spawn(relay.publish_handed(handed, shutdown.clone()));
    last.committed();
    drop(failed);
    first.committed();

    let mut order = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(FRAME_WAIT, published.next())
            .await
            .expect("a committed event is published")
            .unwrap();
        let id = message
            .headers
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .to_string();
        order.push(id.parse::<uuid::Uuid>().unwrap());
    }
    assert_eq!(
        order, ids,
        "in the order the transactions held the lock, past one that never ends"
    );
    drop(stuck);
    // Stopping waits for the last mark.
    shutdown.cancel();
    publishing.await.unwrap();
    assert_eq!(store.pending_outbox().await.unwrap(), 0, "both marked");
    let mut stream = nats
        .jetstream
        .get_stream(nats.stream_name(tertulia_proto::subjects::CHAT_STREAM))
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2,
        "the transactions that did not commit published nothing"
    );
    drop(client);
    tertulia_tests::drop_schema(&database.schema);
    tertulia_tests::drop_streams(&nats_config);
}
