//! CONTRACT.md's Chat table through the BFF, with svc-auth and svc-chat behind it.

use std::time::Duration;

use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{Value, json};
use tertulia_proto::events::v1::{Delivery, delivery::Event};
use tertulia_tests::{Session, Stack, assert_problem};

async fn conversation(stack: &Stack, owner: &Session, kind: &str, members: &[&str]) -> Value {
    let answer = stack
        .post(
            "/api/v1/conversations",
            &json!({"kind": kind, "member_ids": members, "title": "Team"}),
            Some(&owner.access_token),
        )
        .await;
    assert_eq!(answer.status(), 201);
    answer.json().await.unwrap()
}

async fn send(
    stack: &Stack,
    who: &Session,
    conversation: &str,
    client_msg_id: &str,
    text: &str,
) -> reqwest::Response {
    stack
        .post_message(who, conversation, client_msg_id, text)
        .await
}

#[tokio::test]
async fn a_direct_conversation_exists_once_per_pair() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let first = conversation(&stack, &ana, "direct", &[&ben.user_id]).await;
    assert_eq!(first["kind"], "direct");
    assert_eq!(first["member_ids"].as_array().unwrap().len(), 2);
    assert_eq!(first["last_seq"], 0);

    let again = stack
        .post(
            "/api/v1/conversations",
            &json!({"kind": "direct", "member_ids": [ana.user_id]}),
            Some(&ben.access_token),
        )
        .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    for (body, status, code) in [
        (
            json!({"kind": "direct", "member_ids": []}),
            400,
            "invalid_argument",
        ),
        (
            json!({"kind": "direct", "member_ids": [ana.user_id]}),
            400,
            "invalid_argument",
        ),
        (
            json!({"kind": "channel", "member_ids": []}),
            400,
            "invalid_argument",
        ),
        (
            json!({"kind": "group", "member_ids": [uuid::Uuid::now_v7().to_string()]}),
            404,
            "not_found",
        ),
        (
            json!({"kind": "group", "member_ids": ["not-an-id"]}),
            404,
            "not_found",
        ),
    ] {
        let answer = stack
            .post("/api/v1/conversations", &body, Some(&ana.access_token))
            .await;
        assert_problem(answer, status, code).await;
    }
}

#[tokio::test]
async fn membership_is_checked_on_every_call_and_non_members_learn_nothing() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let eve = stack.signed_up("eve").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();
    assert_eq!(group["title"], "Team");

    let eve_token = Some(eve.access_token.as_str());
    let path = format!("/api/v1/conversations/{id}");
    assert_problem(stack.get(&path, eve_token).await, 404, "not_found").await;
    assert_problem(
        stack.get(&format!("{path}/messages"), eve_token).await,
        404,
        "not_found",
    )
    .await;
    assert_problem(send(&stack, &eve, id, "e1", "hi").await, 404, "not_found").await;
    let unknown = stack
        .get(
            &format!("/api/v1/conversations/{}", uuid::Uuid::now_v7()),
            eve_token,
        )
        .await;
    let unknown = assert_problem(unknown, 404, "not_found").await;
    let hidden = assert_problem(stack.get(&path, eve_token).await, 404, "not_found").await;
    assert_eq!(
        unknown["detail"], hidden["detail"],
        "hidden looks like missing"
    );

    // Members may add; the added member sees the conversation.
    let added = stack
        .post(
            &format!("{path}/members"),
            &json!({"user_id": eve.user_id}),
            Some(&ben.access_token),
        )
        .await;
    assert_eq!(added.status(), 204);
    assert_eq!(stack.get(&path, eve_token).await.status(), 200);

    // Only the creator removes others; anyone may leave.
    let kick = stack
        .delete(
            &format!("{path}/members/{}", ana.user_id),
            &ben.access_token,
        )
        .await;
    assert_problem(kick, 403, "permission_denied").await;
    let leave = stack
        .delete(
            &format!("{path}/members/{}", eve.user_id),
            &eve.access_token,
        )
        .await;
    assert_eq!(leave.status(), 204);
    assert_problem(stack.get(&path, eve_token).await, 404, "not_found").await;
    let removed = stack
        .delete(
            &format!("{path}/members/{}", ben.user_id),
            &ana.access_token,
        )
        .await;
    assert_eq!(removed.status(), 204);
    assert_problem(
        stack.get(&path, Some(&ben.access_token)).await,
        404,
        "not_found",
    )
    .await;

    // A direct conversation's members are fixed.
    let direct = conversation(&stack, &ana, "direct", &[&eve.user_id]).await;
    let add = stack
        .post(
            &format!(
                "/api/v1/conversations/{}/members",
                direct["id"].as_str().unwrap()
            ),
            &json!({"user_id": ben.user_id}),
            Some(&ana.access_token),
        )
        .await;
    assert_problem(add, 409, "conflict").await;
}

#[tokio::test]
async fn sends_are_idempotent_ordered_and_paged_by_seq() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();

    for n in 1..=5 {
        let answer = send(&stack, &ana, id, &format!("c{n}"), &format!("message {n}")).await;
        assert_eq!(answer.status(), 201);
        let message: Value = answer.json().await.unwrap();
        assert_eq!(message["seq"], n);
        assert_eq!(message["sender_id"], ana.user_id.as_str());
        assert_eq!(message["deleted"], false);
        assert!(message["sent_at"].as_str().unwrap().ends_with('Z'));
    }
    let retry = send(&stack, &ana, id, "c3", "message 3 again").await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["seq"], 3);
    assert_eq!(retry["text"], "message 3");
    // The same client_msg_id from someone else is a different message.
    let other: Value = send(&stack, &ben, id, "c3", "ben's")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["seq"], 6);

    let seqs = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let token = Some(ben.access_token.as_str());
    let base = format!("/api/v1/conversations/{id}/messages");
    let all: Value = stack.get_json(&base, token).await;
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    let after: Value = stack
        .get_json(&format!("{base}?after_seq=2&limit=2"), token)
        .await;
    assert_eq!(seqs(&after), [3, 4]);
    let before: Value = stack
        .get_json(&format!("{base}?before_seq=5&limit=2"), token)
        .await;
    assert_eq!(seqs(&before), [3, 4]);
    let latest: Value = stack.get_json(&format!("{base}?limit=2"), token).await;
    assert_eq!(seqs(&latest), [5, 6]);
    for bad in ["limit=0", "limit=500", "after_seq=-1", "before_seq=x"] {
        assert_problem(
            stack.get(&format!("{base}?{bad}"), token).await,
            400,
            "invalid_argument",
        )
        .await;
    }

    for (client_msg_id, text) in [
        ("", "x"),
        ("c9", ""),
        ("c9", "   "),
        ("c9", &"a".repeat(4001)),
    ] {
        let answer = send(&stack, &ana, id, client_msg_id, text).await;
        assert_problem(answer, 400, "invalid_argument").await;
    }
    let max: Value = send(&stack, &ana, id, "c10", &"\u{e9}".repeat(4000))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(max["seq"], 7);
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_unique_seqs() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();
    let sends = (0..30).map(|n| {
        let who = if n % 2 == 0 { &ana } else { &ben };
        let stack = &stack;
        async move { send(stack, who, id, &format!("k{n}"), "hello").await }
    });
    let mut seqs: Vec<u64> = Vec::new();
    for answer in futures::future::join_all(sends).await {
        assert_eq!(answer.status(), 201);
        let message: Value = answer.json().await.unwrap();
        seqs.push(message["seq"].as_u64().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
}

/// The seqs of a conversation's first 100 messages, as `who` sees them.
async fn stored_seqs(stack: &Stack, who: &Session, conversation: &str) -> Vec<u64> {
    let history: Value = stack
        .http
        .get(stack.url(&format!(
            "/api/v1/conversations/{conversation}/messages?limit=100"
        )))
        .bearer_auth(&who.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Concurrent sends are group-committed: whatever shares a transaction, every conversation's
/// seqs stay gap-free and in answer order per sender, and a send that must fail (a stranger's)
/// fails alone.
#[tokio::test]
async fn concurrent_sends_to_several_conversations_each_get_their_own_answer() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let eve = stack.signed_up("eve").await;
    let mut groups = Vec::new();
    for _ in 0..3 {
        let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
        groups.push(group["id"].as_str().unwrap().to_owned());
    }
    let sends = (0..60).map(|n| {
        let (stack, groups) = (&stack, &groups);
        let who = match n {
            7 | 31 => &eve,
            n if n % 2 == 0 => &ana,
            _ => &ben,
        };
        async move {
            let id = &groups[n % 3];
            let answer = send(stack, who, id, &format!("m{n}"), &format!("text {n}")).await;
            (n, answer.status(), answer.json::<Value>().await.unwrap())
        }
    });
    let mut seqs: Vec<Vec<u64>> = vec![Vec::new(); 3];
    for (n, status, body) in futures::future::join_all(sends).await {
        if n == 7 || n == 31 {
            assert_eq!(status, 404, "a stranger's send fails: {body}");
            assert_eq!(body["code"], "not_found", "{body}");
            continue;
        }
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            body["text"],
            format!("text {n}"),
            "each send gets its own message"
        );
        seqs[n % 3].push(body["seq"].as_u64().unwrap());
    }
    for (id, mut answered) in groups.iter().zip(seqs) {
        answered.sort_unstable();
        let stored = stored_seqs(&stack, &ana, id).await;
        assert_eq!(stored, (1..=answered.len() as u64).collect::<Vec<_>>());
        assert_eq!(answered, stored, "every stored message was answered, once");
    }
}

#[tokio::test]
async fn racing_retries_of_one_send_store_it_once() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();
    // Other senders keep the conversation's lock busy while the copies race for it.
    let sends = (0..24).map(|n| {
        let stack = &stack;
        let (who, key) = if n % 3 == 0 {
            (&ben, format!("other{n}"))
        } else {
            (&ana, "same".to_owned())
        };
        async move { (key.clone(), send(stack, who, id, &key, "hello").await) }
    });
    let (mut created, mut seqs_of_same) = (0, Vec::new());
    for (key, answer) in futures::future::join_all(sends).await {
        let status = answer.status();
        let message: Value = answer.json().await.unwrap();
        if key == "same" {
            created += usize::from(status == 201);
            assert!(status == 201 || status == 200, "{status}");
            seqs_of_same.push(message["seq"].as_u64().unwrap());
        } else {
            assert_eq!(status, 201);
        }
    }
    assert_eq!(created, 1, "exactly one copy stores the message");
    seqs_of_same.dedup();
    assert_eq!(seqs_of_same.len(), 1, "every copy answers the same message");
    assert_eq!(
        stored_seqs(&stack, &ana, id).await,
        (1..=9).collect::<Vec<u64>>(),
        "8 others and one stored copy"
    );
}

#[tokio::test]
async fn edits_and_deletes_are_for_the_sender_and_deletes_leave_tombstones() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();
    let message: Value = send(&stack, &ana, id, "m1", "frist")
        .await
        .json()
        .await
        .unwrap();
    let path = format!(
        "/api/v1/conversations/{id}/messages/{}",
        message["id"].as_str().unwrap()
    );

    let edit = |who: &Session, text: &str| {
        stack
            .http
            .patch(stack.url(&path))
            .bearer_auth(&who.access_token)
            .json(&json!({"text": text}))
            .send()
    };
    let edited = edit(&ana, "first").await.unwrap();
    assert_eq!(edited.status(), 200);
    let edited: Value = edited.json().await.unwrap();
    assert_eq!(edited["text"], "first");
    assert!(edited["edited_at"].is_string());
    assert_eq!(edited["seq"], message["seq"]);
    assert_problem(edit(&ben, "mine").await.unwrap(), 403, "permission_denied").await;
    assert_problem(edit(&ana, "").await.unwrap(), 400, "invalid_argument").await;

    let delete = |who: &Session| {
        stack
            .http
            .delete(stack.url(&path))
            .bearer_auth(&who.access_token)
            .send()
    };
    assert_problem(delete(&ben).await.unwrap(), 403, "permission_denied").await;
    assert_eq!(delete(&ana).await.unwrap().status(), 204);
    assert_eq!(
        delete(&ana).await.unwrap().status(),
        204,
        "deleting twice is fine"
    );
    assert_problem(edit(&ana, "back").await.unwrap(), 409, "conflict").await;

    let history: Value = stack
        .get(
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&ben.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    let tombstone = &history["messages"][0];
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["text"], "");
    assert_eq!(tombstone["seq"], 1);

    let missing = stack
        .http
        .delete(stack.url(&format!(
            "/api/v1/conversations/{id}/messages/{}",
            uuid::Uuid::now_v7()
        )))
        .bearer_auth(&ana.access_token)
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404, "not_found").await;
}

#[tokio::test]
async fn read_positions_never_move_backwards_and_lists_show_unread_by_activity() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let older = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let newer = conversation(&stack, &ana, "direct", &[&ben.user_id]).await;
    let older_id = older["id"].as_str().unwrap();
    for n in 0..3 {
        send(&stack, &ana, older_id, &format!("o{n}"), "hi").await;
    }
    let read = |seq: u64| {
        let (stack, ben) = (&stack, &ben);
        async move {
            stack
                .post(
                    &format!("/api/v1/conversations/{older_id}/read"),
                    &json!({ "seq": seq }),
                    Some(&ben.access_token),
                )
                .await
        }
    };
    let list = || async {
        let page: Value = stack
            .get_json("/api/v1/conversations", Some(&ben.access_token))
            .await;
        page
    };
    let page = list().await;
    assert_eq!(
        page["conversations"][0]["id"], older["id"],
        "newest activity first"
    );
    assert_eq!(page["conversations"][0]["unread"], 3);
    assert_eq!(page["conversations"][0]["last_message"]["seq"], 3);
    assert_eq!(page["conversations"][1]["id"], newer["id"]);
    assert_eq!(page["conversations"][1]["unread"], 0);

    assert_eq!(read(2).await.status(), 204);
    assert_eq!(list().await["conversations"][0]["unread"], 1);
    assert_eq!(read(1).await.status(), 204);
    assert_eq!(
        list().await["conversations"][0]["unread"],
        1,
        "never backwards"
    );
    assert_eq!(read(99).await.status(), 204);
    assert_eq!(
        list().await["conversations"][0]["unread"],
        0,
        "capped at the last message"
    );
    // The sender has read what they sent.
    let ana_page: Value = stack
        .get_json("/api/v1/conversations", Some(&ana.access_token))
        .await;
    assert_eq!(ana_page["conversations"][0]["unread"], 0);

    let paged: Value = stack
        .get_json("/api/v1/conversations?limit=1", Some(&ben.access_token))
        .await;
    let token = paged["next_page_token"].as_str().unwrap();
    let second: Value = stack
        .get(
            &format!("/api/v1/conversations?limit=1&page_token={token}"),
            Some(&ben.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["conversations"][0]["id"], newer["id"]);
    let bad = stack
        .get(
            "/api/v1/conversations?page_token=garbage",
            Some(&ben.access_token),
        )
        .await;
    assert_problem(bad, 400, "invalid_argument").await;
}

#[tokio::test]
async fn committed_messages_reach_every_members_delivery_subject_through_the_outbox() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id]).await;
    let id = group["id"].as_str().unwrap();

    let nats = tertulia_plumbing::nats::connect(&stack.nats, "test")
        .await
        .unwrap();
    let subject = nats.subject(&tertulia_proto::subjects::deliver(&ben.user_id));
    let mut inbox = nats.client.subscribe(subject).await.unwrap();
    nats.client.flush().await.unwrap();

    let sent: Value = send(&stack, &ana, id, "x1", "over the wire")
        .await
        .json()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let raw = inbox.next().await.expect("subscription open");
            let delivery = Delivery::decode(raw.payload).expect("a Delivery");
            if let Some(Event::MessageCreated(created)) = delivery.event {
                return created.message.expect("a message");
            }
        }
    })
    .await
    .expect("the message is delivered within 10 s");
    assert_eq!(message.seq, 1);
    assert_eq!(message.text, "over the wire");
    assert_eq!(message.message_id, sent["id"].as_str().unwrap());
}

/// The next delivery's event on `inbox`, within 10 s.
async fn next_event(inbox: &mut async_nats::Subscriber) -> Option<Event> {
    let raw = tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("a delivery within 10 s")
        .expect("subscription open");
    Delivery::decode(raw.payload).expect("a Delivery").event
}

#[tokio::test]
async fn a_new_message_to_more_than_two_goes_once_to_the_groups_subject_naming_them() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let cat = stack.signed_up("cat").await;
    let group = conversation(&stack, &ana, "group", &[&ben.user_id, &cat.user_id]).await;
    let id = group["id"].as_str().unwrap();

    let nats = tertulia_plumbing::nats::connect(&stack.nats, "test")
        .await
        .unwrap();
    let on_group = nats.subject(&tertulia_proto::subjects::deliver_conversation(id));
    let mut group_inbox = nats.client.subscribe(on_group).await.unwrap();
    let on_ben = nats.subject(&tertulia_proto::subjects::deliver(&ben.user_id));
    let mut ben_inbox = nats.client.subscribe(on_ben).await.unwrap();
    nats.client.flush().await.unwrap();

    send(&stack, &ana, id, "x1", "to all three").await;
    let Some(Event::MessageCreated(created)) = next_event(&mut group_inbox).await else {
        panic!("the message, on the group's subject");
    };
    assert_eq!(created.message.unwrap().text, "to all three");
    let mut named = created.recipient_ids;
    named.sort();
    let mut members = vec![
        ana.user_id.clone(),
        ben.user_id.clone(),
        cat.user_id.clone(),
    ];
    members.sort();
    assert_eq!(named, members, "the gateways learn whom it is for");

    // Nothing came on Ben's own subject for it: before his receipt there is at most the
    // group's creation, which may still be on its way.
    let read = stack
        .post(
            &format!("/api/v1/conversations/{id}/read"),
            &json!({"seq": 1}),
            Some(&ben.access_token),
        )
        .await;
    assert!(read.status().is_success(), "{}", read.status());
    let receipt = loop {
        match next_event(&mut ben_inbox).await {
            Some(Event::ReceiptUpdated(receipt)) => break receipt,
            Some(Event::MembershipChanged(_)) => {}
            other => panic!("not on Ben's subject: {other:?}"),
        }
    };
    assert_eq!(receipt.user_id, ben.user_id);
}
