//! Fuzzes the PROXY protocol decoder (`proxy_protocol::decode`) and its
//! signature sniffer (`starts_like_header`).
//!
//! Invariants: nothing panics; decoding whole and one byte at a time gives the
//! same header or the same error; a decoded header is never longer than the
//! input, at most 107 bytes for v1 and 16 + MAX_V2_LEN for v2; the sniffer
//! agrees with the decoder; a proxied pair of addresses re-encoded as a v1
//! line decodes to the same addresses, leaving the bytes after the line alone.
//!
//! The first input byte picks a prefix so the fuzzer need not find the
//! signatures and keywords itself (it does not within minutes): raw input,
//! the v2 signature, "PROXY ", "PROXY TCP4 ", "PROXY TCP6 ", "PROXY UNKNOWN".

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use portcullis::proxy_protocol::{
    decode, starts_like_header, ProxyError, ProxyHeader, MAX_V1_LEN, MAX_V2_LEN,
};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let prefix: &[u8] = match mode % 6 {
        0 => b"",
        1 => V2_SIGNATURE,
        2 => b"PROXY ",
        3 => b"PROXY TCP4 ",
        4 => b"PROXY TCP6 ",
        _ => b"PROXY UNKNOWN",
    };
    let mut input = prefix.to_vec();
    input.extend_from_slice(rest);
    let input = input.as_slice();

    let whole = decode(input);
    let mut bytewise = Ok(None);
    for end in 0..=input.len() {
        bytewise = decode(&input[..end]);
        if bytewise != Ok(None) {
            break;
        }
    }
    assert_eq!(whole, bytewise);

    match starts_like_header(input) {
        Some(true) => assert_ne!(whole, Err(ProxyError::NotAHeader)),
        Some(false) => assert_eq!(whole, Err(ProxyError::NotAHeader)),
        None => assert_eq!(whole, Ok(None)),
    }

    let Ok(Some((header, n))) = whole else {
        return;
    };
    assert!(n <= input.len());
    if input.starts_with(b"PROXY ") {
        assert!(n <= MAX_V1_LEN);
    } else {
        assert!(input.starts_with(V2_SIGNATURE));
        assert!((16..=16 + MAX_V2_LEN).contains(&n));
    }

    if let ProxyHeader::Proxied {
        source,
        destination,
    } = header
    {
        let mut line = v1_line(source, destination)
            .expect("decoded addresses share a family")
            .into_bytes();
        let len = line.len();
        assert!(len <= MAX_V1_LEN);
        line.extend_from_slice(&input[n..]);
        assert_eq!(decode(&line), Ok(Some((header, len))));
    }
});

/// The v1 text form of a proxied TCP connection.
fn v1_line(source: SocketAddr, destination: SocketAddr) -> Option<String> {
    let protocol = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return None,
    };
    Some(format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    ))
}
