//! End-to-end tests of the PostgreSQL gateway: one real PostgreSQL cluster per
//! test binary (scram-sha-256, TLS), the proxy in-process in front of it, and
//! real clients: tokio-postgres, psql, pgbench, plus raw frames for the cases
//! no well-behaved client produces.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use common::pg::*;
use portcullis::config::Config;
use portcullis::postgres::codec::{decode_message, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::error::SqlState;

/// The proxy's own users (not PostgreSQL roles).
const APP_USER: &str = "app";
const APP_PASSWORD: &str = "app-password";
const LIMITED_USER: &str = "limited";
const LIMITED_PASSWORD: &str = "limited-password";

struct PgProxy {
    addr: SocketAddr,
    ca: std::path::PathBuf,
    running: Option<portcullis::Running>,
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_handle().trigger();
        }
    }
}

impl PgProxy {
    fn metrics(&self) -> String {
        String::from_utf8(self.running.as_ref().expect("running").metrics.render()).expect("utf8")
    }
}

/// Options for one proxy in front of the shared cluster.
struct Opts {
    tls_mode: &'static str,
    backend_addr: Option<SocketAddr>,
    backend_tls: &'static str,
    backend_user: &'static str,
    backend_password: String,
    listener_extra: &'static str,
    /// Lines after `[backend.tls]` (e.g. a `[backend.pool]` table).
    backend_extra: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            tls_mode: "required",
            backend_addr: None,
            backend_tls: "verify-full",
            backend_user: PG_BACKEND_USER,
            backend_password: PG_BACKEND_PASSWORD.into(),
            listener_extra: "",
            backend_extra: "",
        }
    }
}

async fn proxy_with(opts: Opts) -> PgProxy {
    let pg = cluster();
    let c = &pg.certs;
    let text = format!(
        r#"
[admin]
enabled = false

[limits]
login_timeout = "5s"

[[backend]]
name = "pg"
protocol = "postgres"
address = "{address}"
user = "{backend_user}"
password = "{backend_password}"
[backend.tls]
mode = "{backend_tls}"
ca = {ca:?}
server_name = "localhost"
{backend_extra}

[[listener]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
backend = "pg"
{listener_extra}
[listener.tls]
mode = "{tls_mode}"
cert = {cert:?}
key = {key:?}

[[user]]
name = "{APP_USER}"
password = "{app_verifier}"

[[user]]
name = "{LIMITED_USER}"
password = "{limited_verifier}"
[user.postgres]
databases = ["{PG_APP_DB}"]
"#,
        address = opts
            .backend_addr
            .map_or(format!("127.0.0.1:{}", pg.port), |a| a.to_string()),
        backend_tls = opts.backend_tls,
        backend_user = opts.backend_user,
        backend_password = opts.backend_password,
        ca = c.ca_cert,
        cert = c.server_cert,
        key = c.server_key,
        tls_mode = opts.tls_mode,
        listener_extra = opts.listener_extra,
        backend_extra = opts.backend_extra,
        app_verifier = common::verifier(APP_PASSWORD),
        limited_verifier = common::verifier(LIMITED_PASSWORD),
    );
    let config = Config::parse(&text, Path::new(".")).expect("valid config");
    let running = portcullis::start(config, portcullis::Shutdown::new())
        .await
        .expect("start");
    PgProxy {
        addr: running.listeners["pg"],
        ca: c.ca_cert.clone(),
        running: Some(running),
    }
}

async fn proxy() -> PgProxy {
    proxy_with(Opts::default()).await
}

impl PgProxy {
    async fn client(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        tls_client("localhost", self.addr.port(), user, password, db, &self.ca).await
    }

    async fn try_client(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        try_tls_client("localhost", self.addr.port(), user, password, db, &self.ca).await
    }

    fn psql(&self, user: &str, password: &str, db: &str) -> std::process::Command {
        psql_tls(
            &cluster().bin("psql"),
            "localhost",
            self.addr.port(),
            user,
            password,
            db,
            &self.ca,
        )
    }
}

/// How often the cluster's log mentions a role (log_connections names it on
/// every login, successful or not).
fn backend_logins(role: &str) -> usize {
    cluster()
        .log_text()
        .matches(&format!("user={role}"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_tls_maps_to_the_backend_role() {
    let p = proxy().await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let row = c
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .expect("query");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (PG_BACKEND_USER.into(), PG_APP_DB.into())
    );
    // Extended protocol, pipelined.
    let stmt = c.prepare("SELECT $1::int + 1").await.expect("prepare");
    let (a, b) = tokio::join!(c.query_one(&stmt, &[&1i32]), c.query_one(&stmt, &[&41i32]));
    assert_eq!(
        (
            a.expect("a").get::<_, i32>(0),
            b.expect("b").get::<_, i32>(0)
        ),
        (2, 42)
    );
    let err = c
        .query_one("SELECT 1/0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert!(p
        .metrics()
        .contains(r#"portcullis_logins_total{listener="pg",result="success",user="app"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_sslmode_require_and_channel_binding() {
    let p = proxy().await;
    let out = common::run(
        p.psql(APP_USER, APP_PASSWORD, PG_APP_DB)
            .args(["-c", "SELECT 'through the proxy'"]),
    );
    assert_eq!(out.trim(), "through the proxy");
    let out = common::run(
        std::process::Command::new(cluster().bin("psql"))
            .arg(format!(
                "host=localhost port={} user={APP_USER} dbname={PG_APP_DB} sslmode=require channel_binding=require",
                p.addr.port()
            ))
            .args(["-X", "-w", "-A", "-t", "-c", "SELECT 1"])
            .env("PGPASSWORD", APP_PASSWORD),
    );
    assert_eq!(out.trim(), "1");

    let mut config = pg_config(
        "localhost",
        p.addr.port(),
        APP_USER,
        APP_PASSWORD,
        PG_APP_DB,
    );
    config.channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let c = connect(&config, &p.ca)
        .await
        .expect("SCRAM-SHA-256-PLUS through the proxy");
    c.simple_query("SELECT 1").await.expect("query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_unknown_passwords_look_the_same_and_reach_no_backend() {
    // This proxy logs in as `reporting`, a role no other test uses, so the
    // cluster's log shows exactly the sessions this proxy opened.
    let p = proxy_with(Opts {
        backend_user: PG_REPORTING_USER,
        backend_password: PG_REPORTING_PASSWORD.into(),
        ..Opts::default()
    })
    .await;
    let before = backend_logins(PG_REPORTING_USER);
    let mut messages = Vec::new();
    for (user, pw, db) in [
        (APP_USER, "wrong", PG_APP_DB),
        ("nosuchuser", APP_PASSWORD, PG_APP_DB),
        (LIMITED_USER, LIMITED_PASSWORD, "postgres"),
    ] {
        let err = p
            .try_client(user, pw, db)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in"));
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
        let db_err = err.as_db_error().expect("db error");
        messages.push(db_err.message().replace(user, "USER"));
    }
    assert!(
        messages
            .iter()
            .all(|m| m == "password authentication failed for user \"USER\""),
        "{messages:?}"
    );
    let out = p
        .psql(APP_USER, "wrong", PG_APP_DB)
        .args(["-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend_logins(PG_REPORTING_USER),
        before,
        "the backend saw a session from a client that failed to authenticate"
    );
    // The limited user may open its own database, and that session does reach the backend.
    p.client(LIMITED_USER, LIMITED_PASSWORD, PG_APP_DB).await;
    assert!(
        cluster()
            .wait_for_log_count(
                &format!("user={PG_REPORTING_USER}"),
                before + 1,
                Duration::from_secs(5)
            )
            .await
    );
    let m = p.metrics();
    assert!(
        m.contains(r#"portcullis_logins_total{listener="pg",result="failure",user="unknown"} 1"#),
        "{m}"
    );
}

#[test]
fn pgbench_select_only_and_new_connection_per_transaction() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let p = rt.block_on(proxy());
    let pg = cluster();
    let pgbench = |args: &[&str]| {
        let mut cmd = std::process::Command::new(pg.bin("pgbench"));
        cmd.args([
            "-h",
            "localhost",
            "-p",
            &p.addr.port().to_string(),
            "-U",
            APP_USER,
        ])
        .args(args)
        .arg(PG_APP_DB)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "require");
        common::run(&mut cmd)
    };
    pgbench(&["-i", "-s", "1", "-q"]);
    let out = pgbench(&["-S", "-T", "3", "-c", "4", "-j", "2"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let out = pgbench(&["-S", "-C", "-T", "3", "-c", "2"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let tps = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
    };
    assert!(tps(&out).is_some_and(|t| t > 1.0), "{out}");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100_mb_each_way() {
    use futures_util::{SinkExt, StreamExt};
    let p = proxy().await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    c.batch_execute("CREATE TEMP TABLE blob (line text)")
        .await
        .expect("table");
    let line = format!("{}\n", "x".repeat(1023));
    let lines = 100 * 1024;
    let sink = c.copy_in("COPY blob FROM STDIN").await.expect("copy in");
    futures_util::pin_mut!(sink);
    let chunk = bytes::Bytes::from(line.repeat(256));
    for _ in 0..lines / 256 {
        sink.send(chunk.clone()).await.expect("send");
    }
    let n = sink.finish().await.expect("finish");
    assert_eq!(n, lines as u64);
    let stream = c.copy_out("COPY blob TO STDOUT").await.expect("copy out");
    futures_util::pin_mut!(stream);
    let mut total = 0usize;
    while let Some(b) = stream.next().await {
        total += b.expect("chunk").len();
    }
    assert_eq!(total, lines * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify() {
    let p = proxy().await;
    let config = pg_config(
        "localhost",
        p.addr.port(),
        APP_USER,
        APP_PASSWORD,
        PG_APP_DB,
    );
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(&p.ca));
    let (listener, mut conn) = config.connect(tls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.expect("listen");
    let notifier = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    notifier
        .batch_execute("NOTIFY jobs, 'job-1'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification")
        .expect("open");
    assert_eq!(got, ("jobs".to_string(), "job-1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let p = proxy().await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let token = c.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(&p.ca));
    token.cancel_query(tls).await.expect("cancel request sent");
    let err = query.await.expect("join").expect_err("query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );

    // An unknown key is dropped at the proxy: nothing is forwarded.
    let mut raw = Raw::plain(p.addr).await;
    let mut cancel = BytesMut::new();
    cancel.put_u32(16);
    cancel.put_u32(80_877_102);
    cancel.put_u32(12345);
    cancel.put_u32(67890);
    raw.send(&cancel).await;
    assert!(raw.closed().await);
    let m = p.metrics();
    assert!(
        m.contains(r#"portcullis_refusals_total{listener="pg",reason="cancel_unknown_key"} 1"#),
        "{m}"
    );
}

/// A raw client for byte-level cases.
struct Raw {
    io: Box<dyn common::Io>,
    buf: BytesMut,
}

impl Raw {
    async fn plain(addr: SocketAddr) -> Raw {
        Raw {
            io: Box::new(tokio::net::TcpStream::connect(addr).await.expect("connect")),
            buf: BytesMut::new(),
        }
    }

    async fn upgrade(self, ca: &Path, alpn: Option<&[u8]>) -> Raw {
        let mut config = rustls_config(ca);
        if let Some(a) = alpn {
            config.alpn_protocols = vec![a.to_vec()];
        }
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let io = Box::new(Wrap(self.io));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
            .expect("tls");
        Raw {
            io: Box::new(tls),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.io.write_all(b).await.expect("send");
        self.io.flush().await.expect("flush");
    }

    async fn byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), self.io.read_exact(&mut b))
            .await
            .expect("timeout")
            .expect("read");
        b[0]
    }

    async fn message(&mut self) -> Message {
        loop {
            if let Some(m) = decode_message(&mut self.buf, 1 << 20).expect("valid frame") {
                return m;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf))
                .await
                .expect("timeout")
                .expect("read");
            assert!(n > 0, "closed while waiting for a message");
        }
    }

    /// Reads until EOF; true if the proxy closed within 5 s.
    async fn closed(&mut self) -> bool {
        let mut sink = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads an ErrorResponse and returns (SQLSTATE, message).
    async fn error(&mut self) -> (String, String) {
        let m = self.message().await;
        assert_eq!(m.tag, b'E', "expected an ErrorResponse, got {:?}", m);
        let f = portcullis::postgres::messages::parse_error(&m.body);
        (f.code, f.message)
    }
}

/// Boxes a stream so rustls can wrap a `dyn` transport.
struct Wrap(Box<dyn common::Io>);

impl AsyncRead for Wrap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wrap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn startup(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];

/// Runs SCRAM-SHA-256 on a raw connection with portcullis's own client.
async fn raw_scram_login(raw: &mut Raw, password: &str) -> Vec<Message> {
    use portcullis::auth::scram_client::{ClientChannelBinding, ScramClient};
    use portcullis::postgres::messages;
    let m = raw.message().await;
    assert_eq!(m.tag, b'R');
    let (client, first) =
        ScramClient::new(password.as_bytes(), ClientChannelBinding::None).expect("client");
    raw.send(&messages::sasl_initial_response(
        client.mechanism().name(),
        &first,
    ))
    .await;
    let m = raw.message().await;
    assert_eq!(m.tag, b'R', "{m:?}");
    let (next, fin) = client
        .handle_server_first(&m.body[4..])
        .expect("server first");
    raw.send(&messages::password_message(&fin)).await;
    let m = raw.message().await;
    assert_eq!(
        (m.tag, &m.body[..4]),
        (b'R', &[0, 0, 0, 12][..]),
        "SASLFinal"
    );
    next.handle_server_final(&m.body[4..])
        .expect("server signature");
    let mut rest = Vec::new();
    loop {
        let m = raw.message().await;
        let done = m.tag == b'Z';
        rest.push(m);
        if done {
            return rest;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr)
        .await
        .upgrade(&p.ca, Some(b"postgresql"))
        .await;
    raw.send(&startup(
        196_608,
        &[("user", APP_USER), ("database", PG_APP_DB)],
    ))
    .await;
    let after = raw_scram_login(&mut raw, APP_PASSWORD).await;
    assert_eq!(after[0].tag, b'R', "AuthenticationOk first");
    assert!(after.iter().any(|m| m.tag == b'K'), "BackendKeyData");
    assert!(after.iter().any(|m| m.tag == b'S'), "ParameterStatus");

    // Without ALPN the proxy closes, as PostgreSQL 17 does.
    let mut raw = Raw::plain(p.addr).await.upgrade(&p.ca, None).await;
    raw.send(&startup(196_608, &[("user", APP_USER)])).await;
    assert!(raw.closed().await);
    assert!(p.metrics().contains("direct_tls_without_alpn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_injection_is_refused() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    let mut evil = SSL_REQUEST.to_vec();
    evil.extend_from_slice(&startup(196_608, &[("user", APP_USER)]));
    raw.send(&evil).await;
    let (code, msg) = raw.error().await;
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "received unencrypted data after SSL request")
    );
    assert!(raw.closed().await);

    let mut raw = Raw::plain(p.addr).await;
    let mut evil = GSSENC_REQUEST.to_vec();
    evil.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
    raw.send(&evil).await;
    let (code, _) = raw.error().await;
    assert_eq!(code, "08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_declined_then_ssl_works() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&GSSENC_REQUEST).await;
    assert_eq!(raw.byte().await, b'N');
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(
        196_608,
        &[("user", APP_USER), ("database", PG_APP_DB)],
    ))
    .await;
    let after = raw_scram_login(&mut raw, APP_PASSWORD).await;
    assert_eq!(after.last().map(|m| m.tag), Some(b'Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_startup_on_a_tls_required_listener_is_refused_before_any_password() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&startup(196_608, &[("user", APP_USER)])).await;
    let (code, _) = raw.error().await;
    assert_eq!(code, "28000");
    assert!(raw.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets() {
    let p = proxy_with(Opts {
        tls_mode: "optional",
        ..Opts::default()
    })
    .await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0, 3], "08P01"),
        (vec![0, 0, 0x4e, 0x21], "08P01"),
        (startup(131_072, &[("user", APP_USER)]), "0A000"),
        (startup(196_608, &[("database", "x")]), "28000"),
        (startup(196_608, &[("user", "a"), ("user", "b")]), "08P01"),
        (
            startup(
                196_608,
                &[("user", APP_USER), ("options", "-c role=postgres")],
            ),
            "42501",
        ),
        (
            startup(
                196_608,
                &[
                    ("user", APP_USER),
                    ("options", "--session_authorization=postgres"),
                ],
            ),
            "42501",
        ),
        (
            startup(196_608, &[("user", APP_USER), ("ROLE", "postgres")]),
            "42501",
        ),
    ];
    for (bytes, want) in cases {
        let mut raw = Raw::plain(p.addr).await;
        raw.send(&bytes).await;
        let (code, msg) = raw.error().await;
        assert_eq!(code, want, "{bytes:?}: {msg}");
        assert!(raw.closed().await);
    }
    // A missing terminator.
    let mut raw = Raw::plain(p.addr).await;
    let mut bad = startup(196_608, &[("user", APP_USER)]);
    bad.pop();
    let n = bad.len() as u32;
    bad[..4].copy_from_slice(&n.to_be_bytes());
    raw.send(&bad).await;
    assert_eq!(raw.error().await.0, "08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_minor_is_negotiated_down() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(
        196_610,
        &[
            ("user", APP_USER),
            ("database", PG_APP_DB),
            ("_pq_.future", "x"),
        ],
    ))
    .await;
    let m = raw.message().await;
    assert_eq!(m.tag, b'v');
    let mut body = m.body.clone();
    assert_eq!(body.get_u32(), 196_608, "newest minor version supported");
    assert_eq!(body.get_u32(), 1);
    assert_eq!(&body[..], b"_pq_.future\0");
    let after = raw_scram_login(&mut raw, APP_PASSWORD).await;
    let key = after
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    assert_eq!(key.body.len(), 8, "protocol 3.0 key length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_startup_during_authentication_is_a_protocol_violation() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(196_608, &[("user", APP_USER)])).await;
    assert_eq!(raw.message().await.tag, b'R');
    raw.send(&startup(196_608, &[("user", APP_USER)])).await;
    assert_eq!(raw.error().await.0, "08P01");
    assert!(raw.closed().await);
    // Garbage SASL: refused, no panic.
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(196_608, &[("user", APP_USER)])).await;
    assert_eq!(raw.message().await.tag, b'R');
    raw.send(&portcullis::postgres::messages::sasl_initial_response(
        "SCRAM-SHA-256",
        b"garbage",
    ))
    .await;
    assert_eq!(raw.error().await.0, "08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_at_login() {
    // A missing database is the client's business: passed on.
    let p = proxy().await;
    let err = p
        .try_client(APP_USER, APP_PASSWORD, "no_such_db")
        .await
        .map(|_| ())
        .expect_err("missing db");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");

    // The backend refusing the proxy's credentials is the operator's: generic for the client.
    let p = proxy_with(Opts {
        backend_password: "Wrong-Backend-Secret-0123456789-abcdef".into(),
        ..Opts::default()
    })
    .await;
    let err = p
        .try_client(APP_USER, APP_PASSWORD, PG_APP_DB)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    assert!(!err.to_string().contains("portcullis_backend"), "{err}");
    assert!(p
        .metrics()
        .contains(r#"portcullis_backend_errors_total{backend="pg",reason="login_refused"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_modes() {
    for (mode, want_ssl) in [
        ("disabled", false),
        ("prefer", true),
        ("required", true),
        ("verify-full", true),
    ] {
        let p = proxy_with(Opts {
            backend_tls: mode,
            ..Opts::default()
        })
        .await;
        let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert_eq!(ssl, want_ssl, "backend tls mode {mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_is_refused_unless_allowed() {
    let p = proxy().await;
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(
        196_608,
        &[("user", APP_USER), ("replication", "database")],
    ))
    .await;
    use portcullis::auth::scram_client::{ClientChannelBinding, ScramClient};
    use portcullis::postgres::messages;
    assert_eq!(raw.message().await.tag, b'R');
    let (client, first) =
        ScramClient::new(APP_PASSWORD.as_bytes(), ClientChannelBinding::None).expect("client");
    raw.send(&messages::sasl_initial_response(
        client.mechanism().name(),
        &first,
    ))
    .await;
    let m = raw.message().await;
    let (_, fin) = client
        .handle_server_first(&m.body[4..])
        .expect("server first");
    raw.send(&messages::password_message(&fin)).await;
    assert_eq!(raw.message().await.tag, b'R', "SASLFinal");
    assert_eq!(raw.error().await.0, "42501");
}

/// What a scripted backend does wrong.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    DataAfterSslAnswer,
    HugeIterationCount,
    ForeignNonce,
    OkBeforeSaslFinal,
    WrongServerSignature,
    EndlessNotices,
}

/// A backend that follows the protocol up to one deliberate fault. No real
/// PostgreSQL misbehaves like this, so a script stands in for one here.
async fn misbehaving_backend(kind: Misbehaviour) -> SocketAddr {
    use portcullis::postgres::codec::{decode_startup, StartupPacket};
    use portcullis::postgres::messages;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = BytesMut::new();
        let packet = loop {
            if let Some(p) = decode_startup(&mut buf).expect("startup") {
                break p;
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0);
        };
        if let Misbehaviour::EndlessNotices = kind {
            // Trust login, then notices forever: the proxy must not hold them all.
            s.write_all(&messages::auth_ok()).await.expect("write");
            let mut notice =
                messages::error_response(messages::Severity::Error, "01000", &"n".repeat(1000))
                    .to_vec();
            notice[0] = b'N';
            for _ in 0..100_000 {
                if s.write_all(&notice).await.is_err() {
                    return;
                }
            }
            return;
        }
        if let Misbehaviour::DataAfterSslAnswer = kind {
            assert_eq!(packet, StartupPacket::Ssl);
            s.write_all(b"S\x16\x03\x03").await.expect("write");
            tokio::time::sleep(Duration::from_secs(3)).await;
            return;
        }
        s.write_all(&messages::auth_sasl(&["SCRAM-SHA-256"]))
            .await
            .expect("write");
        let m = loop {
            if let Some(m) = decode_message(&mut buf, 1 << 16).expect("msg") {
                break m;
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0);
        };
        let (_, first) = messages::parse_sasl_initial(&m.body).expect("initial");
        let first = String::from_utf8(first.to_vec()).expect("utf8");
        let nonce = first.split("r=").nth(1).expect("nonce").to_string();
        let salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
        let server_first = match kind {
            Misbehaviour::HugeIterationCount => format!("r={nonce}srv,s={salt},i=200000"),
            Misbehaviour::ForeignNonce => format!("r=someone-elses-nonce,s={salt},i=4096"),
            _ => format!("r={nonce}srv,s={salt},i=4096"),
        };
        s.write_all(&messages::auth_sasl_continue(server_first.as_bytes()))
            .await
            .expect("write");
        let mut more = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut more)).await;
        match kind {
            Misbehaviour::OkBeforeSaslFinal => {
                s.write_all(&messages::auth_ok()).await.expect("write")
            }
            Misbehaviour::WrongServerSignature => {
                let v = format!("v={}", "A".repeat(43) + "=");
                s.write_all(&messages::auth_sasl_final(v.as_bytes()))
                    .await
                    .expect("write");
                s.write_all(&messages::auth_ok()).await.expect("write");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_backend_fails_closed() {
    for kind in [
        Misbehaviour::DataAfterSslAnswer,
        Misbehaviour::HugeIterationCount,
        Misbehaviour::ForeignNonce,
        Misbehaviour::OkBeforeSaslFinal,
        Misbehaviour::WrongServerSignature,
        Misbehaviour::EndlessNotices,
    ] {
        let addr = misbehaving_backend(kind).await;
        let backend_tls = if matches!(kind, Misbehaviour::DataAfterSslAnswer) {
            "required"
        } else {
            "disabled"
        };
        let p = proxy_with(Opts {
            backend_addr: Some(addr),
            backend_tls,
            ..Opts::default()
        })
        .await;
        let err = p
            .try_client(APP_USER, APP_PASSWORD, PG_APP_DB)
            .await
            .map(|_| ())
            .expect_err("must fail");
        assert_eq!(
            err.code(),
            Some(&SqlState::CONNECTION_FAILURE),
            "{kind:?}: {err}"
        );
        let m = p.metrics();
        assert!(
            m.contains(r#"portcullis_backend_errors_total{backend="pg",reason="protocol"} 1"#),
            "{kind:?}: {m}"
        );
    }
}

/// PG17 direct TLS with a real libpq (18, from psycopg's binary wheel: Debian 12's psql is 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_direct_tls_with_psycopg() {
    let p = proxy().await;
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect('host=localhost port={port} user={APP_USER} password={APP_PASSWORD} dbname={PG_APP_DB} \
         sslmode=verify-full sslrootcert={ca} sslnegotiation=direct')\n\
         print(c.execute('select current_user').fetchone()[0], c.pgconn.ssl_in_use, psycopg.pq.version() >= 170000)\n",
        port = p.addr.port(),
        ca = p.ca.display(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "psycopg (pip install 'psycopg[binary]'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{PG_BACKEND_USER} True True")
    );
}

/// `portcullis bench postgres` through the proxy, compared with a direct
/// session as the backend role, then `--connect-only` (TLS + SCRAM each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_harness_loads_the_proxy_and_the_direct_server() {
    let p = proxy().await;
    let pg = cluster();
    let ca = p.ca.display().to_string();
    let through = format!(
        "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname={PG_APP_DB} sslmode=verify-full sslrootcert={ca}",
        p.addr.port()
    );
    let direct = format!(
        "host=localhost port={} user={PG_BACKEND_USER} password={PG_BACKEND_PASSWORD} dbname={PG_APP_DB} sslmode=verify-full sslrootcert={}",
        pg.port,
        pg.ca_cert.display()
    );
    let bench = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = common::run(
                std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                    .args(["bench", "postgres", "--json"])
                    .args(&args),
            );
            serde_json::from_str::<serde_json::Value>(&out).expect("one JSON object")
        })
    };
    let j = bench(vec![
        "--dsn".into(),
        through.clone(),
        "--compare-dsn".into(),
        direct,
        "--clients".into(),
        "2".into(),
        "--duration".into(),
        "1s".into(),
        "--rounds".into(),
        "2".into(),
        "--query".into(),
        "SELECT current_user::text".into(),
    ])
    .await
    .expect("join");
    for r in j["results"].as_array().expect("results") {
        assert!(r["completed"].as_u64().expect("completed") > 10, "{r}");
        assert_eq!(r["error_total"], 0, "{r}");
    }
    assert_eq!(j["results"].as_array().map(Vec::len), Some(2));
    let before = backend_logins(PG_BACKEND_USER);
    let j = bench(vec![
        "--dsn".into(),
        through,
        "--connect-only".into(),
        "--clients".into(),
        "2".into(),
        "--duration".into(),
        "500ms".into(),
        // The proxy runs in this process: the harness watches its CPU time.
        "--cpu-pid".into(),
        std::process::id().to_string(),
    ])
    .await
    .expect("join");
    let r = &j["results"][0];
    let sessions = r["completed"].as_u64().expect("completed");
    assert!(sessions > 2, "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    // Every session's TLS handshake and SCRAM exchange cost the proxy CPU time.
    let cpu = &r["cpu_us_per_unit"];
    let total = cpu["total"].as_f64().expect("cpu per session");
    assert!(total > 0.0, "{cpu}");
    let parts = cpu["user"].as_f64().expect("user") + cpu["system"].as_f64().expect("system");
    assert!((parts - total).abs() < 1e-6 * total.max(1.0), "{cpu}");
    // Each session logged in at the proxy; the backend sessions were reused.
    let logins = backend_logins(PG_BACKEND_USER) - before;
    assert!(logins < sessions as usize, "{logins} logins for {sessions}");
    let m = p.metrics();
    assert!(m.contains("event=\"reused\""), "{m}");
}

/// The value of one pool event counter of the `pg` backend.
fn pool_events(p: &PgProxy, event: &str) -> u64 {
    let needle =
        format!("portcullis_backend_pool_events_total{{backend=\"pg\",event=\"{event}\"}} ");
    p.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("counter"))
}

/// Waits until the pool has handled `n` sessions the clients left (kept or not).
async fn wait_pool_event(p: &PgProxy, event: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_events(p, event) < n {
        assert!(
            Instant::now() < deadline,
            "no {event} pool event: {}",
            p.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// One integer from a simple query (no protocol-level statement of its own).
async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    let rows = c.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().expect("int")),
            _ => None,
        })
        .expect("a row")
}

/// Whether a backend process is still there, seen from a separate session.
fn backend_alive(pid: i32) -> bool {
    cluster()
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .trim()
        == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_is_reset_and_reused() {
    let p = proxy().await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let pid = backend_pid(&c).await;
    c.batch_execute(
        "SET statement_timeout = '12345s'; SET TimeZone = 'Pacific/Auckland';
         CREATE TEMP TABLE scratch (x int); PREPARE stmt AS SELECT 1;
         LISTEN pool_test; SELECT pg_advisory_lock(4711);",
    )
    .await
    .expect("session state");
    c.prepare("SELECT 2")
        .await
        .expect("protocol-level statement");
    drop(c);
    wait_pool_event(&p, "kept", 1).await;

    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    assert_eq!(
        backend_pid(&c).await,
        pid,
        "the idle session was not reused"
    );
    let show = |name: &'static str| {
        let c = &c;
        async move {
            c.query_one(&format!("SHOW {name}"), &[])
                .await
                .expect("show")
                .get::<_, String>(0)
        }
    };
    assert_eq!(show("statement_timeout").await, "0");
    assert_ne!(show("TimeZone").await, "Pacific/Auckland");
    for (what, sql) in [
        (
            "temp table",
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
        ),
        (
            "prepared statements",
            "SELECT count(*) FROM pg_prepared_statements",
        ),
        ("LISTEN", "SELECT count(*) FROM pg_listening_channels()"),
        (
            "advisory lock",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
    ] {
        assert_eq!(count(&c, sql).await, 0, "{what} survived the reset");
    }
    assert_eq!(pool_events(&p, "reused"), 1);
    // The reused session is a whole session: queries, cancel keys, extended protocol.
    let stmt = c.prepare("SELECT $1::int * 2").await.expect("prepare");
    let row = c.query_one(&stmt, &[&21i32]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let cancel = c.cancel_token();
    let slow = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel
        .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(
            rustls_config(&p.ca),
        ))
        .await
        .expect("cancel");
    let err = slow.await.expect("join").expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

/// A raw session through the proxy, logged in as the app user.
async fn raw_session(p: &PgProxy) -> Raw {
    let mut raw = Raw::plain(p.addr).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(raw.byte().await, b'S');
    let mut raw = raw.upgrade(&p.ca, None).await;
    raw.send(&startup(
        196_608,
        &[("user", APP_USER), ("database", PG_APP_DB)],
    ))
    .await;
    raw_scram_login(&mut raw, APP_PASSWORD).await;
    raw
}

/// A frontend message: tag, length, body.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Runs a simple query returning one integer and reads up to ReadyForQuery.
async fn raw_int(raw: &mut Raw, sql: &str) -> i64 {
    raw.send(&portcullis::postgres::messages::query(sql)).await;
    let mut value = None;
    loop {
        let m = raw.message().await;
        match m.tag {
            b'D' => {
                let len = u32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]) as usize;
                let text = std::str::from_utf8(&m.body[6..6 + len]).expect("text");
                value = Some(text.parse().expect("integer"));
            }
            b'Z' => return value.expect("a row"),
            b'E' => panic!("{sql}: {:?}", m),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_dirty_are_closed_not_reused() {
    let p = proxy().await;
    let mut dirty = Vec::new();
    // Left inside a transaction (Terminate sent).
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    dirty.push(backend_pid(&c).await);
    c.batch_execute("BEGIN; CREATE TEMP TABLE t (x int)")
        .await
        .expect("begin");
    drop(c);
    wait_pool_event(&p, "discarded", 1).await;
    // Gone while a query was running: its answer was never read.
    let mut raw = raw_session(&p).await;
    dirty.push(raw_int(&mut raw, "SELECT pg_backend_pid()").await as i32);
    raw.send(&portcullis::postgres::messages::query(
        "SELECT pg_sleep(0.5)",
    ))
    .await;
    drop(raw);
    wait_pool_event(&p, "discarded", 2).await;
    // An extended-protocol batch without its Sync (executed, never synced).
    let mut raw = raw_session(&p).await;
    dirty.push(raw_int(&mut raw, "SELECT pg_backend_pid()").await as i32);
    let mut batch = frame(b'P', b"\0SELECT 1\0\0\0");
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'H', b""));
    raw.send(&batch).await;
    while raw.message().await.tag != b'C' {}
    raw.send(&frame(b'X', b"")).await;
    assert!(raw.closed().await);
    wait_pool_event(&p, "discarded", 3).await;

    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let pid = backend_pid(&c).await;
    assert!(!dirty.contains(&pid), "a dirty session was reused");
    assert_eq!(pool_events(&p, "reused"), 0);
    for old in dirty {
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend_alive(old) {
            assert!(Instant::now() < deadline, "backend {old} still open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A clean raw session (Terminate after ReadyForQuery) is kept.
    let mut raw = raw_session(&p).await;
    raw_int(&mut raw, "SELECT 1").await;
    raw.send(&frame(b'X', b"")).await;
    assert!(raw.closed().await);
    wait_pool_event(&p, "kept", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_session_the_server_closed_is_not_handed_out() {
    let p = proxy().await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let pid = backend_pid(&c).await;
    drop(c);
    wait_pool_event(&p, "kept", 1).await;
    cluster().psql(&format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    assert_ne!(backend_pid(&c).await, pid);
    assert_eq!(count(&c, "SELECT 7::bigint").await, 7);
    assert_eq!(pool_events(&p, "dead"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_parameters_get_different_sessions() {
    let p = proxy().await;
    let connect = |app: &'static str| {
        let mut config = pg_config(
            "localhost",
            p.addr.port(),
            APP_USER,
            APP_PASSWORD,
            PG_APP_DB,
        );
        config.application_name(app);
        let ca = p.ca.clone();
        async move { connect(&config, &ca).await.expect("connect") }
    };
    let a = connect("first").await;
    let pid_a = backend_pid(&a).await;
    drop(a);
    wait_pool_event(&p, "kept", 1).await;
    let b = connect("second").await;
    assert_ne!(backend_pid(&b).await, pid_a);
    let name: String = b
        .query_one("SHOW application_name", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(name, "second");
    drop(b);
    wait_pool_event(&p, "kept", 2).await;
    let a = connect("first").await;
    assert_eq!(backend_pid(&a).await, pid_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_and_reuse_can_be_turned_off() {
    let p = proxy_with(Opts {
        backend_extra: "[backend.pool]\nidle_timeout = \"300ms\"",
        ..Opts::default()
    })
    .await;
    let c = p.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let pid = backend_pid(&c).await;
    drop(c);
    wait_pool_event(&p, "kept", 1).await;
    wait_pool_event(&p, "expired", 1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "expired session {pid} still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let off = proxy_with(Opts {
        backend_extra: "[backend.pool]\nsize = 0",
        ..Opts::default()
    })
    .await;
    let c = off.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    let first = backend_pid(&c).await;
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_alive(first) {
        assert!(
            Instant::now() < deadline,
            "session {first} kept with pooling off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = off.client(APP_USER, APP_PASSWORD, PG_APP_DB).await;
    assert_ne!(backend_pid(&c).await, first);
    assert!(!off.metrics().contains("event=\"kept\""));
}
