//! Fuzzes the parsers for what a PostgreSQL backend sends while the proxy logs
//! in: authentication requests (`parse_auth_request`) and ErrorResponse fields
//! (`parse_error`), framed by `decode_message`. Nothing may panic, and a
//! SASL mechanism list never yields more entries than NUL bytes in the body.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use portcullis::postgres::codec::decode_message;
use portcullis::postgres::messages::{parse_auth_request, parse_error, AuthRequest};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = decode_message(&mut buf, 1 << 16) {
        match m.tag {
            b'R' => {
                if let Some(AuthRequest::Sasl(mechs)) = parse_auth_request(m.body.clone()) {
                    assert!(mechs.len() <= m.body.iter().filter(|b| **b == 0).count());
                }
            }
            b'E' | b'N' => {
                let f = parse_error(&m.body);
                assert!(f.code.len() <= m.body.len());
            }
            _ => {}
        }
    }
    // Raw bodies too, without framing.
    let _ = parse_auth_request(Bytes::copy_from_slice(data));
    let _ = parse_error(data);
});
