//! Fuzzes the PostgreSQL frontend parsers: startup packets
//! (`postgres::codec::decode_startup`), tagged messages (`decode_message`),
//! the streaming `Framer`, and the SASLInitialResponse parser.
//!
//! Invariants: nothing panics; decoding whole and one byte at a time gives the
//! same packet or the same error; every accepted startup packet respects the
//! length limits; the framer accounts for every byte exactly once and finds
//! the same message starts whether fed whole or byte by byte.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::postgres::codec::{
    decode_message, decode_startup, Frame, FrameError, Framer, StartupPacket, MAX_STARTUP_LEN,
};
use portcullis::postgres::messages::parse_sasl_initial;

fuzz_target!(|data: &[u8]| {
    // Startup packets: whole vs byte at a time.
    let whole = {
        let mut buf = BytesMut::from(data);
        let r = decode_startup(&mut buf);
        if let Ok(Some(_)) = &r {
            assert!(data.len() - buf.len() <= MAX_STARTUP_LEN);
        }
        r
    };
    let mut buf = BytesMut::new();
    let mut bytewise: Result<Option<StartupPacket>, FrameError> = Ok(None);
    for &b in data {
        buf.extend_from_slice(&[b]);
        bytewise = decode_startup(&mut buf);
        if !matches!(bytewise, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, bytewise);

    // Tagged messages with a small cap.
    let max = 64;
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = decode_message(&mut buf, max) {
        assert!(m.body.len() <= max);
        if m.tag == b'p' {
            if let Some((mech, init)) = parse_sasl_initial(&m.body) {
                assert!(mech.len() + init.len() < m.body.len());
            }
        }
    }

    // Framer: whole and byte-by-byte agree on tags and consume everything they accept.
    let frames = |step: usize| {
        let mut f = Framer::default();
        let mut pending = Vec::new();
        let mut tags = Vec::new();
        let mut consumed = 0;
        let mut err = None;
        'outer: for chunk in data.chunks(step) {
            pending.extend_from_slice(chunk);
            loop {
                match f.advance(&pending, max) {
                    Ok(Some(Frame::Start { tag, take })) => {
                        tags.push(tag);
                        pending.drain(..take);
                        consumed += take;
                    }
                    Ok(Some(Frame::Continue { take })) => {
                        assert!(take > 0);
                        pending.drain(..take);
                        consumed += take;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break 'outer;
                    }
                }
            }
        }
        (tags, consumed, err)
    };
    let a = frames(data.len().max(1));
    let b = frames(1);
    assert_eq!(a, b);
});
