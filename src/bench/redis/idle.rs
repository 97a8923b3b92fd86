//! `bench redis --idle`: what connections that do nothing cost the target.
//!
//! Opens `--clients` connections (TLS and AUTH as for a load run), at most
//! [`CONNECT_AT_ONCE`] handshakes at a time, and holds them idle for
//! `--duration`; then sends each one PING, to count those still open and
//! logged in. With `--watch-pid` it reads that process's resident set size
//! (`VmRSS` in `/proc/PID/status`) before the first connect and again once every
//! connection is open and [`SETTLE`] (or all of `--duration`, if shorter) has
//! passed, and reports the growth per
//! open connection: for a proxy, the memory one idle session holds, its
//! backend connection included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::client::{self, ClientError};
use super::Endpoint;
use crate::bench::CONNECT_TIMEOUT;
use crate::stream::BackendStream;

/// Handshakes in progress at once: well under a proxy's cap on
/// unauthenticated connections from one address (256 by default).
const CONNECT_AT_ONCE: usize = 64;
/// Wait after the last connect before reading the RSS, so the target has
/// finished the logins it was still answering.
const SETTLE: Duration = Duration::from_secs(1);

/// The outcome of one idle run.
#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub protocol: &'static str,
    pub mode: &'static str,
    pub target: String,
    pub requested: u32,
    /// Connections open and logged in.
    pub opened: u64,
    /// Of those, the ones that still answered PING at the end.
    pub alive_at_end: u64,
    /// Failed connects and PINGs, by kind.
    pub errors: BTreeMap<String, u64>,
    pub connect_seconds: f64,
    pub held_seconds: f64,
    pub watched_pid: Option<u32>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// RSS growth divided by the connections open.
    pub rss_per_connection_kib: Option<f64>,
}

impl IdleReport {
    fn to_table(&self) -> String {
        let mut s = format!(
            "redis idle connections against {}\n\
             opened         {} of {} in {:.1} s\n\
             alive at end   {} (PING answered after {:.1} s idle)\n",
            self.target,
            self.opened,
            self.requested,
            self.connect_seconds,
            self.alive_at_end,
            self.held_seconds,
        );
        if let (Some(pid), Some(b), Some(a)) =
            (self.watched_pid, self.rss_before_kib, self.rss_after_kib)
        {
            s += &format!("rss of {pid}     {b} KiB -> {a} KiB");
            if let Some(per) = self.rss_per_connection_kib {
                s += &format!(", {per:.1} KiB per connection");
            }
            s.push('\n');
        }
        for (kind, n) in &self.errors {
            s += &format!("errors         {n} {kind}\n");
        }
        s
    }
}

/// Runs the idle mode and prints its report; fails when no connection stood
/// to the end.
pub(super) async fn run(
    ep: Arc<Endpoint>,
    clients: u32,
    hold: Duration,
    watch_pid: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    crate::server::raise_open_file_limit();
    let before = watch_pid.map(rss_kib).transpose()?;
    let mut errors = BTreeMap::new();
    let started = Instant::now();
    let mut conns = open_all(&ep, clients, &mut errors).await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let held_from = Instant::now();
    tokio::time::sleep(SETTLE.min(hold)).await;
    let after = watch_pid.map(rss_kib).transpose()?;
    tokio::time::sleep_until(held_from + hold).await;
    let held_seconds = held_from.elapsed().as_secs_f64();
    let opened = conns.len() as u64;
    let alive = ping_all(&mut conns, &mut errors).await;
    let per = match (before, after) {
        (Some(b), Some(a)) if opened > 0 => Some((a as f64 - b as f64) / opened as f64),
        _ => None,
    };
    let report = IdleReport {
        protocol: "redis",
        mode: "idle",
        target: ep.name.clone(),
        requested: clients,
        opened,
        alive_at_end: alive,
        errors,
        connect_seconds,
        held_seconds,
        watched_pid: watch_pid,
        rss_before_kib: before,
        rss_after_kib: after,
        rss_per_connection_kib: per,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    anyhow::ensure!(alive > 0, "no connection to {} stood idle", ep.name);
    Ok(())
}

/// Opens up to `n` logged-in connections, [`CONNECT_AT_ONCE`] at a time.
async fn open_all(
    ep: &Arc<Endpoint>,
    n: u32,
    errors: &mut BTreeMap<String, u64>,
) -> Vec<BackendStream> {
    let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (ep, gate) = (ep.clone(), gate.clone());
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await;
            timeout(CONNECT_TIMEOUT, client::connect(&ep))
                .await
                .unwrap_or(Err(ClientError::ConnectTimeout))
        });
    }
    let mut conns = Vec::with_capacity(n as usize);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(s)) => conns.push(s),
            Ok(Err(e)) => *errors.entry(e.kind()).or_default() += 1,
            Err(_) => *errors.entry("task".into()).or_default() += 1,
        }
    }
    conns
}

/// Sends PING on every connection; counts the `+PONG`s.
async fn ping_all(conns: &mut Vec<BackendStream>, errors: &mut BTreeMap<String, u64>) -> u64 {
    let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
    let mut tasks = JoinSet::new();
    for mut s in conns.drain(..) {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await;
            match timeout(CONNECT_TIMEOUT, ping(&mut s)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("ping_{}", e.kind())),
                Err(_) => Err("ping_timeout".to_string()),
            }
        });
    }
    let mut alive = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => alive += 1,
            Ok(Err(kind)) => *errors.entry(kind).or_default() += 1,
            Err(_) => *errors.entry("task".into()).or_default() += 1,
        }
    }
    alive
}

async fn ping(s: &mut BackendStream) -> Result<(), ClientError> {
    s.write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(ClientError::Io)?;
    let reply = client::read_one(s).await?;
    if reply.is_error() {
        return Err(ClientError::Auth(super::wire::error_text(&reply)));
    }
    Ok(())
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tportcullis\nVmPeak:\t  900 kB\nVmRSS:\t  23456 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(23456));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).expect("own rss") > 0);
    }
}
