//! PostgreSQL test harness: one real `postgres` per test binary on a free
//! loopback port, with TLS, SCRAM-only TCP logins, connection logging and the
//! roles the gateway tests use; plus tokio-postgres and `psql` clients over TLS.
//!
//! The cluster lives in a temp dir under /tmp and is created and run by a small
//! `sh` watchdog (initdb, then postgres) whose stdin is a pipe held by this
//! process. Statics are never dropped, but the kernel closes that pipe however
//! the test binary ends (normal exit, panic, SIGKILL, even mid-initdb), and the
//! watchdog then stops postgres and removes the temp dir, so no cluster and no
//! directory outlives its test binary.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the temp dir
//! is chowned to the `postgres` system user and the watchdog runs under that uid
//! (`CommandExt::uid`/`gid`, which also drops supplementary groups). That is what
//! `runuser -u postgres` would do, minus runuser's own watching parent process:
//! it would sit between the watchdog and postgres and turn the watchdog's
//! SIGQUIT (immediate shutdown) into a SIGTERM ("smart" shutdown, which waits
//! for every client to leave) and a SIGKILL two seconds later, which orphans
//! the backends.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use portcullis::tls::DevCerts;
use tokio_postgres::config::SslMode;

use super::free_port;

/// The bootstrap superuser; it logs in over the unix socket without a password.
pub const PG_SUPERUSER: &str = "postgres";
/// The superuser's password, for the TCP (SCRAM) lines of pg_hba.conf.
pub const PG_SUPERUSER_PASSWORD: &str = "Superuser-Secret-4711-qwertzuiopASDF";
/// The role the proxy logs in as; owner of [`PG_APP_DB`].
pub const PG_BACKEND_USER: &str = "portcullis_backend";
/// [`PG_BACKEND_USER`]'s password: long, with upper, lower, digit and symbol,
/// so it passes the proxy's strength rule for backend secrets.
pub const PG_BACKEND_PASSWORD: &str = "Pg-Backend-Secret-0123456789-abcdefXYZ";
/// A second login role with `CONNECT` and `TEMPORARY` on [`PG_APP_DB`] only.
pub const PG_REPORTING_USER: &str = "reporting";
/// [`PG_REPORTING_USER`]'s password.
pub const PG_REPORTING_PASSWORD: &str = "Reporting-Secret-9876543210-zyxwvuQPO";
/// The application database, owned by [`PG_BACKEND_USER`].
pub const PG_APP_DB: &str = "appdb";

/// Startup is a second or two (initdb without fsync, then postgres); this only
/// bounds a wedged start so the test fails with the server log instead of hanging.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Set to a directory holding `initdb` and `postgres` to test another version.
const BIN_DIR_ENV: &str = "PORTCULLIS_PG_BIN";

/// Starts the cluster and stops it when the test binary goes. Arguments: `$1`
/// initdb, `$2` postgres, `$3` data dir, `$4` config file, `$5` log file, `$6`
/// temp dir; the rest are initdb options. Stdin is the pipe from the test binary.
///
/// The pipe moves to fd 3 and everything else reads /dev/null. After initdb the
/// shell forks a watcher and then execs postgres, so the postmaster keeps the
/// pid the harness spawned and starts with default signal dispositions (an
/// `&` job of a non-interactive shell would start with SIGQUIT ignored, and an
/// early SIGQUIT would be lost). The watcher is double-forked so that it is not
/// the postmaster's child: postmaster takes any child of its own that exits
/// non-zero for a crashed backend and restarts the cluster. At EOF the watcher sends SIGQUIT, an immediate shutdown (nothing here
/// is worth a checkpoint; postmaster SIGKILLs children still there after 5 s),
/// waits for the postmaster to go (a zombie counts as gone: its parent, the
/// test binary, is dead, and pid 1 may never reap it) and removes the temp dir.
/// If the test binary dies during initdb, initdb still finishes and the watcher
/// then stops postgres at once.
const WATCHDOG: &str = r#"
initdb=$1 postgres=$2 data=$3 conf=$4 log=$5 dir=$6
shift 6
exec 3<&0 </dev/null
if ! "$initdb" --pgdata="$data" "$@" >>"$log" 2>&1 3<&-; then
    echo "portcullis harness: initdb failed" >>"$log"
    cat <&3 >/dev/null
    rm -rf "$dir"
    exit 1
fi
rm -f "$dir/pwfile"
pg=$$
alive() {
    [ -d "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null
}
( (
    cat <&3 >/dev/null
    kill -QUIT "$pg" 2>/dev/null
    n=0
    while alive "$pg" && [ "$n" -lt 300 ]; do
        sleep 0.05
        n=$((n + 1))
    done
    rm -rf "$dir"
) & )
exec "$postgres" -D "$data" -c config_file="$conf" 2>>"$log" 3<&-
"#;

/// What the watchdog writes to the log when initdb fails.
const INITDB_FAILED: &str = "portcullis harness: initdb failed";

/// What postgres logs when its port was taken between [`free_port`] and its
/// bind (proxies in the same binary bind ephemeral ports all the time).
const PORT_TAKEN: &str = "could not create any TCP/IP sockets";

/// Starts with a fresh port (and temp dir) after [`PORT_TAKEN`].
const START_ATTEMPTS: usize = 3;

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The test binary's cluster, started on first use.
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(PgCluster::start)
}

/// A running PostgreSQL cluster in a temp dir. See the module doc for its lifetime.
pub struct PgCluster {
    /// TCP port on 127.0.0.1 (TLS optional, SCRAM required).
    pub port: u16,
    /// The temp dir holding everything below; removed when the test binary exits.
    pub dir: PathBuf,
    /// The data directory (`-D`); `pgrep -f` on it finds this cluster's processes.
    pub data_dir: PathBuf,
    /// Directory of the unix socket (`host=` for libpq).
    pub socket_dir: PathBuf,
    /// Where postgres's stderr (its whole log) goes.
    pub log_file: PathBuf,
    /// The server binaries used (initdb, postgres, psql, pgbench, …).
    pub bin_dir: PathBuf,
    /// CA that signed the server certificate; trust it in clients.
    pub ca_cert: PathBuf,
    /// All the generated certificates; `client_cert` has CN `app-client`.
    pub certs: DevCerts,
    /// Our end of the watchdog's stdin. Never written; closing it stops the cluster.
    _watchdog: ChildStdin,
}

impl PgCluster {
    fn start() -> PgCluster {
        let mut attempt = 1;
        loop {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(log) if attempt < START_ATTEMPTS && log.contains(PORT_TAKEN) => attempt += 1,
                Err(log) => panic!("postgres did not start; its log:\n{log}"),
            }
        }
    }

    /// One start; on failure, the server log (the watchdog then removes the dir).
    fn try_start() -> Result<PgCluster, String> {
        let started = Instant::now();
        let bin_dir = find_bin_dir();
        let owner = cluster_owner();
        let tmp = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let data_dir = dir.join("data");
        let socket_dir = dir.join("sock");
        let log_file = dir.join("postgres.log");
        let conf_file = dir.join("postgresql.conf");
        let hba_file = dir.join("pg_hba.conf");
        let pwfile = dir.join("pwfile");
        let port = free_port();
        let certs = portcullis::tls::generate_dev_certs(&dir.join("certs"), "app-client", &[])
            .expect("certs");
        std::fs::create_dir(&socket_dir).expect("socket dir");
        std::fs::write(&pwfile, PG_SUPERUSER_PASSWORD).expect("pwfile");
        std::fs::write(&log_file, "").expect("log file");
        // The whole configuration, in place of the one initdb writes into the
        // data dir (`-c config_file=`), so it can exist before initdb runs.
        std::fs::write(
            &conf_file,
            format!(
                "# portcullis test harness\n\
                 hba_file = '{hba}'\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{sock}'\n\
                 max_connections = 100\n\
                 shared_buffers = 32MB\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n\
                 password_encryption = 'scram-sha-256'\n\
                 ssl = on\n\
                 ssl_cert_file = '{cert}'\n\
                 ssl_key_file = '{key}'\n\
                 ssl_ca_file = '{ca}'\n\
                 logging_collector = off\n\
                 log_connections = on\n\
                 log_disconnections = on\n\
                 lc_messages = 'C'\n\
                 timezone = 'UTC'\n",
                hba = hba_file.display(),
                sock = socket_dir.display(),
                cert = certs.server_cert.display(),
                key = certs.server_key.display(),
                ca = certs.ca_cert.display(),
            ),
        )
        .expect("postgresql.conf");
        // The unix socket is for the harness itself: only root and the cluster
        // owner can enter the 0700 temp dir, so `trust` there admits no one
        // else, and psql needs no password file. Every TCP login, TLS or not,
        // is SCRAM: that is the path the proxy's backend side must speak.
        std::fs::write(
            &hba_file,
            "# TYPE   DATABASE  USER      ADDRESS        METHOD\n\
             local    all       postgres                 trust\n\
             hostssl  all       all       127.0.0.1/32   scram-sha-256\n\
             host     all       all       127.0.0.1/32   scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        if let Some(owner) = owner {
            chown_tree(&dir, owner);
        }

        let mut watchdog = Command::new("sh");
        watchdog
            .arg("-c")
            .arg(WATCHDOG)
            .arg("portcullis-pg-watchdog")
            .arg(bin_dir.join("initdb"))
            .arg(bin_dir.join("postgres"))
            .arg(&data_dir)
            .arg(&conf_file)
            .arg(&log_file)
            .arg(&dir)
            .args([
                "--auth=scram-sha-256",
                &format!("--username={PG_SUPERUSER}"),
                &format!("--pwfile={}", pwfile.display()),
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a terminal's ^C reaches the test binary,
            // whose exit then stops the cluster through the pipe, in order.
            .process_group(0);
        clear_libpq_env(&mut watchdog);
        if let Some((uid, gid)) = owner {
            watchdog.uid(uid).gid(gid);
        }
        let mut child = watchdog.spawn().expect("spawn the postgres watchdog");
        let stdin = child.stdin.take().expect("watchdog stdin");
        // From here the watchdog owns the dir: it removes it when `stdin` closes,
        // including when this function fails or panics below.
        let dir = tmp.keep();

        let pid_file = data_dir.join("postmaster.pid");
        loop {
            // Line 8 of postmaster.pid becomes "ready" once postgres accepts
            // connections (PM_STATUS_READY); this is what `pg_ctl -w` waits for.
            let ready = std::fs::read_to_string(&pid_file)
                .map(|s| s.lines().nth(7).map(str::trim) == Some("ready"))
                .unwrap_or(false);
            if ready {
                break;
            }
            let exited = child.try_wait().expect("try_wait").is_some();
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            if exited || log.contains(INITDB_FAILED) || started.elapsed() > START_LIMIT {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let cluster = PgCluster {
            port,
            dir,
            data_dir,
            socket_dir,
            log_file,
            bin_dir,
            ca_cert: certs.ca_cert.clone(),
            certs,
            _watchdog: stdin,
        };
        cluster.psql_script(&format!(
            "CREATE ROLE {PG_BACKEND_USER} LOGIN PASSWORD '{PG_BACKEND_PASSWORD}';\n\
             CREATE ROLE {PG_REPORTING_USER} LOGIN PASSWORD '{PG_REPORTING_PASSWORD}';\n\
             CREATE DATABASE {PG_APP_DB} OWNER {PG_BACKEND_USER};\n\
             REVOKE ALL ON DATABASE {PG_APP_DB} FROM PUBLIC;\n\
             GRANT CONNECT, TEMPORARY ON DATABASE {PG_APP_DB} TO {PG_BACKEND_USER}, {PG_REPORTING_USER};\n"
        ));
        // The child (now the postmaster) is not waited for: it runs until the
        // test binary is gone and is then reaped by whoever inherits it.
        drop(child);
        Ok(cluster)
    }

    /// A server binary from the cluster's version (`psql`, `pgbench`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Runs `sql` as the superuser in database `postgres` over the unix socket;
    /// returns unaligned, tuples-only output without the trailing newline.
    /// Panics if psql fails. Several statements run in one transaction.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`psql`](Self::psql) in another database.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = run_client(self.superuser_psql(db).args(["-c", sql]));
        out.trim_end_matches('\n').to_string()
    }

    /// Runs a script through psql's stdin, one transaction per statement
    /// (so it may contain `CREATE DATABASE`).
    pub fn psql_script(&self, script: &str) -> String {
        let mut child = self
            .superuser_psql("postgres")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        child
            .stdin
            .take()
            .expect("psql stdin")
            .write_all(script.as_bytes())
            .expect("write script");
        let out = child.wait_with_output().expect("psql");
        assert!(
            out.status.success(),
            "psql script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn superuser_psql(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin("psql"));
        clear_libpq_env(&mut cmd);
        cmd.arg(format!(
            "host={} port={} user={PG_SUPERUSER} dbname={db}",
            self.socket_dir.display(),
            self.port
        ))
        .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        cmd
    }

    /// A tokio-postgres client straight to the cluster over TLS (no proxy).
    pub async fn direct_client(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> tokio_postgres::Client {
        tls_client("127.0.0.1", self.port, user, password, db, &self.ca_cert).await
    }

    /// Like [`direct_client`](Self::direct_client) but returns the error, for
    /// tests of refused logins.
    pub async fn try_direct_client(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        try_tls_client("127.0.0.1", self.port, user, password, db, &self.ca_cert).await
    }

    /// How many sessions `user` has open on the server (`pg_stat_activity`).
    pub fn backend_sessions(&self, user: &str) -> i64 {
        let n = self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
            sql_literal(user)
        ));
        n.parse()
            .unwrap_or_else(|_| panic!("count from psql: {n:?}"))
    }

    /// Waits until `user` has exactly `want` sessions; backends leave
    /// `pg_stat_activity` a moment after their client disconnects. Sleeps on
    /// the runtime between checks, so a proxy in the same runtime keeps running.
    pub async fn wait_backend_sessions(&self, user: &str, want: i64, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.backend_sessions(user) == want {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_file).expect("postgres log")
    }

    /// Whether the server log contains `needle` now.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_text().contains(needle)
    }

    /// Waits for `needle` to appear in the server log (disconnections are
    /// logged after the client has already gone).
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.log_contains(needle) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `needle` occurs at least `count` times in the server log.
    pub async fn wait_for_log_count(&self, needle: &str, count: usize, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.log_text().matches(needle).count() >= count {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A `psql` command connecting over TCP and TLS (`sslmode=verify-full`,
    /// trusting this cluster's CA) with the password in `PGPASSWORD`.
    pub fn psql_tls(&self, user: &str, password: &str, db: &str) -> Command {
        psql_tls(
            &self.bin("psql"),
            "127.0.0.1",
            self.port,
            user,
            password,
            db,
            &self.ca_cert,
        )
    }
}

/// A rustls client config that trusts only the PEM certificates in `ca`.
pub fn rustls_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in portcullis::tls::load_certs(ca).expect("ca") {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Connection settings for `sslmode=require` with SCRAM; adjust (application
/// name, channel binding, options) before [`connect`].
pub fn pg_config(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// Connects with `config` over TLS trusting `ca` (the server name checked is the
/// config's host) and spawns the connection task on the current runtime.
pub async fn connect(
    config: &tokio_postgres::Config,
    ca: &Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(ca));
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// A tokio-postgres client over TLS to any PostgreSQL endpoint (the cluster or
/// a proxy in front of it); panics if the login fails.
pub async fn tls_client(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    ca: &Path,
) -> tokio_postgres::Client {
    try_tls_client(host, port, user, password, db, ca)
        .await
        .unwrap_or_else(|e| panic!("connect to {host}:{port} as {user}: {e}"))
}

/// [`tls_client`] that returns the error (match on `e.as_db_error()` / `e.code()`).
pub async fn try_tls_client(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    ca: &Path,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect(&pg_config(host, port, user, password, db), ca).await
}

/// A `psql` command over TCP with `sslmode=verify-full` against `ca`, the
/// password in `PGPASSWORD`, no psqlrc, unaligned tuples-only output.
/// Append `-c SQL` and run it with [`super::run`] (or `.output()` to see a failure).
pub fn psql_tls(
    psql: &Path,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    ca: &Path,
) -> Command {
    let mut cmd = Command::new(psql);
    clear_libpq_env(&mut cmd);
    cmd.arg(format!(
        "host={host} port={port} user={user} dbname={db} sslmode=verify-full sslrootcert={} connect_timeout=10",
        ca.display()
    ))
    .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env("PGPASSWORD", password);
    cmd
}

/// `s` as a SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// libpq reads these from the environment; a developer's shell must not steer
/// the harness's clients to another server or TLS mode.
fn clear_libpq_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// `$PORTCULLIS_PG_BIN`, else the directory `initdb` on PATH really lives in
/// (Debian does not put it on PATH; a symlink there resolves to the versioned
/// dir, which also holds pgbench), else the highest /usr/lib/postgresql/N/bin.
fn find_bin_dir() -> PathBuf {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        let d = PathBuf::from(d);
        assert!(
            has_server(&d),
            "{BIN_DIR_ENV}={} has no initdb/postgres",
            d.display()
        );
        return d;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.join("initdb").canonicalize().ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|d| has_server(d));
    if let Some(d) = on_path {
        return d;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_server(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found (initdb on PATH or /usr/lib/postgresql/*/bin); \
             on Debian: apt-get install postgresql postgresql-client"
        )
    })
}

/// `Some((uid, gid))` of the `postgres` user when we run as root (PostgreSQL
/// refuses root), `None` when the current user can own the cluster.
fn cluster_owner() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> u32 {
        let out = run_client(Command::new("id").args(args));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("id {args:?}: {out:?}"))
    };
    if id(&["-u"]) != 0 {
        return None;
    }
    Some((id(&["-u", "postgres"]), id(&["-g", "postgres"])))
}

/// Hands the temp dir to the cluster owner. The dir stays 0700, so only root
/// and that user can reach the socket or the keys.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            chown_tree(&path, (uid, gid));
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
    }
    // postgres refuses a key readable by group or others.
    if dir.join("server.key").exists() {
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod key");
    }
}

/// Runs a command to completion; panics with its stderr on failure.
fn run_client(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
