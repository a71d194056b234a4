//! A core-NATS connection made for many subscriptions at a few dozen bytes each: the
//! gateway's one subscription per connected user.
//!
//! A general client gives every subscription its own channel, and a channel allocates its
//! first block of slots up front: with `async-nats` that is 32 messages of about 190 bytes,
//! some 6 KiB per subscription, which was more than half of a gateway's memory per idle
//! connection. A [`Link`] keeps one table from subscription id to a target instead and
//! hands each message straight to one handler, on the task that reads the socket; the
//! handler must not wait (the gateway's only offers the event to bounded queues).
//!
//! It speaks the client protocol (`INFO`, `CONNECT`, `SUB`, `UNSUB`, `MSG`, `HMSG`,
//! `PING`/`PONG`) over plain TCP, with the user and password or token of the URL. When the
//! server goes away it connects to the next one of the list, with a growing pause, and
//! subscribes everything again. As with any core subscription, what is published while it
//! is away is not delivered; the gateway's readers fill such gaps from history.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
    time::{Instant, MissedTickBehavior, interval_at, sleep, timeout},
};

use crate::config::{NatsConfig, url_list};

/// How long connecting to one server (TCP and handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a subscribe waits for the server to confirm it.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive: a `PING` this often; a connection that leaves two unanswered is dead.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Unanswered keepalives after which the connection is given up.
const MAX_PINGS_OUT: usize = 2;
/// Pauses between reconnection rounds, growing to the last.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];
/// The longest protocol line accepted (a `MSG` line with a long subject and reply).
const MAX_LINE: usize = 4096;
/// What each read of the socket has room for, at least a quarter of.
const READ_ROOM: usize = 64 * 1024;
/// The largest message accepted; the server's own limit is far lower (1 MiB by default).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A message on one of the link's subscriptions.
#[derive(Debug)]
pub struct Inbound {
    /// The subject it was published to.
    pub subject: String,
    /// Its headers, when it has some.
    pub headers: Option<async_nats::HeaderMap>,
    /// Its payload.
    pub payload: Bytes,
}

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No server of the configuration could be reached or accepted the connection.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The configured URL(s).
        url: String,
        /// Why, for the last server tried.
        reason: String,
    },
    /// A server URL of the configuration is not one this link can use.
    #[error("invalid NATS server URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A subject with whitespace or nothing in it.
    #[error("invalid subject {0:?}")]
    Subject(String),
    /// The server did not confirm a subscription in time.
    #[error("NATS did not confirm the subscription in time")]
    Timeout,
    /// The link has stopped.
    #[error("the NATS link is closed")]
    Closed,
}

/// One server of the list.
#[derive(Clone, PartialEq, Eq)]
struct Server {
    address: String,
    user: Option<String>,
    pass: Option<String>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl Server {
    fn parse(url: &str) -> Result<Self, LinkError> {
        let invalid = |reason| LinkError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = match url.split_once("://") {
            Some(("nats", rest)) => rest,
            Some(_) => return Err(invalid("only nats:// (plain TCP) is supported")),
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host) = match rest.rsplit_once('@') {
            Some((credentials, host)) => (Some(credentials), host),
            None => (None, rest),
        };
        if host.is_empty() || host.contains('/') {
            return Err(invalid("expected host:port"));
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.contains(']'));
        let address = if has_port {
            host.to_owned()
        } else {
            format!("{host}:4222")
        };
        let (user, pass) = match credentials.map(|c| c.split_once(':')) {
            None => (None, None),
            Some(None) => (credentials.map(str::to_owned), None),
            Some(Some((user, pass))) => (Some(user.to_owned()), Some(pass.to_owned())),
        };
        Ok(Self {
            address,
            user,
            pass,
        })
    }

    /// The `CONNECT` line: a URL's lone credential is a token, a pair is user and password.
    fn connect_line(&self, name: &str) -> String {
        let mut options = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "echo": true,
            "name": name,
        });
        match (&self.user, &self.pass) {
            (Some(user), Some(pass)) => {
                options["user"] = user.as_str().into();
                options["pass"] = pass.as_str().into();
            }
            (Some(token), None) => options["auth_token"] = token.as_str().into(),
            _ => {}
        }
        format!("CONNECT {options}\r\n")
    }
}

struct Route<T> {
    subject: Box<str>,
    target: Arc<T>,
}

type Table<T> = Arc<Mutex<HashMap<u64, Route<T>>>>;

fn lock<T>(table: &Table<T>) -> MutexGuard<'_, HashMap<u64, Route<T>>> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Command {
    Subscribe {
        sid: u64,
        subject: Box<str>,
        done: oneshot::Sender<()>,
    },
    Unsubscribe {
        sid: u64,
    },
}

struct Shared<T> {
    table: Table<T>,
    commands: mpsc::UnboundedSender<Command>,
    next_sid: AtomicU64,
    connected: Arc<AtomicBool>,
}

/// A connection whose subscriptions each hand their messages to a target of type `T`.
/// Cloning shares the connection; it closes when the last clone and subscription are gone.
pub struct Link<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Link<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("subscriptions", &lock(&self.shared.table).len())
            .finish_non_exhaustive()
    }
}

/// An active subscription; dropping it unsubscribes.
pub struct Subscription<T> {
    sid: u64,
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        lock(&self.shared.table).remove(&self.sid);
        // The link may be gone already; then so is the subscription.
        let _ = self
            .shared
            .commands
            .send(Command::Unsubscribe { sid: self.sid });
    }
}

/// Resolves once the server has a subscription made with
/// [`Link::subscribe_unconfirmed`].
#[derive(Debug)]
#[must_use = "the subscription may not be active before it is confirmed"]
pub struct Confirmation(oneshot::Receiver<()>);

impl Confirmation {
    /// Waits until the server has the subscription (at most a few seconds).
    ///
    /// # Errors
    /// [`LinkError::Closed`] when the link closed first, [`LinkError::Timeout`] when the
    /// server did not answer in time.
    pub async fn confirmed(self) -> Result<(), LinkError> {
        match timeout(SUBSCRIBE_TIMEOUT, self.0).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout),
        }
    }
}

/// What the link does with each message: called on the task that reads the socket.
pub type Handler<T> = Box<dyn Fn(&T, Inbound) + Send + Sync>;

impl<T: Send + Sync + 'static> Link<T> {
    /// Connects to the first server of `config.url` (comma-separated) that answers, as
    /// client `name`, and delivers every message of a subscription to `handler` with the
    /// subscription's target.
    pub async fn connect(
        config: &NatsConfig,
        name: &str,
        handler: Handler<T>,
    ) -> Result<Self, LinkError> {
        let servers = url_list(&config.url)
            .map(Server::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(LinkError::Url {
                url: config.url.clone(),
                reason: "no server",
            });
        }
        let (index, connection) =
            open_first(&servers, 0, name)
                .await
                .map_err(|reason| LinkError::Connect {
                    url: config.url.clone(),
                    reason,
                })?;
        let table: Table<T> = Arc::default();
        let (commands, receiver) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(true));
        let task = Task {
            connected: Arc::clone(&connected),
            servers,
            current: index,
            name: name.to_owned(),
            table: Arc::clone(&table),
            commands: receiver,
            handler,
            pongs: VecDeque::new(),
        };
        tokio::spawn(task.run(connection));
        Ok(Self {
            shared: Arc::new(Shared {
                table,
                commands,
                next_sid: AtomicU64::new(1),
                connected,
            }),
        })
    }

    /// Subscribes `target` to `subject`. When this returns, the server has the
    /// subscription: anything published from then on reaches the handler.
    pub async fn subscribe(
        &self,
        subject: &str,
        target: Arc<T>,
    ) -> Result<Subscription<T>, LinkError> {
        let (subscription, confirmation) = self.subscribe_unconfirmed(subject, target)?;
        confirmation.confirmed().await?;
        Ok(subscription)
    }

    /// Subscribes `target` to `subject` without waiting: the server has the subscription
    /// once the [`Confirmation`] resolves. Subscriptions made before one wait are
    /// confirmed together, with one round trip, so a caller may make them under a lock
    /// and wait outside it.
    pub fn subscribe_unconfirmed(
        &self,
        subject: &str,
        target: Arc<T>,
    ) -> Result<(Subscription<T>, Confirmation), LinkError> {
        if subject.is_empty() || subject.contains(char::is_whitespace) {
            return Err(LinkError::Subject(subject.to_owned()));
        }
        let sid = self.shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let subject: Box<str> = subject.into();
        lock(&self.shared.table).insert(
            sid,
            Route {
                subject: subject.clone(),
                target,
            },
        );
        // From here on, dropping the handle takes the route out again.
        let subscription = Subscription {
            sid,
            shared: Arc::clone(&self.shared),
        };
        let (done, confirmed) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Subscribe { sid, subject, done })
            .map_err(|_| LinkError::Closed)?;
        Ok((subscription, Confirmation(confirmed)))
    }

    /// Whether the link is connected now (between a failure and the reconnection nothing
    /// is delivered).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Subscriptions currently held.
    #[must_use]
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.table).len()
    }
}

/// What a `PONG` answers: a keepalive, or the subscriptions sent before the `PING`.
enum Pong {
    Keepalive,
    Confirms(Vec<oneshot::Sender<()>>),
}

struct Connection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buffer: BytesMut,
}

/// Connects and completes the handshake: `INFO`, then `CONNECT` and a `PING` whose `PONG`
/// says the server accepted us (an `-ERR` says why not).
async fn open(server: &Server, name: &str) -> Result<Connection, String> {
    let attempt = async {
        let stream = TcpStream::connect(&server.address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut reader, mut writer) = stream.into_split();
        let mut buffer = BytesMut::with_capacity(READ_ROOM);
        match next_frame(&mut reader, &mut buffer).await? {
            Frame::Info => {}
            other => return Err(format!("expected INFO, got {other:?}")),
        }
        let hello = format!("{}PING\r\n", server.connect_line(name));
        writer
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match next_frame(&mut reader, &mut buffer).await? {
                Frame::Pong => break,
                Frame::Err(error) => return Err(format!("server refused: {error}")),
                Frame::Ping => writer
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(|e| e.to_string())?,
                _ => {}
            }
        }
        Ok(Connection {
            reader,
            writer,
            buffer,
        })
    };
    timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// The first server that accepts a connection, trying them in turn from index `from`
/// (wrapping around): its index and the connection, or why the last one failed.
async fn open_first(
    servers: &[Server],
    from: usize,
    name: &str,
) -> Result<(usize, Connection), String> {
    let mut last = String::new();
    for index in (from..from + servers.len()).map(|i| i % servers.len()) {
        match open(&servers[index], name).await {
            Ok(connection) => return Ok((index, connection)),
            Err(error) => last = format!("{:?}: {error}", servers[index]),
        }
    }
    Err(last)
}

async fn next_frame(reader: &mut OwnedReadHalf, buffer: &mut BytesMut) -> Result<Frame, String> {
    loop {
        if let Some(frame) = parse(buffer)? {
            return Ok(frame);
        }
        room(buffer);
        if reader.read_buf(buffer).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".to_owned());
        }
    }
}

/// Room for a large read: reading into a nearly full buffer would take a few bytes a call.
fn room(buffer: &mut BytesMut) {
    if buffer.capacity() - buffer.len() < READ_ROOM / 4 {
        buffer.reserve(READ_ROOM);
    }
}

struct Task<T> {
    connected: Arc<AtomicBool>,
    servers: Vec<Server>,
    current: usize,
    name: String,
    table: Table<T>,
    commands: mpsc::UnboundedReceiver<Command>,
    handler: Handler<T>,
    pongs: VecDeque<Pong>,
}

/// Why a connection's session ended.
enum Ended {
    /// Every handle is gone: stop.
    Closed,
    /// The connection failed: connect again.
    Lost(String),
}

impl<T> Task<T> {
    async fn run(mut self, mut connection: Connection) {
        loop {
            self.connected.store(true, Ordering::Relaxed);
            let ended = self.session(&mut connection).await;
            self.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Closed => return,
                Ended::Lost(reason) => {
                    tracing::warn!(
                        message = "NATS link lost; reconnecting.",
                        server = ?self.servers[self.current],
                        reason
                    );
                }
            }
            let Some(next) = self.reconnect().await else {
                return;
            };
            connection = next;
        }
    }

    /// Serves one connection until it fails or the link is dropped.
    async fn session(&mut self, connection: &mut Connection) -> Ended {
        let Connection {
            reader,
            writer,
            buffer,
        } = connection;
        let mut keepalive = interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let mut out = BytesMut::new();
            room(buffer);
            tokio::select! {
                read = reader.read_buf(buffer) => {
                    match read {
                        Ok(0) => return Ended::Lost("closed by the server".to_owned()),
                        Ok(_) => {}
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                    if let Err(reason) = self.on_frames(buffer, &mut out) {
                        return Ended::Lost(reason);
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Closed };
                    self.on_commands(command, &mut out);
                }
                _ = keepalive.tick() => {
                    let unanswered = self
                        .pongs
                        .iter()
                        .filter(|p| matches!(p, Pong::Keepalive))
                        .count();
                    if unanswered >= MAX_PINGS_OUT {
                        return Ended::Lost("no PONG to keepalive PINGs".to_owned());
                    }
                    self.pongs.push_back(Pong::Keepalive);
                    out.extend_from_slice(b"PING\r\n");
                }
            }
            if !out.is_empty()
                && let Err(e) = writer.write_all(&out).await
            {
                return Ended::Lost(e.to_string());
            }
        }
    }

    /// Takes every complete frame out of `buffer`; answers go to `out`.
    fn on_frames(&mut self, buffer: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
        while let Some(frame) = parse(buffer)? {
            match frame {
                Frame::Msg { sid, message } => {
                    let target = lock(&self.table).get(&sid).map(|r| Arc::clone(&r.target));
                    if let Some(target) = target {
                        (self.handler)(&target, message);
                    }
                }
                Frame::Ping => out.extend_from_slice(b"PONG\r\n"),
                Frame::Pong => match self.pongs.pop_front() {
                    Some(Pong::Confirms(waiters)) => {
                        for waiter in waiters {
                            let _ = waiter.send(());
                        }
                    }
                    Some(Pong::Keepalive) | None => {}
                },
                Frame::Err(error) => {
                    tracing::warn!(message = "NATS link error from the server.", error);
                }
                Frame::Info | Frame::Ok => {}
            }
        }
        Ok(())
    }

    /// Writes `first` and every command already waiting, with one `PING` that confirms the
    /// subscriptions among them.
    fn on_commands(&mut self, first: Command, out: &mut BytesMut) {
        let mut confirms = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Subscribe { sid, subject, done } => {
                    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
                    confirms.push(done);
                }
                Command::Unsubscribe { sid } => {
                    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
                }
            }
            next = self.commands.try_recv().ok();
        }
        if !confirms.is_empty() {
            out.extend_from_slice(b"PING\r\n");
            self.pongs.push_back(Pong::Confirms(confirms));
        }
    }

    /// Connects to the next server that answers, subscribes everything again, and confirms
    /// the subscriptions that were waiting. `None` when every handle went away meanwhile.
    async fn reconnect(&mut self) -> Option<Connection> {
        let mut confirms: Vec<oneshot::Sender<()>> = self
            .pongs
            .drain(..)
            .flat_map(|pong| match pong {
                Pong::Confirms(waiters) => waiters,
                Pong::Keepalive => Vec::new(),
            })
            .collect();
        let mut round = 0;
        loop {
            match open_first(&self.servers, self.current + 1, &self.name).await {
                Ok((index, mut connection)) => {
                    self.current = index;
                    match self.resubscribe(&mut connection, confirms).await {
                        Ok(()) => {
                            tracing::info!(
                                message = "NATS link reconnected.",
                                server = ?self.servers[index]
                            );
                            return Some(connection);
                        }
                        Err(waiting) => confirms = waiting,
                    }
                }
                Err(reason) => {
                    tracing::debug!(message = "NATS link: no server available.", reason);
                }
            }
            let pause = BACKOFF[round.min(BACKOFF.len() - 1)];
            round += 1;
            // Commands that come meanwhile: a subscription waits for the next connection
            // (which subscribes everything in the table); an unsubscription is done already.
            let deadline = sleep(pause);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    command = self.commands.recv() => match command {
                        None => return None,
                        Some(Command::Subscribe { done, .. }) => confirms.push(done),
                        Some(Command::Unsubscribe { .. }) => {}
                    },
                }
            }
        }
    }

    async fn resubscribe(
        &mut self,
        connection: &mut Connection,
        confirms: Vec<oneshot::Sender<()>>,
    ) -> Result<(), Vec<oneshot::Sender<()>>> {
        let mut out = BytesMut::new();
        for (sid, route) in lock(&self.table).iter() {
            out.extend_from_slice(format!("SUB {} {sid}\r\n", route.subject).as_bytes());
        }
        out.extend_from_slice(b"PING\r\n");
        if connection.writer.write_all(&out).await.is_err() {
            return Err(confirms);
        }
        self.pongs.push_back(Pong::Confirms(confirms));
        Ok(())
    }
}

/// One frame from the server.
#[derive(Debug)]
enum Frame {
    Info,
    Msg { sid: u64, message: Inbound },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// The next complete frame at the start of `buffer`, taken out of it; `None` when more
/// bytes are needed.
fn parse(buffer: &mut BytesMut) -> Result<Option<Frame>, String> {
    let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") else {
        return if buffer.len() > MAX_LINE {
            Err("protocol line too long".to_owned())
        } else {
            Ok(None)
        };
    };
    if end > MAX_LINE {
        return Err("protocol line too long".to_owned());
    }
    let line =
        std::str::from_utf8(&buffer[..end]).map_err(|_| "protocol line not UTF-8".to_owned())?;
    let (op, args) = line.split_once(' ').unwrap_or((line, ""));
    // Operations are case-insensitive; servers send them in capitals.
    let is = |name: &str| op.eq_ignore_ascii_case(name);
    let frame = if is("MSG") || is("HMSG") {
        return parse_message(buffer, end, op.len() == 4);
    } else if is("PING") {
        Frame::Ping
    } else if is("PONG") {
        Frame::Pong
    } else if is("+OK") {
        Frame::Ok
    } else if is("-ERR") {
        Frame::Err(args.trim().trim_matches('\'').to_owned())
    } else if is("INFO") {
        Frame::Info
    } else {
        return Err(format!("unexpected protocol line {line:?}"));
    };
    buffer.advance(end + 2);
    Ok(Some(frame))
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <header size>
/// <size>`, then the bytes and `\r\n`.
fn parse_message(
    buffer: &mut BytesMut,
    end: usize,
    with_headers: bool,
) -> Result<Option<Frame>, String> {
    let invalid = || {
        format!(
            "malformed message line {:?}",
            String::from_utf8_lossy(&buffer[..end])
        )
    };
    let line = std::str::from_utf8(&buffer[..end]).map_err(|_| invalid())?;
    // subject, sid, an optional reply, then one or two sizes: at most five.
    let mut words = [""; 5];
    let mut count = 0;
    for word in line.split_ascii_whitespace().skip(1) {
        *words.get_mut(count).ok_or_else(invalid)? = word;
        count += 1;
    }
    let args = &words[..count];
    let sizes = usize::from(with_headers) + 1;
    if args.len() != 2 + sizes && args.len() != 3 + sizes {
        return Err(invalid());
    }
    let number = |s: &str| s.parse::<usize>().map_err(|_| invalid());
    let total = number(args[args.len() - 1])?;
    let header_size = if with_headers {
        number(args[args.len() - 2])?
    } else {
        0
    };
    if total > MAX_MESSAGE || header_size > total {
        return Err(invalid());
    }
    if buffer.len() < end + 2 + total + 2 {
        buffer.reserve(end + 2 + total + 2 - buffer.len());
        return Ok(None);
    }
    let subject = args[0].to_owned();
    let sid = args[1].parse::<u64>().map_err(|_| invalid())?;
    buffer.advance(end + 2);
    let mut body = buffer.split_to(total + 2);
    if &body[total..] != b"\r\n" {
        return Err("message not followed by CRLF".to_owned());
    }
    body.truncate(total);
    let headers = (header_size > 0).then(|| parse_headers(&body[..header_size]));
    body.advance(header_size);
    Ok(Some(Frame::Msg {
        sid,
        message: Inbound {
            subject,
            headers,
            payload: body.freeze(),
        },
    }))
}

/// `NATS/1.0 [status]` and then `Name: value` lines; lines that are not headers are skipped.
fn parse_headers(raw: &[u8]) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    let text = String::from_utf8_lossy(raw);
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() {
                headers.append(name, value.trim());
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(raw: &[u8]) -> Vec<Frame> {
        let mut buffer = BytesMut::from(raw);
        let mut out = Vec::new();
        while let Some(frame) = parse(&mut buffer).unwrap() {
            out.push(frame);
        }
        assert!(buffer.is_empty(), "all taken: {buffer:?}");
        out
    }

    #[test]
    fn messages_with_and_without_headers_and_replies() {
        let raw = b"MSG deliver.u1 7 5\r\nhello\r\n\
            MSG deliver.u1 7 _INBOX.x 2\r\nhi\r\n\
            HMSG deliver.u2 9 32 35\r\nNATS/1.0\r\ntraceparent: 00-ab\r\n\r\nyes\r\n\
            PING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\nINFO {}\r\n";
        let frames = frames(raw);
        let Frame::Msg { sid, message } = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!((*sid, message.subject.as_str()), (7, "deliver.u1"));
        assert_eq!(&message.payload[..], b"hello");
        assert!(message.headers.is_none());
        let Frame::Msg { message, .. } = &frames[1] else {
            panic!()
        };
        assert_eq!(&message.payload[..], b"hi");
        let Frame::Msg { sid, message } = &frames[2] else {
            panic!()
        };
        assert_eq!(*sid, 9);
        assert_eq!(&message.payload[..], b"yes");
        let headers = message.headers.as_ref().expect("headers");
        assert_eq!(
            headers
                .get("traceparent")
                .map(async_nats::HeaderValue::as_str),
            Some("00-ab")
        );
        assert!(matches!(frames[3], Frame::Ping));
        assert!(matches!(frames[4], Frame::Pong));
        assert!(matches!(frames[5], Frame::Ok));
        assert!(matches!(&frames[6], Frame::Err(e) if e == "Unknown Protocol Operation"));
        assert!(matches!(frames[7], Frame::Info));
        assert!(
            matches!(self::frames(b"ping\r\n")[..], [Frame::Ping]),
            "operations are case-insensitive"
        );
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_end() {
        let whole = b"MSG a.b 1 10\r\n0123456789\r\n";
        for cut in 1..whole.len() {
            let mut buffer = BytesMut::from(&whole[..cut]);
            assert!(parse(&mut buffer).unwrap().is_none(), "cut at {cut}");
            buffer.extend_from_slice(&whole[cut..]);
            let Some(Frame::Msg { message, .. }) = parse(&mut buffer).unwrap() else {
                panic!("whole at {cut}")
            };
            assert_eq!(&message.payload[..], b"0123456789");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for raw in [
            &b"MSG a.b x 1\r\nx\r\n"[..],
            b"MSG a.b 1\r\n",
            b"MSG a.b 1 3\r\nabcXY",
            b"HMSG a.b 1 9 3\r\nabc\r\n",
            b"WHAT\r\n",
            b"MSG a.b 1 99999999999\r\n",
            b"MSG a.b 1 reply 2 3 4\r\nxx\r\n",
        ] {
            let mut buffer = BytesMut::from(raw);
            assert!(
                parse(&mut buffer).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut long = BytesMut::from(&[b'x'; MAX_LINE + 10][..]);
        long.extend_from_slice(b"\r\n");
        assert!(parse(&mut long).is_err());
    }

    #[test]
    fn urls_name_a_server_and_its_credentials() {
        let plain = Server::parse("nats://127.0.0.1:4333").unwrap();
        assert_eq!(plain.address, "127.0.0.1:4333");
        assert_eq!((plain.user, plain.pass), (None, None));
        assert_eq!(Server::parse("nats-1").unwrap().address, "nats-1:4222");
        let pair = Server::parse("nats://ann:secret@host:1").unwrap();
        assert_eq!(pair.address, "host:1");
        assert!(pair.connect_line("x").contains(r#""pass":"secret""#));
        let token = Server::parse("nats://t0ken@host").unwrap();
        assert!(token.connect_line("x").contains(r#""auth_token":"t0ken""#));
        assert!(matches!(
            Server::parse("tls://host:1"),
            Err(LinkError::Url { .. })
        ));
        assert!(matches!(
            Server::parse("nats://"),
            Err(LinkError::Url { .. })
        ));
    }
}
