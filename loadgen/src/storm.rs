//! The reconnect storm: every client drops at once, messages are stored while they are away,
//! and every client comes back at once with `resume`; nothing may be missing or doubled.
//!
//! One process holds at most `ulimit -n` sockets, and so does one gateway. The clients are
//! therefore held by worker processes (this binary again, as `storm-worker`), client `i` by
//! worker `i % processes`, and worker `w` dials gateway `w % gateways`: a user's devices are
//! spread over the gateways as a load balancer would spread them. This process makes the
//! users and conversations, holds one sender per conversation, and tells the workers when to
//! drop and when to come back, over their standard input and output (one JSON line each way
//! per step). A capacity run larger than one process holds its clients in workers of the
//! same kind (`capacity-worker`), which connect, count and close.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
    sync::mpsc,
};

use crate::{
    Options,
    client::{Endpoint, Error, Ledger, User},
    scenarios::{DRAIN, close_all, connect_all, conversations_of},
};

/// Members of each conversation of the storm.
const SIZE: usize = 10;

#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    pub(crate) clients: usize,
    pub(crate) devices_per_user: usize,
    pub(crate) conversations: usize,
    pub(crate) messages_while_away: usize,
    /// Gateways the clients were spread over.
    pub(crate) gateways: usize,
    /// Processes that held the clients.
    pub(crate) processes: usize,
    pub(crate) reconnect_seconds: f64,
    pub(crate) caught_up_seconds: f64,
    pub(crate) reconnect_failures: usize,
    pub(crate) first_failure: Option<String>,
    /// Messages counted on the clients that came back (each once per client).
    pub(crate) delivered_after_reconnect: u64,
    pub(crate) missing: u64,
    pub(crate) duplicates: u64,
}

/// What a worker is given: its clients, as (user, index of their conversation).
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    conversations: Vec<String>,
    clients: Vec<(User, usize)>,
    /// Messages of the run, numbered from 0; message `n` goes to conversation
    /// `n % conversations.len()`.
    messages: usize,
}

/// What a worker says after each step.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
enum Said {
    Connected {
        failures: Vec<String>,
    },
    Dropped,
    Back {
        failures: Vec<String>,
    },
    CaughtUp {
        delivered: u64,
        missing: u64,
        duplicates: u64,
    },
    /// A capacity worker's connections still open.
    Open {
        open: usize,
    },
}

/// What a worker is told, one word a line.
const DROP: &str = "drop";
const BACK: &str = "back";
const COUNT: &str = "count";

/// The workers' roles (their subcommands).
const STORM_WORKER: &str = "storm-worker";
const CAPACITY_WORKER: &str = "capacity-worker";

pub(crate) async fn storm(ep: &Endpoint, o: &Options) -> Result<StormReport, Error> {
    let devices = o.devices.max(1);
    let groups = ((o.clients / devices).max(SIZE)) / SIZE;
    let per_group = o.messages.max(1);
    let messages = groups * per_group;
    let gateways = o.gateways();
    let processes = o.processes.max(1);
    eprintln!(
        "storm: {} clients ({} users × {devices} devices) in {groups} conversations, over {} \
         gateway(s) from {processes} process(es)…",
        groups * SIZE * devices,
        groups * SIZE,
        gateways.len()
    );
    let users = ep.users(groups * SIZE, o.concurrency).await?;
    let conversations = conversations_of(ep, o, &users, SIZE).await?;
    // The clients: every device of every member.
    let clients = groups * SIZE * devices;
    let plans = (0..processes).map(|w| Plan {
        conversations: conversations.clone(),
        clients: (w..clients)
            .step_by(processes)
            .map(|i| (users[i / devices].clone(), i / devices / SIZE))
            .collect(),
        messages,
    });
    let mut workers = Worker::start_all(o, STORM_WORKER, plans).await?;
    let failures = Worker::all(&mut workers, None).await?.failures();
    if let Some(first) = failures.first() {
        return Err(format!("{} connections failed, first: {first}", failures.len()).into());
    }
    // One sender per conversation that stays connected (another device of its first member),
    // on every gateway in turn; each sees every message once (its echo).
    let ledger = Ledger::new(messages);
    let endpoints = gateways
        .iter()
        .map(|url| Endpoint::new(url, o.target, o.sources))
        .collect::<Result<Vec<_>, _>>()?;
    let mut senders = Vec::with_capacity(groups);
    for (g, conversation) in conversations.iter().enumerate() {
        let gateway = &endpoints[g % endpoints.len()];
        let who = [(&users[g * SIZE], json!({ conversation: 0 }))];
        let (mut conns, _, failures, _) = connect_all(gateway, &who, 1, Some(&ledger), None).await;
        if let Some(first) = failures.first() {
            return Err(format!("a sender's connection failed: {first}").into());
        }
        senders.extend(conns.pop().flatten());
    }
    // Everyone drops at once.
    Worker::all(&mut workers, Some(DROP)).await?;
    // Messages while they are away, each acknowledged (stored) before they come back.
    for n in 0..messages {
        ledger.sent(n, Instant::now());
        senders[n % groups].send(&conversations[n % groups], n);
    }
    let stored = Instant::now();
    while stored.elapsed() < DRAIN && (0..messages).any(|n| ledger.delivered(n) < 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let senders_missing: u64 = (0..messages)
        .map(|n| u64::from(1u32.saturating_sub(ledger.delivered(n))))
        .sum();
    // Everyone comes back at once, resuming from what they had.
    let back = Instant::now();
    let said = Worker::all(&mut workers, Some(BACK)).await?;
    let reconnected = said.latest;
    let failures = said.failures();
    let caught = Worker::all(&mut workers, None).await?;
    let (mut delivered, mut missing, mut duplicates) = (0, senders_missing, 0);
    for said in &caught.said {
        if let Said::CaughtUp {
            delivered: k,
            missing: m,
            duplicates: d,
        } = said
        {
            delivered += k;
            missing += m;
            duplicates += d;
        }
    }
    close_all(senders.into_iter().map(Some).collect()).await;
    for worker in workers {
        worker.finish().await;
    }
    Ok(StormReport {
        clients,
        devices_per_user: devices,
        conversations: groups,
        messages_while_away: messages,
        gateways: gateways.len(),
        processes,
        reconnect_seconds: reconnected.duration_since(back).as_secs_f64(),
        caught_up_seconds: caught.latest.duration_since(back).as_secs_f64(),
        reconnect_failures: failures.len(),
        first_failure: failures.into_iter().next(),
        delivered_after_reconnect: delivered,
        missing,
        duplicates,
    })
}

/// A worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// What every worker said after a step, and when the last of them said it.
struct AllSaid {
    said: Vec<Said>,
    latest: Instant,
}

impl AllSaid {
    fn failures(&self) -> Vec<String> {
        self.said
            .iter()
            .flat_map(|said| match said {
                Said::Connected { failures } | Said::Back { failures } => failures.clone(),
                _ => Vec::new(),
            })
            .collect()
    }
}

impl Worker {
    /// Starts a worker in `role` for each plan, worker `w` on gateway `w % gateways`.
    async fn start_all(
        o: &Options,
        role: &str,
        plans: impl Iterator<Item = Plan>,
    ) -> Result<Vec<Self>, Error> {
        let gateways = o.gateways();
        let mut workers = Vec::new();
        for (w, plan) in plans.enumerate() {
            workers.push(Self::start(o, role, gateways[w % gateways.len()], &plan).await?);
        }
        Ok(workers)
    }

    async fn start(o: &Options, role: &str, gateway: &str, plan: &Plan) -> Result<Self, Error> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([role, "--url", gateway, "--target", o.target.name()])
            .args(["--sources", &o.sources.to_string()])
            .args(["--handshakes", &o.handshakes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("a worker without stdin")?;
        let stdout = child.stdout.take().ok_or("a worker without stdout")?;
        let mut line = serde_json::to_vec(plan)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// Tells every worker `word` (if any), then waits for each one's answer.
    async fn all(workers: &mut [Self], word: Option<&str>) -> Result<AllSaid, Error> {
        if let Some(word) = word {
            for worker in workers.iter_mut() {
                worker
                    .stdin
                    .write_all(format!("{word}\n").as_bytes())
                    .await?;
            }
        }
        let mut said = Vec::with_capacity(workers.len());
        for worker in workers.iter_mut() {
            let line = worker
                .stdout
                .next_line()
                .await?
                .ok_or("a worker process ended early (its error is above)")?;
            said.push(serde_json::from_str(&line)?);
        }
        Ok(AllSaid {
            said,
            latest: Instant::now(),
        })
    }

    /// Waits (10 s at most) for the worker to close its connections and exit.
    async fn finish(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `storm-worker`: holds the clients of a [`Plan`] read from standard input, drops them and
/// brings them back when told, and says what happened on standard output.
pub(crate) async fn worker(ep: &Endpoint, o: &Options) -> Result<(), Error> {
    let mut told = told();
    let plan: Plan = serde_json::from_str(&next(&mut told).await?)?;
    let ledger = Ledger::new(plan.messages);
    let who: Vec<(&User, Value)> = plan
        .clients
        .iter()
        .map(|(user, g)| (user, json!({ &plan.conversations[*g]: 0 })))
        .collect();
    let (conns, records, failures, _) =
        connect_all(ep, &who, o.handshakes, Some(&ledger), None).await;
    say(&Said::Connected { failures })?;
    expect(&mut told, DROP).await?;
    for conn in conns.into_iter().flatten() {
        conn.drop_abruptly();
    }
    say(&Said::Dropped)?;
    expect(&mut told, BACK).await?;
    let back = Instant::now();
    // Latencies are not what this measures; a delivery counts once its message is "sent".
    for n in 0..plan.messages {
        ledger.sent(n, back);
    }
    let who: Vec<(&User, Value)> = who
        .iter()
        .zip(&records)
        .map(|((user, first), record)| {
            let resume = record.lock().expect("no reader left").resume();
            let empty = resume.as_object().is_some_and(serde_json::Map::is_empty);
            (*user, if empty { first.clone() } else { resume })
        })
        .collect();
    let (conns, records, failures, reconnected) =
        connect_all(ep, &who, o.handshakes, Some(&ledger), Some(records)).await;
    say(&Said::Back { failures })?;
    // Each message is due once on every client of its conversation held here.
    let groups = plan.conversations.len().max(1);
    let mut due = vec![0u32; groups];
    for (_, g) in &plan.clients {
        due[*g] += 1;
    }
    let short = |n: usize| u64::from(due[n % groups].saturating_sub(ledger.delivered(n)));
    while back.elapsed() < DRAIN + reconnected && (0..plan.messages).any(|n| short(n) > 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing = (0..plan.messages).map(short).sum();
    let delivered = (0..plan.messages)
        .map(|n| u64::from(ledger.delivered(n)))
        .sum();
    let duplicates = records
        .iter()
        .map(|r| r.lock().expect("readers never panic holding it").duplicates)
        .sum();
    say(&Said::CaughtUp {
        delivered,
        missing,
        duplicates,
    })?;
    close_all(conns).await;
    Ok(())
}

/// The capacity run's clients, held by worker processes (`capacity-worker`): client `i` by
/// worker `i % processes`, and worker `w` dials gateway `w % gateways`.
pub(crate) struct Workers {
    each: Vec<Worker>,
    connected: usize,
    failures: Vec<String>,
    took: Duration,
}

impl Workers {
    /// Starts the workers and waits until each has connected its clients.
    pub(crate) async fn connect(o: &Options, who: &[&User]) -> Result<Self, Error> {
        let processes = o.processes.max(1);
        let started = Instant::now();
        // Idle clients: no conversations, so the conversation index of each is unused.
        let plans = (0..processes).map(|w| Plan {
            conversations: Vec::new(),
            clients: who
                .iter()
                .skip(w)
                .step_by(processes)
                .map(|user| ((*user).clone(), 0))
                .collect(),
            messages: 0,
        });
        let mut workers = Worker::start_all(o, CAPACITY_WORKER, plans).await?;
        let said = Worker::all(&mut workers, None).await?;
        let failures = said.failures();
        Ok(Self {
            connected: who.len().saturating_sub(failures.len()),
            failures,
            took: said.latest.duration_since(started),
            each: workers,
        })
    }

    /// How many connected, the failures, how long connecting took, and how many are still
    /// open; then the workers close their connections and exit.
    pub(crate) async fn count_and_close(
        mut self,
    ) -> Result<(usize, Vec<String>, Duration, usize), Error> {
        let said = Worker::all(&mut self.each, Some(COUNT)).await?;
        let open = said
            .said
            .iter()
            .map(|said| match said {
                Said::Open { open } => *open,
                _ => 0,
            })
            .sum();
        futures::future::join_all(self.each.into_iter().map(Worker::finish)).await;
        Ok((self.connected, self.failures, self.took, open))
    }
}

/// `capacity-worker`: connects the clients of a [`Plan`] read from standard input (idle, no
/// conversations), says so, says how many are still open when told `count`, and holds them
/// until standard input closes.
pub(crate) async fn capacity_worker(ep: &Endpoint, o: &Options) -> Result<(), Error> {
    let mut told = told();
    let plan: Plan = serde_json::from_str(&next(&mut told).await?)?;
    let who: Vec<(&User, Value)> = plan
        .clients
        .iter()
        .map(|(user, _)| (user, json!({})))
        .collect();
    let (conns, _, failures, _) = connect_all(ep, &who, o.handshakes, None, None).await;
    say(&Said::Connected { failures })?;
    expect(&mut told, COUNT).await?;
    let open = conns.iter().flatten().filter(|c| !c.is_finished()).count();
    say(&Said::Open { open })?;
    while told.recv().await.is_some() {}
    close_all(conns).await;
    Ok(())
}

/// The lines of standard input, read on a thread of their own.
fn told() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next(told: &mut mpsc::UnboundedReceiver<String>) -> Result<String, Error> {
    told.recv()
        .await
        .ok_or_else(|| "the run ended (standard input closed)".into())
}

async fn expect(told: &mut mpsc::UnboundedReceiver<String>, word: &str) -> Result<(), Error> {
    let line = next(told).await?;
    if line == word {
        Ok(())
    } else {
        Err(format!("told {line:?}, expected {word:?}").into())
    }
}

fn say(said: &Said) -> Result<(), Error> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, said)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_worker_says_reads_back() {
        for said in [
            Said::Connected {
                failures: vec!["refused".into()],
            },
            Said::Dropped,
            Said::CaughtUp {
                delivered: 3,
                missing: 1,
                duplicates: 2,
            },
            Said::Open { open: 7 },
        ] {
            let line = serde_json::to_string(&said).unwrap();
            assert!(!line.contains('\n'), "one line: {line}");
            let back: Said = serde_json::from_str(&line).unwrap();
            assert_eq!(format!("{back:?}"), format!("{said:?}"));
        }
    }
}
