//! The fallback transports: Server-Sent Events and long polling carry the same frames as the
//! WebSocket, with the same resume rule.

use std::collections::VecDeque;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tertulia_tests::{FRAME_WAIT, Session, Stack, assert_problem, broker::Broker};

async fn say(stack: &Stack, who: &Session, conversation: &str, key: &str) {
    stack.send(who, conversation, key, key).await;
}

/// A minimal SSE reader: yields `(id, data as JSON)` per event.
struct EventStream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    ready: VecDeque<(Option<String>, Value)>,
}

impl EventStream {
    async fn open(
        stack: &Stack,
        session: &Session,
        last_event_id: Option<&str>,
        query: &str,
    ) -> Self {
        Self::open_version(stack, "v1", session, last_event_id, query).await
    }

    async fn open_version(
        stack: &Stack,
        version: &str,
        session: &Session,
        last_event_id: Option<&str>,
        query: &str,
    ) -> Self {
        let mut request = stack
            .http
            .get(stack.url(&format!("/api/{version}/events{query}")))
            .bearer_auth(&session.access_token)
            .timeout(std::time::Duration::from_mins(5));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            ready: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> (Option<String>, Value) {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let chunk = tokio::time::timeout(FRAME_WAIT, self.body.next())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    self.ready
                        .push_back((id, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    }

    async fn message(&mut self) -> (String, u64) {
        loop {
            let (id, frame) = self.next().await;
            if frame["type"] == "message" {
                return (
                    id.expect("message events carry an id"),
                    frame["message"]["seq"].as_u64().unwrap(),
                );
            }
        }
    }
}

#[tokio::test]
async fn server_sent_events_deliver_live_and_resume_from_last_event_id() {
    let stack = Stack::start().await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;

    let mut events = EventStream::open(&stack, &ben, None, "").await;
    assert_eq!(events.next().await.1["type"], "ready");
    say(&stack, &ana, &conversation, "one").await;
    let (last_id, seq) = events.message().await;
    assert_eq!(seq, 1);
    drop(events);

    for key in ["two", "three"] {
        say(&stack, &ana, &conversation, key).await;
    }
    let mut events = EventStream::open(&stack, &ben, Some(&last_id), "").await;
    assert_eq!(events.next().await.1["type"], "ready");
    assert_eq!(events.message().await.1, 2);
    assert_eq!(events.message().await.1, 3);

    // `resume` as a JSON object works for the first connection too.
    let query = format!(
        "?resume={}",
        urlencode(&json!({ conversation.clone(): 1 }).to_string())
    );
    let mut fresh = EventStream::open(&stack, &ben, None, &query).await;
    assert_eq!(fresh.next().await.1["type"], "ready");
    assert_eq!(fresh.message().await.1, 2);

    let bad = stack
        .http
        .get(stack.url("/api/v1/events"))
        .bearer_auth(&ben.access_token)
        .header("last-event-id", "garbage!")
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400, "invalid_argument").await;
    let anonymous = stack.get("/api/v1/events", None).await;
    assert_problem(anonymous, 401, "unauthenticated").await;
}

#[tokio::test]
async fn server_sent_events_fill_a_gap_the_broker_left_once_the_reorder_wait_is_over() {
    let broker = Broker::start(Stack::start().await).await;
    let mut events = EventStream::open(&broker.stack, &broker.ben, None, "").await;
    assert_eq!(events.next().await.1["type"], "ready");
    // Seq 2 never comes live: it is read from history, and seq 3 follows it.
    broker.deliver(1, "x").await;
    broker.deliver(3, "x").await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(events.message().await.1);
    }
    assert_eq!(seqs, [1, 2, 3]);
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn long_polling_waits_answers_and_resumes_by_cursor() {
    let stack = Stack::start_tuned(|_| {}, |bff| bff.realtime.poll_wait_s = 1).await;
    let ana = stack.signed_up("ana").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ana, &[&ben]).await;
    say(&stack, &ana, &conversation, "old").await;

    let poll = |cursor: Option<String>| {
        let stack = &stack;
        let ben = &ben;
        async move {
            let path = cursor.map_or("/api/v1/poll".to_owned(), |c| {
                format!("/api/v1/poll?cursor={c}")
            });
            let answer = stack.get(&path, Some(&ben.access_token)).await;
            assert_eq!(answer.status(), 200);
            let body: Value = answer.json().await.unwrap();
            body
        }
    };
    // A first poll starts from now: the old message is history, not an event.
    let first = poll(None).await;
    let early = first["events"].as_array().unwrap();
    assert!(early.iter().all(|f| f["type"] != "message"), "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();

    for key in ["a", "b", "c"] {
        say(&stack, &ana, &conversation, key).await;
    }
    let second = poll(Some(cursor)).await;
    let seqs: Vec<u64> = second["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);

    // Waiting: a message sent during the poll answers it.
    let cursor = second["cursor"].as_str().unwrap().to_owned();
    let (third, ()) = tokio::join!(poll(Some(cursor.clone())), async {
        say(&stack, &ana, &conversation, "d").await;
    });
    let events = third["events"].as_array().unwrap();
    assert!(events.iter().any(|f| f["message"]["seq"] == 5), "{third}");

    let bad = stack
        .get("/api/v1/poll?cursor=garbage!", Some(&ben.access_token))
        .await;
    assert_problem(bad, 400, "invalid_argument").await;
}

/// `/api/v2/events` and `/api/v2/poll` carry messages in v2's shape (structured `content`).
#[tokio::test]
async fn the_v2_fallbacks_carry_v2_messages() {
    let stack = Stack::start_tuned(|_| {}, |bff| bff.realtime.poll_wait_s = 1).await;
    let ann = stack.signed_up("ann").await;
    let ben = stack.signed_up("ben").await;
    let conversation = stack.group(&ann, &[&ben]).await;
    let messages = format!("/api/v2/conversations/{conversation}/messages");
    let say = |key: &'static str| {
        let body = json!({"client_msg_id": key, "content": {"type": "text", "text": key}});
        let (stack, messages, token) = (&stack, &messages, ann.access_token.clone());
        async move {
            let answer = stack.post(messages, &body, Some(&token)).await;
            assert_eq!(answer.status(), 201);
        }
    };
    say("one").await;

    let resume = format!("?resume=%7B%22{conversation}%22%3A0%7D");
    let mut events = EventStream::open_version(&stack, "v2", &ben, None, &resume).await;
    assert_eq!(events.next().await.1["type"], "ready");
    let (_, frame) = events.next().await;
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(
        frame["message"]["content"],
        json!({"type": "text", "text": "one"})
    );
    assert!(frame["message"].get("text").is_none());

    let first: Value = stack
        .get_json("/api/v2/poll", Some(&ben.access_token))
        .await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    say("two").await;
    let polled: Value = stack
        .get(
            &format!("/api/v2/poll?cursor={cursor}"),
            Some(&ben.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    let message = polled["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "message")
        .unwrap_or_else(|| panic!("a message in {polled}"));
    assert_eq!(
        message["message"]["content"],
        json!({"type": "text", "text": "two"})
    );
}
