//! Reusing logged-in Redis connections: a connection the client left with
//! every reply read, outside MULTI and not subscribed, is sent `RESET` (which
//! also drops WATCHes, client tracking, the selected database, the client name
//! and RESP3) and then the proxy's `AUTH` again, and is kept for the next
//! client that logs in to the backend as the same user.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::{login_command, Login};
use super::reply::{ReplyScanner, Scan};
use crate::auth::Credential;
use crate::stream::BackendStream;

/// Pooled connections are per backend user (`None`: `AUTH <password>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    user: Option<String>,
}

impl Key {
    /// The key for connections logged in with `cred`.
    pub fn new(cred: &Credential) -> Key {
        Key {
            user: cred.user.clone(),
        }
    }
}

/// An idle connection, reset and logged in with `AUTH`, speaking RESP2.
pub struct Idle {
    /// The stream.
    pub stream: BackendStream,
}

impl crate::pool::Pooled for Idle {
    fn stream(&mut self) -> &mut BackendStream {
        &mut self.stream
    }

    fn close(self, limit: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        close(self, limit)
    }
}

/// The pools of every Redis backend.
pub type Registry = crate::pool::Registry<Key, Idle>;
/// One backend's pool.
pub type Pool = crate::pool::Pool<Key, Idle>;

/// Most bytes read while resetting (out-of-band pushes included).
const MAX_RESET_REPLY: usize = 64 * 1024;

const RESET: &[u8] = b"*1\r\n$5\r\nRESET\r\n";

/// Why a connection was not kept.
#[derive(Debug, PartialEq, Eq)]
pub enum ResetError {
    /// An answer other than `+RESET` then `+OK`.
    Refused,
    /// The backend closed, or did not answer in time.
    Gone,
}

/// Sends `RESET` and the proxy's `AUTH` in one write and checks both answers.
pub async fn reset(idle: &mut Idle, cred: &Credential, limit: Duration) -> Result<(), ResetError> {
    match tokio::time::timeout(limit, reset_inner(idle, cred)).await {
        Ok(r) => r,
        Err(_) => Err(ResetError::Gone),
    }
}

async fn reset_inner(idle: &mut Idle, cred: &Credential) -> Result<(), ResetError> {
    let stream = &mut idle.stream;
    {
        let auth = login_command(cred, &Login::Auth);
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(RESET.len() + auth.len()));
        out.extend_from_slice(RESET);
        out.extend_from_slice(&auth);
        stream.write_all(&out).await.map_err(|_| ResetError::Gone)?;
    }
    stream.flush().await.map_err(|_| ResetError::Gone)?;
    let mut buf = BytesMut::with_capacity(256);
    let mut scanner = ReplyScanner::new();
    let mut scanned = 0;
    let mut answers = 0;
    loop {
        if scanned == buf.len() {
            if buf.len() > MAX_RESET_REPLY {
                return Err(ResetError::Refused);
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(|_| ResetError::Gone)?
                == 0
            {
                return Err(ResetError::Gone);
            }
        }
        match scanner.scan(&buf[scanned..]) {
            Err(_) => return Err(ResetError::Refused),
            Ok(Scan::Partial) => scanned = buf.len(),
            Ok(Scan::Complete { len, info }) => {
                scanned += len;
                // Invalidation pushes of client tracking may come first; nobody wants them now.
                if info.is_push() {
                    continue;
                }
                let want = if answers == 0 { "RESET" } else { "OK" };
                if info.ty != b'+' || !info.scalar.is_str(want) {
                    return Err(ResetError::Refused);
                }
                answers += 1;
                if answers == 2 {
                    return if scanned == buf.len() {
                        Ok(())
                    } else {
                        Err(ResetError::Refused)
                    };
                }
            }
        }
    }
}

/// Closes an idle connection within `limit` (Redis needs no goodbye).
pub async fn close(mut idle: Idle, limit: Duration) {
    let _ = tokio::time::timeout(limit, idle.stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::Secret;

    #[test]
    fn connections_are_pooled_per_backend_user() {
        let a = Credential::new(Some("app".into()), Secret::new(b"pw-1".to_vec()));
        let b = Credential::new(Some("app".into()), Secret::new(b"pw-2".to_vec()));
        let c = Credential::new(None, Secret::new(b"pw-1".to_vec()));
        assert_eq!(Key::new(&a), Key::new(&b));
        assert_ne!(Key::new(&a), Key::new(&c));
    }
}
