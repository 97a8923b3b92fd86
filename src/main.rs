//! The `portcullis` command line. Thin: each subcommand calls into the library.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portcullis::auth::scram::ScramVerifier;
use portcullis::config::Config;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authenticating TLS proxy for Redis and PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for the default `run`).
    #[arg(long, short, global = true, default_value = "config.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run {
        /// Log as JSON, whatever the config says.
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate a config file and print a summary; exits non-zero naming the offending key.
    CheckConfig,
    /// Read a password (stdin, or a no-echo prompt on a terminal) and print its SCRAM-SHA-256 verifier.
    HashPassword {
        /// PBKDF2 iterations (PostgreSQL's default is 4096).
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
    },
    /// Check the deployment: backends refuse missing and wrong credentials, listeners refuse
    /// plaintext and old TLS, certificates are valid; optionally external reachability and a port scan.
    /// Exits non-zero on any failure.
    Audit {
        /// An address of this machine as seen from outside: backend ports must not answer there.
        #[arg(long)]
        external: Option<std::net::IpAddr>,
        /// A host of your own to connect-scan for Redis and PostgreSQL answering without portcullis.
        #[arg(long)]
        scan: Option<std::net::IpAddr>,
        /// Ports to scan: a list and ranges, e.g. `6379,5432,7000-7100`.
        #[arg(
            long,
            default_value = "1-1024,2375,3306,5432,6379,6380,6432,9090,11211,27017"
        )]
        ports: String,
        /// One JSON object per check instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Probe an admin endpoint over HTTP (for container health checks): exits 0 on a 200 answer.
    Probe {
        /// Admin address.
        #[arg(default_value = "127.0.0.1:9090")]
        addr: String,
        /// Path to request.
        #[arg(default_value = "/healthz")]
        path: String,
    },
    /// Load-test a Redis or PostgreSQL endpoint, directly or through portcullis.
    Bench {
        #[command(subcommand)]
        cmd: portcullis::bench::BenchCommand,
    },
    /// Write a development CA plus server and client certificates.
    GenCerts {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Client certificate name (CN and DNS SAN).
        #[arg(long, default_value = "app")]
        client_name: String,
        /// Extra server names or IPs for the server certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run { json_logs: false }) {
        Command::Run { json_logs } => run(&cli.config, json_logs),
        Command::CheckConfig => check_config(&cli.config),
        Command::HashPassword { iterations } => hash_password(iterations),
        Command::GenCerts {
            out,
            client_name,
            hosts,
        } => gen_certs(&out, &client_name, &hosts),
        Command::Probe { addr, path } => probe(&addr, &path),
        Command::Bench { cmd } => bench(cmd),
        Command::Audit {
            external,
            scan,
            ports,
            json,
        } => audit(&cli.config, external, scan, &ports, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, json_logs: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let format = if json_logs {
        portcullis::config::LogFormat::Json
    } else {
        config.log_format
    };
    portcullis::logging::init(format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    match config.scheduler {
        // Sessions run on the server's own worker threads (one event loop
        // each); this runtime only accepts, serves the admin endpoint and
        // handles signals.
        portcullis::config::Scheduler::PerThread => {
            rt.worker_threads(1);
        }
        portcullis::config::Scheduler::WorkStealing => {
            if let Some(n) = config.worker_threads {
                rt.worker_threads(n);
            }
            if config.yield_before_sleep {
                portcullis::shards::yield_before_sleep(&mut rt);
            }
        }
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = portcullis::Shutdown::new();
        let running =
            portcullis::start_from(config, Some(path.to_path_buf()), shutdown.clone()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => {
                    // A bad new config is logged and the old one keeps running.
                    let reloader = running.reloader();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
            }
        }
        tracing::info!(event = "shutdown_requested");
        running.shutdown().await;
        Ok(())
    })
}

fn bench(cmd: portcullis::bench::BenchCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(portcullis::bench::run(cmd))
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("config {} is valid", path.display());
    for l in &config.listeners {
        let tls = match &l.tls {
            None => "tls disabled".to_string(),
            Some(t) => format!(
                "tls {} (client certificates: {:?})",
                if t.required { "required" } else { "optional" },
                t.client_cert
            ),
        };
        println!(
            "  listener {}: {} on {}, {}, backend {} at {}",
            l.name,
            l.protocol.as_str(),
            l.listen,
            tls,
            l.backend.name,
            l.backend.address
        );
    }
    println!("  users: {}", config.users.len());
    match config.admin {
        Some(a) => println!("  admin: http://{a}/metrics"),
        None => println!("  admin: disabled"),
    }
    for w in &config.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}

fn hash_password(iterations: u32) -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(a == b, "the passwords differ");
        a
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    anyhow::ensure!(iterations >= 4096, "use at least 4096 iterations");
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let verifier = ScramVerifier::derive(password.as_bytes(), &salt, iterations)?;
    println!("{verifier}");
    Ok(())
}

fn audit(
    path: &std::path::Path,
    external: Option<std::net::IpAddr>,
    scan: Option<std::net::IpAddr>,
    ports: &str,
    json: bool,
) -> anyhow::Result<()> {
    use portcullis::audit::{AuditOptions, Outcome};
    let config = Config::load(path)?;
    let ports =
        portcullis::audit::parse_ports(ports).map_err(|e| anyhow::anyhow!("--ports: {e}"))?;
    let options = AuditOptions {
        external,
        scan: scan.map(|h| (h, ports)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let checks = rt.block_on(portcullis::audit::audit(&config, &options));
    for c in &checks {
        if json {
            println!("{}", serde_json::to_string(c)?);
        } else {
            let tag = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            println!("{tag} {}: {}", c.name, c.detail);
        }
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

fn probe(addr: &str, path: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::time::Duration;
    let sock: std::net::SocketAddr = addr.parse().context("probe address")?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "{path} answered {}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}

fn gen_certs(out: &std::path::Path, client_name: &str, hosts: &[String]) -> anyhow::Result<()> {
    let c = portcullis::tls::generate_dev_certs(out, client_name, hosts)?;
    println!(
        "wrote {}, {}, {}, {} and their keys",
        c.ca_cert.display(),
        c.server_cert.display(),
        c.client_cert.display(),
        out.join("ca.key").display()
    );
    Ok(())
}
