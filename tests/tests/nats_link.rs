//! The gateway's delivery link against a real nats-server: messages reach the target of
//! their subscription, with headers; a subscription is active when `subscribe` returns and
//! gone when its handle is dropped; the link comes back after the server restarts and
//! subscribes everything again.

use std::{sync::Arc, time::Duration};

use async_nats::HeaderMap;
use bytes::Bytes;
use tertulia_plumbing::{
    config::NatsConfig,
    nats_link::{Handler, Inbound, Link, LinkError, Subscription},
};
use tertulia_tests::{TestNats, fresh_nats};
use tokio::sync::mpsc;

/// What a handler saw: the target's name, the subject, the payload and the `traceparent`.
type Seen = (String, String, Bytes, Option<String>);

fn recorder() -> (Handler<String>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler: Handler<String> = Box::new(move |target: &String, message: Inbound| {
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        let _ = tx.send((
            target.clone(),
            message.subject,
            message.payload,
            traceparent,
        ));
    });
    (handler, rx)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("a message in time")
        .expect("the link runs")
}

#[tokio::test]
async fn messages_reach_their_subscription_until_it_is_dropped() {
    let config = fresh_nats();
    let (handler, mut seen) = recorder();
    let link = Link::connect(&config, "link-test", handler).await.unwrap();
    let publisher = async_nats::connect(&config.url).await.unwrap();
    let ann = format!("{}.deliver.ann", config.namespace);
    let bob = format!("{}.deliver.bob", config.namespace);

    let anns = link.subscribe(&ann, Arc::new("ann".into())).await.unwrap();
    let bobs = link.subscribe(&bob, Arc::new("bob".into())).await.unwrap();
    assert_eq!(link.subscriptions(), 2);
    // Active on return: published at once, still delivered.
    publisher.publish(ann.clone(), "one".into()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    publisher
        .publish_with_headers(bob.clone(), headers, "two".into())
        .await
        .unwrap();
    let (target, subject, payload, traceparent) = next(&mut seen).await;
    assert_eq!(
        (target.as_str(), subject.as_str(), &payload[..]),
        ("ann", ann.as_str(), &b"one"[..])
    );
    assert_eq!(traceparent, None);
    let (target, _, payload, traceparent) = next(&mut seen).await;
    assert_eq!((target.as_str(), &payload[..]), ("bob", &b"two"[..]));
    assert_eq!(
        traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );

    // A large payload arrives whole.
    let large = Bytes::from(vec![b'x'; 200_000]);
    publisher.publish(ann.clone(), large.clone()).await.unwrap();
    assert_eq!(next(&mut seen).await.2, large);

    // Dropped: bob's next message is not delivered, ann's after it is.
    drop(bobs);
    // A new subscription's confirmation follows the unsubscription on the wire.
    let _probe = link
        .subscribe(
            &format!("{}.probe", config.namespace),
            Arc::new("probe".into()),
        )
        .await
        .unwrap();
    publisher.publish(bob, "lost".into()).await.unwrap();
    publisher.publish(ann, "three".into()).await.unwrap();
    let (target, _, payload, _) = next(&mut seen).await;
    assert_eq!((target.as_str(), &payload[..]), ("ann", &b"three"[..]));
    drop(anns);
    assert_eq!(link.subscriptions(), 1);
}

/// A link to the servers of `url` (no namespace) with `ann` subscribed to `deliver.ann`.
async fn linked_with_ann(
    url: String,
) -> (
    Link<String>,
    mpsc::UnboundedReceiver<Seen>,
    Subscription<String>,
) {
    let config = NatsConfig {
        url,
        namespace: String::new(),
    };
    let (handler, seen) = recorder();
    let link = Link::connect(&config, "link-test", handler).await.unwrap();
    let ann = link
        .subscribe("deliver.ann", Arc::new("ann".into()))
        .await
        .unwrap();
    (link, seen, ann)
}

#[tokio::test]
async fn the_link_comes_back_after_the_server_restarts() {
    let mut server = TestNats::start().await;
    let (link, mut seen, _kept) = linked_with_ann(server.url.clone()).await;

    server.kill().await;
    server.restart().await;
    // A subscription made meanwhile is confirmed once the link is back and has subscribed
    // everything again, so from then on the old one delivers too.
    let _new = link
        .subscribe("deliver.bob", Arc::new("bob".into()))
        .await
        .expect("confirmed after the reconnection");
    let publisher = async_nats::connect(&server.url).await.unwrap();
    publisher
        .publish("deliver.ann", "after".into())
        .await
        .unwrap();
    publisher
        .publish("deliver.bob", "new".into())
        .await
        .unwrap();
    let (target, _, payload, _) = next(&mut seen).await;
    assert_eq!((target.as_str(), &payload[..]), ("ann", &b"after"[..]));
    let (target, _, payload, _) = next(&mut seen).await;
    assert_eq!((target.as_str(), &payload[..]), ("bob", &b"new"[..]));
}

#[tokio::test]
async fn the_link_moves_to_the_next_server_of_the_list() {
    let mut first = TestNats::start().await;
    let second = TestNats::start().await;
    let (link, mut seen, _kept) = linked_with_ann(format!("{},{}", first.url, second.url)).await;

    // The first server is gone for good: a subscription made now is confirmed by the
    // second, which has every subscription by then.
    first.kill().await;
    let _new = link
        .subscribe("deliver.bob", Arc::new("bob".into()))
        .await
        .expect("confirmed by the second server");
    assert!(link.is_connected());
    let publisher = async_nats::connect(&second.url).await.unwrap();
    publisher
        .publish("deliver.ann", "moved".into())
        .await
        .unwrap();
    let (target, _, payload, _) = next(&mut seen).await;
    assert_eq!((target.as_str(), &payload[..]), ("ann", &b"moved"[..]));
}

#[tokio::test]
async fn bad_servers_and_subjects_are_clear_errors() {
    let (handler, _seen) = recorder();
    let unreachable = NatsConfig {
        url: "nats://127.0.0.1:1".into(),
        namespace: String::new(),
    };
    let error = Link::connect(&unreachable, "link-test", handler)
        .await
        .unwrap_err();
    assert!(matches!(error, LinkError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");

    let (handler, _seen) = recorder();
    let tls = NatsConfig {
        url: "tls://127.0.0.1:4222".into(),
        namespace: String::new(),
    };
    let error = Link::connect(&tls, "link-test", handler).await.unwrap_err();
    assert!(matches!(error, LinkError::Url { .. }), "{error}");

    let (handler, _seen) = recorder();
    let link = Link::connect(&fresh_nats(), "link-test", handler)
        .await
        .unwrap();
    let error = link
        .subscribe("has space", Arc::new(String::new()))
        .await
        .unwrap_err();
    assert!(matches!(error, LinkError::Subject(_)), "{error}");
    assert_eq!(link.subscriptions(), 0);
}

#[tokio::test]
async fn subscriptions_sent_together_are_active_once_confirmed() {
    let config = fresh_nats();
    let (handler, mut seen) = recorder();
    let link = Link::connect(&config, "link-test", handler).await.unwrap();
    let publisher = async_nats::connect(&config.url).await.unwrap();
    let subjects: Vec<String> = (0..3)
        .map(|n| format!("{}.deliver.user{n}", config.namespace))
        .collect();
    // Sent without waiting (as under a lock), confirmed afterwards.
    let sent: Vec<_> = subjects
        .iter()
        .enumerate()
        .map(|(n, subject)| {
            link.subscribe_unconfirmed(subject, Arc::new(format!("user{n}")))
                .unwrap()
        })
        .collect();
    let mut held = Vec::new();
    for (subscription, confirmation) in sent {
        confirmation.confirmed().await.unwrap();
        held.push(subscription);
    }
    assert_eq!(link.subscriptions(), 3);
    for subject in &subjects {
        publisher
            .publish(subject.clone(), "hi".into())
            .await
            .unwrap();
    }
    for (n, expected) in subjects.iter().enumerate() {
        let (target, subject, _, _) = next(&mut seen).await;
        assert_eq!((target, &subject), (format!("user{n}"), expected));
    }
    assert!(matches!(
        link.subscribe_unconfirmed("has space", Arc::new(String::new())),
        Err(LinkError::Subject(_))
    ));
}
