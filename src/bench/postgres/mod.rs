//! `portcullis bench postgres`: tokio-postgres clients, each running one
//! transaction at a time.
//!
//! - default: `SELECT 1`, prepared once per connection;
//! - `--query SQL`: one statement of your own, prepared once per connection;
//! - `--select-only`: pgbench's built-in `-S` transaction,
//!   `SELECT abalance FROM pgbench_accounts WHERE aid = $1` with a uniformly
//!   random aid in 1..=100000 × `--scale` (load the table with `pgbench -i -s N`);
//! - `--connect-only`: a whole new session per iteration (TCP, TLS, startup and
//!   authentication), `SELECT 1`, and Terminate: sessions per second, the cost a
//!   proxy adds to every login.
//!
//! The DSN is what tokio-postgres parses (libpq `key=value` or a
//! `postgres://` URL), plus libpq's `sslrootcert` and `sslmode=verify-ca` /
//! `verify-full`, which are taken out first (see [`split_tls_params`]). With
//! `sslrootcert` the server's chain is checked against it, and its name too only
//! with `verify-full` (libpq treats `require` with a root certificate as
//! `verify-ca`); without it, the web PKI roots and the name are checked. A DSN
//! without a password takes `PGPASSWORD` from the environment, as libpq does,
//! so the password need not be on the command line.

mod dsn;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Args};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_postgres::config::Host;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::report::{Settings, Stats};
use super::schedule::Schedule;
use super::{Gate, Progress, CONNECT_TIMEOUT, RECONNECT_PAUSE};

pub use dsn::{split_tls_params, DsnError, TlsParams};

/// Rows of `pgbench_accounts` per unit of `--scale` (pgbench's `naccounts`).
const ACCOUNTS_PER_SCALE: i64 = 100_000;
/// pgbench's select-only transaction.
const SELECT_ONLY: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/// What the default and `--connect-only` iterations run.
const SELECT_ONE: &str = "SELECT 1";
/// How long a closed session's connection task may take to finish Terminate.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// `portcullis bench postgres` options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("transaction").args(["query", "select_only", "connect_only"])))]
pub struct PostgresArgs {
    /// Connection string: `host=… port=… user=… dbname=… sslmode=require sslrootcert=ca.crt`
    /// or `postgres://user@host:port/db?sslmode=require`; PGPASSWORD supplies a missing password.
    #[arg(long)]
    pub dsn: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// How long to measure each target (`10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Run this statement (prepared once per session) instead of `SELECT 1`.
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,
    /// pgbench's select-only transaction (`pgbench -S`) on the pgbench tables.
    #[arg(long)]
    pub select_only: bool,
    /// A new session per iteration (connect, TLS, authentication, `SELECT 1`, close).
    #[arg(long)]
    pub connect_only: bool,
    /// pgbench scale factor of the loaded tables, for --select-only.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Transactions per second across all sessions on a fixed schedule; latency counts
    /// from each one's intended start (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<u64>,
    /// A second connection string (B) to run the same load against, in rounds
    /// alternating with --dsn (A).
    #[arg(long, value_name = "DSN")]
    pub compare_dsn: Option<String>,
    /// Rounds per target with --compare-dsn; each lasts --duration / --rounds.
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// A process serving --dsn (the proxy's PID): reports its CPU time per
    /// transaction (or session) while the clients run, user and system (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub cpu_pid: Option<u32>,
    /// The same for B (another proxy's PID), and B's CPU per transaction against A's.
    #[arg(long, value_name = "PID", requires = "compare_dsn")]
    pub compare_cpu_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What each iteration does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transaction {
    /// A prepared statement without parameters.
    Query(String),
    /// pgbench `-S` over this many accounts.
    SelectOnly { accounts: i64 },
    /// A whole session.
    ConnectOnly,
}

impl Transaction {
    fn name(&self) -> &'static str {
        match self {
            Transaction::Query(_) => "query",
            Transaction::SelectOnly { .. } => "select-only",
            Transaction::ConnectOnly => "connect-only",
        }
    }
}

/// A target: parsed settings, TLS connector, and a name without the password.
struct Target {
    name: String,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

fn target(dsn: &str) -> anyhow::Result<Target> {
    let (rest, tls) = split_tls_params(dsn)?;
    let mut config: tokio_postgres::Config = rest.parse().context("--dsn")?;
    if config.get_password().is_none() {
        if let Ok(pw) = std::env::var("PGPASSWORD") {
            config.password(pw);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let verify_name = tls.verify_full || tls.root_cert.is_none();
    let rustls = crate::tls::client_config(tls.root_cert.as_deref(), verify_name)?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let name = format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().or(config.get_user()).unwrap_or("?")
    );
    Ok(Target {
        name,
        config,
        tls: MakeRustlsConnect::new((*rustls).clone()),
    })
}

/// Runs `portcullis bench postgres`.
pub async fn run(args: PostgresArgs) -> anyhow::Result<()> {
    super::check_common(args.clients, args.rounds, args.rate)?;
    anyhow::ensure!(args.scale >= 1, "--scale must be at least 1");
    let tx = Arc::new(if args.connect_only {
        Transaction::ConnectOnly
    } else if args.select_only {
        Transaction::SelectOnly {
            accounts: ACCOUNTS_PER_SCALE * i64::from(args.scale),
        }
    } else {
        Transaction::Query(args.query.clone().unwrap_or_else(|| SELECT_ONE.into()))
    });
    let mut targets = vec![Arc::new(target(&args.dsn)?)];
    if let Some(b) = &args.compare_dsn {
        targets.push(Arc::new(target(b).context("--compare-dsn")?));
    }
    let (clients, rate) = (args.clients, args.rate);
    let cpu_pids = [args.cpu_pid, args.compare_cpu_pid];
    super::check_cpu_pids(&cpu_pids)?;
    let merged = super::alternate(
        &targets,
        args.rounds,
        args.duration,
        |t, which, d, label| {
            let (t, tx, cpu_pid) = (t.clone(), tx.clone(), cpu_pids[which]);
            async move {
                let label = format!("postgres {} {label}", t.name)
                    .trim_end()
                    .to_string();
                let out =
                    super::run_clients(clients, d, rate, cpu_pid, label, |i, gate, progress| {
                        client(t.clone(), tx.clone(), clients, rate, i, gate, progress)
                    })
                    .await?;
                out.stats(&t.name)
            }
        },
    )
    .await?;
    let mut settings = Settings::default();
    settings.push("transaction", tx.name());
    if let Transaction::Query(q) = &*tx {
        settings.push("query", q.as_str());
    }
    if args.select_only {
        settings.push("scale", args.scale);
    }
    settings.push("clients", clients);
    settings.push(
        "duration",
        humantime::format_duration(args.duration).to_string(),
    );
    if let Some(r) = rate {
        settings.push("rate", r);
    }
    if targets.len() > 1 {
        settings.push("rounds", args.rounds);
    }
    let unit = if *tx == Transaction::ConnectOnly {
        "sessions"
    } else {
        "transactions"
    };
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let report = super::report("postgres", unit, settings, &names, &merged);
    super::finish(&report, args.json)
}

/// A session with its prepared statement.
struct Session {
    client: Client,
    statement: Option<Statement>,
    connection: tokio::task::JoinHandle<()>,
}

/// Where a failure happened, for the tally.
#[derive(Clone, Copy)]
enum Stage {
    Connect,
    Query,
}

/// A tokio-postgres error as a bounded tally kind and an example message.
fn classify(stage: Stage, e: &tokio_postgres::Error) -> (String, String) {
    let stage = match stage {
        Stage::Connect => "connect",
        Stage::Query => "query",
    };
    match e.as_db_error() {
        Some(db) => (
            format!("{stage}: sqlstate {}", db.code().code()),
            format!("{}: {}", db.severity(), db.message()),
        ),
        None => {
            // tokio-postgres's Display is its error kind; the cause is in the chain.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            (format!("{stage}: {e}"), text)
        }
    }
}

/// Opens a session and prepares the transaction's statement.
async fn open(t: &Target, tx: &Transaction) -> Result<Session, tokio_postgres::Error> {
    let (client, connection) = t.config.connect(t.tls.clone()).await?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let statement = match tx {
        Transaction::Query(sql) => Some(client.prepare(sql).await?),
        Transaction::SelectOnly { .. } => {
            Some(client.prepare_typed(SELECT_ONLY, &[Type::INT4]).await?)
        }
        Transaction::ConnectOnly => None,
    };
    Ok(Session {
        client,
        statement,
        connection,
    })
}

/// Ends a session: Terminate, then wait (briefly) for the server to close.
async fn close(s: Session) {
    drop(s.client);
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.connection).await;
}

/// One whole `--connect-only` iteration.
async fn one_session(t: &Target) -> Result<(), (Stage, tokio_postgres::Error)> {
    let s = open(t, &Transaction::ConnectOnly)
        .await
        .map_err(|e| (Stage::Connect, e))?;
    let r = s.client.simple_query(SELECT_ONE).await;
    close(s).await;
    r.map(drop).map_err(|e| (Stage::Query, e))
}

/// One client: connect, wait for the start, then run transactions until the deadline.
async fn client(
    t: Arc<Target>,
    tx: Arc<Transaction>,
    clients: u32,
    rate: Option<u64>,
    index: u32,
    gate: Gate,
    progress: Arc<Progress>,
) -> Stats {
    let mut stats = Stats::new(rate.is_some());
    let mut rng = StdRng::from_entropy();
    let mut schedule = rate.and_then(|r| Schedule::new(r, u64::from(clients), u64::from(index)));
    let fail = |stats: &mut Stats, stage: Stage, e: &tokio_postgres::Error| {
        let (kind, text) = classify(stage, e);
        stats.errors.add(&kind, 1, || text);
        progress.failed(1);
    };
    // A probe before the clock: a session for the loop, or one whole session
    // with --connect-only, so a wrong password fails before the run.
    let first = timeout_at(Instant::now() + CONNECT_TIMEOUT, async {
        match &*tx {
            Transaction::ConnectOnly => one_session(&t).await.map(|()| None),
            tx => open(&t, tx)
                .await
                .map(Some)
                .map_err(|e| (Stage::Connect, e)),
        }
    })
    .await;
    let (mut session, connected) = match first {
        Ok(Ok(s)) => (s, true),
        Ok(Err((stage, e))) => {
            fail(&mut stats, stage, &e);
            (None, false)
        }
        Err(_) => {
            stats
                .errors
                .add("connect: timeout", 1, || "connect timed out".into());
            (None, false)
        }
    };
    let wake = gate.wake();
    let Some(clock) = gate.open(connected).await else {
        return stats;
    };
    let mut final_pass = false;
    loop {
        let now = Instant::now();
        let stamp = match &mut schedule {
            None if now < clock.deadline => now,
            None => break,
            Some(s) => {
                let due = s.next_due();
                let at = clock.start + due;
                if at >= clock.deadline {
                    break;
                }
                // Past the deadline, one last transaction that was due before it
                // (the wake-up came late); a client further behind stops.
                if now >= clock.deadline {
                    if final_pass {
                        break;
                    }
                    final_pass = true;
                }
                while Instant::now() < at {
                    // The pacer's signal, with tokio's coarser timer as a backstop.
                    tokio::select! {
                        _ = notified(wake.as_deref()) => {}
                        _ = sleep_until(at) => {}
                    }
                }
                let _ = s.take_due(due);
                stats.record_lag(Instant::now() - at);
                at
            }
        };
        if session.is_none() && *tx != Transaction::ConnectOnly {
            let limit = (Instant::now() + CONNECT_TIMEOUT).min(clock.hard_stop);
            match timeout_at(limit, open(&t, &tx)).await {
                Ok(Ok(s)) => session = Some(s),
                Ok(Err(e)) => {
                    fail(&mut stats, Stage::Connect, &e);
                    sleep_until((Instant::now() + RECONNECT_PAUSE).min(clock.deadline)).await;
                    continue;
                }
                Err(_) => {
                    stats
                        .errors
                        .add("connect: timeout", 1, || "connect timed out".into());
                    continue;
                }
            }
        }
        let work = async {
            match (&*tx, &session) {
                (Transaction::ConnectOnly, _) => one_session(&t).await,
                (Transaction::SelectOnly { accounts }, Some(s)) => {
                    let aid = rng.gen_range(1..=*accounts) as i32;
                    let stmt = s.statement.as_ref().expect("prepared at open");
                    s.client
                        .query(stmt, &[&aid])
                        .await
                        .map(drop)
                        .map_err(|e| (Stage::Query, e))
                }
                (Transaction::Query(_), Some(s)) => {
                    let stmt = s.statement.as_ref().expect("prepared at open");
                    s.client
                        .query(stmt, &[])
                        .await
                        .map(drop)
                        .map_err(|e| (Stage::Query, e))
                }
                (_, None) => unreachable!("a session was opened above"),
            }
        };
        match timeout_at(clock.hard_stop, work).await {
            Ok(Ok(())) => {
                stats.record_ok(Instant::now() - stamp);
                progress.done(1);
            }
            Ok(Err((stage, e))) => {
                fail(&mut stats, stage, &e);
                if session.as_ref().is_some_and(|s| s.client.is_closed()) {
                    session = None;
                }
            }
            Err(_) => {
                stats.unanswered += 1;
                break;
            }
        }
    }
    if let Some(s) = &schedule {
        stats.behind = s.behind_at(clock.deadline - clock.start);
    }
    if let Some(s) = session {
        close(s).await;
    }
    stats
}

async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_name_never_shows_the_password() {
        let t = target(
            "host=db.internal port=5433 user=app password=hunter2 dbname=shop sslmode=disable",
        )
        .expect("target");
        assert_eq!(t.name, "app@db.internal:5433/shop");
        let t = target("postgres://app:hunter2@localhost/app").expect("target");
        assert!(!t.name.contains("hunter2"));
    }
}
