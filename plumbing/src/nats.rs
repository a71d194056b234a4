//! NATS and JetStream connections, with a namespace so several deployments (or parallel
//! tests) share one server: streams are named `<NAMESPACE>_<NAME>` and subjects
//! `<namespace>.<subject>` when a namespace is set, and left as they are otherwise.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use tracing::Instrument as _;

use crate::{config::NatsConfig, telemetry};

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-published event: longer than
/// any publisher's retry after a crash takes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_mins(2);

/// A NATS connection and its JetStream context.
#[derive(Debug, Clone)]
pub struct Nats {
    /// Core NATS, for ephemeral subjects (delivery, typing, presence).
    pub client: async_nats::Client,
    /// JetStream, for durable streams.
    pub jetstream: jetstream::Context,
    namespace: String,
}

/// Failures talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A server URL of the configuration is not one.
    #[error("invalid NATS server URL {url:?}")]
    Url {
        /// The configured URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stream could not be created or updated.
    #[error("cannot create or update stream {name}")]
    Stream {
        /// Full stream name.
        name: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
}

/// Connects with a client name shown in the server's monitoring. `config.url` may list
/// several servers of a cluster, comma-separated: the client picks one and moves to another
/// when it fails.
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Nats, NatsError> {
    let servers = crate::config::url_list(&config.url)
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|source| NatsError::Url {
                    url: u.to_owned(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: config.url.clone(),
            source,
        })?;
    let jetstream = jetstream::new(client.clone());
    Ok(Nats {
        client,
        jetstream,
        namespace: config.namespace.clone(),
    })
}

impl Nats {
    /// The full name of stream `name` (e.g. `CHAT`) in this namespace.
    #[must_use]
    pub fn stream_name(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.namespace.to_ascii_uppercase())
        }
    }

    /// The full subject for `subject` (e.g. `chat.v1.conv.*.message`) in this namespace.
    #[must_use]
    pub fn subject(&self, subject: &str) -> String {
        if self.namespace.is_empty() {
            subject.to_owned()
        } else {
            format!("{}.{subject}", self.namespace)
        }
    }

    /// A round trip through the server: when it returns, the server has processed everything
    /// this connection sent before (a `flush` only writes the socket). Used after a
    /// subscribe whose activation others must be able to rely on.
    pub async fn sync(&self) -> Result<(), async_nats::RequestErrorKind> {
        let probe = format!("_tertulia.sync.{}", self.client.new_inbox());
        match self.client.request(probe, bytes::Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(e.kind()),
        }
    }

    /// [`Self::ensure_stream`] with the [`DUPLICATE_WINDOW`] every event stream uses: the
    /// streams whose publishers set `Nats-Msg-Id` to the event id.
    pub async fn ensure_event_stream(
        &self,
        name: &str,
        subjects: &[&str],
        replicas: usize,
    ) -> Result<(), NatsError> {
        self.ensure_stream(name, subjects, replicas, DUPLICATE_WINDOW)
            .await
            .map(drop)
    }

    /// Creates stream `name` over `subjects` (both given without namespace), or updates it to
    /// this configuration. Messages are kept on file and deduplicated by `Nats-Msg-Id` over
    /// `duplicate_window`.
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: &[&str],
        replicas: usize,
        duplicate_window: Duration,
    ) -> Result<stream::Info, NatsError> {
        let full = self.stream_name(name);
        let config = stream::Config {
            name: full.clone(),
            subjects: subjects.iter().map(|s| self.subject(s)).collect(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window,
            ..Default::default()
        };
        self.jetstream
            .create_or_update_stream(config)
            .await
            .map_err(|source| NatsError::Stream { name: full, source })
    }
}

/// What a handler decided about one JetStream message.
#[derive(Debug)]
pub enum Handled {
    /// Done: acknowledge.
    Done,
    /// A dependency failed: redeliver after a pause.
    Retry(String),
    /// The message can never be handled (undecodable): terminate it.
    Poison(String),
}

/// A durable pull consumer with explicit acks over one stream, and how it is worked.
#[derive(Debug, Clone)]
pub struct DurableConsumer {
    /// Stream name without namespace (e.g. `CHAT`).
    pub stream: &'static str,
    /// Durable name, shared by every instance of the consuming service.
    pub name: &'static str,
    /// Subject filter without namespace; every subject of the stream when `None`.
    pub filter: Option<&'static str>,
    /// Redelivery after this long without an ack (a crashed worker's message comes back).
    pub ack_wait: Duration,
    /// Deliveries of one message before JetStream stops trying (`-1`: unlimited).
    pub max_deliver: i64,
    /// Messages handled at once by this instance.
    pub concurrency: usize,
    /// Messages whose subjects give the same key are handled one after another, in stream
    /// order, while different keys go concurrently (up to `concurrency`); `None`: no order
    /// among concurrent messages.
    pub order_by: Option<fn(&str) -> Option<&str>>,
    /// Messages delivered and not yet acknowledged, across instances. For a work queue this
    /// is the worker count, so no message waits in one instance's buffer while its ack
    /// deadline runs.
    pub max_pending: usize,
}

/// The order of messages that share a key: each message waits for the one before it with
/// the same key (a chain of one-shot channels, one link per message in flight).
#[derive(Default)]
struct Turns {
    last: std::collections::HashMap<String, tokio::sync::oneshot::Receiver<()>>,
}

/// A message's turn: what to wait for (the previous message of its key), and what its end
/// releases (dropped when it is settled).
type Turn = (
    Option<tokio::sync::oneshot::Receiver<()>>,
    tokio::sync::oneshot::Sender<()>,
);

impl Turns {
    /// Past this many keys, links already released are forgotten.
    const PRUNE_AT: usize = 4096;

    fn take(&mut self, key: &str) -> Turn {
        if self.last.len() >= Self::PRUNE_AT {
            self.last.retain(|_, rx| {
                matches!(
                    rx.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (done, next) = tokio::sync::oneshot::channel();
        // A key already in the map is not copied again (the common case: a busy key).
        let previous = match self.last.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, next)),
            None => self.last.insert(key.to_owned(), next),
        };
        (previous, done)
    }
}

/// Pause before redelivering a message whose handler asked for a retry, and before
/// reconnecting a consumer whose stream failed.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Nats {
    /// Messages of `stream` not yet delivered to durable `consumer`, and those delivered and
    /// not yet acknowledged (names without namespace).
    pub async fn consumer_backlog(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<(u64, usize), String> {
        let stream = self
            .jetstream
            .get_stream(self.stream_name(stream))
            .await
            .map_err(|e| e.to_string())?;
        let info = stream
            .consumer_info(consumer)
            .await
            .map_err(|e| e.to_string())?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// Works `consumer` with `handler` until `shutdown` trips: creates the consumer if needed,
    /// handles up to `concurrency` messages at once, acks, naks or terminates each by what the
    /// handler answers, and reconnects after errors. Handlers must be idempotent: a message
    /// is delivered at least once.
    /// The handler gets its own handle on the message (for progress acks on long work).
    pub async fn consume<H, F>(
        &self,
        consumer: &DurableConsumer,
        shutdown: &crate::shutdown::Shutdown,
        handler: H,
    ) where
        H: Fn(jetstream::Message) -> F + Sync,
        F: std::future::Future<Output = Handled>,
    {
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.consume_once(consumer, &handler) => r,
            };
            if let Err(error) = result {
                tracing::warn!(message = "Consumer failed, restarting.", consumer = consumer.name, error = %error);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    async fn consume_once<H, F>(&self, spec: &DurableConsumer, handler: &H) -> Result<(), String>
    where
        H: Fn(jetstream::Message) -> F + Sync,
        F: std::future::Future<Output = Handled>,
    {
        use futures::StreamExt as _;
        use jetstream::{AckKind, consumer::pull};

        let stream = self
            .jetstream
            .get_stream(self.stream_name(spec.stream))
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .get_or_create_consumer(
                spec.name,
                pull::Config {
                    durable_name: Some(spec.name.to_owned()),
                    filter_subject: spec.filter.map(|f| self.subject(f)).unwrap_or_default(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: spec.ack_wait,
                    max_deliver: spec.max_deliver,
                    max_ack_pending: i64::try_from(spec.max_pending.max(1)).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut failure = None;
        let mut turns = Turns::default();
        messages
            .take_while(|m| {
                let ok = m.is_ok();
                if let Err(e) = m {
                    failure = Some(e.to_string());
                }
                std::future::ready(ok)
            })
            .filter_map(|m| std::future::ready(m.ok()))
            // Taken here, in stream order, before any handling starts.
            .map(|message| {
                let turn = spec
                    .order_by
                    .and_then(|key| key(message.subject.as_str()))
                    .map(|key| turns.take(key));
                (message, turn)
            })
            .for_each_concurrent(spec.concurrency.max(1), |(message, turn)| {
                // A consumer span per message, continuing the producer's trace.
                let span = telemetry::consumer_span(
                    spec.stream,
                    message.subject.as_str(),
                    spec.name,
                    telemetry::nats_traceparent(message.headers.as_ref()),
                );
                let failed = span.clone();
                async move {
                    // Wait for the previous message of the same key; release the next when
                    // this one is settled (the `done` sender is dropped at the end).
                    let _done = match turn {
                        Some((previous, done)) => {
                            if let Some(previous) = previous {
                                let _ = previous.await;
                            }
                            Some(done)
                        }
                        None => None,
                    };
                    let ack = match handler(message.clone()).await {
                        Handled::Done => message.ack().await,
                        Handled::Poison(reason) => {
                            failed.record("otel.status_code", "ERROR");
                            tracing::error!(message = "Unusable event dropped.", subject = %message.subject, reason);
                            message.ack_with(AckKind::Term).await
                        }
                        Handled::Retry(reason) => {
                            failed.record("otel.status_code", "ERROR");
                            tracing::warn!(message = "Event will be retried.", subject = %message.subject, reason);
                            message.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await
                        }
                    };
                    if let Err(error) = ack {
                        // The message comes back after ack_wait; handlers are idempotent.
                        tracing::warn!(message = "Ack failed.", error = %error);
                    }
                }
                .instrument(span)
            })
            .await;
        failure.map_or(Ok(()), Err)
    }
}
