//! Connecting to a Redis backend and logging in with the proxy's credentials.

use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;
use zeroize::Zeroizing;

use super::reply::{ReplyScanner, Scan};
use crate::auth::Credential;
use crate::config::Backend;
use crate::error::BackendError;
use crate::logging::escape;
use crate::metrics::Metrics;
use crate::stream::BackendStream;

/// Largest login reply accepted (a HELLO map is a few hundred bytes).
const MAX_LOGIN_REPLY: usize = 64 * 1024;

/// How the proxy logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// `AUTH [user] password`; the reply stays with the proxy.
    Auth,
    /// `HELLO proto AUTH user password [SETNAME name]`; the reply goes to the client.
    Hello {
        /// RESP version the client asked for.
        proto: u8,
        /// Client name to set.
        setname: Option<Vec<u8>>,
    },
}

/// A logged-in backend connection (or a session's end of a shared one).
pub struct Connected<S = BackendStream> {
    /// The stream.
    pub stream: S,
    /// The login reply (HELLO's map, or `+OK`).
    pub reply: BytesMut,
    /// Bytes the backend sent after the login reply.
    pub leftover: BytesMut,
}

/// Builds the backend login command. The buffer is zeroized on drop.
pub fn login_command(cred: &Credential, login: &Login) -> Zeroizing<Vec<u8>> {
    let user = cred.user.as_deref().unwrap_or("default").as_bytes();
    let mut args: Vec<&[u8]> = Vec::with_capacity(7);
    let proto;
    match login {
        Login::Auth => {
            args.push(b"AUTH");
            if cred.user.is_some() {
                args.push(user);
            }
            args.push(cred.password.expose());
        }
        Login::Hello { proto: p, setname } => {
            proto = [b'0' + p];
            args.extend_from_slice(&[b"HELLO", &proto, b"AUTH", user, cred.password.expose()]);
            if let Some(n) = setname {
                args.push(b"SETNAME");
                args.push(n);
            }
        }
    }
    let mut out = Zeroizing::new(Vec::with_capacity(64));
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Connects to `backend` and logs in, within its connect timeout.
pub async fn connect(
    backend: &Backend,
    cred: &Credential,
    login: &Login,
    metrics: &Metrics,
) -> Result<Connected, BackendError> {
    let started = Instant::now();
    let result =
        match tokio::time::timeout(backend.connect_timeout, connect_inner(backend, cred, login))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout),
        };
    match &result {
        Ok(_) => metrics
            .backend_connect_seconds
            .with_label_values(&[&backend.name])
            .observe(started.elapsed().as_secs_f64()),
        Err(e) => metrics
            .backend_errors
            .with_label_values(&[&backend.name, e.label()])
            .inc(),
    }
    result
}

async fn connect_inner(
    backend: &Backend,
    cred: &Credential,
    login: &Login,
) -> Result<Connected, BackendError> {
    let stream = open(backend).await?;
    log_in(stream, backend, cred, login).await
}

/// TCP, then TLS when the backend is configured for it.
pub async fn open(backend: &Backend) -> Result<BackendStream, BackendError> {
    let tcp = TcpStream::connect(backend.address.as_str())
        .await
        .map_err(BackendError::Connect)?;
    let _ = tcp.set_nodelay(true);
    Ok(match &backend.tls {
        None => BackendStream::Plain(tcp),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let s = connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(BackendError::Tls)?;
            BackendStream::Tls(Box::new(s))
        }
    })
}

/// Takes a pooled session (already reset and logged in with `AUTH`) into use:
/// as it is for an `AUTH` login, or after the client's `HELLO` for a HELLO login.
pub async fn reuse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    backend: &Backend,
    cred: &Credential,
    login: &Login,
) -> Result<Connected<S>, BackendError> {
    match login {
        Login::Auth => Ok(Connected {
            stream,
            reply: BytesMut::from(&b"+OK\r\n"[..]),
            leftover: BytesMut::new(),
        }),
        Login::Hello { .. } => {
            match tokio::time::timeout(
                backend.connect_timeout,
                log_in(stream, backend, cred, login),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(BackendError::Timeout),
            }
        }
    }
}

/// Sends the login command and reads its one reply.
async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    backend: &Backend,
    cred: &Credential,
    login: &Login,
) -> Result<Connected<S>, BackendError> {
    let cmd = login_command(cred, login);
    stream.write_all(&cmd).await.map_err(BackendError::Io)?;
    drop(cmd);
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::new();
    let mut scanned = 0;
    loop {
        if stream.read_buf(&mut buf).await.map_err(BackendError::Io)? == 0 {
            return Err(BackendError::Closed);
        }
        match scanner
            .scan(&buf[scanned..])
            .map_err(|e| BackendError::Protocol(e.to_string()))?
        {
            Scan::Partial if buf.len() > MAX_LOGIN_REPLY => {
                return Err(BackendError::Protocol("login reply too large".into()))
            }
            Scan::Partial => scanned = buf.len(),
            Scan::Complete { len, info } => {
                let reply = buf.split_to(scanned + len);
                if info.is_error() {
                    warn!(
                        event = "backend_login_refused",
                        backend = %backend.name,
                        reply = %escape(info.scalar.bytes()),
                    );
                    return Err(BackendError::LoginRefused);
                }
                return Ok(Connected {
                    stream,
                    reply,
                    leftover: buf,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::Secret;

    #[test]
    fn login_commands() {
        let cred = Credential::new(None, Secret::new(b"pw".to_vec()));
        assert_eq!(
            &login_command(&cred, &Login::Auth)[..],
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
        let cred = Credential::new(Some("u".into()), Secret::new(b"pw".to_vec()));
        let hello = Login::Hello {
            proto: 3,
            setname: Some(b"n".to_vec()),
        };
        assert_eq!(
            &login_command(&cred, &hello)[..],
            &b"*7\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n$7\r\nSETNAME\r\n$1\r\nn\r\n"[..]
        );
    }
}
