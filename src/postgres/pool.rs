//! Reusing logged-in PostgreSQL sessions (PgBouncer's session mode): a session
//! the client left clean (idle, not in a transaction, nothing half-sent) is
//! reset with `DISCARD ALL` and kept for the next client with the same backend
//! role, database and startup parameters. Anything unexpected closes it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{decode_message, split_cstr, MAX_AUTH_MESSAGE};
use super::messages;
use crate::stream::BackendStream;

/// What a pooled session was opened for: a client may only get a session
/// logged in as the same role, on the same database, with the same startup
/// parameters (which `RESET ALL` returns to).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    role: String,
    database: String,
    params: Vec<(String, String)>,
}

impl Key {
    /// The key for a login: the parameters passed on to the backend, in any order.
    pub fn new(role: &str, database: &str, params: &[(String, String)]) -> Key {
        let mut params: Vec<_> = params
            .iter()
            .filter(|(k, _)| super::backend::forwarded_param(k))
            .cloned()
            .collect();
        params.sort();
        Key {
            role: role.to_string(),
            database: database.to_string(),
            params,
        }
    }
}

/// An idle session: the stream and what a new client is told about it.
pub struct Idle {
    /// The logged-in stream, idle, outside any transaction.
    pub stream: BackendStream,
    /// ParameterStatus messages, current after the reset.
    pub params: Vec<Bytes>,
    /// The backend's cancel key.
    pub key: Option<(u32, Bytes)>,
}

impl crate::pool::Pooled for Idle {
    fn stream(&mut self) -> &mut BackendStream {
        &mut self.stream
    }

    fn close(self, limit: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        close(self, limit)
    }
}

/// The pools of every PostgreSQL backend.
pub type Registry = crate::pool::Registry<Key, Idle>;
/// One backend's pool.
pub type Pool = crate::pool::Pool<Key, Idle>;

/// The reset a session goes through before another client gets it.
const RESET: &str = "DISCARD ALL";

/// Why a session was not kept.
#[derive(Debug, PartialEq, Eq)]
pub enum ResetError {
    /// The backend answered with an error, or something a reset does not produce.
    Refused,
    /// The backend closed, or did not answer in time.
    Gone,
}

/// Runs `DISCARD ALL` and reads up to its ReadyForQuery, updating `params`
/// from the ParameterStatus messages the reset produces (a setting the client
/// changed is reported back at its reset value).
pub async fn reset(idle: &mut Idle, limit: Duration) -> Result<(), ResetError> {
    match tokio::time::timeout(limit, reset_inner(idle)).await {
        Ok(r) => r,
        Err(_) => Err(ResetError::Gone),
    }
}

async fn reset_inner(idle: &mut Idle) -> Result<(), ResetError> {
    let stream = &mut idle.stream;
    stream
        .write_all(&messages::query(RESET))
        .await
        .map_err(|_| ResetError::Gone)?;
    stream.flush().await.map_err(|_| ResetError::Gone)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut completed = false;
    loop {
        let msg = match decode_message(&mut buf, MAX_AUTH_MESSAGE) {
            Ok(Some(m)) => m,
            Ok(None) => {
                if stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|_| ResetError::Gone)?
                    == 0
                {
                    return Err(ResetError::Gone);
                }
                continue;
            }
            Err(_) => return Err(ResetError::Refused),
        };
        match msg.tag {
            b'C' if msg.body.starts_with(RESET.as_bytes()) => completed = true,
            b'S' => set_param(&mut idle.params, &msg.body),
            // Notices and notifications from before UNLISTEN: nobody to tell.
            b'N' | b'A' => {}
            b'Z' if completed && msg.body.as_ref() == b"I" && buf.is_empty() => return Ok(()),
            _ => return Err(ResetError::Refused),
        }
    }
}

/// Replaces (or adds) the ParameterStatus for the parameter `body` names.
fn set_param(params: &mut Vec<Bytes>, body: &[u8]) {
    let Some((name, _)) = split_cstr(body) else {
        return;
    };
    let mut framed = BytesMut::with_capacity(5 + body.len());
    framed.extend_from_slice(b"S");
    framed.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    framed.extend_from_slice(body);
    let framed = framed.freeze();
    match params
        .iter_mut()
        .find(|p| p.len() > 5 && split_cstr(&p[5..]).is_some_and(|(n, _)| n == name))
    {
        Some(p) => *p = framed,
        None => params.push(framed),
    }
}

/// Ends a session politely: Terminate, then close, within `limit`.
pub async fn close(mut idle: Idle, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let _ = idle.stream.write_all(&messages::terminate()).await;
        let _ = idle.stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(name: &str, value: &str) -> Bytes {
        let body = format!("{name}\0{value}\0");
        let mut b = BytesMut::new();
        b.extend_from_slice(b"S");
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body.as_bytes());
        b.freeze()
    }

    #[test]
    fn parameter_status_is_replaced_by_name() {
        let mut params = vec![ps("TimeZone", "UTC"), ps("DateStyle", "ISO, MDY")];
        set_param(&mut params, b"TimeZone\0Europe/Berlin\0");
        set_param(&mut params, b"application_name\0x\0");
        set_param(&mut params, b"no terminator");
        assert_eq!(
            params,
            vec![
                ps("TimeZone", "Europe/Berlin"),
                ps("DateStyle", "ISO, MDY"),
                ps("application_name", "x")
            ]
        );
    }

    #[test]
    fn keys_ignore_parameter_order() {
        let a = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())];
        let b = [a[1].clone(), a[0].clone()];
        assert_eq!(Key::new("r", "d", &a), Key::new("r", "d", &b));
        assert_ne!(Key::new("r", "d", &a), Key::new("r", "e", &a));
        assert_ne!(Key::new("r", "d", &a), Key::new("s", "d", &a));
        // The proxy user's name is not the backend's business.
        let mut c = a.to_vec();
        c.push(("user".into(), "someone".into()));
        assert_eq!(Key::new("r", "d", &a), Key::new("r", "d", &c));
    }
}
