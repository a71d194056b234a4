//! The WebSocket protocol of CONTRACT.md ("Real-time") with real clients against the real
//! services: handshake, delivery, ordering, resume, gap filling, limits and slow readers.

use futures::SinkExt as _;
use serde_json::{Value, json};
use tertulia_tests::{Stack, WsClient, broker::Broker};
use tokio_tungstenite::tungstenite::Message;

/// Reads `message` frames of `conversation` until `count` arrived; returns their seqs.
async fn message_seqs(client: &mut WsClient, conversation: &str, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let frame = client.frame().await;
        if frame["type"] == "message" && frame["conversation_id"] == conversation {
            assert_eq!(frame["message"]["conversation_id"], conversation);
            seqs.push(frame["message"]["seq"].as_u64().unwrap());
        }
    }
    seqs
}

#[tokio::test]
async fn hello_ready_and_the_handshake_errors() {
    let stack = Stack::start_tuned(|_| {}, |bff| bff.realtime.hello_timeout_s = 1).await;
    let ana = stack.signed_up("ana").await;
    let client = stack.ws(&ana, &json!({})).await;
    assert_eq!(client.ready["user_id"], ana.user_id.as_str());
    assert!(client.ready["session_id"].is_string());

    let mut bad = WsClient::open(stack.bff).await;
    bad.send(Message::text(
        json!({"type": "hello", "token": "forged"}).to_string(),
    ))
    .await
    .unwrap();
    let mut bad = WsClient {
        socket: bad,
        ready: Value::Null,
    };
    assert_eq!(bad.frame().await["code"], "unauthenticated");
    assert_eq!(bad.closed().await, Some(4401));

    let silent = WsClient::open(stack.bff).await;
    let mut silent = WsClient {
        socket: silent,
        ready: Value::Null,
    };
    assert_eq!(silent.frame().await["code"], "hello_timeout");
    assert_eq!(silent.closed().await, Some(4408));
}

#[tokio::test]
async fn sends_are_acked_and_reach_every_device_of_every_member() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ana_phone = stack.ws(&ana, &json!({})).await;
    let mut ben_phone = stack.ws(&ben, &json!({})).await;
    let mut ben_laptop = stack.ws(&ben, &json!({})).await;

    ana_phone
        .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": "k1", "text": "hola"}))
        .await;
    let ack = ana_phone.frame_of("ack").await;
    assert_eq!(ack["client_msg_id"], "k1");
    assert_eq!(ack["message"]["seq"], 1);
    assert_eq!(ack["message"]["text"], "hola");
    for device in [&mut ben_phone, &mut ben_laptop, &mut ana_phone] {
        let frame = device.frame_of("message").await;
        assert_eq!(frame["conversation_id"], conversation.as_str());
        assert_eq!(frame["message"]["id"], ack["message"]["id"]);
    }

    // A retried send is acked with the first message, and nothing new is delivered.
    ana_phone
        .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": "k1", "text": "hola?"}))
        .await;
    let again = ana_phone.frame_of("ack").await;
    assert_eq!(again["message"]["seq"], 1);

    // Errors name the client_msg_id; the connection stays open.
    ana_phone
        .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": "k2", "text": ""}))
        .await;
    let error = ana_phone.frame_of("error").await;
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["client_msg_id"], "k2");
    ana_phone
        .send(&json!({"type": "send", "conversation_id": uuid::Uuid::now_v7().to_string(), "client_msg_id": "k3", "text": "x"}))
        .await;
    assert_eq!(ana_phone.frame_of("error").await["code"], "not_found");
    ana_phone.send(&json!({"type": "ping"})).await;
    ana_phone.frame_of("pong").await;
}

#[tokio::test]
async fn concurrent_senders_are_seen_in_seq_order_without_gaps() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let cat = stack.signed_up("cat").await;
    let conversation = stack.group(&ana, &[&ben, &cat]).await;
    let mut watcher = stack.ws(&cat, &json!({})).await;
    let mut a = stack.ws(&ana, &json!({})).await;
    let mut b = stack.ws(&ben, &json!({})).await;
    for n in 0..20 {
        for (client, who) in [(&mut a, "a"), (&mut b, "b")] {
            client
                .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": format!("{who}{n}"), "text": "x"}))
                .await;
        }
    }
    let seqs = message_seqs(&mut watcher, &conversation, 40).await;
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
}

#[tokio::test]
async fn resume_delivers_what_was_missed_once_then_live_traffic() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ben_ws = stack.ws(&ben, &json!({})).await;
    for n in 1..=2 {
        stack
            .send(&ana, &conversation, &format!("m{n}"), "before")
            .await;
    }
    assert_eq!(message_seqs(&mut ben_ws, &conversation, 2).await, [1, 2]);
    drop(ben_ws);

    for n in 3..=7 {
        stack
            .send(&ana, &conversation, &format!("m{n}"), "while away")
            .await;
    }
    let mut ben_ws = stack.ws(&ben, &json!({ conversation.clone(): 2 })).await;
    stack.send(&ana, &conversation, "m8", "live").await;
    assert_eq!(
        message_seqs(&mut ben_ws, &conversation, 6).await,
        [3, 4, 5, 6, 7, 8]
    );
    // Nothing more: a ping is answered before any duplicate could show up.
    ben_ws.send(&json!({"type": "ping"})).await;
    assert_eq!(ben_ws.frame().await["type"], "pong");

    // Resuming a conversation the user cannot see is an error frame, not a disconnect.
    let stranger = stack.signed_up("eve").await;
    let mut eve_ws = stack
        .ws(&stranger, &json!({ conversation.clone(): 0 }))
        .await;
    assert_eq!(eve_ws.frame().await["code"], "not_found");
}

#[tokio::test]
async fn a_gap_in_live_delivery_is_filled_from_history() {
    let broker = Broker::start(Stack::start().await).await;
    let mut ben_ws = broker.stack.ws(&broker.ben, &json!({})).await;
    // The broker delivers seq 1 and, skipping seq 2, seq 3; seq 2 never comes, so once the
    // reorder wait is over the gateway reads it from history.
    broker.deliver(1, "x").await;
    broker.deliver(3, "x").await;
    assert_eq!(
        message_seqs(&mut ben_ws, &broker.conversation, 3).await,
        [1, 2, 3]
    );
}

#[tokio::test]
async fn messages_delivered_out_of_order_reach_the_client_in_order_without_a_read() {
    // A reorder wait far longer than the test: a gap filled from history would show.
    let stack = Stack::start_tuned(|_| {}, |bff| bff.realtime.reorder_wait_ms = 600_000).await;
    let broker = Broker::start(stack).await;
    let mut ben_ws = broker.stack.ws(&broker.ben, &json!({})).await;
    // Two fan-out instances can hand one conversation's messages over out of order. The
    // live copies say "live"; history says "x".
    for seq in [1, 3, 2] {
        broker.deliver(seq, "live").await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let frame = ben_ws.frame().await;
        if frame["type"] == "message" {
            seen.push((
                frame["message"]["seq"].as_u64().unwrap(),
                frame["message"]["text"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let live = |seq| (seq, "live".to_owned());
    assert_eq!(seen, [live(1), live(2), live(3)]);
    let metrics = broker
        .stack
        .get("/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tertulia_realtime_gaps_total{outcome="held"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tertulia_realtime_gaps_total{outcome="filled"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_frames_get_errors_and_oversized_frames_close_1009() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let mut client = stack.ws(&ana, &json!({})).await;
    for bad in ["{", r#"{"type":"shout"}"#, r#"{"type":"send"}"#, "[]"] {
        client.socket.send(Message::text(bad)).await.unwrap();
        let frame = client.frame().await;
        assert_eq!(frame["type"], "error", "{bad}");
        assert_eq!(frame["code"], "invalid_argument", "{bad}");
    }
    client
        .socket
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(client.frame().await["code"], "invalid_argument");
    client.send(&json!({"type": "ping"})).await;
    assert_eq!(client.frame().await["type"], "pong", "still open");

    let huge = json!({"type": "send", "conversation_id": "c", "client_msg_id": "k", "text": "x".repeat(70 * 1024)});
    client.send(&huge).await;
    assert_eq!(client.closed().await, Some(1009));
}

#[tokio::test]
async fn flooding_gets_rate_limited_then_closed_1008() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let mut client = stack.ws(&ana, &json!({})).await;
    for _ in 0..200 {
        if client
            .socket
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match client.next_text().await {
            Ok(frame) if frame["code"] == "rate_limited" => limited += 1,
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert!(limited > 0, "rate_limited errors come first");
    assert_eq!(code, Some(1008));
}

#[tokio::test]
async fn receipts_typing_and_membership_changes_are_pushed() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let cat = stack.signed_up("cat").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    let mut ben_ws = stack.ws(&ben, &json!({})).await;
    let mut cat_ws = stack.ws(&cat, &json!({})).await;
    stack.send(&ana, &conversation, "r1", "read me").await;
    ben_ws.frame_of("message").await;

    ben_ws
        .send(&json!({"type": "read", "conversation_id": conversation, "seq": 1}))
        .await;
    let receipt = ana_ws.frame_of("receipt").await;
    assert_eq!(receipt["user_id"], ben.user_id.as_str());
    assert_eq!(receipt["seq"], 1);

    ben_ws
        .send(&json!({"type": "typing", "conversation_id": conversation}))
        .await;
    let typing = ana_ws.frame_of("typing").await;
    assert_eq!(typing["user_id"], ben.user_id.as_str());
    assert_eq!(typing["conversation_id"], conversation.as_str());

    let added = stack
        .post(
            &format!("/api/v1/conversations/{conversation}/members"),
            &json!({"user_id": cat.user_id}),
            Some(&ana.access_token),
        )
        .await;
    assert_eq!(added.status(), 204);
    let joined = cat_ws.frame_of("conversation").await;
    assert_eq!(joined["conversation"]["id"], conversation.as_str());
    assert_eq!(
        joined["conversation"]["member_ids"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    cat_ws
        .send(&json!({"type": "typing", "conversation_id": uuid::Uuid::now_v7().to_string()}))
        .await;
    assert_eq!(cat_ws.frame_of("error").await["code"], "not_found");
}

#[tokio::test]
async fn users_on_different_gateways_talk_as_one_system() {
    let stack = Stack::start().await;
    let second = stack.another_bff().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    let mut ben_ws = WsClient::ready(second, &ben.access_token, &json!({})).await;
    ana_ws
        .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": "x", "text": "across"}))
        .await;
    let frame = ben_ws.frame_of("message").await;
    assert_eq!(frame["message"]["text"], "across");
    ben_ws
        .send(&json!({"type": "send", "conversation_id": conversation, "client_msg_id": "y", "text": "back"}))
        .await;
    let back = loop {
        let frame = ana_ws.frame_of("message").await;
        if frame["message"]["seq"] == 2 {
            break frame;
        }
    };
    assert_eq!(back["message"]["text"], "back");
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_loses_nothing_after_resume() {
    let stack = Stack::start_tuned(
        |_| {},
        |bff| {
            bff.realtime.outbound_queue = 8;
            bff.realtime.send_timeout_ms = 300;
        },
    )
    .await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    let mut slow = stack.ws(&ben, &json!({})).await;
    // Large messages fill the socket buffers fast; Ben does not read meanwhile.
    let text = "\u{20ac}".repeat(4000);
    let total: u64 = 600;
    for n in 1..=total {
        stack
            .send(&ana, &conversation, &format!("s{n}"), &text)
            .await;
    }
    let mut seen = Vec::new();
    let ending = loop {
        match slow.next_text().await {
            Ok(frame) if frame["type"] == "message" => {
                seen.push(frame["message"]["seq"].as_u64().unwrap());
            }
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert!(matches!(ending, Some(1013) | None), "{ending:?}");
    assert!((seen.len() as u64) < total, "the slow reader was cut off");
    let last = seen.iter().copied().max().unwrap_or(0);
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<u64>>(),
        "no gap before the cut"
    );

    let mut again = stack.ws(&ben, &json!({ conversation.clone(): last })).await;
    let missing = usize::try_from(total - last).unwrap();
    let rest = message_seqs(&mut again, &conversation, missing).await;
    assert_eq!(rest, (last + 1..=total).collect::<Vec<u64>>());
}

#[tokio::test]
async fn the_frame_budget_is_shared_by_all_of_a_users_connections() {
    let stack = Stack::start_tuned(
        |_| {},
        |bff| {
            bff.realtime.frames_per_second = 1;
            bff.realtime.frame_burst = 5;
        },
    )
    .await;
    let ana = stack.signed_up("ana").await;
    let mut phone = stack.ws(&ana, &json!({})).await;
    let mut laptop = stack.ws(&ana, &json!({})).await;
    for _ in 0..5 {
        phone.send(&json!({"type": "ping"})).await;
        assert_eq!(phone.frame().await["type"], "pong");
    }
    laptop.send(&json!({"type": "ping"})).await;
    assert_eq!(laptop.frame().await["code"], "rate_limited");
}

#[tokio::test]
async fn a_silent_client_is_closed_as_idle() {
    let stack = Stack::start_tuned(
        |_| {},
        |bff| {
            bff.realtime.ping_interval_s = 1;
            bff.realtime.idle_timeout_s = 2;
        },
    )
    .await;
    let ana = stack.signed_up("ana").await;
    let mut client = stack.ws(&ana, &json!({})).await;
    // A client that stops reading stops answering pings: the server hears nothing for longer
    // than the idle timeout. The pause is the stalled client, not a wait for readiness.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(client.closed().await, Some(1001));
}

#[tokio::test]
async fn a_group_reaches_members_who_join_while_connected_and_not_those_who_left() {
    let stack = Stack::start().await;
    let second = stack.another_bff().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let cat = stack.signed_up("cat").await;
    let dan = stack.signed_up("dan").await;
    // Three members: its new messages go out once per gateway, on the group's subject.
    let group = stack.group(&ana, &[&ben, &cat]).await;
    // Two of Ben's devices at once: one subscribes his groups, the other waits for it.
    let fresh = json!({});
    let (mut ben_ws, mut ben_laptop) = tokio::join!(stack.ws(&ben, &fresh), stack.ws(&ben, &fresh));
    let mut cat_ws = WsClient::ready(second, &cat.access_token, &json!({})).await;
    let mut dan_ws = stack.ws(&dan, &json!({})).await;
    stack.send(&ana, &group, "g1", "one").await;
    assert_eq!(message_seqs(&mut ben_ws, &group, 1).await, [1]);
    assert_eq!(message_seqs(&mut ben_laptop, &group, 1).await, [1]);
    assert_eq!(message_seqs(&mut cat_ws, &group, 1).await, [1]);

    // Dan joins while connected. The messages sent at once, while his gateway may still be
    // subscribing to the group, reach him all the same, in order.
    let added = stack
        .post(
            &format!("/api/v1/conversations/{group}/members"),
            &json!({"user_id": dan.user_id}),
            Some(&ana.access_token),
        )
        .await;
    assert_eq!(added.status(), 204);
    for n in 2..=6 {
        stack.send(&ana, &group, &format!("g{n}"), "x").await;
    }
    assert_eq!(
        dan_ws.frame_of("conversation").await["conversation"]["id"],
        group.as_str()
    );
    assert_eq!(
        message_seqs(&mut dan_ws, &group, 5).await,
        (2..=6).collect::<Vec<u64>>()
    );

    assert_eq!(
        message_seqs(&mut cat_ws, &group, 5).await,
        (2..=6).collect::<Vec<u64>>()
    );

    // Cat leaves: the group's messages no longer reach her, and still reach Ben.
    let left = stack
        .delete(
            &format!("/api/v1/conversations/{group}/members/{}", cat.user_id),
            &cat.access_token,
        )
        .await;
    assert_eq!(left.status(), 204);
    assert_eq!(
        cat_ws.frame_of("conversation").await["conversation"]["id"],
        group.as_str()
    );
    stack.send(&ana, &group, "g7", "after").await;
    assert_eq!(
        message_seqs(&mut ben_ws, &group, 6).await,
        (2..=7).collect::<Vec<u64>>()
    );
    assert_eq!(message_seqs(&mut dan_ws, &group, 1).await, [7]);
    let direct = stack
        .post(
            "/api/v1/conversations",
            &json!({"kind": "direct", "member_ids": [cat.user_id]}),
            Some(&ana.access_token),
        )
        .await;
    let direct: Value = direct.json().await.unwrap();
    let direct = direct["id"].as_str().unwrap();
    stack.send(&ana, direct, "d1", "only this").await;
    let next = cat_ws.frame_of("message").await;
    assert_eq!(next["conversation_id"], direct, "not the group's: {next}");
}
