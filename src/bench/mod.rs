//! `portcullis bench`: load generators for Redis and PostgreSQL, to measure a
//! server, or a proxy in front of it, and the difference between the two.
//!
//! - [`redis`]: a small pipelining RESP client of its own (GET, SET, mixed,
//!   PING), plain or TLS, with AUTH.
//! - [`postgres`]: tokio-postgres clients running a query, pgbench's `-S`
//!   transaction, or a whole new session per iteration.
//! - [`schedule`]: the fixed-rate (`--rate`) send schedule and why latency is
//!   measured from it; `pacer`: the thread that wakes clients on that schedule
//!   more precisely than tokio's 1 ms timer; [`report`]: histograms,
//!   percentiles, table and JSON; [`cpu`]: `--cpu-pid`, the CPU time of the
//!   process under test (the proxy) per request, read from `/proc`.
//!
//! A run connects every client first, then starts the clock for all of them at
//! once, so connection setup is not measured (except by `--connect-only`, where
//! it is the thing measured). Without `--rate` each client is a closed loop: it
//! keeps its window of requests in flight and sends the next as soon as one is
//! answered, so throughput is what the target sustains at that concurrency.
//! With `--rate` it is an open model (see [`schedule`]). At `--duration` the
//! clients stop sending, wait up to [`DRAIN_TIMEOUT`] for what is in flight,
//! and stop. Clients whose connection fails count the failure and reconnect
//! after [`RECONNECT_PAUSE`], until the end.
//!
//! What is reported: throughput is successes divided by the measured time (from
//! the common start until the last client stopped, so the drain is included;
//! with a healthy target that is one round trip). Latency percentiles are of
//! successes only; failures are counted by kind: the code of a Redis error
//! reply (`-ERR`, `-NOPERM`), the SQLSTATE of a PostgreSQL error, or the
//! connect, TLS, authentication or I/O failure. With `--rate`, the "send lag"
//! line shows how late the harness itself sent each request against its slot
//! (tens of µs; part of every latency, since latency counts from the slot), and
//! requests still unsent at the end are reported as behind.
//!
//! Memory is bounded per client: a 16 KiB read buffer (replies are scanned, not
//! kept), one batch of at most `--pipeline` requests, and a queue of
//! `--pipeline` send times; plus one latency histogram per client (16 KiB,
//! growing with the largest latency seen, to about 140 KiB at 60 s).
//!
//! With a second target (`--compare`, `--compare-dsn`) the same workload runs
//! against A and B in alternating rounds (A B A B …, `--rounds` of each, each
//! `--duration / --rounds` long), so that drift in the machine's state (CPU
//! frequency, caches, a noisy neighbour) falls on both alike; each target is
//! measured for `--duration` in total, and the report gives B against A.

pub mod cpu;
mod pacer;
pub mod postgres;
pub mod redis;
pub mod report;
pub mod schedule;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use tokio::sync::{watch, Barrier, Notify};
use tokio::time::Instant;

use cpu::CpuTime;
use report::{Comparison, Report, Settings, Stats, Summary};

/// How long a client may take to connect, finish TLS and log in.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After `--duration`, how long requests in flight may take to be answered;
/// later ones are counted as unanswered, so a stalled target cannot hold the
/// harness.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before a client whose connection failed tries again, so a refusing
/// target is not hammered with connects in a tight loop.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Most clients one run may start; each holds a socket and bounded buffers.
pub const MAX_CLIENTS: u32 = 10_000;
/// Longest `--duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most `--rounds` in a comparison.
pub const MAX_ROUNDS: u32 = 100;
/// Longest wait for all clients to connect (or fail to) before the clock starts.
const START_LIMIT: Duration = Duration::from_secs(2 * CONNECT_TIMEOUT.as_secs());
/// How often the live progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The `bench` subcommands (use with `#[command(subcommand)]`).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load a Redis server, or a proxy in front of one, with pipelined GET/SET/PING.
    Redis(Box<redis::RedisArgs>),
    /// Load a PostgreSQL server, or a proxy in front of one: a query, pgbench's
    /// select-only transaction, or a new session per iteration.
    Postgres(postgres::PostgresArgs),
}

/// Runs one `bench` subcommand and prints its report on stdout.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Redis(args) => redis::run(*args).await,
        BenchCommand::Postgres(args) => postgres::run(args).await,
    }
}

/// `--duration` and friends: a humantime duration (`10s`, `1m30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > MAX_DURATION {
        return Err(format!(
            "must be above 0 and at most {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Checks the settings every bench shares.
fn check_common(clients: u32, rounds: u32, rate: Option<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_CLIENTS).contains(&clients),
        "--clients must be 1..={MAX_CLIENTS}"
    );
    anyhow::ensure!(
        (1..=MAX_ROUNDS).contains(&rounds),
        "--rounds must be 1..={MAX_ROUNDS}"
    );
    anyhow::ensure!(rate != Some(0), "--rate must be at least 1");
    Ok(())
}

/// Checks that the processes given to `--cpu-pid` and `--compare-cpu-pid` can
/// be watched, before any client connects.
fn check_cpu_pids(pids: &[Option<u32>]) -> anyhow::Result<()> {
    for pid in pids.iter().flatten() {
        CpuTime::of(*pid).with_context(|| format!("cannot watch process {pid}"))?;
    }
    Ok(())
}

/// The common clock of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// When measuring started.
    pub start: Instant,
    /// When clients stop sending.
    pub deadline: Instant,
    /// When clients stop waiting for answers.
    pub hard_stop: Instant,
}

impl Clock {
    fn new(start: Instant, duration: Duration) -> Clock {
        Clock {
            start,
            deadline: start + duration,
            hard_stop: start + duration + DRAIN_TIMEOUT,
        }
    }
}

/// Where clients wait, connected or not, until all are ready; then the clock starts.
pub(crate) struct Gate {
    barrier: Arc<Barrier>,
    connected: Arc<AtomicU32>,
    clock: watch::Receiver<Option<Clock>>,
    wake: Option<Arc<Notify>>,
}

impl Gate {
    /// With `--rate`: notified when this client's next slot may be due (see [`pacer`]).
    pub fn wake(&self) -> Option<Arc<Notify>> {
        self.wake.clone()
    }

    /// Reports this client ready and waits for the common start.
    pub async fn open(mut self, connected: bool) -> Option<Clock> {
        if connected {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        self.barrier.wait().await;
        let clock = *self.clock.wait_for(Option::is_some).await.ok()?;
        clock
    }
}

/// Counters the clients bump for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Counts `n` completed requests (one atomic add per batch, not per request).
    pub fn done(&self, n: u64) {
        if n > 0 {
            self.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` failures.
    pub fn failed(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the clients of one run measured, and how many had connected at the start.
pub(crate) struct RunOutcome {
    /// Every client's statistics merged; `elapsed` is the run's wall time.
    pub stats: Stats,
    /// Clients that were connected when the clock started.
    pub connected: u32,
}

impl RunOutcome {
    /// The statistics, or an error with the first failure when no client could
    /// even start: a run of nothing but reconnects would measure nothing.
    pub fn stats(self, target: &str) -> anyhow::Result<Stats> {
        if self.connected == 0 {
            let why = self.stats.errors.kinds().values().next();
            let why = why.map(|c| c.example.as_str()).unwrap_or_default();
            anyhow::bail!("no client could start against {target}: {why}");
        }
        Ok(self.stats)
    }
}

/// Starts `clients` tasks made by `client(index, gate, progress)`, starts the
/// clock once all have passed the gate, and merges what they measured. With a
/// `rate`, a [`pacer::Pacer`] wakes each client when its next slot is due.
/// With a `cpu_pid`, that process's CPU time from the start until every client
/// has stopped goes into the statistics.
pub(crate) async fn run_clients<F, Fut>(
    clients: u32,
    duration: Duration,
    rate: Option<u64>,
    cpu_pid: Option<u32>,
    label: String,
    client: F,
) -> anyhow::Result<RunOutcome>
where
    F: Fn(u32, Gate, Arc<Progress>) -> Fut,
    Fut: Future<Output = Stats> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(clients as usize + 1));
    let connected = Arc::new(AtomicU32::new(0));
    let (clock_tx, clock_rx) = watch::channel(None);
    let progress = Arc::new(Progress::default());
    let wake: Vec<Arc<Notify>> = match rate {
        Some(_) => (0..clients).map(|_| Arc::new(Notify::new())).collect(),
        None => Vec::new(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let gate = Gate {
            barrier: barrier.clone(),
            connected: connected.clone(),
            clock: clock_rx.clone(),
            wake: wake.get(i as usize).cloned(),
        };
        tasks.spawn(client(i, gate, progress.clone()));
    }
    // Every client reaches the gate within CONNECT_TIMEOUT; the margin only
    // guards against a client task that died before it (the JoinSet aborts the rest).
    tokio::time::timeout(START_LIMIT, barrier.wait())
        .await
        .map_err(|_| anyhow::anyhow!("clients did not start within {START_LIMIT:?}"))?;
    let connected = connected.load(Ordering::Relaxed);
    let cpu_before = cpu_pid.map(CpuTime::of).transpose()?;
    let start = Instant::now();
    // No client connected: start and end at once, so the failures are reported
    // at once instead of after a whole run of reconnects.
    let clock = Clock::new(
        start,
        if connected == 0 {
            Duration::ZERO
        } else {
            duration
        },
    );
    let pacer = match rate {
        Some(r) if connected > 0 => Some(pacer::Pacer::start(
            r,
            wake,
            clock.start.into_std(),
            clock.deadline.into_std(),
        )?),
        _ => None,
    };
    let _ = clock_tx.send(Some(clock));
    let ticker = progress_line_wanted().then(|| tokio::spawn(tick(label, progress.clone(), start)));
    let mut stats = Stats::new(rate.is_some());
    while let Some(done) = tasks.join_next().await {
        stats.absorb(&done?);
    }
    stats.elapsed = start.elapsed();
    if let (Some(pid), Some(before)) = (cpu_pid, cpu_before) {
        let now =
            CpuTime::of(pid).with_context(|| format!("process {pid}, watched for its CPU"))?;
        stats.cpu = Some(now - before);
    }
    drop(pacer);
    if let Some(t) = ticker {
        t.abort();
        let _ = t.await;
        eprint!("\r\x1b[2K");
    }
    Ok(RunOutcome { stats, connected })
}

/// A live progress line only for someone watching: stdout is a terminal (not
/// piped into a file or `jq`), and so is stderr, where the line goes.
fn progress_line_wanted() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

async fn tick(label: String, progress: Arc<Progress>, start: Instant) {
    let mut every = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut last = 0;
    loop {
        every.tick().await;
        let done = progress.done.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        let rate = (done - last) as f64 / PROGRESS_EVERY.as_secs_f64();
        last = done;
        eprint!(
            "\r\x1b[2K{label} {:>4}s  {} done  {}/s now  {} errors",
            start.elapsed().as_secs(),
            report::fmt_count(done),
            report::fmt_rate(rate),
            report::fmt_count(errors)
        );
        let _ = std::io::stderr().flush();
    }
}

/// Runs `once` against each target in alternating rounds (A B A B …) and merges
/// each target's rounds. One target runs once, for the whole duration.
pub(crate) async fn alternate<T, F, Fut>(
    targets: &[T],
    rounds: u32,
    duration: Duration,
    mut once: F,
) -> anyhow::Result<Vec<Stats>>
where
    F: FnMut(&T, usize, Duration, String) -> Fut,
    Fut: Future<Output = anyhow::Result<Stats>>,
{
    let rounds = if targets.len() > 1 { rounds } else { 1 };
    let per_round = duration / rounds;
    let mut merged: Vec<Option<Stats>> = vec![None; targets.len()];
    for round in 1..=rounds {
        for (i, target) in targets.iter().enumerate() {
            let label = match targets.len() {
                1 => String::new(),
                _ => format!("[{} round {round}/{rounds}]", target_label(i)),
            };
            let stats = once(target, i, per_round, label).await?;
            match &mut merged[i] {
                Some(m) => m.absorb(&stats),
                slot => *slot = Some(stats),
            }
        }
    }
    Ok(merged.into_iter().flatten().collect())
}

/// `A`, `B`: how the report names the targets of a comparison.
pub(crate) fn target_label(i: usize) -> &'static str {
    ["A", "B"].get(i).copied().unwrap_or("?")
}

/// Assembles the report: one summary per target (labelled A and B when two),
/// and B against A.
pub(crate) fn report(
    protocol: &'static str,
    unit: &'static str,
    settings: Settings,
    targets: &[&str],
    merged: &[Stats],
) -> Report {
    let labelled = targets.len() > 1;
    let results: Vec<Summary> = merged
        .iter()
        .zip(targets)
        .enumerate()
        .map(|(i, (s, t))| Summary::new(if labelled { target_label(i) } else { "" }, t, s))
        .collect();
    Report {
        protocol,
        unit,
        settings,
        comparison: match results.as_slice() {
            [a, b] => Some(Comparison::between(a, b)),
            _ => None,
        },
        results,
    }
}

/// Prints the report (table or JSON) and fails if a target answered nothing successfully.
pub(crate) fn finish(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(r) = report.results.iter().find(|r| r.completed == 0) {
        anyhow::bail!("no {} succeeded against {}", report.unit, r.target);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2days").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[tokio::test]
    async fn rounds_alternate_and_merge_per_target() {
        let mut order = Vec::new();
        let merged = alternate(&["a", "b"], 3, Duration::from_secs(6), |t, i, d, label| {
            order.push((t.to_string(), i, d, label));
            async move {
                let mut s = Stats::new(false);
                s.record_ok(Duration::from_micros(if i == 0 { 10 } else { 20 }));
                s.elapsed = d;
                Ok(s)
            }
        })
        .await
        .expect("rounds");
        let names: Vec<&str> = order.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
        assert!(order.iter().all(|o| o.2 == Duration::from_secs(2)));
        assert_eq!(order[3].3, "[B round 2/3]");
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].ok, merged[1].ok), (3, 3));
        assert_eq!(merged[1].elapsed, Duration::from_secs(6));
    }

    #[tokio::test]
    async fn one_target_runs_once_for_the_whole_duration() {
        let mut calls = Vec::new();
        alternate(&["a"], 4, Duration::from_secs(8), |_, _, d, label| {
            calls.push((d, label));
            async { Ok(Stats::new(false)) }
        })
        .await
        .expect("run");
        assert_eq!(calls, [(Duration::from_secs(8), String::new())]);
    }

    #[tokio::test]
    async fn clients_start_together_and_merge() {
        let out = run_clients(
            4,
            Duration::from_millis(50),
            None,
            Some(std::process::id()),
            String::new(),
            |i, gate, progress| async move {
                let mut s = Stats::new(false);
                let Some(clock) = gate.open(i != 3).await else {
                    return s;
                };
                tokio::time::sleep_until(clock.deadline).await;
                s.record_ok(Duration::from_micros(5));
                progress.done(1);
                s
            },
        )
        .await
        .expect("run");
        assert_eq!(out.connected, 3);
        assert_eq!(out.stats.ok, 4);
        // The watched process (this one) was read at both ends.
        assert!(out.stats.cpu.is_some());
        assert!(out.stats.elapsed >= Duration::from_millis(50));
    }
}
