//! Builders for the messages the proxy writes, and parsers for the few it reads
//! (authentication requests, errors, SASL responses). One function per message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::split_cstr;

/// `ErrorResponse`/`NoticeResponse` severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the session.
    Fatal,
    /// Ends the statement.
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
        }
    }
}

fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(tag);
    out.put_u32(0);
    body(&mut out);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    // A NUL inside would end the field early; PostgreSQL's own strings never hold one.
    out.extend(s.iter().copied().filter(|b| *b != 0));
    out.put_u8(0);
}

/// `ErrorResponse` with severity, SQLSTATE and message.
pub fn error_response(severity: Severity, code: &str, text: &str) -> Bytes {
    message(b'E', |b| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', text),
        ] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    })
}

/// `AuthenticationOk`.
pub fn auth_ok() -> Bytes {
    message(b'R', |b| b.put_u32(0))
}

/// `AuthenticationCleartextPassword`.
pub fn auth_cleartext() -> Bytes {
    message(b'R', |b| b.put_u32(3))
}

/// `AuthenticationSASL` listing mechanisms.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    message(b'R', |b| {
        b.put_u32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    })
}

/// `AuthenticationSASLContinue`.
pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    message(b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    })
}

/// `AuthenticationSASLFinal`.
pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    message(b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    })
}

/// `BackendKeyData` (protocol 3.0: a 4-byte secret).
pub fn backend_key_data(pid: u32, secret: &[u8]) -> Bytes {
    message(b'K', |b| {
        b.put_u32(pid);
        b.put_slice(secret);
    })
}

/// `NegotiateProtocolVersion`: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(minor: u32, options: &[String]) -> Bytes {
    message(b'v', |b| {
        b.put_u32(minor);
        b.put_u32(options.len() as u32);
        for o in options {
            put_cstr(b, o.as_bytes());
        }
    })
}

/// A startup packet for the backend: protocol 3.0 and parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_u32(0);
    out.put_u32(196_608);
    for (k, v) in params {
        put_cstr(&mut out, k.as_bytes());
        put_cstr(&mut out, v.as_bytes());
    }
    out.put_u8(0);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// A simple `Query`.
pub fn query(sql: &str) -> Bytes {
    message(b'Q', |b| put_cstr(b, sql.as_bytes()))
}

/// `Terminate`.
pub fn terminate() -> Bytes {
    Bytes::from_static(&[b'X', 0, 0, 0, 4])
}

/// `SSLRequest`.
pub fn ssl_request() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 8, 4, 210, 22, 47])
}

/// `CancelRequest` for a backend session.
pub fn cancel_request(pid: u32, secret: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    out.put_u32((12 + secret.len()) as u32);
    out.put_u32(super::codec::CANCEL_REQUEST);
    out.put_u32(pid);
    out.put_slice(secret);
    out.freeze()
}

/// `SASLInitialResponse`.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    message(b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    })
}

/// `SASLResponse` / `PasswordMessage` (raw payload).
pub fn password_message(data: &[u8]) -> Bytes {
    message(b'p', |b| b.put_slice(data))
}

/// A password message with a NUL-terminated string (cleartext or md5).
pub fn password_cstr(data: &[u8]) -> Bytes {
    message(b'p', |b| put_cstr(b, data))
}

/// Parses `SASLInitialResponse`: mechanism name and client-first-message.
pub fn parse_sasl_initial(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mech, mut rest) = split_cstr(body)?;
    if rest.len() < 4 {
        return None;
    }
    let len = rest.get_i32();
    let data = if len == -1 {
        &[][..]
    } else {
        rest.get(..usize::try_from(len).ok()?)?
    };
    (data.len() == rest.len()).then_some((mech, data))
}

/// An authentication request from a backend (`R` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AuthenticationOk`.
    Ok,
    /// `AuthenticationCleartextPassword`.
    Cleartext,
    /// `AuthenticationMD5Password` with its salt.
    Md5([u8; 4]),
    /// `AuthenticationSASL` with the mechanisms offered.
    Sasl(Vec<String>),
    /// `AuthenticationSASLContinue`.
    SaslContinue(Bytes),
    /// `AuthenticationSASLFinal`.
    SaslFinal(Bytes),
    /// Anything else (Kerberos, GSS, SSPI …), by code.
    Other(u32),
}

/// Parses an `R` body.
pub fn parse_auth_request(mut body: Bytes) -> Option<AuthRequest> {
    if body.len() < 4 {
        return None;
    }
    let code = body.get_u32();
    Some(match code {
        0 if body.is_empty() => AuthRequest::Ok,
        3 if body.is_empty() => AuthRequest::Cleartext,
        5 if body.len() == 4 => AuthRequest::Md5([body[0], body[1], body[2], body[3]]),
        10 => {
            let mut mechs = Vec::new();
            let mut rest = &body[..];
            loop {
                let (m, after) = split_cstr(rest)?;
                if m.is_empty() {
                    break;
                }
                mechs.push(String::from_utf8_lossy(m).into_owned());
                rest = after;
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(body),
        12 => AuthRequest::SaslFinal(body),
        other => AuthRequest::Other(other),
    })
}

/// The fields of an `ErrorResponse` the proxy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S`: severity.
    pub severity: String,
    /// `C`: SQLSTATE.
    pub code: String,
    /// `M`: message.
    pub message: String,
}

/// Parses an `E` (or `N`) body.
pub fn parse_error(body: &[u8]) -> ErrorFields {
    let mut f = ErrorFields::default();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, after)) = split_cstr(after) else {
            break;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b'S' => f.severity = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            _ => {}
        }
        rest = after;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::codec::decode_message;

    #[test]
    fn error_round_trip() {
        let e = error_response(
            Severity::Fatal,
            "28P01",
            "password authentication failed for user \"a\"",
        );
        let mut buf = BytesMut::from(&e[..]);
        let m = decode_message(&mut buf, 1000).expect("ok").expect("some");
        assert_eq!(m.tag, b'E');
        let f = parse_error(&m.body);
        assert_eq!((f.severity.as_str(), f.code.as_str()), ("FATAL", "28P01"));
    }

    #[test]
    fn auth_requests() {
        let m = auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            parse_auth_request(m.slice(5..)),
            Some(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        assert_eq!(
            parse_auth_request(auth_ok().slice(5..)),
            Some(AuthRequest::Ok)
        );
        assert_eq!(parse_auth_request(Bytes::from_static(&[0, 0])), None);
        let init = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(
            parse_sasl_initial(&init[5..]),
            Some((&b"SCRAM-SHA-256"[..], &b"n,,n=,r=abc"[..]))
        );
        assert_eq!(parse_sasl_initial(b"X\0\0\0\0\x09ab"), None);
    }
}
