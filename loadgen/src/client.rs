//! What a client does: accounts and conversations over REST (or made-up ids for the baseline
//! relay, which has neither), and WebSocket connections from several loopback source
//! addresses, each with a reader that records what arrives.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{net::TcpSocket, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::tungstenite::{Message as Ws, Utf8Bytes, protocol::WebSocketConfig};

use crate::stats::Samples;

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes read from a socket at a time. tungstenite zeroes the whole free part of its read
/// buffer before every read: at its default (128 KiB) that memset was a third of the
/// generator's CPU, taken from the system it measures. A gateway write is at most 32 KiB,
/// and a frame larger than the buffer still arrives whole.
const READ_BUFFER: usize = 8 * 1024;

/// What the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Tertulia's gateway: real accounts, tokens and conversations.
    Tertulia,
    /// The baseline relay: the same frames, any token, membership from `resume`.
    Relay,
}

impl Target {
    /// The name `--target` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Tertulia => "tertulia",
            Self::Relay => "relay",
        }
    }
}

/// A user the generator acts as.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
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

/// How a connection dials again when the server closes it as a slow consumer (1013), as an
/// app does: the same user from the same address, resuming from what it has.
#[derive(Debug, Clone)]
pub(crate) struct Redial {
    pub(crate) ep: Endpoint,
    pub(crate) source: IpAddr,
    pub(crate) user: User,
    /// The first `hello`'s `resume`: conversations to catch up on even if nothing of them
    /// has arrived yet.
    pub(crate) resume: Value,
}

/// Close code of a connection the server closed because it read too slowly.
const SLOW_CONSUMER: u16 = 1013;
/// Tries of a redial before the client gives up.
const REDIALS: u32 = 5;

/// What goes out on a connection.
enum Out {
    /// A `send` frame of message number `n`, kept until answered (shared, not copied).
    Send(usize, Utf8Bytes),
    Close,
}

/// A connection in use: frames go out through `outbox`; what arrives is recorded into the
/// client's [`Record`]. Closed by the server as a slow consumer, it dials again with `resume`
/// and sends again what was not answered (the server knows a send again by its
/// `client_msg_id`).
pub(crate) struct Live {
    outbox: mpsc::UnboundedSender<Out>,
    task: JoinHandle<()>,
}

impl Live {
    pub(crate) fn start(
        socket: Socket,
        seen: Record,
        ledger: Option<Arc<Ledger>>,
        redial: Redial,
    ) -> Self {
        let (outbox, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(socket, queue, seen, ledger, redial));
        Self { outbox, task }
    }

    /// Whether the connection has ended (closed, broken, or closed by the server and not
    /// dialled again).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Sends message number `n` into `conversation_id`.
    pub(crate) fn send(&self, conversation_id: &str, n: usize) -> bool {
        self.outbox
            .send(Out::Send(n, send_frame(conversation_id, n).into()))
            .is_ok()
    }

    /// Closes politely and waits (10 s at most) for the server's close.
    pub(crate) async fn close(self) {
        let _ = self.outbox.send(Out::Close);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Drops the connection without a close frame, as a network drop does.
    pub(crate) fn drop_abruptly(self) {
        self.task.abort();
    }
}

/// How one connection ended.
enum Ended {
    /// By the client, or the client went away.
    Closed,
    /// By the server, with this close code.
    Server(u16),
    /// It broke.
    Broken,
}

/// Runs a client's connections: one, and another each time the server closes one as a slow
/// consumer.
async fn run(
    mut socket: Socket,
    mut queue: mpsc::UnboundedReceiver<Out>,
    seen: Record,
    ledger: Option<Arc<Ledger>>,
    redial: Redial,
) {
    // Sends not yet answered, in order: sent again on the next connection.
    let mut unanswered: BTreeMap<usize, Utf8Bytes> = BTreeMap::new();
    loop {
        let ended = serve(
            socket,
            &mut queue,
            &seen,
            ledger.as_deref(),
            &mut unanswered,
        )
        .await;
        if !matches!(ended, Ended::Server(SLOW_CONSUMER)) {
            return;
        }
        let Some(again) = dial_again(&redial, &seen).await else {
            return;
        };
        socket = again;
        let mut seen = seen.lock().expect("a client never panics holding it");
        if let Some(reason) = seen.closed.take() {
            *seen
                .errors
                .entry(format!("closed by the server, resumed: {reason}"))
                .or_default() += 1;
        }
    }
}

/// Dials again, resuming from what arrived; `None` after [`REDIALS`] failures (recorded).
async fn dial_again(redial: &Redial, seen: &Record) -> Option<Socket> {
    let mut resume = redial.resume.clone();
    if let (Some(resume), Value::Object(seen)) = (
        resume.as_object_mut(),
        seen.lock()
            .expect("a client never panics holding it")
            .resume(),
    ) {
        resume.extend(seen);
    }
    let mut failure = String::new();
    for attempt in 0..REDIALS {
        if attempt > 0 {
            // A back-off after a failure, not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(100) * 2u32.pow(attempt)).await;
        }
        match redial
            .ep
            .connect(redial.source, &redial.user, &resume)
            .await
        {
            Ok(socket) => return Some(socket),
            Err(error) => failure = error.to_string(),
        }
    }
    let mut seen = seen.lock().expect("a client never panics holding it");
    *seen
        .errors
        .entry(format!("could not dial again: {failure}"))
        .or_default() += 1;
    None
}

/// One connection: sends what is queued (first what an earlier connection left
/// unanswered) and records what arrives, until it ends.
async fn serve(
    socket: Socket,
    queue: &mut mpsc::UnboundedReceiver<Out>,
    seen: &Record,
    ledger: Option<&Ledger>,
    unanswered: &mut BTreeMap<usize, Utf8Bytes>,
) -> Ended {
    let (mut sink, mut stream) = socket.split();
    for frame in unanswered.values() {
        if sink.send(Ws::Text(frame.clone())).await.is_err() {
            return Ended::Broken;
        }
    }
    loop {
        tokio::select! {
            out = queue.recv() => match out {
                Some(Out::Send(n, frame)) => {
                    unanswered.insert(n, frame.clone());
                    if sink.send(Ws::Text(frame)).await.is_err() {
                        return Ended::Broken;
                    }
                }
                Some(Out::Close) | None => {
                    let _ = sink.send(Ws::Close(None)).await;
                    // What arrives until the server's close still counts.
                    while let Some(Ok(frame)) = stream.next().await {
                        if !receive(frame, seen, ledger, unanswered) {
                            break;
                        }
                    }
                    return Ended::Closed;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Ws::Close(close))) => {
                    let code = close.as_ref().map_or(1005, |c| u16::from(c.code));
                    receive(Ws::Close(close), seen, ledger, unanswered);
                    return Ended::Server(code);
                }
                Some(Ok(frame)) => {
                    receive(frame, seen, ledger, unanswered);
                }
                None | Some(Err(_)) => return Ended::Broken,
            },
        }
    }
}

/// Records an arriving frame; false for the server's close.
fn receive(
    frame: Ws,
    seen: &Record,
    ledger: Option<&Ledger>,
    unanswered: &mut BTreeMap<usize, Utf8Bytes>,
) -> bool {
    let mut seen = seen.lock().expect("a client never panics holding it");
    match frame {
        Ws::Text(text) => {
            if let Some(n) = record(&mut seen, &text, ledger) {
                unanswered.remove(&n);
            }
            true
        }
        Ws::Close(close) => {
            seen.closed = close.map(|c| format!("{} {}", u16::from(c.code), c.reason));
            false
        }
        _ => true,
    }
}

/// Records a text frame; the number of the message it answers, for an `ack` or an `error`.
fn record(seen: &mut Seen, text: &str, ledger: Option<&Ledger>) -> Option<usize> {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        *seen.errors.entry("unreadable frame".into()).or_default() += 1;
        return None;
    };
    let answered = frame.client_msg_id.as_deref().and_then(number);
    let now = Instant::now();
    match frame.kind.as_ref() {
        "message" => {
            let message = frame.message?;
            let fresh = seen
                .seqs
                .entry(message.conversation_id.into_owned())
                .or_default()
                .insert(message.seq);
            if !fresh {
                seen.duplicates += 1;
                return None;
            }
            if let (Some(ledger), Some(n)) = (ledger, number(&message.client_msg_id))
                && let Some(latency) = ledger.since_sent(n, now)
            {
                seen.deliveries.push(latency);
                ledger.delivered[n].fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        "ack" => {
            if let (Some(ledger), Some(n)) = (ledger, answered)
                && let Some(latency) = ledger.since_sent(n, now)
            {
                seen.acks.push(latency);
            }
            answered
        }
        "error" => {
            let code = frame
                .code
                .map_or_else(|| "error".to_owned(), Cow::into_owned);
            *seen.errors.entry(code).or_default() += 1;
            answered
        }
        _ => None,
    }
}

/// A `send` frame of message number `n`.
fn send_frame(conversation_id: &str, n: usize) -> String {
    json!({
        "type": "send",
        "conversation_id": conversation_id,
        "client_msg_id": format!("m{n}"),
        "content": {"type": "text", "text": format!("load message {n}")},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

    use super::*;

    type Server = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    async fn next_json(ws: &mut Server) -> Value {
        loop {
            match ws.next().await.expect("a frame").expect("a good frame") {
                Ws::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Ws::Close(_) => return json!({"type": "close"}),
                _ => {}
            }
        }
    }

    async fn say(ws: &mut Server, frame: Value) {
        ws.send(Ws::text(frame.to_string())).await.expect("sent");
    }

    fn message(seq: u64, n: usize) -> Value {
        json!({"type": "message", "conversation_id": "c1",
               "message": {"conversation_id": "c1", "seq": seq, "client_msg_id": format!("m{n}")}})
    }

    /// A server that closes the first connection as a slow consumer before answering a send,
    /// and checks that the second resumes and sends it again.
    async fn serve_twice(listener: TcpListener) {
        let mut ws = tokio_tungstenite::accept_async(listener.accept().await.unwrap().0)
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "hello");
        say(&mut ws, json!({"type": "ready"})).await;
        say(&mut ws, message(1, 0)).await;
        assert_eq!(next_json(&mut ws).await["client_msg_id"], "m1");
        ws.close(Some(CloseFrame {
            code: CloseCode::Again,
            reason: "client reads too slowly".into(),
        }))
        .await
        .unwrap();

        let mut ws = tokio_tungstenite::accept_async(listener.accept().await.unwrap().0)
            .await
            .unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(
            hello["resume"],
            json!({"c1": 1}),
            "resumes from what arrived"
        );
        say(&mut ws, json!({"type": "ready"})).await;
        assert_eq!(
            next_json(&mut ws).await["client_msg_id"],
            "m1",
            "the unanswered send, again"
        );
        say(&mut ws, json!({"type": "ack", "client_msg_id": "m1"})).await;
        say(&mut ws, message(2, 1)).await;
        assert_eq!(next_json(&mut ws).await["type"], "close");
    }

    #[tokio::test]
    async fn a_slow_consumer_closed_by_the_server_dials_again_resumes_and_sends_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve_twice(listener));
        let ep = Endpoint::new(&url, Target::Relay, 1).unwrap();
        let user = User {
            id: "u".into(),
            token: "t".into(),
        };
        let resume = json!({"c1": 0});
        let socket = ep.connect(ep.sources[0], &user, &resume).await.unwrap();
        let seen = Record::default();
        let ledger = Ledger::new(2);
        let redial = Redial {
            ep: ep.clone(),
            source: ep.sources[0],
            user,
            resume,
        };
        let live = Live::start(socket, Arc::clone(&seen), Some(Arc::clone(&ledger)), redial);
        ledger.sent(1, Instant::now());
        assert!(live.send("c1", 1));
        tokio::time::timeout(Duration::from_secs(10), async {
            while ledger.delivered(1) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("message 1 delivered on the second connection");
        live.close().await;
        server.await.expect("the server saw what it expected");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.seqs["c1"], HashSet::from([1, 2]));
        assert_eq!(seen.acks.clone().summary().count, 1);
        assert_eq!(
            seen.errors
                .get("closed by the server, resumed: 1013 client reads too slowly"),
            Some(&1),
            "{:?}",
            seen.errors
        );
    }
}
