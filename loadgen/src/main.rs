//! `tertulia-load`: drives Tertulia's public contract like real clients (or the baseline relay,
//! which speaks the same frames) and reports what it measured.
//!
//! ```text
//! tertulia-load capacity   --url http://127.0.0.1:8080 --connections 100000 --processes 6 --gateway-pid PID,PID
//! tertulia-load throughput --url … --groups 500 --size 10 --rates 1000,2000,5000 --duration 10
//! tertulia-load storm      --url URL1,URL2 --clients 20000 --devices 10 --messages 5 --processes 2
//! ```
//!
//! The storm spreads its clients over every gateway of `--url` and over `--processes` worker
//! processes (one process holds at most `ulimit -n` sockets), and so does the capacity run;
//! the throughput runs use the first gateway. `--gateway-pid` takes every process of the
//! gateway when several share its port; their memory and CPU are summed.
//!
//! A throughput step waits up to 15 s for its deliveries. When some are still on their way
//! the rate was beyond capacity: they are waited for (reported as late, their latencies in
//! the step's percentiles) until 15 s pass without one, and no higher rate is run.
//!
//! Every run is bounded (`--max-seconds`, default 900), closes its connections at the end,
//! prints a summary on stderr and the full report as JSON on stdout (or into `--json FILE`),
//! and exits with 1 when anything sent was not delivered or a connection failed.

mod client;
mod scenarios;
mod stats;
mod storm;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use client::{Endpoint, Error, Target};

/// Everything a scenario may read.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// One gateway URL, or several comma-separated (the storm spreads over them).
    pub(crate) url: String,
    pub(crate) target: Target,
    pub(crate) sources: u8,
    /// The gateway's processes (several when they share its port), for their memory and CPU.
    pub(crate) gateway_pids: Vec<u32>,
    /// Process names whose CPU time (summed over every process of that name) each
    /// throughput step reports.
    pub(crate) watch: Vec<String>,
    pub(crate) connections: usize,
    pub(crate) users: usize,
    pub(crate) groups: usize,
    pub(crate) size: usize,
    pub(crate) rates: Vec<f64>,
    pub(crate) duration: Duration,
    pub(crate) hold: Duration,
    pub(crate) clients: usize,
    pub(crate) devices: usize,
    pub(crate) messages: usize,
    pub(crate) concurrency: usize,
    pub(crate) handshakes: usize,
    /// Worker processes that hold the storm's (or the capacity run's) clients.
    pub(crate) processes: usize,
    pub(crate) max_seconds: u64,
    pub(crate) json: Option<PathBuf>,
}

impl Options {
    /// The gateway URLs of `--url` (comma-separated); the first is where accounts are made.
    pub(crate) fn gateways(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".into(),
            target: Target::Tertulia,
            sources: 8,
            gateway_pids: Vec::new(),
            watch: Vec::new(),
            connections: 1000,
            users: 100,
            groups: 100,
            size: 10,
            rates: vec![1000.0],
            duration: Duration::from_secs(10),
            hold: Duration::from_secs(2),
            clients: 1000,
            devices: 10,
            messages: 5,
            concurrency: 8,
            handshakes: 256,
            processes: 1,
            max_seconds: 900,
            json: None,
        }
    }
}

const USAGE: &str = "usage: tertulia-load capacity|throughput|storm [--url URL[,URL...]] [--target tertulia|relay] \
[--sources N] [--gateway-pid PID[,PID...]] [--watch NAME,...] [--connections N] [--users N] [--groups N] [--size N] \
[--rates R1,R2,...] [--duration SECONDS] [--hold SECONDS] [--clients N] [--devices N] \
[--messages N] [--concurrency N] [--handshakes N] [--processes N] [--max-seconds N] [--json FILE]";

fn parse(args: &[String]) -> Result<(String, Options), Error> {
    let (scenario, rest) = args.split_first().ok_or(USAGE)?;
    let mut o = Options::default();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let number = || value.parse::<usize>().map_err(|e| bad(&e));
        let seconds = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(&"not a number of seconds"))
        };
        match flag.as_str() {
            "--url" => o.url.clone_from(value),
            "--target" => {
                o.target = match value.as_str() {
                    "tertulia" => Target::Tertulia,
                    "relay" => Target::Relay,
                    _ => return Err(bad(&"tertulia or relay").into()),
                }
            }
            "--sources" => o.sources = value.parse().map_err(|e| bad(&e))?,
            "--gateway-pid" => {
                o.gateway_pids = value
                    .split(',')
                    .map(|pid| pid.trim().parse().map_err(|e| bad(&e)))
                    .collect::<Result<_, _>>()?;
            }
            "--watch" => o.watch = value.split(',').map(str::to_owned).collect(),
            "--connections" => o.connections = number()?,
            "--users" => o.users = number()?,
            "--groups" => o.groups = number()?,
            "--size" => o.size = number()?,
            "--rates" => {
                o.rates = value
                    .split(',')
                    .map(|r| r.trim().parse::<f64>().ok().filter(|r| *r > 0.0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(&"positive rates, comma-separated"))?;
            }
            "--duration" => o.duration = seconds()?,
            "--hold" => o.hold = seconds()?,
            "--clients" => o.clients = number()?,
            "--devices" => o.devices = number()?,
            "--messages" => o.messages = number()?,
            "--concurrency" => o.concurrency = number()?,
            "--handshakes" => o.handshakes = number()?,
            "--processes" => o.processes = number()?.max(1),
            "--max-seconds" => o.max_seconds = value.parse().map_err(|e| bad(&e))?,
            "--json" => o.json = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
        }
    }
    Ok((scenario.clone(), o))
}

/// Runs the scenario; its report as JSON, and whether it passed (nothing lost or refused).
async fn run(scenario: &str, o: &Options) -> Result<(serde_json::Value, bool), Error> {
    let ep = Endpoint::new(o.gateways()[0], o.target, o.sources)?;
    Ok(match scenario {
        "capacity" => {
            let r = scenarios::capacity(&ep, o).await?;
            eprintln!(
                "capacity: {}/{} connected in {:.1} s ({:.0}/s), {} open after the hold, gateway RSS {:?} B per connection",
                r.connected,
                r.connections,
                r.connect_seconds,
                r.connects_per_second,
                r.still_open_after_hold,
                r.gateway_rss_per_connection_bytes.map(f64::round)
            );
            let ok = r.failed == 0 && r.still_open_after_hold == r.connected;
            (serde_json::to_value(r)?, ok)
        }
        "throughput" => {
            let r = scenarios::throughput(&ep, o).await?;
            for s in &r.steps {
                eprintln!(
                    "{:>7.0}/s sent ({:.0} achieved): ack {}; delivery {}; {}/{} delivered, {} duplicates, errors {:?}",
                    s.target_rate,
                    s.achieved_rate,
                    s.ack,
                    s.delivery,
                    s.deliveries,
                    s.deliveries_expected,
                    s.duplicates,
                    s.errors
                );
                if s.late > 0 {
                    eprintln!(
                        "BEYOND CAPACITY: {} deliveries came after the {} s drain",
                        s.late,
                        scenarios::DRAIN.as_secs()
                    );
                }
                if s.missing > 0 {
                    eprintln!(
                        "FAILED: {} deliveries missing, first {:?}",
                        s.missing, s.first_missing
                    );
                }
            }
            if !r.skipped_rates.is_empty() {
                eprintln!(
                    "not run: {:?} msg/s (a lower rate was beyond capacity)",
                    r.skipped_rates
                );
            }
            let ok = r.steps.iter().all(|s| s.missing == 0);
            (serde_json::to_value(r)?, ok)
        }
        "storm" => {
            let r = storm::storm(&ep, o).await?;
            eprintln!(
                "storm: {} clients back in {:.2} s, caught up in {:.2} s, {} missing, {} duplicates, {} failures",
                r.clients,
                r.reconnect_seconds,
                r.caught_up_seconds,
                r.missing,
                r.duplicates,
                r.reconnect_failures
            );
            let ok = r.missing == 0 && r.reconnect_failures == 0;
            (serde_json::to_value(r)?, ok)
        }
        "storm-worker" | "capacity-worker" => {
            if scenario == "storm-worker" {
                storm::worker(&ep, o).await?;
            } else {
                storm::capacity_worker(&ep, o).await?;
            }
            // What a worker saw went to the run that started it, on standard output.
            (serde_json::Value::Null, true)
        }
        _ => return Err(USAGE.into()),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (scenario, options) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let bound = Duration::from_secs(options.max_seconds);
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = tokio::time::timeout(bound, run(&scenario, &options)) => {
                result.unwrap_or_else(|_| Err(format!("the run passed --max-seconds {}", options.max_seconds).into()))
            }
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    // Whatever is still open is closed with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok((report, ok)) => {
            let text = serde_json::to_string_pretty(&report).expect("reports serialise");
            match &options.json {
                Some(path) => {
                    if let Err(e) = std::fs::write(path, text) {
                        eprintln!("cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                // A storm worker has said all it had to say.
                None if report.is_null() => {}
                None => println!("{text}"),
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tertulia-load {scenario}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_parse_and_bad_ones_are_named() {
        let (scenario, o) = parse(&args(
            "throughput --rates 100,200 --size 2 --target relay --duration 1.5 --gateway-pid 7,9",
        ))
        .unwrap();
        assert_eq!(scenario, "throughput");
        assert_eq!(o.rates, [100.0, 200.0]);
        assert_eq!(o.size, 2);
        assert_eq!(o.target, Target::Relay);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.gateway_pids, [7, 9]);
        for bad in [
            "x --rates 0",
            "x --size",
            "x --nope 1",
            "x --target kafka",
            "x --gateway-pid 7,x",
            "",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
