//! Connecting to a PostgreSQL backend and logging in with the proxy's
//! credentials, failing closed on anything a correct server would not do.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::codec::{decode_message, MAX_AUTH_MESSAGE};
use super::messages::{self, parse_auth_request, parse_error, AuthRequest, ErrorFields};
use crate::auth::scram_client::{ClientChannelBinding, ScramClient};
use crate::auth::Credential;
use crate::config::{Backend, BackendTlsMode};
use crate::error::BackendError;
use crate::logging::escape;
use crate::metrics::Metrics;
use crate::stream::BackendStream;

/// Largest message accepted while logging in (ParameterStatus, errors, SASL).
const MAX_LOGIN_MESSAGE: usize = MAX_AUTH_MESSAGE;

/// Most bytes of ParameterStatus and notices held for the client while logging
/// in: a real server sends about a kilobyte; a hostile one could send forever.
const MAX_GREETING: usize = 64 * 1024;

/// Startup parameters that are the proxy's to set, never the client's.
const RESERVED_PARAMS: &[&str] = &["user", "database", "replication"];

/// Whether a client's startup parameter is passed on to the backend.
pub fn forwarded_param(name: &str) -> bool {
    !RESERVED_PARAMS.contains(&name) && !name.starts_with("_pq_.")
}

/// A logged-in backend session, ready for queries.
pub struct Session {
    /// The stream.
    pub stream: BackendStream,
    /// Messages for the client, in order: ParameterStatus and notices.
    pub greeting: Vec<Bytes>,
    /// The backend's cancel key.
    pub key: Option<(u32, Bytes)>,
    /// The final ReadyForQuery.
    pub ready: Bytes,
    /// Bytes after ReadyForQuery (none from a correct server).
    pub leftover: BytesMut,
}

/// Why logging in failed.
#[derive(Debug)]
pub enum LoginError {
    /// The backend refused with an error the client should see (missing
    /// database 3D000, too many connections 53300 …): the raw ErrorResponse.
    Passed(Bytes, ErrorFields),
    /// Anything else: the client sees only a generic failure.
    Failed(BackendError),
}

impl From<BackendError> for LoginError {
    fn from(e: BackendError) -> Self {
        LoginError::Failed(e)
    }
}

fn protocol(msg: &str) -> LoginError {
    LoginError::Failed(BackendError::Protocol(msg.into()))
}

/// Connects to `backend` as `cred` on `database`, passing the client's other
/// startup parameters, within the backend's connect timeout.
pub async fn connect(
    backend: &Backend,
    cred: &Credential,
    database: &str,
    client_params: &[(String, String)],
    metrics: &Metrics,
) -> Result<Session, LoginError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(
        backend.connect_timeout,
        connect_inner(backend, cred, database, client_params),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(LoginError::Failed(BackendError::Timeout)),
    };
    match &result {
        Ok(_) => metrics
            .backend_connect_seconds
            .with_label_values(&[&backend.name])
            .observe(started.elapsed().as_secs_f64()),
        Err(LoginError::Failed(e)) => metrics
            .backend_errors
            .with_label_values(&[&backend.name, e.label()])
            .inc(),
        Err(LoginError::Passed(..)) => metrics
            .backend_errors
            .with_label_values(&[&backend.name, "login_error"])
            .inc(),
    }
    result
}

/// TCP, then TLS per the backend's mode (SSLRequest first, as libpq does).
pub async fn open(backend: &Backend) -> Result<BackendStream, BackendError> {
    let mut tcp = TcpStream::connect(backend.address.as_str())
        .await
        .map_err(BackendError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = backend
        .tls
        .as_ref()
        .filter(|_| backend.tls_mode != BackendTlsMode::Disabled)
    else {
        return Ok(BackendStream::Plain(tcp));
    };
    tcp.write_all(&messages::ssl_request())
        .await
        .map_err(BackendError::Io)?;
    let mut answer = [0u8; 2];
    let n = tcp.read(&mut answer).await.map_err(BackendError::Io)?;
    match (n, answer[0]) {
        (0, _) => Err(BackendError::Closed),
        (1, b'S') => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let s = connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(BackendError::Tls)?;
            Ok(BackendStream::Tls(Box::new(s)))
        }
        // Bytes after 'S' would be read as TLS: the CVE-2021-23222 class. Fail closed.
        (_, b'S') => Err(BackendError::Protocol("data after the SSL response".into())),
        (1, b'N') if backend.tls_mode == BackendTlsMode::Prefer => Ok(BackendStream::Plain(tcp)),
        (1, b'N') => Err(BackendError::Protocol(
            "backend does not support TLS".into(),
        )),
        _ => Err(BackendError::Protocol(
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

/// The tls-server-end-point hash of the backend's certificate, when on TLS.
fn backend_end_point(stream: &BackendStream) -> Option<Vec<u8>> {
    match stream {
        BackendStream::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(crate::tls::certificate_end_point_hash),
        BackendStream::Plain(_) => None,
    }
}

async fn connect_inner(
    backend: &Backend,
    cred: &Credential,
    database: &str,
    client_params: &[(String, String)],
) -> Result<Session, LoginError> {
    let mut stream = open(backend).await?;
    let user = cred.user.as_deref().unwrap_or("postgres");
    let mut params: Vec<(&str, &str)> = vec![("user", user), ("database", database)];
    for (k, v) in client_params {
        if forwarded_param(k) {
            params.push((k, v));
        }
    }
    write(&mut stream, &messages::startup_message(&params)).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramClient> = None;
    let mut scram_final: Option<crate::auth::scram_client::ClientFinalSent> = None;
    let mut sasl_started = false;
    let mut sasl_done = false;
    let mut authenticated = false;
    let mut greeting = Vec::new();
    let mut greeting_len = 0usize;
    let mut key = None;
    loop {
        let msg = loop {
            match decode_message(&mut buf, MAX_LOGIN_MESSAGE) {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(e) => return Err(protocol(&e.to_string())),
            }
            if stream.read_buf(&mut buf).await.map_err(BackendError::Io)? == 0 {
                return Err(LoginError::Failed(BackendError::Closed));
            }
        };
        match msg.tag {
            b'R' if !authenticated => {
                let req = parse_auth_request(msg.body.clone())
                    .ok_or_else(|| protocol("malformed authentication request"))?;
                match req {
                    AuthRequest::Ok => {
                        if sasl_started && !sasl_done {
                            return Err(protocol("AuthenticationOk before SASLFinal"));
                        }
                        authenticated = true;
                    }
                    AuthRequest::Cleartext => {
                        if !matches!(stream, BackendStream::Tls(_)) {
                            return Err(protocol(
                                "backend asked for a clear-text password without TLS",
                            ));
                        }
                        write(
                            &mut stream,
                            &messages::password_cstr(cred.password.expose()),
                        )
                        .await?;
                    }
                    AuthRequest::Md5(salt) => {
                        let hash = md5_password(user.as_bytes(), cred.password.expose(), &salt);
                        write(&mut stream, &messages::password_cstr(&hash)).await?;
                    }
                    AuthRequest::Sasl(mechs) if !sasl_started => {
                        sasl_started = true;
                        let plus = mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                        if !plus && !mechs.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(protocol("backend offers no SCRAM-SHA-256"));
                        }
                        let binding =
                            ClientChannelBinding::choose(backend_end_point(&stream), plus);
                        let (client, first) = ScramClient::with_cache(cred.scram.clone(), binding)
                            .map_err(|e| {
                                LoginError::Failed(BackendError::Protocol(e.to_string()))
                            })?;
                        let mech = client.mechanism().name();
                        write(&mut stream, &messages::sasl_initial_response(mech, &first)).await?;
                        scram = Some(client);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let client = scram
                            .take()
                            .ok_or_else(|| protocol("unexpected SASLContinue"))?;
                        let (next, fin) = client.handle_server_first(&data).map_err(scram_error)?;
                        write(&mut stream, &messages::password_message(&fin)).await?;
                        scram_final = Some(next);
                    }
                    AuthRequest::SaslFinal(data) => {
                        let state = scram_final
                            .take()
                            .ok_or_else(|| protocol("unexpected SASLFinal"))?;
                        state.handle_server_final(&data).map_err(scram_error)?;
                        sasl_done = true;
                    }
                    AuthRequest::Sasl(_) => return Err(protocol("second SASL request")),
                    AuthRequest::Other(code) => {
                        return Err(protocol(&format!(
                            "unsupported authentication method {code}"
                        )))
                    }
                }
            }
            b'E' => {
                let fields = parse_error(&msg.body);
                if fields.code.starts_with("28") {
                    // The backend refused the proxy's own credentials: the operator's
                    // problem, not the client's. Nothing of it goes to the client.
                    warn!(event = "backend_login_refused", backend = %backend.name, code = %escape(fields.code.as_bytes()),
                        message = %escape(fields.message.as_bytes()));
                    return Err(LoginError::Failed(BackendError::LoginRefused));
                }
                return Err(LoginError::Passed(reframe(b'E', &msg.body), fields));
            }
            b'S' | b'N' if authenticated || msg.tag == b'N' => {
                greeting_len += 5 + msg.body.len();
                if greeting_len > MAX_GREETING {
                    return Err(protocol(
                        "too many parameter or notice messages during login",
                    ));
                }
                greeting.push(reframe(msg.tag, &msg.body));
            }
            b'K' if authenticated => {
                if msg.body.len() < 8 {
                    return Err(protocol("short BackendKeyData"));
                }
                let pid = u32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
                key = Some((pid, msg.body.slice(4..)));
            }
            b'Z' if authenticated => {
                return Ok(Session {
                    stream,
                    greeting,
                    key,
                    ready: reframe(b'Z', &msg.body),
                    leftover: buf,
                });
            }
            b'v' => {} // NegotiateProtocolVersion: we asked for plain 3.0, nothing to adjust.
            other => {
                return Err(protocol(&format!(
                    "unexpected message '{}' during login",
                    escape(&[other])
                )))
            }
        }
    }
}

fn scram_error(e: crate::auth::scram::ScramError) -> LoginError {
    LoginError::Failed(BackendError::Protocol(e.to_string()))
}

fn reframe(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.freeze()
}

async fn write(stream: &mut BackendStream, bytes: &[u8]) -> Result<(), LoginError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| LoginError::Failed(BackendError::Io(e)))?;
    stream
        .flush()
        .await
        .map_err(|e| LoginError::Failed(BackendError::Io(e)))
}

/// `"md5" || hex(md5(hex(md5(password || user)) || salt))`, as libpq computes it.
fn md5_password(user: &[u8], password: &[u8], salt: &[u8; 4]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let inner = hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize());
    let outer = hex(&Md5::new()
        .chain_update(inner.as_bytes())
        .chain_update(salt)
        .finalize());
    format!("md5{outer}").into_bytes()
}

/// Sends a CancelRequest for a backend session on a new connection.
pub async fn cancel(backend: &Backend, pid: u32, secret: &[u8]) -> Result<(), BackendError> {
    let fut = async {
        let mut stream = open(backend).await?;
        write(&mut stream, &messages::cancel_request(pid, secret))
            .await
            .map_err(|e| match e {
                LoginError::Failed(b) => b,
                LoginError::Passed(..) => BackendError::Protocol("cancel".into()),
            })?;
        // PostgreSQL closes the connection after reading the request.
        let mut sink = [0u8; 16];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(backend.connect_timeout, fut)
        .await
        .unwrap_or(Err(BackendError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // 'md5' || md5(md5('secret' || 'alice') || 'abcd'), as libpq's pg_md5_encrypt computes it.
        assert_eq!(
            md5_password(b"alice", b"secret", b"abcd"),
            b"md5c90bcafc0a2b54511742383e34d5dc9d".to_vec()
        );
    }
}
