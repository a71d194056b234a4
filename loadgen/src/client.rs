//! What a client does: accounts and conversations over REST (or made-up ids for the baseline
//! relay, which has neither), and WebSocket connections from several loopback source
//! addresses, each with a reader that records what arrives.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{net::TcpSocket, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::stats::Samples;

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Tertulia's gateway: real accounts, tokens and conversations.
    Tertulia,
    /// The baseline relay: the same frames, any token, membership from `resume`.
    Relay,
}

/// A user the generator acts as.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) token: String,
}

const PASSWORD: &str = "load-generator-password";

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) http: String,
    pub(crate) addr: SocketAddr,
    pub(crate) target: Target,
    /// Loopback source addresses to spread connections over (each has its own ephemeral
    /// port range).
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) http_client: reqwest::Client,
}

impl Endpoint {
    pub(crate) fn new(url: &str, target: Target, sources: u8) -> Result<Self, Error> {
        let http = url.trim_end_matches('/').to_owned();
        let authority = http
            .strip_prefix("http://")
            .ok_or("--url must be http://host:port")?;
        let addr: SocketAddr = authority.parse()?;
        let sources = (1..=sources.max(1))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
            .collect();
        Ok(Self {
            http,
            addr,
            target,
            sources,
            http_client: reqwest::Client::builder()
                .timeout(Duration::from_mins(1))
                .build()?,
        })
    }

    async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Result<Value, Error> {
        let mut request = self
            .http_client
            .post(format!("{}/api/v2{path}", self.http))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status} {text}").into());
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// `count` users: registered and signed in (Tertulia), or made up (relay). `concurrency`
    /// registrations at a time (each costs an Argon2id hash on the server).
    pub(crate) async fn users(&self, count: usize, concurrency: usize) -> Result<Vec<User>, Error> {
        if self.target == Target::Relay {
            return Ok((0..count)
                .map(|i| User {
                    id: format!("u{i}"),
                    token: format!("u{i}"),
                })
                .collect());
        }
        let run = uuid::Uuid::now_v7().simple().to_string();
        let run = &run[run.len() - 8..];
        let made = futures::stream::iter(0..count)
            .map(|i| {
                let username = format!("load_{run}_{i}");
                async move {
                    let body = json!({"username": username, "password": PASSWORD});
                    self.post("/auth/register", &body, None).await?;
                    let tokens = self.post("/auth/login", &body, None).await?;
                    Ok::<_, Error>(User {
                        id: field(&tokens, "user_id")?,
                        token: field(&tokens, "access_token")?,
                    })
                }
            })
            .buffered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        made.into_iter().collect()
    }

    /// A conversation of `members` (the first creates it): its id.
    pub(crate) async fn conversation(
        &self,
        members: &[&User],
        index: usize,
    ) -> Result<String, Error> {
        if self.target == Target::Relay {
            return Ok(format!("c{index}"));
        }
        let (creator, others) = members
            .split_first()
            .ok_or("a conversation needs members")?;
        let ids: Vec<&str> = others.iter().map(|u| u.id.as_str()).collect();
        let body = if ids.len() == 1 {
            json!({"kind": "direct", "member_ids": ids})
        } else {
            json!({"kind": "group", "member_ids": ids, "title": format!("load {index}")})
        };
        let created = self
            .post("/conversations", &body, Some(&creator.token))
            .await?;
        field(&created, "id")
    }

    /// Opens a WebSocket from `source`, says hello with `resume`, waits for `ready`.
    pub(crate) async fn connect(
        &self,
        source: IpAddr,
        user: &User,
        resume: &Value,
    ) -> Result<Socket, Error> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}/api/v2/ws", self.addr);
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        let hello = json!({"type": "hello", "token": user.token, "resume": resume});
        ws.send(Ws::text(hello.to_string())).await?;
        let deadline = Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout(deadline, ws.next())
                .await
                .map_err(|_| "no ready frame within 30 s")?
                .ok_or("closed before ready")??;
            if let Ws::Text(text) = frame {
                let value: Value = serde_json::from_str(&text)?;
                match value["type"].as_str() {
                    Some("ready") => return Ok(ws),
                    Some("error") => return Err(format!("hello refused: {value}").into()),
                    _ => {}
                }
            }
        }
    }
}

fn field(value: &Value, name: &str) -> Result<String, Error> {
    value[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("answer without {name}: {value}").into())
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Send times and delivery counts of every message of a run, by message number (the
/// `client_msg_id` is `m<number>`).
#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) base: Instant,
    sent_us: Vec<AtomicU64>,
    delivered: Vec<AtomicU32>,
}

impl Ledger {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            sent_us: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Records message `n` as sent at `at` (its scheduled time, so a lagging sender cannot
    /// hide latency).
    pub(crate) fn sent(&self, n: usize, at: Instant) {
        let us = u64::try_from(at.duration_since(self.base).as_micros()).unwrap_or(u64::MAX);
        self.sent_us[n].store(us.max(1), Ordering::Relaxed);
    }

    fn since_sent(&self, n: usize, now: Instant) -> Option<Duration> {
        let us = self.sent_us.get(n)?.load(Ordering::Relaxed);
        (us > 0).then(|| {
            now.duration_since(self.base)
                .saturating_sub(Duration::from_micros(us))
        })
    }

    /// Deliveries of message `n` so far.
    pub(crate) fn delivered(&self, n: usize) -> u32 {
        self.delivered[n].load(Ordering::Relaxed)
    }
}

/// What one client saw (kept across its reconnections).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Seqs received per conversation.
    pub(crate) seqs: HashMap<String, HashSet<u64>>,
    pub(crate) duplicates: u64,
    pub(crate) acks: Samples,
    pub(crate) deliveries: Samples,
    pub(crate) errors: HashMap<String, u64>,
    /// How the connection ended, when the server closed it.
    pub(crate) closed: Option<String>,
}

impl Seen {
    /// The highest seq up to which nothing is missing, per conversation (what `resume` sends).
    pub(crate) fn resume(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .seqs
            .iter()
            .map(|(conversation, seqs)| {
                let mut last = 0;
                while seqs.contains(&(last + 1)) {
                    last += 1;
                }
                (conversation.clone(), json!(last))
            })
            .collect();
        Value::Object(map)
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<MessageFrame<'a>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageFrame<'a> {
    #[serde(borrow)]
    conversation_id: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    client_msg_id: Cow<'a, str>,
}

fn number(client_msg_id: &str) -> Option<usize> {
    client_msg_id.strip_prefix('m')?.parse().ok()
}

/// What a client saw, shared by its successive connections.
pub(crate) type Record = Arc<Mutex<Seen>>;

/// A connection in use: frames go out through `outbox`; the reader records into the client's
/// [`Record`].
pub(crate) struct Live {
    outbox: mpsc::UnboundedSender<Ws>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Live {
    pub(crate) fn start(socket: Socket, seen: Record, ledger: Option<Arc<Ledger>>) -> Self {
        let (mut sink, mut stream) = socket.split();
        let (outbox, mut queue) = mpsc::unbounded_channel::<Ws>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                let close = matches!(frame, Ws::Close(_));
                if sink.send(frame).await.is_err() || close {
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let mut seen = seen.lock().expect("a reader never panics holding it");
                match frame {
                    Ws::Text(text) => record(&mut seen, &text, ledger.as_deref()),
                    Ws::Close(close) => {
                        seen.closed = close.map(|c| format!("{} {}", u16::from(c.code), c.reason));
                        break;
                    }
                    _ => {}
                }
            }
        });
        Self {
            outbox,
            reader,
            writer,
        }
    }

    /// Whether the connection has ended (the server closed it, or it broke).
    pub(crate) fn is_finished(&self) -> bool {
        self.reader.is_finished()
    }

    /// Sends a JSON frame.
    pub(crate) fn send(&self, frame: String) -> bool {
        self.outbox.send(Ws::text(frame)).is_ok()
    }

    /// Closes politely and waits (10 s at most) for the server's close.
    pub(crate) async fn close(self) {
        let _ = self.outbox.send(Ws::Close(None));
        let _ = tokio::time::timeout(Duration::from_secs(10), self.reader).await;
        self.writer.abort();
    }

    /// Drops the connection without a close frame, as a network drop does.
    pub(crate) fn drop_abruptly(self) {
        self.writer.abort();
        self.reader.abort();
    }
}

fn record(seen: &mut Seen, text: &str, ledger: Option<&Ledger>) {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        *seen.errors.entry("unreadable frame".into()).or_default() += 1;
        return;
    };
    let now = Instant::now();
    match frame.kind.as_ref() {
        "message" => {
            let Some(message) = frame.message else { return };
            let fresh = seen
                .seqs
                .entry(message.conversation_id.into_owned())
                .or_default()
                .insert(message.seq);
            if !fresh {
                seen.duplicates += 1;
                return;
            }
            if let (Some(ledger), Some(n)) = (ledger, number(&message.client_msg_id))
                && let Some(latency) = ledger.since_sent(n, now)
            {
                seen.deliveries.push(latency);
                ledger.delivered[n].fetch_add(1, Ordering::Relaxed);
            }
        }
        "ack" => {
            if let (Some(ledger), Some(n)) =
                (ledger, frame.client_msg_id.as_deref().and_then(number))
                && let Some(latency) = ledger.since_sent(n, now)
            {
                seen.acks.push(latency);
            }
        }
        "error" => {
            let code = frame
                .code
                .map_or_else(|| "error".to_owned(), Cow::into_owned);
            *seen.errors.entry(code).or_default() += 1;
        }
        _ => {}
    }
}

/// A `send` frame of message number `n`.
pub(crate) fn send_frame(conversation_id: &str, n: usize) -> String {
    json!({
        "type": "send",
        "conversation_id": conversation_id,
        "client_msg_id": format!("m{n}"),
        "content": {"type": "text", "text": format!("load message {n}")},
    })
    .to_string()
}
