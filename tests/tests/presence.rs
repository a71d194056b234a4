//! Presence: online while connected, offline with last seen after, pushed to conversation
//! peers; a gateway that dies without a word takes its users offline within the TTL.

use std::time::Duration;

use serde_json::{Value, json};
use tertulia_proto::presence::v1::{
    DisconnectRequest, HeartbeatRequest, presence_service_client::PresenceServiceClient,
};
use tertulia_tests::{PRESENCE, PresenceTuning, Session, Stack, assert_problem, grpc_channel};

async fn presence_of(stack: &Stack, asker: &Session, user: &Session) -> Value {
    let answer = stack
        .get(
            &format!("/api/v1/presence?user_ids={}", user.user_id),
            Some(&asker.access_token),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    body["presence"][0].clone()
}

/// The next presence frame about `user`.
async fn presence_frame(client: &mut tertulia_tests::WsClient, user: &Session) -> Value {
    loop {
        let frame = client.frame_of("presence").await;
        if frame["user_id"] == user.user_id.as_str() {
            return frame;
        }
    }
}

#[tokio::test]
async fn connecting_and_leaving_is_pushed_to_peers_and_answered_by_rest() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    stack.group(&ana, &[&ben]).await;
    assert_eq!(presence_of(&stack, &ana, &ben).await["status"], "offline");

    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    let ben_ws = stack.ws(&ben, &json!({})).await;
    let online = presence_frame(&mut ana_ws, &ben).await;
    assert_eq!(online["status"], "online");
    assert_eq!(presence_of(&stack, &ana, &ben).await["status"], "online");

    // Ben has two devices; when both have left he goes offline.
    let ben_laptop = stack.ws(&ben, &json!({})).await;
    drop(ben_ws);
    drop(ben_laptop);
    let offline = presence_frame(&mut ana_ws, &ben).await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["last_seen"].as_str().unwrap().ends_with('Z'));
    let answered = presence_of(&stack, &ana, &ben).await;
    assert_eq!(answered["status"], "offline");
    assert!(answered["last_seen"].is_string());
}

#[tokio::test]
async fn users_of_a_gateway_that_died_go_offline_on_their_own() {
    let stack = Stack::start_with_presence_ttl(2).await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    stack.group(&ana, &[&ben]).await;
    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    // A gateway announces Ben's session, then dies: no heartbeat, no disconnect, ever again.
    PresenceServiceClient::new(grpc_channel(stack.presence).await)
        .heartbeat(HeartbeatRequest {
            user_id: ben.user_id.clone(),
            session_id: "doomed".into(),
            gateway_id: "gateway-that-dies".into(),
        })
        .await
        .unwrap();
    assert_eq!(presence_frame(&mut ana_ws, &ben).await["status"], "online");
    assert_eq!(presence_frame(&mut ana_ws, &ben).await["status"], "offline");
    assert_eq!(presence_of(&stack, &ana, &ben).await["status"], "offline");
}

#[tokio::test]
async fn a_crowd_leaving_at_once_goes_offline_even_when_presence_sheds_calls() {
    // svc-presence serves two calls at a time and sheds the rest; sessions would outlive the
    // test if a disconnect were lost (the TTL is the default minute).
    let stack = Stack::start_with_presence(PresenceTuning {
        max_in_flight: 2,
        ..PRESENCE
    })
    .await;
    let ana = stack.signed_up("ana").await;
    let mut crowd = Vec::new();
    for n in 0..24 {
        crowd.push(stack.signed_up(&format!("guest{n}")).await);
    }
    stack.group(&ana, &crowd.iter().collect::<Vec<_>>()).await;
    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    let mut sockets = Vec::new();
    for guest in &crowd {
        sockets.push(stack.ws(guest, &json!({})).await);
        assert_eq!(presence_frame(&mut ana_ws, guest).await["status"], "online");
    }

    // All 24 close at once: their disconnects reach svc-presence together.
    drop(sockets);
    let mut gone = std::collections::HashSet::new();
    while gone.len() < crowd.len() {
        let frame = ana_ws.frame_of("presence").await;
        if frame["status"] == "offline" {
            gone.insert(frame["user_id"].as_str().unwrap().to_owned());
        }
    }
    for guest in &crowd {
        assert_eq!(presence_of(&stack, &ana, guest).await["status"], "offline");
    }
}

#[tokio::test]
async fn many_devices_of_one_user_coming_and_going_at_once_are_all_counted() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    stack.group(&ana, &[&ben]).await;
    let mut ana_ws = stack.ws(&ana, &json!({})).await;
    let presence = PresenceServiceClient::new(grpc_channel(stack.presence).await);
    let heartbeat = |n: usize| {
        let mut presence = presence.clone();
        let request = HeartbeatRequest {
            user_id: ben.user_id.clone(),
            session_id: format!("device-{n}"),
            gateway_id: "gateway".into(),
        };
        async move { presence.heartbeat(request).await }
    };
    let disconnect = |n: usize| {
        let mut presence = presence.clone();
        let request = DisconnectRequest {
            user_id: ben.user_id.clone(),
            session_id: format!("device-{n}"),
        };
        async move { presence.disconnect(request).await }
    };
    // Forty devices of one user (one record in the store) report at once: every call is
    // answered, none is lost to the others.
    for answer in futures::future::join_all((0..40).map(heartbeat)).await {
        answer.expect("a heartbeat among forty at once");
    }
    assert_eq!(presence_frame(&mut ana_ws, &ben).await["status"], "online");
    for answer in futures::future::join_all((0..39).map(disconnect)).await {
        answer.expect("a disconnect among thirty-nine at once");
    }
    assert_eq!(
        presence_of(&stack, &ana, &ben).await["status"],
        "online",
        "one device is left"
    );
    disconnect(39).await.unwrap();
    assert_eq!(presence_frame(&mut ana_ws, &ben).await["status"], "offline");
    assert_eq!(presence_of(&stack, &ana, &ben).await["status"], "offline");
}

#[tokio::test]
async fn presence_queries_are_validated() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let token = Some(ana.access_token.as_str());
    let many = vec![uuid::Uuid::now_v7().to_string(); 201].join(",");
    for query in [
        "",
        "?user_ids=",
        "?user_ids=not-an-id",
        &format!("?user_ids={many}"),
    ] {
        let answer = stack.get(&format!("/api/v1/presence{query}"), token).await;
        assert_problem(answer, 400, "invalid_argument").await;
    }
    let unknown = stack
        .get(
            &format!("/api/v1/presence?user_ids={}", uuid::Uuid::now_v7()),
            token,
        )
        .await;
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["presence"][0]["status"], "offline");
    assert!(body["presence"][0].get("last_seen").is_none());
}

/// Deletes a test's buckets when it ends, passed or not.
struct Buckets(tertulia_plumbing::config::NatsConfig);

impl Drop for Buckets {
    fn drop(&mut self) {
        tertulia_tests::drop_streams(&self.0);
    }
}

#[tokio::test]
async fn a_change_that_panics_fails_its_callers_and_strands_no_one_behind_it() {
    let config = tertulia_tests::fresh_nats();
    let _buckets = Buckets(config.clone());
    let nats = tertulia_plumbing::nats::connect(&config, "presence-test")
        .await
        .unwrap();
    let store = svc_presence::store::PresenceStore::open(&nats, Duration::from_secs(30), 1)
        .await
        .unwrap();
    let failed = store
        .modify("ana", Box::new(|_| panic!("a change that panics")))
        .await;
    assert!(failed.is_err(), "{failed:?}");
    // The next change of the same user is written by a writer of its own, not queued behind
    // the one that is gone.
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        store.modify("ana", Box::new(|_| {})),
    )
    .await
    .expect("the next change is not stranded");
    next.unwrap();
}
