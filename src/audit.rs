//! `portcullis audit`: the security guide's "Testing Security" section as one
//! command. Each check prints PASS, FAIL or SKIP with a reason; any FAIL makes
//! the command exit non-zero.
//!
//! - backends: a connection without credentials is refused, a wrong password is
//!   refused, the held credentials work; Redis runs in protected mode with the
//!   `default` user disabled or password-protected (where the held credentials
//!   may look); PostgreSQL does not trust the proxy's address;
//! - `--external HOST`: the backend ports answer nowhere but on the internal address;
//! - `--scan HOST`: a bounded TCP connect scan that flags Redis and PostgreSQL
//!   answering without portcullis in front (a RESP PING or an SSLRequest tells);
//! - the proxy's own listeners: plaintext refused where TLS is required, a wrong
//!   password refused, the certificate valid for 30 more days, TLS 1.0/1.1 refused.
//!
//! Probes never send a held secret anywhere but to the configured backend, and
//! the report never prints one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::secret::Secret;
use crate::auth::Credential;
use crate::config::{Backend, Config, Listener, Protocol};
use crate::redis::reply::{ReplyScanner, Scan};

/// How long each probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout per port in a scan.
const SCAN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Ports probed at once in a scan.
const SCAN_CONCURRENCY: usize = 128;
/// Certificates must stay valid at least this long.
const MIN_CERT_DAYS: i64 = 30;

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The property holds.
    Pass,
    /// The property does not hold.
    Fail,
    /// Could not be checked (not permitted, not applicable).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `backend[redis] no_credentials_refused`.
    pub name: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Why.
    pub detail: String,
}

/// What to audit besides the config's own backends and listeners.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// An address of this machine as seen from outside: backend ports must not answer there.
    pub external: Option<IpAddr>,
    /// Host to connect-scan, and the ports to scan.
    pub scan: Option<(IpAddr, Vec<u16>)>,
}

/// Parses `6379,5432,7000-7010` into ports (at most 65535 of them).
pub fn parse_ports(spec: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
        let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
        if a == 0 || a > b {
            return Err(format!("bad range {part:?}"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, name: String, outcome: Outcome, detail: impl Into<String>) {
        self.0.push(Check {
            name,
            outcome,
            detail: detail.into(),
        });
    }
}

/// Runs every check.
pub async fn audit(config: &Config, options: &AuditOptions) -> Vec<Check> {
    let mut r = Report(Vec::new());
    for b in &config.backends {
        match b.protocol {
            Protocol::Redis => audit_redis_backend(&mut r, b).await,
            Protocol::Postgres => audit_pg_backend(&mut r, b).await,
        }
        if let Some(ext) = options.external {
            audit_external(&mut r, b, ext).await;
        }
    }
    for l in &config.listeners {
        audit_listener(&mut r, l).await;
    }
    if let Some((host, ports)) = &options.scan {
        audit_scan(&mut r, config, *host, ports).await;
    }
    r.0
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(PROBE_TIMEOUT, f).await.ok()
}

/// Sends one RESP command and reads one reply (bounded).
async fn resp<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, args: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    s.write_all(&out).await.ok()?;
    let mut buf = BytesMut::new();
    let mut scanner = ReplyScanner::new();
    let mut scanned = 0;
    loop {
        if buf.len() > 1 << 20 || s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        match scanner.scan(&buf[scanned..]).ok()? {
            Scan::Complete { len, .. } => return Some(buf[..scanned + len].to_vec()),
            Scan::Partial => scanned = buf.len(),
        }
    }
}

async fn redis_stream(b: &Backend) -> Option<crate::stream::BackendStream> {
    let tcp = timeout(TcpStream::connect(b.address.as_str()))
        .await?
        .ok()?;
    match &b.tls {
        None => Some(crate::stream::BackendStream::Plain(tcp)),
        Some(tls) => {
            let c = tokio_rustls::TlsConnector::from(tls.config.clone());
            let s = timeout(c.connect(tls.server_name.clone(), tcp))
                .await?
                .ok()?;
            Some(crate::stream::BackendStream::Tls(Box::new(s)))
        }
    }
}

fn text(reply: &[u8]) -> String {
    crate::logging::escape(reply.strip_suffix(b"\r\n").unwrap_or(reply))
}

async fn audit_redis_backend(r: &mut Report, b: &Backend) {
    let n = |c: &str| format!("backend[{}] {c}", b.name);
    let Some(mut s) = redis_stream(b).await else {
        r.add(
            n("reachable"),
            Outcome::Fail,
            format!("cannot connect to {}", b.address),
        );
        return;
    };
    match timeout(resp(&mut s, &[b"PING"])).await.flatten() {
        Some(rep) if rep.starts_with(b"-NOAUTH") => r.add(
            n("no_credentials_refused"),
            Outcome::Pass,
            "PING without AUTH gets NOAUTH",
        ),
        Some(rep) => r.add(
            n("no_credentials_refused"),
            Outcome::Fail,
            format!("PING without AUTH: {}", text(&rep)),
        ),
        None => r.add(n("no_credentials_refused"), Outcome::Skip, "no answer"),
    }
    let user = b.credential.user.as_deref().unwrap_or("default").as_bytes();
    match timeout(resp(
        &mut s,
        &[b"AUTH", user, b"portcullis-audit-wrong-password"],
    ))
    .await
    .flatten()
    {
        Some(rep) if rep.starts_with(b"-") => {
            r.add(n("wrong_password_refused"), Outcome::Pass, text(&rep))
        }
        Some(rep) => r.add(
            n("wrong_password_refused"),
            Outcome::Fail,
            format!("a wrong password got {}", text(&rep)),
        ),
        None => r.add(n("wrong_password_refused"), Outcome::Skip, "no answer"),
    }
    let mut auth: Vec<&[u8]> = vec![b"AUTH"];
    if b.credential.user.is_some() {
        auth.push(user);
    }
    auth.push(b.credential.password.expose());
    match timeout(resp(&mut s, &auth)).await.flatten() {
        Some(rep) if rep.starts_with(b"+OK") => r.add(
            n("credentials_work"),
            Outcome::Pass,
            "the held credentials log in",
        ),
        // The reply to a failed AUTH names no secret.
        Some(rep) => {
            r.add(
                n("credentials_work"),
                Outcome::Fail,
                format!("the held credentials got {}", text(&rep)),
            );
            return;
        }
        None => {
            r.add(n("credentials_work"), Outcome::Fail, "no answer");
            return;
        }
    }
    match timeout(resp(&mut s, &[b"CONFIG", b"GET", b"protected-mode"]))
        .await
        .flatten()
    {
        Some(rep) if rep.starts_with(b"-") => {
            r.add(n("protected_mode"), Outcome::Skip, "CONFIG not permitted")
        }
        Some(rep) if String::from_utf8_lossy(&rep).contains("\r\nyes\r\n") => {
            r.add(n("protected_mode"), Outcome::Pass, "protected-mode yes")
        }
        Some(_) => r.add(n("protected_mode"), Outcome::Fail, "protected-mode is off"),
        None => r.add(n("protected_mode"), Outcome::Skip, "no answer"),
    }
    // The guide renames or disables commands that wipe or stop the server; check
    // none is reachable under its own name again (COMMAND INFO answers nil for a
    // renamed or disabled command).
    let dangerous: [&[u8]; 5] = [b"FLUSHALL", b"FLUSHDB", b"DEBUG", b"SHUTDOWN", b"MODULE"];
    let mut info: Vec<&[u8]> = vec![b"COMMAND", b"INFO"];
    info.extend_from_slice(&dangerous);
    match timeout(resp(&mut s, &info)).await.flatten() {
        Some(rep) if rep.starts_with(b"-") => r.add(
            n("dangerous_commands_renamed"),
            Outcome::Skip,
            "COMMAND not permitted",
        ),
        Some(rep) => {
            let body = String::from_utf8_lossy(&rep).to_ascii_lowercase();
            let live: Vec<&str> = dangerous
                .iter()
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .filter(|c| body.contains(&format!("\r\n{}\r\n", c.to_ascii_lowercase())))
                .collect();
            if live.is_empty() {
                r.add(
                    n("dangerous_commands_renamed"),
                    Outcome::Pass,
                    "FLUSHALL, FLUSHDB, DEBUG, SHUTDOWN, MODULE renamed or disabled",
                )
            } else {
                r.add(
                    n("dangerous_commands_renamed"),
                    Outcome::Fail,
                    format!("still reachable by name: {}", live.join(" ")),
                )
            }
        }
        None => r.add(n("dangerous_commands_renamed"), Outcome::Skip, "no answer"),
    }
    match timeout(resp(&mut s, &[b"ACL", b"GETUSER", b"default"]))
        .await
        .flatten()
    {
        Some(rep) if rep.starts_with(b"-") => r.add(
            n("default_user_protected"),
            Outcome::Skip,
            "ACL not permitted",
        ),
        Some(rep) => {
            let t = String::from_utf8_lossy(&rep);
            let off = t.contains("\r\noff\r\n");
            let nopass = t.contains("nopass");
            if off || !nopass {
                r.add(
                    n("default_user_protected"),
                    Outcome::Pass,
                    if off {
                        "default user disabled"
                    } else {
                        "default user has a password"
                    },
                )
            } else {
                r.add(
                    n("default_user_protected"),
                    Outcome::Fail,
                    "default user is on with nopass",
                )
            }
        }
        None => r.add(n("default_user_protected"), Outcome::Skip, "no answer"),
    }
}

async fn audit_pg_backend(r: &mut Report, b: &Backend) {
    use crate::postgres::backend::{connect, open, LoginError};
    use crate::postgres::codec::decode_message;
    use crate::postgres::messages::{parse_auth_request, startup_message, AuthRequest};
    let n = |c: &str| format!("backend[{}] {c}", b.name);
    let user = b.credential.user.as_deref().unwrap_or("postgres");
    // Without credentials: the server must ask for a password, never say AuthenticationOk.
    let probe = async {
        let mut s = open(b).await.ok()?;
        s.write_all(&startup_message(&[
            ("user", user),
            ("database", "postgres"),
        ]))
        .await
        .ok()?;
        let mut buf = BytesMut::new();
        loop {
            if let Some(m) = decode_message(&mut buf, 1 << 16).ok()? {
                return Some(match m.tag {
                    b'R' => parse_auth_request(m.body),
                    _ => None,
                });
            }
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    match timeout(probe).await.flatten() {
        Some(Some(AuthRequest::Ok)) => r.add(
            n("no_credentials_refused"),
            Outcome::Fail,
            format!(
                "the server trusts {user} from this address (AuthenticationOk without a password)"
            ),
        ),
        Some(Some(_)) => r.add(
            n("no_credentials_refused"),
            Outcome::Pass,
            "the server asks for a password",
        ),
        _ => r.add(
            n("no_credentials_refused"),
            Outcome::Skip,
            "no authentication request",
        ),
    }
    let metrics = crate::metrics::Metrics::new();
    let wrong = Credential::new(
        b.credential.user.clone(),
        Secret::new(b"portcullis-audit-wrong-password".to_vec()),
    );
    match connect(b, &wrong, "postgres", &[], &metrics).await {
        Err(LoginError::Failed(crate::error::BackendError::LoginRefused)) => r.add(
            n("wrong_password_refused"),
            Outcome::Pass,
            "a wrong password is refused",
        ),
        Ok(_) => r.add(
            n("wrong_password_refused"),
            Outcome::Fail,
            "a wrong password logs in (trust?)",
        ),
        Err(e) => r.add(
            n("wrong_password_refused"),
            Outcome::Skip,
            format!("{e:?}").chars().take(120).collect::<String>(),
        ),
    }
    match connect(b, &b.credential, "postgres", &[], &metrics).await {
        Ok(_) => r.add(
            n("credentials_work"),
            Outcome::Pass,
            "the held credentials log in",
        ),
        Err(LoginError::Passed(_, f)) if f.code == "3D000" => r.add(
            n("credentials_work"),
            Outcome::Pass,
            "the held credentials log in (no database \"postgres\")",
        ),
        Err(LoginError::Passed(_, f)) => r.add(
            n("credentials_work"),
            Outcome::Fail,
            format!("refused: SQLSTATE {}", f.code),
        ),
        Err(LoginError::Failed(e)) => r.add(n("credentials_work"), Outcome::Fail, e.to_string()),
    }
}

fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

async fn audit_external(r: &mut Report, b: &Backend, ext: IpAddr) {
    let name = format!("backend[{}] not_reachable_externally", b.name);
    let Some(port) = port_of(&b.address) else {
        r.add(name, Outcome::Skip, "no port in the address");
        return;
    };
    let addr = SocketAddr::new(ext, port);
    match tokio::time::timeout(SCAN_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => r.add(name, Outcome::Fail, format!("{addr} accepts connections")),
        _ => r.add(name, Outcome::Pass, format!("{addr} does not answer")),
    }
}

/// What answers on a port.
async fn identify(addr: SocketAddr) -> &'static str {
    let redis = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        resp(&mut s, &[b"PING"]).await
    };
    if let Ok(Some(rep)) = tokio::time::timeout(SCAN_CONNECT_TIMEOUT, redis).await {
        if rep.starts_with(b"+PONG") || rep.starts_with(b"-NOAUTH") || rep.starts_with(b"-DENIED") {
            return "redis";
        }
    }
    let pg = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(&crate::postgres::messages::ssl_request())
            .await
            .ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        Some(b[0])
    };
    if let Ok(Some(b'S' | b'N')) = tokio::time::timeout(SCAN_CONNECT_TIMEOUT, pg).await {
        return "postgresql";
    }
    "unknown"
}

async fn audit_scan(r: &mut Report, config: &Config, host: IpAddr, ports: &[u16]) {
    let ours: Vec<u16> = config.listeners.iter().map(|l| l.listen.port()).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(SCAN_CONCURRENCY));
    let mut tasks = Vec::new();
    for &port in ports {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let addr = SocketAddr::new(host, port);
            match tokio::time::timeout(SCAN_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Some((port, identify(addr).await)),
                _ => None,
            }
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some(x)) = t.await {
            open.push(x);
        }
    }
    open.sort_unstable();
    let list = open
        .iter()
        .map(|(p, k)| format!("{p}/{k}"))
        .collect::<Vec<_>>()
        .join(" ");
    r.add(
        format!("scan[{host}] open_ports"),
        Outcome::Pass,
        if list.is_empty() { "none".into() } else { list },
    );
    for (port, kind) in open {
        if kind != "unknown" && !ours.contains(&port) {
            r.add(
                format!("scan[{host}:{port}] unprotected_{kind}"),
                Outcome::Fail,
                format!("{kind} answers on {host}:{port} without portcullis in front"),
            );
        }
    }
}

/// A TLS client config that accepts any certificate: the audit checks what the
/// listener does, not who it is (the certificate is checked separately).
fn insecure_client() -> Option<Arc<rustls::ClientConfig>> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Some(Arc::new(config))
}

/// Logs in with a wrong password (a full SCRAM exchange, or a clear-text answer);
/// `Some(true)` when the listener refuses it, `Some(false)` when it lets it in.
async fn pg_wrong_password<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Option<bool> {
    use crate::auth::scram_client::{ClientChannelBinding, ScramClient};
    use crate::postgres::codec::decode_message;
    use crate::postgres::messages::{self, parse_auth_request, AuthRequest};
    let mut buf = BytesMut::new();
    let mut scram: Option<ScramClient> = None;
    loop {
        let m = loop {
            if let Some(m) = decode_message(&mut buf, 1 << 16).ok()? {
                break m;
            }
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        match (m.tag, parse_auth_request(m.body.clone())) {
            (b'E', _) => return Some(true),
            (b'R', Some(AuthRequest::Ok)) => return Some(false),
            (b'R', Some(AuthRequest::Sasl(_))) => {
                let (client, first) = ScramClient::new(
                    b"portcullis-audit-wrong-password",
                    ClientChannelBinding::None,
                )
                .ok()?;
                let msg = messages::sasl_initial_response(client.mechanism().name(), &first);
                s.write_all(&msg).await.ok()?;
                scram = Some(client);
            }
            (b'R', Some(AuthRequest::SaslContinue(data))) => {
                let (_, fin) = scram.take()?.handle_server_first(&data).ok()?;
                s.write_all(&messages::password_message(&fin)).await.ok()?;
            }
            (b'R', Some(AuthRequest::Cleartext | AuthRequest::Md5(_))) => {
                s.write_all(&messages::password_cstr(b"portcullis-audit-wrong-password"))
                    .await
                    .ok()?;
            }
            _ => return None,
        }
    }
}

/// A minimal TLS 1.0 ClientHello (one cipher suite, no extensions).
fn tls10_client_hello() -> Vec<u8> {
    tls_client_hello(0x01)
}

/// The same for TLS 1.`minor - 1` (0x01: 1.0, 0x02: 1.1).
fn tls_client_hello(minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(hs);
    rec
}

async fn audit_listener(r: &mut Report, l: &Listener) {
    let n = |c: &str| format!("listener[{}] {c}", l.name);
    let addr = match l.listen.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(
            if l.listen.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            },
            l.listen.port(),
        ),
        _ => l.listen,
    };
    let Some(tls) = &l.tls else {
        r.add(
            n("tls"),
            Outcome::Skip,
            "TLS disabled on this listener (loopback sidecars only)",
        );
        return;
    };
    // Plaintext where TLS is required.
    if tls.required {
        let plain = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            match l.protocol {
                Protocol::Redis => {
                    s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
                }
                Protocol::Postgres => {
                    let m =
                        crate::postgres::messages::startup_message(&[("user", "portcullis-audit")]);
                    s.write_all(&m).await.ok()?;
                }
            }
            let mut b = vec![0u8; 64];
            let k = s.read(&mut b).await.unwrap_or(0);
            Some(b[..k].to_vec())
        };
        match timeout(plain).await.flatten() {
            Some(b)
                if l.protocol == Protocol::Redis
                    && (b.starts_with(b"+") || b.starts_with(b"-NOAUTH")) =>
            {
                r.add(
                    n("plaintext_refused"),
                    Outcome::Fail,
                    "answers RESP in plaintext",
                )
            }
            Some(b) if l.protocol == Protocol::Postgres && b.first() == Some(&b'R') => r.add(
                n("plaintext_refused"),
                Outcome::Fail,
                "asks for a password in plaintext",
            ),
            Some(_) => r.add(
                n("plaintext_refused"),
                Outcome::Pass,
                "plaintext gets no session",
            ),
            None => r.add(
                n("plaintext_refused"),
                Outcome::Skip,
                format!("cannot connect to {addr}"),
            ),
        }
    }
    // A wrong password over TLS.
    let wrong = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("portcullis-audit.invalid").ok()?;
        match l.protocol {
            Protocol::Redis => {
                let mut s = tokio_rustls::TlsConnector::from(insecure_client()?)
                    .connect(name, tcp)
                    .await
                    .ok()?;
                let rep = resp(&mut s, &[b"AUTH", b"portcullis-audit", b"wrong-password"]).await?;
                Some(rep.starts_with(b"-WRONGPASS"))
            }
            Protocol::Postgres => {
                let mut tcp = tcp;
                tcp.write_all(&crate::postgres::messages::ssl_request())
                    .await
                    .ok()?;
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await.ok()?;
                let mut s = tokio_rustls::TlsConnector::from(insecure_client()?)
                    .connect(name, tcp)
                    .await
                    .ok()?;
                s.write_all(&crate::postgres::messages::startup_message(&[(
                    "user",
                    "portcullis-audit",
                )]))
                .await
                .ok()?;
                pg_wrong_password(&mut s).await
            }
        }
    };
    match timeout(wrong).await.flatten() {
        Some(true) => r.add(
            n("wrong_password_refused"),
            Outcome::Pass,
            "an unknown user / wrong password is refused",
        ),
        Some(false) => r.add(
            n("wrong_password_refused"),
            Outcome::Fail,
            "a wrong password was not refused",
        ),
        None => r.add(
            n("wrong_password_refused"),
            Outcome::Skip,
            format!("no TLS session with {addr}"),
        ),
    }
    // TLS 1.0 must be refused.
    let old = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if l.protocol == Protocol::Postgres {
            s.write_all(&crate::postgres::messages::ssl_request())
                .await
                .ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
        }
        s.write_all(&tls10_client_hello()).await.ok()?;
        let mut b = [0u8; 6];
        let k = s.read(&mut b).await.unwrap_or(0);
        // A ServerHello is a handshake record (0x16) with type 2; anything else is a refusal.
        let answered_10 = k >= 6 && b[0] == 0x16 && b[5] == 0x02;
        // And TLS 1.1, on a new connection.
        let mut s = TcpStream::connect(addr).await.ok()?;
        if l.protocol == Protocol::Postgres {
            s.write_all(&crate::postgres::messages::ssl_request())
                .await
                .ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
        }
        s.write_all(&tls_client_hello(0x02)).await.ok()?;
        let k = s.read(&mut b).await.unwrap_or(0);
        let answered_11 = k >= 6 && b[0] == 0x16 && b[5] == 0x02;
        Some(answered_10 || answered_11)
    };
    match timeout(old).await.flatten() {
        Some(false) => r.add(
            n("tls10_refused"),
            Outcome::Pass,
            "TLS 1.0/1.1 ClientHello refused",
        ),
        Some(true) => r.add(
            n("tls10_refused"),
            Outcome::Fail,
            "a TLS 1.0 or 1.1 handshake was answered",
        ),
        None => r.add(
            n("tls10_refused"),
            Outcome::Skip,
            format!("cannot connect to {addr}"),
        ),
    }
    // The certificate's remaining validity.
    r.0.push(certificate_check(&n("certificate_valid_30_days"), tls));
}

fn certificate_check(name: &str, tls: &crate::config::ServerTls) -> Check {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (tls.not_after - now) / 86_400;
    let (outcome, detail) = if days >= MIN_CERT_DAYS {
        (Outcome::Pass, format!("valid for {days} more days"))
    } else {
        (Outcome::Fail, format!("expires in {days} days"))
    };
    Check {
        name: name.to_string(),
        outcome,
        detail,
    }
}
