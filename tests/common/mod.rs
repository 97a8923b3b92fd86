//! Test harness: real redis-server instances on free loopback ports, the proxy
//! started in-process on a generated config, and raw and redis-rs clients.
#![allow(dead_code)]
pub mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::auth::scram::ScramVerifier;
use portcullis::config::Config;
use portcullis::redis::reply::{ReplyScanner, Scan};
use portcullis::tls::DevCerts;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The backend password: strong enough for the proxy's rule.
pub const BACKEND_PASSWORD: &str = "Backend-Secret-0123456789-abcdefXYZ";

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until something accepts on `port`.
pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real redis-server with `requirepass`, no persistence, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", BACKEND_PASSWORD, "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port);
        RedisServer {
            port,
            child,
            _dir: dir,
        }
    }

    /// A redis-server as the security guide warns against: no password, protected mode off.
    pub fn start_insecure() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_for_port(port);
        RedisServer {
            port,
            child,
            _dir: dir,
        }
    }

    /// A redis-server that speaks only TLS (Redis's `tls-port`), with the test certificates.
    pub fn start_tls(certs: &Certs) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let p = &certs.paths;
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--requirepass",
                BACKEND_PASSWORD,
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
            ])
            .arg(&p.server_cert)
            .arg("--tls-key-file")
            .arg(&p.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&p.ca_cert)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_for_port(port);
        RedisServer {
            port,
            child,
            _dir: dir,
        }
    }

    /// A direct (proxy-less) connection, logged in with the backend password.
    pub async fn direct(&self) -> redis::aio::MultiplexedConnection {
        let url = format!("redis://:{}@127.0.0.1:{}/", BACKEND_PASSWORD, self.port);
        redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("direct connect")
    }

    /// `CLIENT LIST`, asked on a direct connection (which is in the list).
    pub async fn client_list(&self) -> String {
        let mut c = self.direct().await;
        redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut c)
            .await
            .expect("client list")
    }

    /// Creates the ACL user `name`, enabled, with `password` and `rules`.
    pub async fn acl_setuser(&self, name: &str, password: &str, rules: &[&str]) {
        let mut c = self.direct().await;
        let pass = format!(">{password}");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("on")
            .arg(&pass)
            .arg(rules)
            .query_async(&mut c)
            .await
            .expect("acl setuser");
    }

    /// `INFO stats` field value.
    pub async fn info_field(&self, section: &str, field: &str) -> i64 {
        let mut c = self.direct().await;
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut c)
            .await
            .expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates for a test, in a temp dir.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub paths: DevCerts,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths =
            portcullis::tls::generate_dev_certs(dir.path(), "app-client", &[]).expect("certs");
        Certs { dir, paths }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.paths.ca_cert).expect("ca")
    }
}

/// A SCRAM verifier for a test password.
pub fn verifier(password: &str) -> String {
    ScramVerifier::generate(password.as_bytes())
        .expect("verifier")
        .to_string()
}

/// A `[[user]]` block with a password and optional extra lines.
pub fn user(name: &str, password: &str, extra: &str) -> String {
    format!(
        "[[user]]\nname = \"{name}\"\npassword = \"{}\"\n{extra}\n",
        verifier(password)
    )
}

/// Builds config text for one Redis listener in front of `backend_port`.
pub struct ProxyConfig {
    pub backend_port: u16,
    pub backend_password: String,
    pub tls: bool,
    pub client_cert: &'static str,
    pub limits: String,
    pub users: String,
    /// Extra lines for the `[[backend]]` table (e.g. `[backend.tls]`).
    pub backend_extra: String,
}

impl ProxyConfig {
    pub fn new(backend_port: u16) -> ProxyConfig {
        ProxyConfig {
            backend_port,
            backend_password: BACKEND_PASSWORD.into(),
            tls: true,
            client_cert: "none",
            limits: String::new(),
            users: user("alice", "alice-pw", "") + &user("bob", "bob-pw", ""),
            backend_extra: String::new(),
        }
    }

    pub fn text(&self, certs: &Certs) -> String {
        let p = &certs.paths;
        let tls = if self.tls {
            format!(
                "mode = \"required\"\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nclient_cert = \"{}\"\n",
                p.server_cert, p.server_key, p.ca_cert, self.client_cert
            )
        } else {
            "mode = \"disabled\"\n".into()
        };
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\n{limits}\n\n\
             [[backend]]\nname = \"redis\"\nprotocol = \"redis\"\naddress = \"127.0.0.1:{port}\"\npassword = {pw:?}\nconnect_timeout = \"2s\"\n{backend_extra}\n\n\
             [[listener]]\nname = \"redis\"\nprotocol = \"redis\"\nlisten = \"127.0.0.1:0\"\nbackend = \"redis\"\n[listener.tls]\n{tls}\n{users}",
            limits = self.limits,
            port = self.backend_port,
            pw = self.backend_password,
            users = self.users,
            backend_extra = self.backend_extra,
        )
    }
}

/// A proxy running in-process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub certs: Arc<Certs>,
    running: Option<portcullis::Running>,
}

impl Proxy {
    pub async fn start(cfg: &ProxyConfig) -> Proxy {
        Self::start_with_certs(cfg, Arc::new(Certs::new())).await
    }

    pub async fn start_with_certs(cfg: &ProxyConfig, certs: Arc<Certs>) -> Proxy {
        let config = Config::parse(&cfg.text(&certs), Path::new(".")).expect("valid test config");
        let running = portcullis::start(config, portcullis::Shutdown::new())
            .await
            .expect("proxy starts");
        Proxy {
            addr: running.listeners["redis"],
            admin: running.admin.expect("admin"),
            certs,
            running: Some(running),
        }
    }

    pub fn metrics(&self) -> String {
        String::from_utf8(self.running.as_ref().expect("running").metrics.render()).expect("utf8")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// A redis-rs client over TLS trusting the test CA, logged in as `user`.
    pub async fn redis_rs(&self, user: &str, password: &str) -> redis::aio::MultiplexedConnection {
        self.client(user, password)
            .get_multiplexed_async_connection()
            .await
            .expect("connect through the proxy")
    }

    pub fn client(&self, user: &str, password: &str) -> redis::Client {
        let url = format!("rediss://{user}:{password}@localhost:{}/", self.addr.port());
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(self.certs.ca_pem()),
            },
        )
        .expect("client")
    }

    pub async fn raw(&self) -> Raw {
        Raw::tls(self.addr, &self.certs.paths.ca_cert, None).await
    }

    pub fn ca(&self) -> PathBuf {
        self.certs.paths.ca_cert.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_handle().trigger();
        }
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw RESP client that reads whole replies, for exact-byte assertions.
pub struct Raw {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn tls(addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> Raw {
        let mut roots = rustls::RootCertStore::empty();
        for c in portcullis::tls::load_certs(ca).expect("ca") {
            roots.add(c).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                use rustls_pki_types::pem::PemObject;
                let certs = portcullis::tls::load_certs(cert).expect("client cert");
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("client key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("tls handshake");
        Raw {
            io: Box::new(tls),
            buf: Vec::new(),
        }
    }

    pub async fn plain(addr: SocketAddr) -> Raw {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Raw {
            io: Box::new(tcp),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
        self.io.flush().await.expect("flush");
    }

    /// Sends a command as a multibulk request.
    pub async fn cmd(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{}\r\n", a.len(), a).as_bytes());
        }
        self.send(&out).await;
    }

    /// Reads `n` whole replies (10 s timeout).
    pub async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut scanner = ReplyScanner::new();
        let mut pos = 0;
        while out.len() < n {
            while pos < self.buf.len() && out.len() < n {
                match scanner
                    .scan(&self.buf[pos..])
                    .expect("valid RESP from the proxy")
                {
                    Scan::Complete { len, .. } => {
                        let frame: Vec<u8> = self.buf.drain(..pos + len).collect();
                        out.push(String::from_utf8_lossy(&frame).into_owned());
                        pos = 0;
                    }
                    Scan::Partial => pos = self.buf.len(),
                }
            }
            if out.len() == n {
                break;
            }
            let mut chunk = vec![0u8; 65536];
            let read = tokio::time::timeout_at(deadline, self.io.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out after {} of {n} replies: {out:?}", out.len())
                });
            let k = read.expect("read");
            assert!(
                k > 0,
                "connection closed after {} of {n} replies: {out:?}",
                out.len()
            );
            self.buf.extend_from_slice(&chunk[..k]);
        }
        out
    }

    /// Waits until some bytes have arrived (not necessarily a whole reply).
    pub async fn read_some(&mut self) {
        let mut chunk = vec![0u8; 65536];
        let k = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk))
            .await
            .expect("timed out")
            .expect("read");
        assert!(k > 0, "closed");
        self.buf.extend_from_slice(&chunk[..k]);
    }

    pub async fn reply(&mut self) -> String {
        self.replies(1).await.remove(0)
    }

    /// Waits for the proxy to close the connection; returns any bytes it sent first.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
                Ok(Ok(k)) => got.extend_from_slice(&chunk[..k]),
            }
        }
    }
}

/// Runs a command-line client and returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
