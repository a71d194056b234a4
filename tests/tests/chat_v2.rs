//! v1 and v2 side by side over one core: a v2 client shares a video and reacts; a v1 client
//! in the same conversation sees the video as a text fallback and never sees reactions, over
//! REST and over its WebSocket.

use serde_json::{Value, json};
use tertulia_tests::{Session, Stack, WsClient, assert_problem};

async fn reaction(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    who: &Session,
) -> reqwest::Response {
    stack
        .http
        .request(method, stack.url(path))
        .bearer_auth(&who.access_token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_v2_client_and_a_v1_client_each_see_their_own_shape() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await; // on v2
    let bob = stack.signed_up("bob").await; // still on v1
    let conversation = stack.group(&alice, &[&bob]).await;
    let mut bob_ws = stack.ws(&bob, &json!({})).await;
    let video = stack
        .create_video(
            &alice,
            &json!({"title": "Holiday", "visibility": "unlisted"}),
        )
        .await;
    let video_id = video["id"].as_str().unwrap();
    let messages = format!("/api/v2/conversations/{conversation}/messages");

    // Alice shares the video and writes, with v2's structured content.
    let shared = stack
        .post(
            &messages,
            &json!({"client_msg_id": "m1", "content": {"type": "video", "video_id": video_id}}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(shared.status(), 201);
    let shared: Value = shared.json().await.unwrap();
    assert_eq!(
        shared["content"],
        json!({"type": "video", "video_id": video_id})
    );
    assert!(
        shared.get("text").is_none(),
        "v2 has no text field: {shared}"
    );
    let again = stack
        .post(
            &messages,
            &json!({"client_msg_id": "m1", "content": {"type": "video", "video_id": video_id}}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(again.status(), 200, "idempotent");
    let text = stack
        .post(
            &messages,
            &json!({"client_msg_id": "m2", "content": {"type": "text", "text": "look!"}}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(text.status(), 201);

    // Bob, on v1, reads the video as a text fallback, live and in history.
    let live = bob_ws.frame_of("message").await;
    let fallback = format!("[video] /api/v1/videos/{video_id}");
    assert_eq!(live["message"]["text"], fallback, "{live}");
    assert!(live["message"].get("content").is_none());
    let v1_history: Value = stack
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            Some(&bob.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1_history["messages"][0]["text"], fallback);
    assert_eq!(v1_history["messages"][1]["text"], "look!");
    let second_live = bob_ws.frame_of("message").await;
    assert_eq!(second_live["message"]["text"], "look!");

    // Bob can still write on v1; Alice reads it as v2 text.
    let from_v1 = stack
        .post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &json!({"client_msg_id": "b1", "text": "nice"}),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(from_v1.status(), 201);
    let bobs: Value = from_v1.json().await.unwrap();
    let bobs_id = bobs["id"].as_str().unwrap();
    let _ = bob_ws.frame_of("message").await;

    reactions_are_v2_only(&stack, &conversation, &alice, &bob, &mut bob_ws, bobs_id).await;
}

#[tokio::test]
async fn v2_input_is_checked() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let carol = stack.signed_up("carol").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let messages = format!("/api/v2/conversations/{conversation}/messages");
    let send = |body: Value, who: &Session| {
        let token = who.access_token.clone();
        let messages = messages.clone();
        let stack = &stack;
        async move { stack.post(&messages, &body, Some(&token)).await }
    };
    assert_problem(
        send(
            json!({"client_msg_id": "x", "content": {"type": "sticker"}}),
            &alice,
        )
        .await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        send(
            json!({"client_msg_id": "x", "content": {"type": "text", "text": ""}}),
            &alice,
        )
        .await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        send(
            json!({"client_msg_id": "x", "content": {"type": "video", "video_id": "nope"}}),
            &alice,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // A private video of someone else cannot be shared: the sender cannot see it.
    let private = stack.create_video(&carol, &json!({"title": "Mine"})).await;
    let body =
        json!({"client_msg_id": "x", "content": {"type": "video", "video_id": private["id"]}});
    assert_problem(send(body, &alice).await, 404, "not_found").await;
    assert_problem(
        send(
            json!({"client_msg_id": "x", "content": {"type": "text", "text": "hi"}}),
            &carol,
        )
        .await,
        404,
        "not_found",
    )
    .await;

    reactions_are_checked(&stack, &conversation, &alice, &bob, &carol).await;
}

/// Alice reacts to Bob's message: v2 shows it, v1 never does (REST or socket).
async fn reactions_are_v2_only(
    stack: &Stack,
    conversation: &str,
    alice: &Session,
    bob: &Session,
    bob_ws: &mut WsClient,
    bobs_id: &str,
) {
    let messages = format!("/api/v2/conversations/{conversation}/messages");
    // Reactions exist in v2 only.
    let react = format!("{messages}/{bobs_id}/reactions/%F0%9F%91%8D");
    let reacted: Value = reaction(stack, reqwest::Method::POST, &react, alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        reacted["reactions"],
        json!([{"emoji": "👍", "user_ids": [alice.user_id]}])
    );
    let twice: Value = reaction(stack, reqwest::Method::POST, &react, alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        twice["reactions"], reacted["reactions"],
        "adding twice changes nothing"
    );
    let v2_history: Value = stack.get_json(&messages, Some(&alice.access_token)).await;
    assert_eq!(v2_history["messages"][2]["reactions"][0]["emoji"], "👍");
    assert_eq!(
        v2_history["messages"][1]["content"],
        json!({"type": "text", "text": "look!"})
    );
    let v1_again: Value = stack
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            Some(&bob.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        v1_again["messages"][2].get("reactions").is_none(),
        "{v1_again}"
    );
    // Bob's v1 socket gets no frame for the reaction: the next frame is the next message.
    stack
        .post(
            &messages,
            &json!({"client_msg_id": "m3", "content": {"type": "text", "text": "after"}}),
            Some(&alice.access_token),
        )
        .await;
    let next = bob_ws.frame().await;
    assert_eq!(next["type"], "message", "{next}");
    assert_eq!(next["message"]["text"], "after");

    let removed: Value = reaction(stack, reqwest::Method::DELETE, &react, alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(removed["reactions"], json!([]));
}

/// Bad emoji, strangers, unknown and deleted messages.
async fn reactions_are_checked(
    stack: &Stack,
    conversation: &str,
    alice: &Session,
    bob: &Session,
    carol: &Session,
) {
    let messages = format!("/api/v2/conversations/{conversation}/messages");
    let send = |body: Value, who: &Session| {
        let token = who.access_token.clone();
        let messages = messages.clone();
        async move { stack.post(&messages, &body, Some(&token)).await }
    };
    let greeting: Value = send(
        json!({"client_msg_id": "t", "content": {"type": "text", "text": "hi"}}),
        alice,
    )
    .await
    .json()
    .await
    .unwrap();
    let id = greeting["id"].as_str().unwrap();
    let path = |emoji: &str| format!("{messages}/{id}/reactions/{emoji}");
    assert_problem(
        reaction(stack, reqwest::Method::POST, &path("thumbsup"), bob).await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        reaction(stack, reqwest::Method::POST, &path("%F0%9F%91%8D"), carol).await,
        404,
        "not_found",
    )
    .await;
    let unknown = format!("{messages}/{}/reactions/%F0%9F%91%8D", uuid::Uuid::now_v7());
    assert_problem(
        reaction(stack, reqwest::Method::POST, &unknown, bob).await,
        404,
        "not_found",
    )
    .await;
    // Deleted messages take no reactions; v1's delete applies to v2 messages too.
    let deleted = stack
        .http
        .delete(stack.url(&format!(
            "/api/v1/conversations/{conversation}/messages/{id}"
        )))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    assert_problem(
        reaction(stack, reqwest::Method::POST, &path("%F0%9F%91%8D"), bob).await,
        409,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn v2_edits_keep_reactions_and_deletes_share_v1_s_contract() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let messages = format!("/api/v2/conversations/{conversation}/messages");
    let sent: Value = stack
        .post(
            &messages,
            &json!({"client_msg_id": "e1", "content": {"type": "text", "text": "helo"}}),
            Some(&alice.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = sent["id"].as_str().unwrap();
    reaction(
        &stack,
        reqwest::Method::POST,
        &format!("{messages}/{id}/reactions/%F0%9F%98%80"),
        &bob,
    )
    .await;
    let patch = |body: Value| {
        stack
            .http
            .patch(stack.url(&format!("{messages}/{id}")))
            .bearer_auth(&alice.access_token)
            .json(&body)
            .send()
    };
    let edited: Value = patch(json!({"content": {"type": "text", "text": "hello"}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edited["content"], json!({"type": "text", "text": "hello"}));
    assert!(edited["edited_at"].is_string());
    assert_eq!(
        edited["reactions"][0]["emoji"], "😀",
        "an edit keeps the reactions"
    );
    let video = stack.create_video(&alice, &json!({"title": "clip"})).await;
    assert_problem(
        patch(json!({"content": {"type": "video", "video_id": video["id"]}}))
            .await
            .unwrap(),
        400,
        "invalid_argument",
    )
    .await;
    let v1: Value = stack
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            Some(&bob.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v1["messages"][0]["text"], "hello",
        "v1 readers see the edit"
    );

    shared_videos_are_not_edited_and_deletes_are_v1_s(&stack, &messages, &alice, &video).await;
}

/// A shared video cannot be edited into text; delete is v1's handler under both prefixes.
async fn shared_videos_are_not_edited_and_deletes_are_v1_s(
    stack: &Stack,
    messages: &str,
    alice: &Session,
    video: &Value,
) {
    let shared: Value = stack
        .post(
            messages,
            &json!({"client_msg_id": "e2", "content": {"type": "video", "video_id": video["id"]}}),
            Some(&alice.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    let video_message = shared["id"].as_str().unwrap();
    let refused = stack
        .http
        .patch(stack.url(&format!("{messages}/{video_message}")))
        .bearer_auth(&alice.access_token)
        .json(&json!({"content": {"type": "text", "text": "no"}}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 409, "conflict").await;

    // Delete is v1's handler under both prefixes.
    let deleted = stack
        .delete(&format!("{messages}/{video_message}"), &alice.access_token)
        .await;
    assert_eq!(deleted.status(), 204);
    let v2: Value = stack.get_json(messages, Some(&alice.access_token)).await;
    assert_eq!(v2["messages"][1]["deleted"], true);
    assert_eq!(
        v2["messages"][1]["content"],
        json!({"type": "text", "text": ""}),
        "a tombstone shares nothing"
    );
}

/// `/api/v2/ws`: sends carry `content`, acks, live frames and resumed history are in v2's
/// shape, reactions arrive as `reactions` frames; a v1 socket in the same conversation gets
/// the text fallback and nothing for reactions. Each socket refuses the other version's send.
#[tokio::test]
async fn the_v2_socket_speaks_v2_beside_a_v1_socket() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await; // on v2
    let bob = stack.signed_up("bob").await; // still on v1
    let carol = stack.signed_up("carol").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let mut alice_ws =
        WsClient::ready_version(stack.bff, "v2", &alice.access_token, &json!({})).await;
    let mut bob_ws = stack.ws(&bob, &json!({})).await;
    let video = stack
        .create_video(&alice, &json!({"title": "Trip", "visibility": "unlisted"}))
        .await;
    let video_id = video["id"].as_str().unwrap();
    let content = json!({"type": "video", "video_id": video_id});

    alice_ws
        .send(&json!({"type": "send", "conversation_id": conversation,
                      "client_msg_id": "w1", "content": content}))
        .await;
    let ack = alice_ws.frame_of("ack").await;
    assert_eq!(ack["client_msg_id"], "w1");
    assert_eq!(ack["message"]["content"], content, "{ack}");
    assert!(ack["message"].get("text").is_none());
    let mine = alice_ws.frame_of("message").await;
    assert_eq!(mine["message"]["content"], content, "{mine}");
    assert_eq!(mine["message"]["reactions"], json!([]));
    let bobs = bob_ws.frame_of("message").await;
    assert_eq!(
        bobs["message"]["text"],
        format!("[video] /api/v1/videos/{video_id}")
    );
    let message_id = mine["message"]["id"].as_str().unwrap().to_owned();

    // Reactions: a frame on v2, nothing on v1.
    let react = format!(
        "/api/v2/conversations/{conversation}/messages/{message_id}/reactions/%F0%9F%8E%89"
    );
    let reacted = reaction(&stack, reqwest::Method::POST, &react, &bob).await;
    assert_eq!(reacted.status(), 200);
    let frame = alice_ws.frame_of("reactions").await;
    assert_eq!(frame["conversation_id"], conversation.as_str());
    assert_eq!(frame["message"]["id"], message_id.as_str());
    assert_eq!(
        frame["message"]["reactions"],
        json!([{"emoji": "🎉", "user_ids": [bob.user_id]}])
    );

    // Each socket refuses the other version's send frame, naming the right field.
    alice_ws
        .send(&json!({"type": "send", "conversation_id": conversation,
                      "client_msg_id": "w2", "text": "old style"}))
        .await;
    let refused = alice_ws.frame_of("error").await;
    assert_eq!(refused["code"], "invalid_argument");
    assert_eq!(refused["client_msg_id"], "w2");
    assert!(refused["message"].as_str().unwrap().contains("content"));
    bob_ws
        .send(&json!({"type": "send", "conversation_id": conversation,
                      "client_msg_id": "b1", "content": {"type": "text", "text": "new style"}}))
        .await;
    let refused = bob_ws.frame().await;
    assert_eq!(
        refused["type"], "error",
        "no reactions frame came first: {refused}"
    );
    assert!(refused["message"].as_str().unwrap().contains("/api/v2/ws"));
    // A video the sender cannot see is refused over the socket as over REST.
    let private = stack.create_video(&carol, &json!({"title": "Mine"})).await;
    alice_ws
        .send(
            &json!({"type": "send", "conversation_id": conversation, "client_msg_id": "w3",
                      "content": {"type": "video", "video_id": private["id"]}}),
        )
        .await;
    assert_eq!(alice_ws.frame_of("error").await["code"], "not_found");

    // Text over v2 reaches v1 as text; resuming a v2 socket replays history in v2's shape.
    alice_ws
        .send(
            &json!({"type": "send", "conversation_id": conversation, "client_msg_id": "w4",
                      "content": {"type": "text", "text": "hello"}}),
        )
        .await;
    let _ = alice_ws.frame_of("ack").await;
    assert_eq!(bob_ws.frame_of("message").await["message"]["text"], "hello");
    let mut again = WsClient::ready_version(
        stack.bff,
        "v2",
        &alice.access_token,
        &json!({&conversation: 0}),
    )
    .await;
    let first = again.frame_of("message").await;
    assert_eq!(first["message"]["content"], content);
    assert_eq!(first["message"]["reactions"][0]["emoji"], "🎉");
    let second = again.frame_of("message").await;
    assert_eq!(
        second["message"]["content"],
        json!({"type": "text", "text": "hello"})
    );
}

/// A conversation's last message is a message: v2 shows it with `content` (list, get, create
/// of an existing direct conversation, and the `conversation` frame), v1 with `text`.
#[tokio::test]
async fn conversations_show_their_last_message_in_each_version_s_shape() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let carol = stack.signed_up("carol").await;
    let direct: Value = stack
        .post(
            "/api/v2/conversations",
            &json!({"kind": "direct", "member_ids": [bob.user_id]}),
            Some(&alice.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    let direct = direct["id"].as_str().unwrap().to_owned();
    let group = stack.group(&alice, &[&bob]).await;
    let video = stack
        .create_video(&alice, &json!({"title": "Clip", "visibility": "unlisted"}))
        .await;
    let content = json!({"type": "video", "video_id": video["id"]});
    for conversation in [&direct, &group] {
        let sent = stack
            .post(
                &format!("/api/v2/conversations/{conversation}/messages"),
                &json!({"client_msg_id": "v", "content": content}),
                Some(&alice.access_token),
            )
            .await;
        assert_eq!(sent.status(), 201);
    }
    let fallback = format!("[video] /api/v1/videos/{}", video["id"].as_str().unwrap());
    let get = |path: String| {
        let token = bob.access_token.clone();
        let stack = &stack;
        async move {
            stack
                .get(&path, Some(&token))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    let v2_list = get("/api/v2/conversations".into()).await;
    let v1_list = get("/api/v1/conversations".into()).await;
    for i in 0..2 {
        assert_eq!(
            v2_list["conversations"][i]["last_message"]["content"],
            content
        );
        assert!(
            v2_list["conversations"][i]["last_message"]
                .get("text")
                .is_none()
        );
        assert_eq!(
            v1_list["conversations"][i]["last_message"]["text"],
            fallback
        );
    }
    let one = get(format!("/api/v2/conversations/{group}")).await;
    assert_eq!(one["last_message"]["content"], content);
    assert_eq!(
        get(format!("/api/v1/conversations/{group}")).await["last_message"]["text"],
        fallback
    );
    let again = stack
        .post(
            "/api/v2/conversations",
            &json!({"kind": "direct", "member_ids": [alice.user_id]}),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(again.status(), 200, "the existing direct conversation");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], direct.as_str());
    assert_eq!(again["last_message"]["content"], content);

    // Membership pushes the conversation: in v2's shape to a v2 socket.
    let mut bob_v2 = WsClient::ready_version(stack.bff, "v2", &bob.access_token, &json!({})).await;
    let mut bob_v1 = stack.ws(&bob, &json!({})).await;
    let added = stack
        .post(
            &format!("/api/v2/conversations/{group}/members"),
            &json!({"user_id": carol.user_id}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(added.status(), 204);
    let frame = bob_v2.frame_of("conversation").await;
    assert_eq!(
        frame["conversation"]["last_message"]["content"], content,
        "{frame}"
    );
    let frame = bob_v1.frame_of("conversation").await;
    assert_eq!(
        frame["conversation"]["last_message"]["text"], fallback,
        "{frame}"
    );
}
