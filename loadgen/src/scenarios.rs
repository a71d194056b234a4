//! The scenarios: idle capacity and message throughput (one rate or a sweep of rates); the
//! reconnect storm is in [`crate::storm`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    Options,
    client::{Endpoint, Error, Ledger, Live, Record, Redial, User},
    stats::{Samples, Summary, rss_kib, sum_over},
};

/// How long delivery of what was sent may take before it counts as late (in a throughput
/// step) or lost (elsewhere).
pub(crate) const DRAIN: Duration = Duration::from_secs(15);

/// After a throughput step's [`DRAIN`], how long the generator waits at most for what is
/// still on its way (the rate was beyond the system's capacity) ...
const SETTLE: Duration = Duration::from_mins(3);

/// ... and how long without a single delivery ends that wait: what has not come by then
/// is missing.
const SETTLE_QUIET: Duration = Duration::from_secs(15);

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// CPU time of every process called `name` (PostgreSQL has one per connection).
fn cpu_of_name(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// Opens one connection per `(user, resume)`, `handshakes` at a time, spread over the source
/// addresses. Returns the connections (failures left out), their records, the failures, and
/// how long it took.
pub(crate) async fn connect_all(
    ep: &Endpoint,
    who: &[(&User, Value)],
    handshakes: usize,
    ledger: Option<&Arc<Ledger>>,
    records: Option<Vec<Record>>,
) -> (Vec<Option<Live>>, Vec<Record>, Vec<String>, Duration) {
    let records = records.unwrap_or_else(|| (0..who.len()).map(|_| Record::default()).collect());
    let started = Instant::now();
    let results = futures::stream::iter(who.iter().enumerate())
        .map(|(i, (user, resume))| {
            let source = ep.sources[i % ep.sources.len()];
            let record = Arc::clone(&records[i]);
            let ledger = ledger.cloned();
            let redial = Redial {
                ep: ep.clone(),
                source,
                user: (*user).clone(),
                resume: resume.clone(),
            };
            async move {
                ep.connect(source, user, resume)
                    .await
                    .map(|socket| Live::start(socket, record, ledger, redial))
                    .map_err(|e| e.to_string())
            }
        })
        .buffered(handshakes.max(1))
        .collect::<Vec<_>>()
        .await;
    let took = started.elapsed();
    let mut failures = Vec::new();
    let conns = results
        .into_iter()
        .map(|r| r.map_err(|e| failures.push(e)).ok())
        .collect();
    (conns, records, failures, took)
}

pub(crate) async fn close_all(conns: Vec<Option<Live>>) {
    futures::stream::iter(conns.into_iter().flatten())
        .for_each_concurrent(512, Live::close)
        .await;
}

fn per_second(count: usize, took: Duration) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let count = count as f64;
    count / took.as_secs_f64().max(1e-9)
}

#[derive(Debug, Serialize)]
pub(crate) struct CapacityReport {
    pub(crate) connections: usize,
    pub(crate) users: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) first_failure: Option<String>,
    pub(crate) connect_seconds: f64,
    pub(crate) connects_per_second: f64,
    pub(crate) gateway_rss_before_kib: Option<u64>,
    pub(crate) gateway_rss_after_kib: Option<u64>,
    pub(crate) gateway_rss_per_connection_bytes: Option<f64>,
    pub(crate) still_open_after_hold: usize,
    /// Generator processes that held the connections.
    pub(crate) processes: usize,
    /// Gateway processes measured (sharing one port).
    pub(crate) gateway_processes: usize,
}

/// Many authenticated idle connections on one gateway (one address, maybe several processes
/// sharing its port): how fast they open, and the gateway's memory per connection once they
/// are all up. With `--processes`, worker processes hold the clients.
pub(crate) async fn capacity(ep: &Endpoint, o: &Options) -> Result<CapacityReport, Error> {
    let users = ep
        .users(o.users.min(o.connections).max(1), o.concurrency)
        .await?;
    let before = sum_over(&o.gateway_pids, rss_kib);
    let who: Vec<&User> = (0..o.connections)
        .map(|i| &users[i % users.len()])
        .collect();
    eprintln!(
        "connecting {} clients as {} users from {} process(es)…",
        o.connections,
        users.len(),
        o.processes
    );
    let held = if o.processes > 1 {
        Held::Elsewhere(crate::storm::Workers::connect(o, &who).await?)
    } else {
        let who: Vec<(&User, Value)> = who.iter().map(|user| (*user, json!({}))).collect();
        let (conns, _records, failures, took) =
            connect_all(ep, &who, o.handshakes, None, None).await;
        Held::Here {
            conns,
            failures,
            took,
        }
    };
    // Let the gateway settle (presence heartbeats, allocator) before reading its memory.
    tokio::time::sleep(o.hold).await;
    let after = sum_over(&o.gateway_pids, rss_kib);
    let (connected, failures, took, still_open) = held.count_and_close().await?;
    #[expect(clippy::cast_precision_loss, reason = "KiB counts far below 2^52")]
    let per_connection = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a.saturating_sub(b) as f64 * 1024.0) / connected as f64)
        }
        _ => None,
    };
    Ok(CapacityReport {
        connections: o.connections,
        users: users.len(),
        connected,
        failed: failures.len(),
        first_failure: failures.into_iter().next(),
        connect_seconds: took.as_secs_f64(),
        connects_per_second: per_second(connected, took),
        gateway_rss_before_kib: before,
        gateway_rss_after_kib: after,
        gateway_rss_per_connection_bytes: per_connection,
        still_open_after_hold: still_open,
        processes: o.processes,
        gateway_processes: o.gateway_pids.len(),
    })
}

/// The capacity run's connections, in this process or in workers.
enum Held {
    Here {
        conns: Vec<Option<Live>>,
        failures: Vec<String>,
        took: Duration,
    },
    Elsewhere(crate::storm::Workers),
}

impl Held {
    /// How many connected, the failures, how long connecting took, and how many are still
    /// open; then closes them.
    async fn count_and_close(self) -> Result<(usize, Vec<String>, Duration, usize), Error> {
        Ok(match self {
            Self::Here {
                conns,
                failures,
                took,
            } => {
                let connected = conns.iter().flatten().count();
                let open = conns.iter().flatten().filter(|c| !c.is_finished()).count();
                close_all(conns).await;
                (connected, failures, took, open)
            }
            Self::Elsewhere(workers) => workers.count_and_close().await?,
        })
    }
}

/// One conversation per `size` consecutive users (the first creates it).
pub(crate) async fn conversations_of(
    ep: &Endpoint,
    o: &Options,
    users: &[User],
    size: usize,
) -> Result<Vec<String>, Error> {
    futures::stream::iter(users.chunks_exact(size).enumerate())
        .map(|(g, chunk)| {
            let members: Vec<&User> = chunk.iter().collect();
            async move { ep.conversation(&members, g).await }
        })
        .buffered(o.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Users in conversations of `size`, one connection each, ready to send.
struct Rooms {
    conversations: Vec<String>,
    conns: Vec<Option<Live>>,
    records: Vec<Record>,
    ledger: Arc<Ledger>,
    size: usize,
}

async fn rooms(ep: &Endpoint, o: &Options, capacity: usize) -> Result<Rooms, Error> {
    let size = o.size.max(2);
    let groups = o.groups.max(1);
    eprintln!(
        "making {} users in {groups} conversations of {size}…",
        groups * size
    );
    let users = ep.users(groups * size, o.concurrency).await?;
    let conversations = conversations_of(ep, o, &users, size).await?;
    let who: Vec<(&User, Value)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u, json!({ &conversations[i / size]: 0 })))
        .collect();
    let ledger = Ledger::new(capacity);
    let (conns, records, failures, _) =
        connect_all(ep, &who, o.handshakes, Some(&ledger), None).await;
    if let Some(first) = failures.first() {
        return Err(format!("{} connections failed, first: {first}", failures.len()).into());
    }
    Ok(Rooms {
        conversations,
        conns,
        records,
        ledger,
        size,
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct Step {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) messages: usize,
    pub(crate) deliveries_expected: u64,
    pub(crate) deliveries: u64,
    /// Deliveries that came after the step's [`DRAIN`]: the rate was beyond the system's
    /// capacity. They count as delivered, and their latencies are in `delivery`.
    pub(crate) late: u64,
    pub(crate) missing: u64,
    pub(crate) first_missing: Vec<String>,
    pub(crate) duplicates: u64,
    pub(crate) errors: std::collections::BTreeMap<String, u64>,
    pub(crate) ack: Summary,
    pub(crate) delivery: Summary,
    pub(crate) gateway_cpu_seconds: Option<f64>,
    /// CPU seconds of each watched process during the step.
    pub(crate) cpu_seconds: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ThroughputReport {
    pub(crate) group_size: usize,
    pub(crate) groups: usize,
    pub(crate) seconds_per_step: f64,
    pub(crate) steps: Vec<Step>,
    /// The first rate whose delivery p99 passed 100 ms.
    pub(crate) knee_rate: Option<f64>,
    /// Rates not run because a step before was beyond the system's capacity (deliveries
    /// came late or not at all): a higher rate would only pile onto its backlog.
    pub(crate) skipped_rates: Vec<f64>,
}

/// Messages into conversations at each rate of `o.rates` for `o.duration`: ack and delivery
/// latency, and whether every member's connection got every message.
pub(crate) async fn throughput(ep: &Endpoint, o: &Options) -> Result<ThroughputReport, Error> {
    let per_step: Vec<usize> = o
        .rates
        .iter()
        .map(|rate| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "positive message counts"
            )]
            let n = (rate * o.duration.as_secs_f64()).ceil() as usize;
            n
        })
        .collect();
    let room = rooms(ep, o, per_step.iter().sum()).await?;
    let mut steps: Vec<Step> = Vec::new();
    let mut skipped_rates = Vec::new();
    let mut offset = 0;
    for (rate, count) in o.rates.iter().zip(&per_step) {
        if steps.last().is_some_and(|s| s.late > 0 || s.missing > 0) {
            skipped_rates.push(*rate);
            continue;
        }
        let step = run_step(&room, o, *rate, offset..offset + count).await;
        eprintln!(
            "rate {rate}/s: delivery {}, late {}, missing {}",
            step.delivery, step.late, step.missing
        );
        offset += count;
        steps.push(step);
    }
    let knee_rate = steps
        .iter()
        .find(|s| s.delivery.p99_ms > 100.0)
        .map(|s| s.target_rate);
    close_all(room.conns).await;
    Ok(ThroughputReport {
        group_size: room.size,
        groups: room.conversations.len(),
        seconds_per_step: o.duration.as_secs_f64(),
        steps,
        knee_rate,
        skipped_rates,
    })
}

/// How many messages of a step are due `elapsed` into it at `rate`: message `i` is due at
/// `i / rate`, so those up to and including the current interval's. (Counting only whole
/// elapsed intervals sent each message one interval late while stamping it with its
/// scheduled time, which added 1/rate to every latency: 50 ms at 20 msg/s, 2 ms at 500.)
fn due(elapsed: Duration, rate: f64) -> usize {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive message counts"
    )]
    let whole = (elapsed.as_secs_f64() * rate) as usize;
    whole + 1
}

/// Sends messages `numbers` at `rate`, open loop (each at its scheduled time), round-robin
/// over the conversations and their members; waits for every delivery ([`DRAIN`], then
/// what comes later is late, until [`SETTLE_QUIET`] passes without one).
async fn run_step(room: &Rooms, o: &Options, rate: f64, numbers: std::ops::Range<usize>) -> Step {
    let groups = room.conversations.len();
    let cpu_before = sum_over(&o.gateway_pids, cpu_seconds);
    let watched_before: Vec<f64> = o.watch.iter().map(|name| cpu_of_name(name)).collect();
    let start = Instant::now();
    let mut next = numbers.start;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while next < numbers.end {
        tick.tick().await;
        let due = numbers.start + due(start.elapsed(), rate);
        while next < due.min(numbers.end) {
            let i = next - numbers.start;
            let group = i % groups;
            let member = (i / groups) % room.size;
            #[expect(clippy::cast_precision_loss, reason = "message counts far below 2^52")]
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            room.ledger.sent(next, scheduled);
            if let Some(conn) = &room.conns[group * room.size + member] {
                conn.send(&room.conversations[group], next);
            }
            next += 1;
        }
    }
    let sent_in = start.elapsed();
    let expected = u32::try_from(room.size).unwrap_or(u32::MAX);
    let delivered = || -> u64 {
        numbers
            .clone()
            .map(|n| u64::from(room.ledger.delivered(n).min(expected)))
            .sum()
    };
    let deliveries_expected = (numbers.len() as u64) * u64::from(expected);
    let drained = Instant::now();
    // `any` stops at the first message short of its members: cheap while the step drains.
    while drained.elapsed() < DRAIN && numbers.clone().any(|n| room.ledger.delivered(n) < expected)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Beyond capacity, the rest is still on its way: it is waited for (so it is late, not
    // missing, and the next step starts from an empty system) until nothing has come for
    // SETTLE_QUIET.
    let in_time = delivered();
    let (settling, mut quiet, mut last) = (Instant::now(), Instant::now(), in_time);
    while last < deliveries_expected
        && settling.elapsed() < SETTLE
        && quiet.elapsed() < SETTLE_QUIET
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered();
        if now > last {
            (last, quiet) = (now, Instant::now());
        }
    }
    let cpu = match (cpu_before, sum_over(&o.gateway_pids, cpu_seconds)) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let watched = o
        .watch
        .iter()
        .zip(watched_before)
        .map(|(name, before)| (name.clone(), cpu_of_name(name) - before))
        .collect();
    let (mut acks, mut deliveries) = (Samples::default(), Samples::default());
    let mut duplicates = 0;
    let mut errors = std::collections::BTreeMap::new();
    for record in &room.records {
        let mut seen = record.lock().expect("readers never panic holding it");
        acks.extend(std::mem::take(&mut seen.acks));
        deliveries.extend(std::mem::take(&mut seen.deliveries));
        duplicates += std::mem::take(&mut seen.duplicates);
        for (code, n) in std::mem::take(&mut seen.errors) {
            *errors.entry(code).or_insert(0) += n;
        }
        // A connection the server closed (a slow consumer, say) misses what came after: the
        // report names why, beside the count of what is missing.
        if let Some(reason) = seen.closed.take() {
            *errors
                .entry(format!("closed by the server: {reason}"))
                .or_insert(0) += 1;
        }
    }
    let delivered = delivered();
    Step {
        target_rate: rate,
        achieved_rate: per_second(numbers.len(), sent_in),
        messages: numbers.len(),
        deliveries_expected,
        deliveries: delivered,
        late: delivered - in_time,
        missing: deliveries_expected - delivered,
        first_missing: numbers
            .filter(|n| room.ledger.delivered(*n) < expected)
            .take(5)
            .map(|n| format!("m{n}"))
            .collect(),
        duplicates,
        errors,
        ack: acks.summary(),
        delivery: deliveries.summary(),
        gateway_cpu_seconds: cpu,
        cpu_seconds: watched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_out_at_its_scheduled_time() {
        let ms = Duration::from_millis;
        assert_eq!(due(Duration::ZERO, 20.0), 1, "the first at once");
        assert_eq!(due(ms(49), 20.0), 1);
        assert_eq!(due(ms(50), 20.0), 2, "the second 50 ms in, at 20 a second");
        assert_eq!(due(ms(1000), 500.0), 501);
    }
}
