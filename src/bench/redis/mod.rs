//! `portcullis bench redis`: a small pipelining RESP client of its own.
//!
//! Each client task holds one connection (plain or TLS, logged in with AUTH
//! when a password is given) and a window of `--pipeline` requests: it writes
//! as many requests as the window has room for in one write, reads whatever
//! replies have arrived, finds their boundaries with the proxy's own
//! [`ReplyScanner`] (replies are scanned, never buffered, so a reply of any size
//! costs one fixed read buffer), and records for each request the time from its
//! send (with `--rate`, from its intended send time) to its reply.
//!
//! `--idle` measures something else: what connections that do nothing cost
//! the target (see [`idle`]).

mod client;
mod idle;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::report::{Settings, Stats};
use crate::auth::secret::Secret;

pub use client::ClientError;

/// Deepest `--pipeline`; the window is a queue of send times, one per request.
pub const MAX_PIPELINE: u32 = 4096;
/// Largest `--value-size` (Redis's own `proto-max-bulk-len` is 512 MB; a
/// benchmark value this big already measures the network, not the target).
pub const MAX_VALUE_SIZE: usize = 4 << 20;
/// Most request bytes one write may carry (`--pipeline` × request size), the
/// bound on each client's write buffer.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Narrowest key number: `key:000042`.
const MIN_KEY_DIGITS: usize = 6;
/// Room in each request for the RESP framing around key and value.
const FRAMING: usize = 64;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// `GET key:NNNNNN`.
    Get,
    /// `SET key:NNNNNN <value-size bytes>`.
    Set,
    /// 90 % GET, 10 % SET.
    Mixed,
    /// `PING`.
    Ping,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
            Workload::Mixed => "mixed",
            Workload::Ping => "ping",
        }
    }
}

/// `portcullis bench redis` options.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// The endpoint to load: a Redis server or a proxy in front of one.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// Speak TLS (1.2 or 1.3), checking the certificate against HOST.
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) to trust with --tls; the web PKI roots without it.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// User name for `AUTH user password` (needs --password-env).
    #[arg(long, requires = "password_env")]
    pub user: Option<String>,
    /// Environment variable holding the password; each connection sends AUTH first.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Requests each connection keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// How long to measure each target (`10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Workload::Get)]
    pub workload: Workload,
    /// Bytes in each SET value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Keys are `key:NNNNNN`, uniformly random below this.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Requests per second across all clients, sent on a fixed schedule; latency
    /// counts from each request's intended send time (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<u64>,
    /// A second endpoint (B) to run the same load against, in rounds alternating with
    /// the target (A). B uses the target's TLS and AUTH settings unless any --compare-* is given.
    #[arg(long, value_name = "HOST:PORT")]
    pub compare: Option<String>,
    /// Speak TLS to B.
    #[arg(long, requires = "compare")]
    pub compare_tls: bool,
    /// CA certificates (PEM) to trust for B.
    #[arg(long, value_name = "FILE", requires = "compare_tls")]
    pub compare_ca: Option<PathBuf>,
    /// User name for AUTH on B (needs --compare-password-env).
    #[arg(long, requires = "compare_password_env")]
    pub compare_user: Option<String>,
    /// Environment variable holding B's password.
    #[arg(long, value_name = "VAR", requires = "compare")]
    pub compare_password_env: Option<String>,
    /// Rounds per target with --compare; each lasts --duration / --rounds.
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// A process serving the target (the proxy's PID): reports its CPU time per
    /// request while the clients run, user and system (Linux /proc).
    #[arg(long, value_name = "PID", conflicts_with = "idle")]
    pub cpu_pid: Option<u32>,
    /// The same for B (another proxy's PID), and B's CPU per request against A's.
    #[arg(long, value_name = "PID", requires = "compare")]
    pub compare_cpu_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead of a load: open --clients connections (TLS, AUTH), hold them idle
    /// for --duration, then PING each; reports how many stood.
    #[arg(long, conflicts_with_all = ["compare", "rate"])]
    pub idle: bool,
    /// With --idle: the process whose memory to watch (the proxy's PID); reports
    /// its RSS growth per connection (Linux /proc).
    #[arg(long, value_name = "PID", requires = "idle")]
    pub watch_pid: Option<u32>,
}

/// Where and how to connect.
struct Endpoint {
    /// `HOST:PORT` as given, for the report.
    name: String,
    /// What HOST resolved to, tried in order on each connect (resolved once).
    addrs: Vec<SocketAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The encoded AUTH command; redacted in Debug, zeroized on drop.
    auth: Option<Secret>,
}

/// The load every client generates.
#[derive(Debug)]
struct Load {
    workload: Workload,
    clients: u32,
    pipeline: usize,
    value: Vec<u8>,
    keyspace: u64,
    key_digits: usize,
    rate: Option<u64>,
}

/// Runs `portcullis bench redis`.
pub async fn run(args: RedisArgs) -> anyhow::Result<()> {
    super::check_common(args.clients, args.rounds, args.rate)?;
    if args.idle {
        let ep = Arc::new(endpoint(&args.target, &args.login_a()).await?);
        return idle::run(ep, args.clients, args.duration, args.watch_pid, args.json).await;
    }
    let load = Arc::new(load(&args)?);
    let cpu_pids = [args.cpu_pid, args.compare_cpu_pid];
    super::check_cpu_pids(&cpu_pids)?;
    let mut targets = vec![Arc::new(endpoint(&args.target, &args.login_a()).await?)];
    if let Some(b) = &args.compare {
        targets.push(Arc::new(endpoint(b, &args.login_b()).await?));
    }
    let merged = super::alternate(
        &targets,
        args.rounds,
        args.duration,
        |ep, i, duration, label| run_once(ep.clone(), load.clone(), duration, label, cpu_pids[i]),
    )
    .await?;
    let mut settings = Settings::default();
    settings.push("workload", load.workload.name());
    settings.push("clients", load.clients);
    settings.push("pipeline", load.pipeline);
    settings.push(
        "duration",
        humantime::format_duration(args.duration).to_string(),
    );
    if matches!(load.workload, Workload::Set | Workload::Mixed) {
        settings.push("value_size", load.value.len());
    }
    if load.workload != Workload::Ping {
        settings.push("keyspace", load.keyspace);
    }
    if let Some(r) = load.rate {
        settings.push("rate", r);
    }
    if targets.len() > 1 {
        settings.push("rounds", args.rounds);
    }
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let report = super::report("redis", "requests", settings, &names, &merged);
    super::finish(&report, args.json)
}

fn load(args: &RedisArgs) -> anyhow::Result<Load> {
    anyhow::ensure!(
        (1..=MAX_PIPELINE).contains(&args.pipeline),
        "--pipeline must be 1..={MAX_PIPELINE}"
    );
    anyhow::ensure!(
        args.value_size <= MAX_VALUE_SIZE,
        "--value-size must be at most {MAX_VALUE_SIZE}"
    );
    anyhow::ensure!(args.keyspace >= 1, "--keyspace must be at least 1");
    let key_digits = (args.keyspace - 1).to_string().len().max(MIN_KEY_DIGITS);
    let request = args.value_size + key_digits + FRAMING;
    anyhow::ensure!(
        (args.pipeline as usize).saturating_mul(request) <= MAX_BATCH_BYTES,
        "--pipeline × --value-size is over {MAX_BATCH_BYTES} bytes per write"
    );
    Ok(Load {
        workload: args.workload,
        clients: args.clients,
        pipeline: args.pipeline as usize,
        value: vec![b'x'; args.value_size],
        keyspace: args.keyspace,
        key_digits,
        rate: args.rate,
    })
}

/// How to reach and log in to one target.
struct Login<'a> {
    tls: bool,
    ca: Option<&'a Path>,
    user: Option<&'a str>,
    password_env: Option<&'a str>,
}

impl RedisArgs {
    fn login_a(&self) -> Login<'_> {
        Login {
            tls: self.tls,
            ca: self.ca.as_deref(),
            user: self.user.as_deref(),
            password_env: self.password_env.as_deref(),
        }
    }

    /// B's settings: its own when any --compare-* is given, else A's.
    fn login_b(&self) -> Login<'_> {
        let own = self.compare_tls
            || self.compare_ca.is_some()
            || self.compare_user.is_some()
            || self.compare_password_env.is_some();
        if !own {
            return self.login_a();
        }
        Login {
            tls: self.compare_tls,
            ca: self.compare_ca.as_deref(),
            user: self.compare_user.as_deref(),
            password_env: self.compare_password_env.as_deref(),
        }
    }
}

async fn endpoint(target: &str, login: &Login<'_>) -> anyhow::Result<Endpoint> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving {target}"))?
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "{target} resolves to no address");
    let tls = if login.tls {
        let host = target
            .rsplit_once(':')
            .map_or(target, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let config = crate::tls::client_config(login.ca, true)?;
        Some((TlsConnector::from(config), name))
    } else {
        None
    };
    let auth = match login.password_env {
        None => None,
        Some(var) => {
            let password = Zeroizing::new(std::env::var(var).with_context(|| {
                format!("--password-env: environment variable {var} is not set")
            })?);
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = login.user {
                args.push(u.as_bytes());
            }
            args.push(password.as_bytes());
            let mut cmd = Vec::new();
            wire::encode_command(&mut cmd, &args);
            Some(Secret::new(cmd))
        }
    };
    Ok(Endpoint {
        name: target.to_string(),
        addrs,
        tls,
        auth,
    })
}

/// One run of all clients against one endpoint.
async fn run_once(
    ep: Arc<Endpoint>,
    load: Arc<Load>,
    duration: Duration,
    label: String,
    cpu_pid: Option<u32>,
) -> anyhow::Result<Stats> {
    let label = format!("redis {} {label}", ep.name).trim_end().to_string();
    let out = super::run_clients(
        load.clients,
        duration,
        load.rate,
        cpu_pid,
        label,
        |i, gate, progress| client::client(ep.clone(), load.clone(), i, gate, progress),
    )
    .await?;
    out.stats(&ep.name)
}
