//! PostgreSQL wire framing: the untagged startup packets and the tagged
//! messages that follow (<https://www.postgresql.org/docs/current/protocol-message-formats.html>).
//!
//! Every length is checked before anything is allocated or waited for:
//! `Ok(None)` means "need more bytes", a declared length out of range is an
//! error at once. Only `bytes` is used here: no I/O, no policy.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// `SSLRequest` code (1234.5679).
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest` code (1234.5680).
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest` code (1234.5678).
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol major version 3.
pub const PROTOCOL_MAJOR: u16 = 3;

/// PostgreSQL refuses larger startup packets (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The smallest startup packet: length and code.
pub const MIN_STARTUP_LEN: usize = 8;
/// Longest cancel key accepted (protocol 3.2 allows up to 256 bytes).
pub const MAX_CANCEL_KEY: usize = 256;
/// Authentication-phase messages (SASL, passwords) are small; PostgreSQL caps them
/// at `PG_MAX_AUTH_TOKEN_LENGTH` (65535).
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// A frame that breaks the protocol. `Display` is the message sent to the client.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A startup packet length outside 8..=10000.
    #[error("invalid length of startup packet")]
    StartupLength,
    /// A protocol version other than 3.x.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedVersion(u16, u16),
    /// Parameters not ending in a terminator.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    MissingTerminator,
    /// The same parameter twice.
    #[error("duplicate startup parameter")]
    DuplicateParameter,
    /// A parameter name or value that is not UTF-8.
    #[error("invalid byte sequence in startup packet")]
    NotUtf8,
    /// A cancel request of the wrong size.
    #[error("invalid length of cancel request")]
    CancelLength,
    /// A message length below 4 or above the limit.
    #[error("invalid message length")]
    MessageLength,
}

/// Startup parameters, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    /// Requested minor protocol version (0 for 3.0).
    pub minor: u16,
    /// `name → value`, in order, names unique.
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the proxy does not implement.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The first packet of a connection (and the second, after an SSL or GSS answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`.
    Ssl,
    /// `GSSENCRequest`.
    GssEnc,
    /// `CancelRequest` with the key of the session to cancel.
    Cancel {
        /// Process id from BackendKeyData.
        pid: u32,
        /// Secret key (4 bytes in protocol 3.0, longer in 3.2).
        secret: Bytes,
    },
    /// `StartupMessage`.
    Startup(Startup),
}

/// Decodes a startup packet, consuming it. The length is checked before waiting for the body.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
        return Err(FrameError::StartupLength);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    match code {
        SSL_REQUEST if packet.is_empty() => Ok(Some(StartupPacket::Ssl)),
        GSSENC_REQUEST if packet.is_empty() => Ok(Some(StartupPacket::GssEnc)),
        SSL_REQUEST | GSSENC_REQUEST => Err(FrameError::StartupLength),
        CANCEL_REQUEST => {
            if !(8..=4 + MAX_CANCEL_KEY).contains(&packet.len()) {
                return Err(FrameError::CancelLength);
            }
            let pid = packet.get_u32();
            Ok(Some(StartupPacket::Cancel {
                pid,
                secret: packet,
            }))
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != PROTOCOL_MAJOR {
                return Err(FrameError::UnsupportedVersion(major, minor));
            }
            parse_params(&packet)
                .map(|params| Some(StartupPacket::Startup(Startup { minor, params })))
        }
    }
}

/// `name\0value\0 … \0`, as `ProcessStartupPacket` reads it.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    if body.last() != Some(&0) {
        return Err(FrameError::MissingTerminator);
    }
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rest = &body[..body.len() - 1];
    while !rest.is_empty() {
        let (name, after) = split_cstr(rest).ok_or(FrameError::MissingTerminator)?;
        let (value, after) = split_cstr(after).ok_or(FrameError::MissingTerminator)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| FrameError::NotUtf8)?;
        let value = String::from_utf8(value.to_vec()).map_err(|_| FrameError::NotUtf8)?;
        if params.iter().any(|(k, _)| *k == name) {
            return Err(FrameError::DuplicateParameter);
        }
        params.push((name, value));
        rest = after;
    }
    Ok(params)
}

/// Splits a NUL-terminated string off the front.
pub fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// A whole tagged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type byte.
    pub tag: u8,
    /// Body, without tag and length.
    pub body: Bytes,
}

/// Reads a tagged message's header: `(tag, body length)`, checking `4 <= len <= max + 4`.
pub fn peek_header(buf: &[u8], max_body: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len - 4 > max_body {
        return Err(FrameError::MessageLength);
    }
    Ok(Some((buf[0], len - 4)))
}

/// Decodes one whole tagged message of at most `max_body` bytes, consuming it.
pub fn decode_message(buf: &mut BytesMut, max_body: usize) -> Result<Option<Message>, FrameError> {
    let Some((tag, len)) = peek_header(buf, max_body)? else {
        return Ok(None);
    };
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let mut m = buf.split_to(5 + len);
    m.advance(5);
    Ok(Some(Message {
        tag,
        body: m.freeze(),
    }))
}

/// Streams tagged messages of any size (COPY data, large rows) without holding
/// them: it only tracks where each message ends, checking every header.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    /// Body bytes of the current message still to pass.
    remaining: usize,
}

/// What [`Framer::advance`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The start of a message with this tag; the bytes to pass include the header.
    Start {
        /// Type byte.
        tag: u8,
        /// Bytes of the buffer that belong to it (header plus available body).
        take: usize,
    },
    /// More body of the current message.
    Continue {
        /// Bytes of the buffer that belong to it.
        take: usize,
    },
}

impl Framer {
    /// Looks at the front of `buf`; `Ok(None)` when a header is incomplete.
    pub fn advance(&mut self, buf: &[u8], max_body: usize) -> Result<Option<Frame>, FrameError> {
        if self.remaining > 0 {
            let take = self.remaining.min(buf.len());
            if take == 0 {
                return Ok(None);
            }
            self.remaining -= take;
            return Ok(Some(Frame::Continue { take }));
        }
        let Some((tag, len)) = peek_header(buf, max_body)? else {
            return Ok(None);
        };
        let body_here = len.min(buf.len() - 5);
        self.remaining = len - body_here;
        Ok(Some(Frame::Start {
            tag,
            take: 5 + body_here,
        }))
    }

    /// True between messages.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(code: u32, params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    /// Decodes `input` whole and one byte at a time; both must agree.
    fn both(input: &[u8]) -> Result<Option<StartupPacket>, FrameError> {
        let mut whole = BytesMut::from(input);
        let a = decode_startup(&mut whole);
        let mut buf = BytesMut::new();
        let mut b = Ok(None);
        for &byte in input {
            buf.extend_from_slice(&[byte]);
            b = decode_startup(&mut buf);
            if !matches!(b, Ok(None)) {
                break;
            }
        }
        assert_eq!(a, b, "whole and byte-by-byte disagree");
        a
    }

    #[test]
    fn startup_packets() {
        let p = both(&startup_bytes(
            196_608,
            &[("user", "alice"), ("database", "db")],
        ))
        .expect("ok")
        .expect("some");
        let StartupPacket::Startup(s) = p else {
            panic!("startup")
        };
        assert_eq!(
            (s.minor, s.get("user"), s.get("database")),
            (0, Some("alice"), Some("db"))
        );
        assert_eq!(
            both(&[0, 0, 0, 8, 4, 210, 22, 47]),
            Ok(Some(StartupPacket::Ssl))
        );
        assert_eq!(
            both(&[0, 0, 0, 8, 4, 210, 22, 48]),
            Ok(Some(StartupPacket::GssEnc))
        );
        let cancel = [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4];
        assert_eq!(
            both(&cancel),
            Ok(Some(StartupPacket::Cancel {
                pid: 7,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }))
        );
        let v32 = both(&startup_bytes(196_610, &[("user", "u"), ("_pq_.x", "1")]))
            .expect("ok")
            .expect("some");
        let StartupPacket::Startup(s) = v32 else {
            panic!("startup")
        };
        assert_eq!(
            (s.minor, s.protocol_options()),
            (2, vec!["_pq_.x".to_string()])
        );
    }

    #[test]
    fn startup_errors() {
        assert_eq!(both(&[0, 0, 0, 3]), Err(FrameError::StartupLength));
        assert_eq!(both(&[0, 0, 0x27, 0x11]), Err(FrameError::StartupLength));
        assert_eq!(
            both(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::StartupLength)
        );
        assert_eq!(
            both(&startup_bytes(131_072, &[("user", "u")])),
            Err(FrameError::UnsupportedVersion(2, 0))
        );
        assert_eq!(
            both(&startup_bytes(196_608, &[("user", "a"), ("user", "b")])),
            Err(FrameError::DuplicateParameter)
        );
        let mut no_term = startup_bytes(196_608, &[("user", "a")]);
        no_term.pop();
        let n = no_term.len() as u32;
        no_term[..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(both(&no_term), Err(FrameError::MissingTerminator));
        assert_eq!(
            both(&[0, 0, 0, 9, 4, 210, 22, 47, 0]),
            Err(FrameError::StartupLength)
        );
        assert_eq!(
            both(&[0, 0, 0, 12, 4, 210, 22, 46, 0, 0, 0, 1]),
            Err(FrameError::CancelLength)
        );
    }

    #[test]
    fn messages_and_framer() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT 1\0X\0\0\0\x04"[..]);
        let m = decode_message(&mut buf, 100).expect("ok").expect("some");
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"SELECT 1\0"[..]));
        let m = decode_message(&mut buf, 100).expect("ok").expect("some");
        assert_eq!((m.tag, m.body.len()), (b'X', 0));
        assert_eq!(
            decode_message(&mut BytesMut::from(&b"Q\0\0\0\x03"[..]), 100),
            Err(FrameError::MessageLength)
        );
        assert_eq!(
            decode_message(&mut BytesMut::from(&b"d\0\0\x10\x00"[..]), 100),
            Err(FrameError::MessageLength)
        );

        let mut f = Framer::default();
        let input = b"d\0\0\0\x0aabcdefH\0\0\0\x04";
        let mut pos = 0;
        let mut tags = Vec::new();
        // Byte at a time: every byte is accounted for exactly once.
        let mut pending = Vec::new();
        for &b in input.iter() {
            pending.push(b);
            while let Some(fr) = f.advance(&pending, 100).expect("valid") {
                let take = match fr {
                    Frame::Start { tag, take } => {
                        tags.push(tag);
                        take
                    }
                    Frame::Continue { take } => take,
                };
                pending.drain(..take);
                pos += take;
            }
        }
        assert_eq!((pos, tags), (input.len(), vec![b'd', b'H']));
        assert!(f.at_boundary());
    }
}
