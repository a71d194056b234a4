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
        .post_message(who, conversation, key, key)
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

    // svc-chat goes down too (marking what it published), with the events still in its
    // outbox.
    stack.stop_chat().await;
    assert_eq!(stack.chat_store.pending_outbox().await.unwrap(), 2);
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

/// A chat store and its outbox relay over a fresh schema and stream, and a subscription to
/// everything the relay publishes.
struct Relaying {
    database: tertulia_plumbing::config::PostgresConfig,
    nats_config: tertulia_plumbing::config::NatsConfig,
    pool: tertulia_plumbing::postgres::PgPool,
    nats: tertulia_plumbing::nats::Nats,
    published: async_nats::Subscriber,
    handoff: svc_chat::events::Handoff,
    handed: Option<tokio::sync::mpsc::Receiver<svc_chat::events::Committing>>,
    store: svc_chat::store::ChatStore,
    relay: svc_chat::events::OutboxRelay,
}

impl Relaying {
    async fn start() -> Self {
        use svc_chat::events::{OutboxRelay, RelayMetrics, handoff};

        let (database, pool) = chat_database().await;
        let nats_config = tertulia_tests::fresh_nats();
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
        let published = nats.client.subscribe(nats.subject("chat.>")).await.unwrap();
        nats.sync().await.unwrap();
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let (handoff, handed) = handoff(std::sync::Arc::clone(&wake));
        let store = svc_chat::store::ChatStore::new(pool.clone(), pool.clone(), handoff.clone());
        let metrics = RelayMetrics::new(&mut tertulia_plumbing::metrics::Registry::default());
        let relay = OutboxRelay::new(store.clone(), nats.clone(), metrics, wake);
        Self {
            database,
            nats_config,
            pool,
            nats,
            published,
            handoff,
            handed: Some(handed),
            store,
            relay,
        }
    }

    /// Starts `relay` publishing what is handed over, until `shutdown` trips.
    fn publish_handed(
        &mut self,
        relay: svc_chat::events::OutboxRelay,
        shutdown: &tertulia_plumbing::shutdown::Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let handed = self.handed.take().expect("one publisher");
        tokio::spawn(relay.publish_handed(handed, shutdown.clone()))
    }

    /// Commits `rows` to the outbox (as a send's transaction would), in one statement.
    async fn commit(&self, rows: &[svc_chat::store::OutboxRow]) {
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.event_id).collect();
        let subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
        self.pool
            .get()
            .await
            .unwrap()
            .execute(
                "INSERT INTO outbox (event_id, subject, payload)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])",
                &[&ids, &subjects, &payloads],
            )
            .await
            .unwrap();
    }

    /// The id of the next event published.
    async fn next_published(&mut self) -> uuid::Uuid {
        let message = tokio::time::timeout(FRAME_WAIT, self.published.next())
            .await
            .expect("a committed event is published")
            .unwrap();
        let id = message
            .headers
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .to_string();
        id.parse().unwrap()
    }

    /// Events the stream holds.
    async fn stored(&self) -> u64 {
        let mut stream = self
            .nats
            .jetstream
            .get_stream(self.nats.stream_name(tertulia_proto::subjects::CHAT_STREAM))
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    fn drop_state(&self) {
        tertulia_tests::drop_schema(&self.database.schema);
        tertulia_tests::drop_streams(&self.nats_config);
    }
}

#[tokio::test]
async fn handed_over_events_are_published_in_commit_order_and_only_when_committed() {
    // The relay waits a second for the transaction that never ends.
    use tertulia_plumbing::shutdown::Shutdown;

    let mut relaying = Relaying::start().await;
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
    relaying.commit(&[first[0].clone(), last[0].clone()]).await;
    let ids = [first[0].event_id, last[0].event_id];
    let first = relaying.handoff.hand(first);
    let failed = relaying.handoff.hand(failed);
    let stuck = relaying.handoff.hand(stuck);
    let last = relaying.handoff.hand(last);
    let shutdown = Shutdown::new();
    let publishing = relaying.publish_handed(relaying.relay.clone(), &shutdown);
    last.committed();
    drop(failed);
    first.committed();

    let order = [
        relaying.next_published().await,
        relaying.next_published().await,
    ];
    assert_eq!(
        order, ids,
        "in the order the transactions held the lock, past one that never ends"
    );
    drop(stuck);
    // Stopping waits for the last mark.
    shutdown.cancel();
    publishing.await.unwrap();
    assert_eq!(
        relaying.store.pending_outbox().await.unwrap(),
        0,
        "both marked"
    );
    assert_eq!(
        relaying.stored().await,
        2,
        "the transactions that did not commit published nothing"
    );
    relaying.drop_state();
}

#[tokio::test]
async fn a_round_of_more_events_than_acks_can_wait_at_once_is_published_whole() {
    // The JetStream context lends 5,000 acks at once; a round that published that many
    // before awaiting one waited on itself for good (seen at 5,000 msg/s).
    use tertulia_plumbing::shutdown::Shutdown;

    const EVENTS: usize = 6_000;
    let mut relaying = Relaying::start().await;
    let conversation = uuid::Uuid::now_v7();
    let rows: Vec<_> = (0..EVENTS).flat_map(|_| rows(conversation)).collect();
    relaying.commit(&rows).await;
    let shutdown = Shutdown::new();
    let publishing = relaying.publish_handed(relaying.relay.clone(), &shutdown);
    relaying.handoff.hand(rows).committed();
    tokio::time::timeout(std::time::Duration::from_mins(1), async {
        while relaying.stored().await < EVENTS as u64 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every event of the round is published");
    shutdown.cancel();
    publishing.await.unwrap();
    assert_eq!(
        relaying.store.pending_outbox().await.unwrap(),
        0,
        "all marked"
    );
    relaying.drop_state();
}

#[tokio::test]
async fn a_claim_leaves_what_the_handoff_holds_and_takes_what_it_let_go() {
    use futures::FutureExt as _;
    use tertulia_plumbing::shutdown::Shutdown;

    let mut relaying = Relaying::start().await;
    // The handoff's own mark would come only when it stops.
    let relay = relaying
        .relay
        .clone()
        .with_mark_delay(std::time::Duration::from_hours(1));
    let (held, lost) = (rows(uuid::Uuid::now_v7()), rows(uuid::Uuid::now_v7()));
    let (held_id, lost_id) = (held[0].event_id, lost[0].event_id);
    relaying.commit(&[held[0].clone(), lost[0].clone()]).await;
    let shutdown = Shutdown::new();
    let publishing = relaying.publish_handed(relay.clone(), &shutdown);
    relaying.handoff.hand(held).committed();
    // Committed, but the transaction's end was not seen (a connection lost after `COMMIT`
    // went out): the handoff lets the row go.
    drop(relaying.handoff.hand(lost));
    assert_eq!(relaying.next_published().await, held_id);
    tokio::time::timeout(FRAME_WAIT, async {
        while relay.in_hand() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the handoff keeps only the row it published, until its mark");
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 2);
    assert_eq!(relay.backlog().await.unwrap(), 1, "the row let go waits");

    // The claim (as every 250 ms) takes the row let go and leaves the one the handoff holds:
    // no second publish, and no lock for the handoff's mark to wait for.
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(relaying.next_published().await, lost_id);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 1);
    relaying.nats.sync().await.unwrap();
    assert!(
        relaying.published.next().now_or_never().is_none(),
        "each published once"
    );
    shutdown.cancel();
    publishing.await.unwrap();
    assert_eq!(relay.in_hand(), 0, "the handoff's mark came at the stop");
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 0);
    assert_eq!(relaying.stored().await, 2);
    relaying.drop_state();
}

#[tokio::test]
async fn a_claim_leaves_a_send_to_the_relay_it_was_handed_to_until_that_one_is_late() {
    use svc_chat::events::CLAIM_OTHERS_AFTER;

    let relaying = Relaying::start().await;
    // Another instance over the same tables: its sends are handed to its own relay (which
    // never reads here, as if it had stopped).
    let other = chat_store(&relaying.pool);
    let (ana, ben) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let id = other
        .create_group(ana, &[ben], "g")
        .await
        .unwrap()
        .conversation_id;
    stored(&other, ana, id, "m1").await;
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 2);

    // The group's creation was handed to no relay: any claim takes it. The send is left to
    // the relay it was handed to, which publishes it in order.
    assert_eq!(relaying.relay.relay_once().await.unwrap(), 1);
    assert_eq!(relaying.relay.relay_once().await.unwrap(), 0);
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 1);

    // Once it is older than that relay would ever leave it, this claim publishes it.
    let late = CLAIM_OTHERS_AFTER.as_secs_f64() + 1.0;
    relaying
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE outbox SET created_at = created_at - make_interval(secs => $1)",
            &[&late],
        )
        .await
        .unwrap();
    assert_eq!(relaying.relay.relay_once().await.unwrap(), 1);
    assert_eq!(relaying.store.pending_outbox().await.unwrap(), 0);
    relaying.drop_state();
}

/// A chat store (one svc-chat instance's) over `pool`, its handoff queue left unread.
fn chat_store(pool: &tertulia_plumbing::postgres::PgPool) -> svc_chat::store::ChatStore {
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    // Nobody reads the queue: the rows stay in the outbox, which is what this looks at.
    let (handoff, _) = svc_chat::events::handoff(wake);
    svc_chat::store::ChatStore::new(pool.clone(), pool.clone(), handoff)
}

async fn stored(
    store: &svc_chat::store::ChatStore,
    actor: uuid::Uuid,
    conversation: uuid::Uuid,
    key: &str,
) -> svc_chat::domain::Message {
    let content = svc_chat::domain::Content::Text(key.to_owned());
    match store
        .send(actor, conversation, key, &content)
        .await
        .unwrap()
    {
        svc_chat::store::Sent::Created(message) | svc_chat::store::Sent::Existing(message) => {
            message
        }
        svc_chat::store::Sent::NotMember => panic!("{key}: not a member"),
    }
}

/// A fresh schema with svc-chat's tables, and a pool over it.
async fn chat_database() -> (
    tertulia_plumbing::config::PostgresConfig,
    tertulia_plumbing::postgres::PgPool,
) {
    use tertulia_plumbing::postgres;

    let database = tertulia_tests::fresh_database();
    let pool = postgres::connect(&database).await.unwrap();
    postgres::migrate(&pool, svc_chat::store::MIGRATIONS)
        .await
        .unwrap();
    (database, pool)
}

#[tokio::test]
async fn sends_written_from_memory_stay_gap_free_across_instances() {
    let (database, pool) = chat_database().await;
    // Two instances: each remembers the conversations it stored into.
    let (a, b) = (chat_store(&pool), chat_store(&pool));
    let (ana, ben) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let conversation = a.create_group(ana, &[ben], "g").await.unwrap();
    let id = conversation.conversation_id;

    // Read, then written from memory; the other instance's send makes the first one's
    // memory stale, and its next send reads again.
    assert_eq!(stored(&a, ana, id, "m1").await.seq, 1);
    assert_eq!(stored(&a, ana, id, "m2").await.seq, 2);
    assert_eq!(stored(&b, ben, id, "m3").await.seq, 3);
    assert_eq!(stored(&a, ana, id, "m4").await.seq, 4);
    // A repeated client_msg_id finds the first message.
    assert_eq!(stored(&a, ana, id, "m2").await.seq, 2);

    // Both at once: every seq once, none missing.
    let sends = (0..40).map(|i| {
        let (store, who) = if i % 2 == 0 { (&a, ana) } else { (&b, ben) };
        let key = format!("c{i}");
        async move { stored(store, who, id, &key).await.seq }
    });
    let mut seqs = futures::future::join_all(sends).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (5..45).collect::<Vec<i64>>());

    // Batches mixing a remembered conversation and a new one: each keeps its seqs.
    let (known, new) = (
        a.create_group(ana, &[ben], "k")
            .await
            .unwrap()
            .conversation_id,
        a.create_group(ana, &[ben], "n")
            .await
            .unwrap()
            .conversation_id,
    );
    assert_eq!(stored(&a, ana, known, "k0").await.seq, 1);
    let a_ref = &a;
    let sends = (1..=20).map(|i| {
        let conversation = if i % 2 == 0 { known } else { new };
        let key = format!("k{i}");
        async move {
            (
                conversation,
                stored(a_ref, ana, conversation, &key).await.seq,
            )
        }
    });
    let sent = futures::future::join_all(sends).await;
    for (conversation, first) in [(known, 2), (new, 1)] {
        let mut seqs: Vec<i64> = sent
            .iter()
            .filter(|(c, _)| *c == conversation)
            .map(|(_, seq)| *seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (first..first + 10).collect::<Vec<i64>>());
    }
    tertulia_tests::drop_schema(&database.schema);
}

#[tokio::test]
async fn a_member_added_through_another_instance_receives_the_next_send_from_memory() {
    use tertulia_proto::events::v1::MessageCreated;

    let (database, pool) = chat_database().await;
    let (a, b) = (chat_store(&pool), chat_store(&pool));
    let (ana, ben, cid) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // A member added through one instance is a recipient of the other's next send into a
    // conversation it alone wrote to, whose members it had remembered.
    let other = a
        .create_group(ana, &[ben], "h")
        .await
        .unwrap()
        .conversation_id;
    assert_eq!(stored(&a, ana, other, "x1").await.seq, 1);
    assert_eq!(stored(&a, ana, other, "x2").await.seq, 2);
    assert_eq!(
        b.add_member(ben, other, cid).await.unwrap(),
        svc_chat::store::Membership::Changed
    );
    let after = stored(&a, ana, other, "x3").await;
    assert_eq!(after.seq, 3);
    let client = pool.get().await.unwrap();
    let payloads = client
        .query(
            "SELECT payload FROM outbox WHERE subject LIKE '%.message' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    let created: Vec<MessageCreated> = payloads
        .iter()
        .map(|r| prost::Message::decode(r.get::<_, &[u8]>(0)).unwrap())
        .collect();
    assert_eq!(created.len(), 3, "one event per message");
    let event = created
        .iter()
        .find(|e| e.message.as_ref().unwrap().message_id == after.message_id.to_string())
        .expect("the event of the last send");
    assert!(event.recipient_ids.contains(&cid.to_string()));
    // What the event says is what history holds.
    let history = a
        .history(ana, other, Some(2), None, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history[0].sent_at, after.sent_at);
    assert_eq!(
        event.message.as_ref().unwrap().sent_at,
        Some(tertulia_plumbing::wire::timestamp(history[0].sent_at))
    );
    drop(client);
    tertulia_tests::drop_schema(&database.schema);
}
