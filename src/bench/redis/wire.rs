//! Bytes on the wire for `bench redis`: the requests the clients send, and
//! what an error reply is called in the tally. Pure functions, no I/O.

use super::Workload;
use crate::redis::reply::FrameInfo;

/// Appends a RESP array of bulk strings.
pub(super) fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        push_decimal(out, a.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends one request: `GET key:…`, `SET key:… value` or `PING`.
pub(super) fn encode_request(
    out: &mut Vec<u8>,
    op: Workload,
    key: u64,
    digits: usize,
    value: &[u8],
) {
    match op {
        Workload::Ping => out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"),
        Workload::Get | Workload::Mixed => {
            out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
            push_key(out, key, digits);
        }
        Workload::Set => {
            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
            push_key(out, key, digits);
            out.push(b'$');
            push_decimal(out, value.len() as u64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends the bulk string `key:` + `n` zero-padded to `digits`.
fn push_key(out: &mut Vec<u8>, n: u64, digits: usize) {
    let text = n.to_string();
    let width = digits.max(text.len());
    out.push(b'$');
    push_decimal(out, (4 + width) as u64);
    out.extend_from_slice(b"\r\nkey:");
    out.extend(std::iter::repeat_n(b'0', width - text.len()));
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The error reply's code as a tally kind: `-ERR`, `-WRONGPASS`, `-NOPERM`.
pub(super) fn error_kind(info: &FrameInfo) -> String {
    let bytes = info.scalar.bytes();
    let code = bytes.split(|&b| b == b' ').next().unwrap_or_default();
    let code: String = String::from_utf8_lossy(code)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    format!("-{code}")
}

/// The captured start of an error reply (the scanner keeps its first 32 bytes).
pub(super) fn error_text(info: &FrameInfo) -> String {
    let text = String::from_utf8_lossy(info.scalar.bytes()).into_owned();
    if info.scalar.truncated {
        text + "…"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::reply::{ReplyScanner, Scan};

    fn request(op: Workload, key: u64, digits: usize, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, op, key, digits, value);
        out
    }

    #[test]
    fn requests_are_resp_arrays_with_padded_keys() {
        assert_eq!(
            request(Workload::Get, 42, 6, b""),
            b"*2\r\n$3\r\nGET\r\n$10\r\nkey:000042\r\n"
        );
        assert_eq!(
            request(Workload::Set, 7, 6, b"abc"),
            b"*3\r\n$3\r\nSET\r\n$10\r\nkey:000007\r\n$3\r\nabc\r\n"
        );
        assert_eq!(
            request(Workload::Get, 1_234_567, 7, b""),
            b"*2\r\n$3\r\nGET\r\n$11\r\nkey:1234567\r\n"
        );
        assert_eq!(request(Workload::Ping, 0, 6, b""), b"*1\r\n$4\r\nPING\r\n");
        let mut auth = Vec::new();
        encode_command(&mut auth, &[b"AUTH", b"u", b"pw"]);
        assert_eq!(auth, b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n");
    }

    #[test]
    fn the_proxys_request_decoder_reads_what_we_send() {
        use crate::redis::request::{decode, Decoded, RequestLimits};
        let mut out = Vec::new();
        encode_request(&mut out, Workload::Set, 99, 6, &[b'x'; 100]);
        encode_request(&mut out, Workload::Get, 99_999, 6, b"");
        let mut buf = bytes::BytesMut::from(&out[..]);
        let limits = RequestLimits::AUTHENTICATED;
        let mut next = || match decode(&mut buf, &limits) {
            Ok(Some(Decoded::Request(r))) => r,
            other => panic!("{other:?}"),
        };
        let (set, get) = (next(), next());
        assert_eq!((set.argc(), set.arg(1)), (3, Some(&b"key:000099"[..])));
        assert_eq!(set.arg(2).map(<[u8]>::len), Some(100));
        assert_eq!((get.argc(), get.arg(1)), (2, Some(&b"key:099999"[..])));
        assert!(buf.is_empty());
    }

    fn scan_one(reply: &[u8]) -> FrameInfo {
        match ReplyScanner::new().scan(reply).expect("valid") {
            Scan::Complete { info, .. } => info,
            Scan::Partial => panic!("incomplete"),
        }
    }

    #[test]
    fn error_replies_are_tallied_by_code() {
        let e = scan_one(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
        assert!(e.is_error());
        assert_eq!(error_kind(&e), "-WRONGPASS");
        assert_eq!(error_text(&e), "WRONGPASS invalid username-passw…");
        let e = scan_one(b"-ERR\r\n");
        assert_eq!(
            (error_kind(&e), error_text(&e)),
            ("-ERR".into(), "ERR".into())
        );
        let e = scan_one(b"!21\r\nSYNTAX invalid syntax\r\n");
        assert_eq!(error_kind(&e), "-SYNTAX");
        let e = scan_one(b"-\x1b[2J oops\r\n");
        assert_eq!(error_kind(&e), "-[2J");
    }
}
