//! Who still calls deprecated API versions: every deprecated call is counted per version,
//! route and client (token subject and `User-Agent`) with the time it was last seen, so the
//! owners of a version know whom to migrate before its sunset.
//!
//! Each gateway counts in memory and adds its counts to the NATS KV bucket `API_USAGE`
//! (compare-and-set, so gateways never lose each other's counts) every few seconds and before
//! answering `GET /admin/api-usage`, which reads the bucket: the report covers every gateway.
//!
//! The same calls are Prometheus series of this gateway (`GET /metrics`):
//! `tertulia_api_deprecated_calls_total` and `tertulia_api_deprecated_last_seen_seconds`, by
//! version, route and `User-Agent`. Token subjects stay out of metrics (one series per user
//! would swamp any Prometheus); the report has them. Distinct `User-Agent`s are capped at
//! [`MAX_USER_AGENT_SERIES`], beyond which calls count under `other`.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use async_nats::jetstream::kv;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tertulia_plumbing::{
    metrics::{Counter, EncodeLabelSet, Family, Gauge, Registry},
    nats::Nats,
    shutdown::Shutdown,
};
use time::OffsetDateTime;

/// Distinct `User-Agent` label values per gateway before new ones count as `other`.
pub const MAX_USER_AGENT_SERIES: usize = 256;

/// Labels of the deprecated-call series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SeriesLabels {
    version: String,
    route: String,
    user_agent: String,
}

/// This gateway's deprecated-call series.
#[derive(Debug, Default)]
struct Series {
    calls: Family<SeriesLabels, Counter>,
    last_seen: Family<SeriesLabels, Gauge>,
    user_agents: Mutex<HashSet<String>>,
}

impl Series {
    fn record(&self, caller: &Caller, at: OffsetDateTime) {
        let user_agent = {
            let mut seen = self.user_agents.lock().expect("usage lock");
            if seen.contains(&caller.user_agent) || seen.len() < MAX_USER_AGENT_SERIES {
                seen.insert(caller.user_agent.clone());
                caller.user_agent.clone()
            } else {
                "other".to_owned()
            }
        };
        let labels = SeriesLabels {
            version: caller.version.clone(),
            route: caller.route.clone(),
            user_agent,
        };
        self.calls.get_or_create(&labels).inc();
        let last_seen = self.last_seen.get_or_create(&labels);
        last_seen.set(last_seen.get().max(at.unix_timestamp()));
    }
}

/// How often a gateway adds its counts to the bucket.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Attempts at one compare-and-set before the count waits for the next flush.
const CAS_ATTEMPTS: usize = 5;

/// Whose calls are counted together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    /// `v1`.
    pub version: String,
    /// The route pattern, e.g. `/conversations/{id}`.
    pub route: String,
    /// The token's subject, or `anonymous`.
    pub subject: String,
    /// The `User-Agent` header, or empty.
    pub user_agent: String,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageRow {
    /// Who.
    #[serde(flatten)]
    pub caller: Caller,
    /// Deprecated calls counted.
    pub calls: u64,
    /// The last one.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// The counters of one gateway and the shared bucket.
#[derive(Debug)]
pub struct ApiUsage {
    pending: Mutex<HashMap<Caller, (u64, OffsetDateTime)>>,
    bucket: kv::Store,
    series: Series,
}

impl ApiUsage {
    /// Opens (or creates) the bucket.
    pub async fn open(nats: &Nats) -> Result<Self, String> {
        let bucket = nats
            .jetstream
            .create_or_update_key_value(kv::Config {
                bucket: nats.stream_name("API_USAGE"),
                description: "deprecated API calls per client".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pending: Mutex::default(),
            bucket,
            series: Series::default(),
        })
    }

    /// Registers this gateway's deprecated-call series with `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "tertulia_api_deprecated_calls",
            "Calls to deprecated or sunset API routes, by version, route and User-Agent",
            self.series.calls.clone(),
        );
        registry.register(
            "tertulia_api_deprecated_last_seen_seconds",
            "Unix time of the last call to a deprecated or sunset API route",
            self.series.last_seen.clone(),
        );
    }

    /// Counts one deprecated call (cheap: memory only).
    pub fn record(&self, caller: Caller, at: OffsetDateTime) {
        self.series.record(&caller, at);
        let mut pending = self.pending.lock().expect("usage lock");
        let entry = pending.entry(caller).or_insert((0, at));
        entry.0 += 1;
        entry.1 = entry.1.max(at);
    }

    /// Adds this gateway's counts to the bucket. Counts that cannot be written stay pending.
    pub async fn flush(&self) -> Result<(), String> {
        let pending: Vec<_> = self.pending.lock().expect("usage lock").drain().collect();
        let mut failure = None;
        for (caller, (calls, last_seen)) in pending {
            if let Err(e) = self.add(&caller, calls, last_seen).await {
                failure = Some(e);
                let mut back = self.pending.lock().expect("usage lock");
                let entry = back.entry(caller).or_insert((0, last_seen));
                entry.0 += calls;
                entry.1 = entry.1.max(last_seen);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn add(
        &self,
        caller: &Caller,
        calls: u64,
        last_seen: OffsetDateTime,
    ) -> Result<(), String> {
        let key = format!(
            "{}.{}",
            caller.version,
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(caller).expect("serialisable"))
        );
        for _ in 0..CAS_ATTEMPTS {
            let entry = self.bucket.entry(&key).await.map_err(|e| e.to_string())?;
            let (mut row, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<UsageRow>(&e.value).map_err(|e| e.to_string())?,
                    Some(e.revision),
                ),
                _ => (
                    UsageRow {
                        caller: caller.clone(),
                        calls: 0,
                        last_seen,
                    },
                    None,
                ),
            };
            row.calls += calls;
            row.last_seen = row.last_seen.max(last_seen);
            let value = serde_json::to_vec(&row).expect("serialisable").into();
            let written = match revision {
                Some(rev) => self
                    .bucket
                    .update(&key, value, rev)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => self
                    .bucket
                    .create(&key, value)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            if written.is_ok() {
                return Ok(());
            }
        }
        Err(format!("usage counter {key} kept changing under us"))
    }

    /// Every gateway's counts, most calls first (this gateway's flushed first).
    pub async fn report(&self) -> Result<Vec<UsageRow>, String> {
        self.flush().await?;
        let keys: Vec<String> = self
            .bucket
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.bucket.get(&key).await.map_err(|e| e.to_string())?
                && let Ok(row) = serde_json::from_slice::<UsageRow>(&value)
            {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| b.calls.cmp(&a.calls).then(b.last_seen.cmp(&a.last_seen)));
        Ok(rows)
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown`, and once more then.
    pub async fn flush_until(&self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(message = "API usage not flushed yet.", error = %error);
            }
        }
        if let Err(error) = self.flush().await {
            tracing::warn!(message = "API usage lost at shutdown.", error = %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_series_are_capped() {
        let series = Series::default();
        let mut registry = Registry::default();
        registry.register("calls", "", series.calls.clone());
        let at = OffsetDateTime::UNIX_EPOCH;
        let caller = |agent: String| Caller {
            version: "v1".into(),
            route: "/ws".into(),
            subject: "s".into(),
            user_agent: agent,
        };
        for i in 0..MAX_USER_AGENT_SERIES + 10 {
            series.record(&caller(format!("agent/{i}")), at);
        }
        series.record(&caller("agent/0".into()), at);
        let text = tertulia_plumbing::metrics::render(&registry);
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("calls_total"))
            .collect();
        assert_eq!(
            lines.len(),
            MAX_USER_AGENT_SERIES + 1,
            "the cap, plus `other`"
        );
        assert!(text.contains(r#"user_agent="other"} 10"#), "{text}");
        assert!(
            text.contains(r#"user_agent="agent/0"} 2"#),
            "known agents keep counting"
        );
    }
}
