//! NATS and JetStream connections, with a namespace so several deployments (or parallel
//! tests) share one server: streams are named `<NAMESPACE>_<NAME>` and subjects
//! `<namespace>.<subject>` when a namespace is set, and left as they are otherwise.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsConfig;

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

/// Connects with a client name shown in the server's monitoring.
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Nats, NatsError> {
    let client = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
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
