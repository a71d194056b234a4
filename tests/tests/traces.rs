//! One message sent by one user is one trace, across processes and the broker: the real
//! `svc-bff` and `svc-chat` binaries export to an in-process OTLP receiver (svc-chat over
//! OTLP/gRPC, the gateway over OTLP/HTTP), and the spans must chain
//! WebSocket frame → gateway client call → svc-chat → outbox relay → JetStream → fan-out →
//! gateway → socket write, with producer/consumer links across NATS.

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use tertulia_plumbing::config::{NatsConfig, PostgresConfig};
use tertulia_tests::{
    Stack, TEST_SIGNING_KEY, WsClient, database_url, drop_schema, drop_streams, fresh_database,
    fresh_nats,
    media::{tus_create, video_fixture, wait_for_video},
    otlp::{OtlpReceiver, ReceivedSpan, kind},
    process::{exits_cleanly_within, free_port, gateway, on_nats, sigterm, until_ready},
};

/// The span named `name` of `kind` from `service` (exactly one).
fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, kind: i32) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name && s.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {service} {name:?}: {spans:#?}");
    found[0]
}

fn children<'a>(
    spans: &'a [ReceivedSpan],
    parent: &ReceivedSpan,
    name: &str,
) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
        .collect()
}

/// A consumer span continues its producer's trace and links to it.
fn assert_consumes(consumer: &ReceivedSpan, producer: &ReceivedSpan) {
    assert_eq!(consumer.parent_span_id, producer.span_id, "{consumer:#?}");
    assert!(
        consumer
            .links
            .contains(&(producer.trace_id.clone(), producer.span_id.clone())),
        "linked to its producer: {consumer:#?}"
    );
    assert_eq!(consumer.attribute("messaging.system"), Some("nats"));
    assert_eq!(
        consumer.attribute("messaging.operation.type"),
        Some("process")
    );
}

fn complete(spans: &[ReceivedSpan]) -> bool {
    let count = |service: &str, name: &str| {
        spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .count()
    };
    count("svc-bff", "websocket send") == 1
        && count("svc-chat", "process CHAT") == 1
        && count("svc-chat", "send deliver.{user_id}") == 1
        // Both members' connections receive the message.
        && count("svc-bff", "process deliver.{user_id}") == 2
        && count("svc-bff", "write websocket") == 2
}

/// svc-chat as a real process exporting over OTLP/gRPC, in `database` and `nats`.
fn spawn_chat(
    receiver: &OtlpReceiver,
    database: &PostgresConfig,
    nats: &NatsConfig,
) -> (tokio::process::Child, SocketAddr) {
    let chat = free_port();
    let mut command = on_nats("svc-chat", nats);
    command
        .env("TERTULIA_CHAT_GRPC__LISTEN", chat.to_string())
        .env("TERTULIA_CHAT_DATABASE__URL", database_url())
        .env("TERTULIA_CHAT_DATABASE__SCHEMA", &database.schema);
    receiver.export_from(&mut command, "grpc", 100);
    let process = command.spawn().unwrap();
    (process, chat)
}

/// Where a gateway process sends each kind of call.
struct Upstreams {
    chat: SocketAddr,
    catalog: SocketAddr,
    media: SocketAddr,
}

/// The gateway as a real process exporting over OTLP/HTTP every `batch_delay_ms`, talking to
/// `upstreams` and to the rest of `stack`.
fn spawn_bff(
    receiver: &OtlpReceiver,
    stack: &Stack,
    upstreams: &Upstreams,
    nats: &NatsConfig,
    batch_delay_ms: u64,
) -> (tokio::process::Child, SocketAddr) {
    let bff = free_port();
    let upstreams = [
        ("chat", format!("http://{}", upstreams.chat)),
        ("catalog", format!("http://{}", upstreams.catalog)),
        ("media", format!("http://{}", upstreams.media)),
    ];
    let mut command = gateway(stack, bff, nats, &upstreams);
    receiver.export_from(&mut command, "http/protobuf", batch_delay_ms);
    let process = command.spawn().unwrap();
    (process, bff)
}

#[tokio::test]
async fn one_message_is_one_trace_across_services_and_the_broker() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;

    // svc-chat and the gateway as real processes, in a namespace and schema of their own.
    let (database, nats) = (fresh_database(), fresh_nats());
    let (mut chat_process, chat) = spawn_chat(&receiver, &database, &nats);
    let upstreams = Upstreams {
        chat,
        catalog: stack.catalog,
        media: stack.media,
    };
    // Nothing leaves the gateway before it shuts down: its spans prove the flush.
    let (mut bff_process, bff) = spawn_bff(&receiver, &stack, &upstreams, &nats, 600_000);
    until_ready(&stack.http, chat).await;
    until_ready(&stack.http, bff).await;

    let created = stack
        .http
        .post(format!("http://{bff}/api/v2/conversations"))
        .bearer_auth(&alice.access_token)
        .json(&json!({"kind": "group", "member_ids": [bob.user_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let conversation: Value = created.json().await.unwrap();

    let mut bobs = WsClient::ready_version(bff, "v2", &bob.access_token, &json!({})).await;
    let mut alices = WsClient::ready_version(bff, "v2", &alice.access_token, &json!({})).await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    alices
        .send(&json!({
            "type": "send",
            "conversation_id": conversation["id"],
            "client_msg_id": "traced-1",
            "content": {"type": "text", "text": "follow me"},
            "traceparent": format!("00-{trace_id}-{CLIENT_SPAN}-01"),
        }))
        .await;
    assert_eq!(alices.frame_of("ack").await["client_msg_id"], "traced-1");
    assert_eq!(
        bobs.frame_of("message").await["message"]["content"]["text"],
        "follow me"
    );

    // The same over REST: the `traceparent` header.
    let rest_trace = uuid::Uuid::new_v4().simple().to_string();
    let sent = stack
        .http
        .post(format!(
            "http://{bff}/api/v2/conversations/{}/messages",
            conversation["id"].as_str().unwrap()
        ))
        .bearer_auth(&alice.access_token)
        .header("traceparent", format!("00-{rest_trace}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "support-ticket-42")
        .json(&json!({"client_msg_id": "traced-2", "content": {"type": "text", "text": "and me"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);
    // Its delivery has been written before the gateway is stopped (else the trace may end
    // without its `write websocket` span: a race the test itself would cause).
    assert_eq!(
        bobs.frame_of("message").await["message"]["content"]["text"],
        "and me"
    );

    // svc-chat exports as it goes.
    receiver
        .trace(&trace_id, Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "send deliver.{user_id}")
        })
        .await;
    // The gateway's spans leave only with the flush at shutdown.
    assert!(
        receiver
            .spans_of(&trace_id)
            .iter()
            .all(|s| s.service == "svc-chat")
    );
    sigterm(&bff_process);
    exits_cleanly_within(&mut bff_process, 15).await;
    let spans = receiver
        .trace(&trace_id, Duration::from_secs(20), complete)
        .await;
    assert_chain(&spans);
    assert_eq!(
        one(&spans, "svc-bff", "websocket send", kind::SERVER).attribute("enduser.id"),
        Some(alice.user_id.as_str())
    );
    let rest = receiver
        .trace(&rest_trace, Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name.starts_with("POST "))
                && spans.iter().any(|s| s.name == "write websocket")
        })
        .await;
    assert_rest(&rest, &alice.user_id);

    chat_process.kill().await.unwrap();
    drop_schema(&database.schema);
    drop_streams(&nats);
}

/// A REST send: the route's server span continues the header's trace, names the caller and
/// the request id, and parents the call to svc-chat.
fn assert_rest(spans: &[ReceivedSpan], user_id: &str) {
    let route = "POST /api/v2/conversations/{id}/messages";
    let http = one(spans, "svc-bff", route, kind::SERVER);
    assert_eq!(http.parent_span_id, CLIENT_SPAN);
    assert_eq!(
        http.attribute("http.route"),
        Some("/api/v2/conversations/{id}/messages")
    );
    assert_eq!(http.attribute("http.request.method"), Some("POST"));
    assert_eq!(http.attribute("http.response.status_code"), Some("201"));
    assert_eq!(http.attribute("enduser.id"), Some(user_id));
    assert_eq!(
        http.attribute("http.request.header.x-request-id"),
        Some("support-ticket-42")
    );
    let rpc = "tertulia.chat.v2.ChatService/SendMessage";
    let call = one(spans, "svc-bff", rpc, kind::CLIENT);
    assert_eq!(call.parent_span_id, http.span_id);
    assert_eq!(
        one(spans, "svc-chat", rpc, kind::SERVER).parent_span_id,
        call.span_id
    );
}

/// The span the client's `traceparent` names.
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// Frame → call → svc-chat → relay → JetStream → fan-out → gateway → sockets.
fn assert_chain(spans: &[ReceivedSpan]) {
    // WebSocket frame → gateway's call → svc-chat.
    let frame = one(spans, "svc-bff", "websocket send", kind::SERVER);
    assert_eq!(
        frame.parent_span_id, CLIENT_SPAN,
        "continues the client's trace"
    );
    assert_eq!(frame.via, "http");
    let rpc = "tertulia.chat.v2.ChatService/SendMessage";
    let call = one(spans, "svc-bff", rpc, kind::CLIENT);
    assert_eq!(call.parent_span_id, frame.span_id);
    let served = one(spans, "svc-chat", rpc, kind::SERVER);
    assert_eq!(
        served.parent_span_id, call.span_id,
        "gRPC metadata carried the context"
    );
    assert_eq!(served.via, "grpc");
    for span in [call, served] {
        assert_eq!(span.attribute("rpc.system"), Some("grpc"));
        assert_eq!(
            span.attribute("rpc.service"),
            Some("tertulia.chat.v2.ChatService")
        );
        assert_eq!(span.attribute("rpc.method"), Some("SendMessage"));
        assert_eq!(span.attribute("rpc.grpc.status_code"), Some("0"));
    }

    // The outbox relay continues the send's trace after the commit, through JetStream.
    let publish = one(spans, "svc-chat", "send CHAT", kind::PRODUCER);
    assert_eq!(
        publish.parent_span_id, served.span_id,
        "the outbox row kept the trace"
    );
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    assert!(
        publish
            .attribute("messaging.destination.name")
            .unwrap()
            .ends_with(".message")
    );
    let fanout = one(spans, "svc-chat", "process CHAT", kind::CONSUMER);
    assert_consumes(fanout, publish);
    assert_eq!(
        fanout.attribute("messaging.consumer.group.name"),
        Some("fanout")
    );
    let deliver = one(spans, "svc-chat", "send deliver.{user_id}", kind::PRODUCER);
    assert_eq!(deliver.parent_span_id, fanout.span_id);

    // Core NATS to the gateway, then each member's socket.
    let consumers = children(spans, deliver, "process deliver.{user_id}");
    assert_eq!(consumers.len(), 2, "one per member's subscription");
    for consumer in consumers {
        assert_eq!(consumer.service, "svc-bff");
        assert_consumes(consumer, deliver);
        let writes = children(spans, consumer, "write websocket");
        assert_eq!(writes.len(), 1, "{spans:#?}");
        assert_eq!(writes[0].kind, kind::PRODUCER);
    }
    assert!(
        spans.iter().all(|s| s.status != 2),
        "nothing failed: {spans:#?}"
    );
}

/// svc-media and svc-catalog as real processes exporting over OTLP/gRPC, in `nats`, with
/// their own schemas and a scratch folder for blobs; returns them with media's gRPC, media's
/// HTTP and catalog's gRPC addresses.
fn spawn_video(
    receiver: &OtlpReceiver,
    nats: &NatsConfig,
    dir: &std::path::Path,
) -> (Vec<tokio::process::Child>, [SocketAddr; 3], [String; 2]) {
    let (media, origin, catalog) = (free_port(), free_port(), free_port());
    let (media_schema, catalog_schema) = (fresh_database().schema, fresh_database().schema);
    let exporting = |name: &str| {
        let mut command = on_nats(name, nats);
        command.env("TERTULIA_DATABASE__URL", database_url());
        receiver.export_from(&mut command, "grpc", 100);
        command
    };
    let mut media_command = exporting("svc-media");
    media_command
        .env("TERTULIA_MEDIA_GRPC__LISTEN", media.to_string())
        .env("TERTULIA_MEDIA_HTTP_LISTEN", origin.to_string())
        .env("TERTULIA_MEDIA_PUBLIC_URL", format!("http://{origin}"))
        .env("TERTULIA_MEDIA_DATABASE__SCHEMA", &media_schema)
        .env("TERTULIA_MEDIA_BLOBS__KIND", "fs")
        .env("TERTULIA_MEDIA_BLOBS__ROOT", dir.join("blobs"))
        .env("TERTULIA_MEDIA_WORK_DIR", dir.join("work"))
        .env("TERTULIA_MEDIA_SIGNING__CURRENT", "test")
        .env("TERTULIA_MEDIA_SIGNING__KEYS__test", TEST_SIGNING_KEY);
    let mut catalog_command = exporting("svc-catalog");
    catalog_command
        .env("TERTULIA_CATALOG_GRPC__LISTEN", catalog.to_string())
        .env("TERTULIA_CATALOG_DATABASE__SCHEMA", &catalog_schema)
        .env("TERTULIA_CATALOG_MEDIA__URL", format!("http://{media}"));
    let processes = vec![
        media_command.spawn().unwrap(),
        catalog_command.spawn().unwrap(),
    ];
    (
        processes,
        [media, origin, catalog],
        [media_schema, catalog_schema],
    )
}

/// The chain of spans from `span` up to the root of its trace, root first.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut chain = vec![span];
    while let Some(parent) = spans
        .iter()
        .find(|s| s.span_id == chain[chain.len() - 1].parent_span_id)
    {
        chain.push(parent);
    }
    chain.reverse();
    chain
}

#[tokio::test]
async fn an_upload_is_one_trace_from_the_last_byte_to_the_owners_socket() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let nats = fresh_nats();
    let dir = std::env::temp_dir().join(tertulia_tests::unique_name("traced-media"));
    let (_video, [media, origin, catalog], schemas) = spawn_video(&receiver, &nats, &dir);
    let upstreams = Upstreams {
        chat: stack.chat,
        catalog,
        media,
    };
    let (_bff, bff) = spawn_bff(&receiver, &stack, &upstreams, &nats, 100);
    for addr in [media, catalog, bff] {
        until_ready(&stack.http, addr).await;
    }

    let mut socket = WsClient::ready_version(bff, "v2", &alice.access_token, &json!({})).await;
    let created = stack
        .http
        .post(format!("http://{bff}/api/v2/videos"))
        .bearer_auth(&alice.access_token)
        .json(&json!({"title": "Traced", "visibility": "public"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let video: Value = created.json().await.unwrap();
    let bytes = video_fixture(2, 320, 240);
    let upload = tus_create(
        &stack.http,
        video["upload"]["url"].as_str().unwrap(),
        bytes.len(),
    )
    .await;
    assert_eq!(upload.status(), 201);
    let location = upload.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("http://{origin}/")),
        "{location}"
    );
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let patched = stack
        .http
        .patch(&location)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 204);
    wait_for_video(&mut socket, video["id"].as_str().unwrap(), "ready").await;

    // The owner's socket hears "ready" in the trace of the upload: PATCH → uploaded →
    // transcoder → processed → catalog → delivery → socket.
    let reaches_socket =
        |spans: &[ReceivedSpan]| spans.iter().any(|s| write_after_catalog(spans, s));
    let spans = receiver
        .trace(&trace_id, Duration::from_mins(1), reaches_socket)
        .await;
    assert_upload_chain(&spans);

    let _ = std::fs::remove_dir_all(&dir);
    for schema in schemas {
        drop_schema(&schema);
    }
    drop_streams(&nats);
}

/// The owner's socket write descends, in order, from the PATCH through the transcoder, the
/// catalog and the gateway.
fn assert_upload_chain(spans: &[ReceivedSpan]) {
    let write = spans
        .iter()
        .find(|s| write_after_catalog(spans, s))
        .unwrap();
    let chain: Vec<(&str, &str)> = ancestry(spans, write)
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        ancestry(spans, write)[0].parent_span_id,
        CLIENT_SPAN,
        "{chain:?}"
    );
    let expected = [
        ("svc-media", "send MEDIA"),
        ("svc-media", "process MEDIA"),
        ("svc-media", "send MEDIA"),
        ("svc-catalog", "process MEDIA"),
        ("svc-catalog", "send deliver.{user_id}"),
        ("svc-bff", "process deliver.{user_id}"),
        ("svc-bff", "write websocket"),
    ];
    let mut rest = chain.iter();
    for step in expected {
        assert!(rest.any(|c| *c == step), "{step:?} in order in {chain:?}");
    }
    assert_eq!(chain[0].0, "svc-media", "the PATCH is the root: {chain:?}");
}

/// A socket write whose ancestry holds the transcoder's and the catalog's consumers.
fn write_after_catalog(spans: &[ReceivedSpan], span: &ReceivedSpan) -> bool {
    let chain = ancestry(spans, span);
    span.name == "write websocket"
        && chain.iter().any(|a| a.service == "svc-catalog")
        && chain.iter().filter(|a| a.name == "process MEDIA").count() == 2
}
