//! The deployment's NATS topology as local processes: three clustered nodes, every stream
//! replicated on all of them. Killing the node that leads the `CHAT` stream loses nothing:
//! sends go on, and a member's socket receives every message in order.

use std::time::Duration;

use serde_json::{Value, json};
use tertulia_tests::{Session, Stack, TestNatsCluster, WsClient};

async fn send(stack: &Stack, alice: &Session, conversation: &str, n: u32) {
    let answer = stack
        .post(
            &format!("/api/v2/conversations/{conversation}/messages"),
            &json!({"client_msg_id": format!("m{n}"), "content": {"type": "text", "text": format!("message {n}")}}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(answer.status(), 201, "send {n}");
}

/// The next `message` frame within `wait` (leader elections take a few seconds).
async fn next_message(socket: &mut WsClient, wait: Duration) -> Value {
    loop {
        let frame = socket
            .next_text_within(wait)
            .await
            .expect("the socket stays open");
        if frame["type"] == "message" {
            return frame;
        }
    }
}

/// The node leading stream `CHAT` of `stack`, and its replica count.
async fn chat_stream(stack: &Stack) -> (String, usize) {
    let nats = tertulia_plumbing::nats::connect(&stack.nats, "cluster-test")
        .await
        .unwrap();
    let mut stream = nats
        .jetstream
        .get_stream(nats.stream_name("CHAT"))
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
    (leader.expect("a leader"), info.config.num_replicas)
}

#[tokio::test]
async fn messages_flow_on_when_the_chat_stream_leader_dies() {
    let mut cluster = TestNatsCluster::start(3).await;
    let stack = Stack::start_on_cluster(&cluster.urls(), 3).await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let mut bobs = WsClient::ready_version(stack.bff, "v2", &bob.access_token, &json!({})).await;

    for n in 1..=3 {
        send(&stack, &alice, &conversation, n).await;
    }
    for n in 1..=3 {
        let frame = next_message(&mut bobs, Duration::from_secs(10)).await;
        assert_eq!(frame["message"]["seq"], n);
    }

    let (leader, replicas) = chat_stream(&stack).await;
    assert_eq!(replicas, 3, "CHAT is replicated on every node");
    cluster.kill(&leader).await;

    // Sends are acknowledged by PostgreSQL; the relay, the fan-out and the gateway's
    // subscription move to the surviving nodes.
    for n in 4..=6 {
        send(&stack, &alice, &conversation, n).await;
    }
    for n in 4..=6 {
        let frame = next_message(&mut bobs, Duration::from_secs(30)).await;
        assert_eq!(frame["message"]["seq"], n, "in order, nothing missing");
        assert_eq!(frame["message"]["content"]["text"], format!("message {n}"));
    }
    let (new_leader, _) = chat_stream(&stack).await;
    assert_ne!(new_leader, leader, "a surviving node leads CHAT now");
}
