//! Fuzzes the backend reply scanner (`portcullis::redis::reply::ReplyScanner`).
//!
//! Input: the first byte `k` says how many of the following bytes (`k % 16`)
//! are split sizes; the rest is the backend's byte stream. The stream is
//! scanned whole, one byte at a time, and cut at those sizes (cycled), and the
//! three runs must report the same frame boundaries, the same `FrameInfo` for
//! each, and the same error: the scanner may stop and resume at any byte.
//!
//! Where `redis-protocol`'s RESP3 decoder, fed the bytes from a frame's start,
//! decodes one complete frame without error, it must end where the scanner's
//! frame ends. The two differ on purpose elsewhere (the scanner refuses
//! streamed types and nesting past `MAX_DEPTH`, and does not validate scalar
//! contents; redis-protocol refuses `*-1`/`$-1`, bad numbers, doubles and
//! booleans), so only frames both accept are compared.
//!
//! At every offset, `peek_scalar` (the session's shortcut for scalar replies)
//! must take only what the scanner takes as one frame, and as long.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::redis::reply::{peek_scalar, FrameInfo, ReplyError, ReplyScanner, Scan};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(k % 16).min(rest.len());
    let (sizes, input) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();

    let whole = scan(input, &[input.len().max(1)]);
    let bytewise = scan(input, &[1]);
    let split = scan(input, if sizes.is_empty() { &[7] } else { &sizes });
    assert_eq!(whole, bytewise, "whole and byte-at-a-time disagree");
    assert_eq!(whole, split, "whole and split disagree (sizes {sizes:?})");

    let mut start = 0;
    for &(end, _) in &whole.frames {
        agree_with_redis_protocol(&input[start..], end - start);
        start = end;
    }

    // The session's shortcut between frames: where peek_scalar takes a reply,
    // the scanner must find one frame of that length, a scalar.
    for at in 0..input.len() {
        if let Some(len) = peek_scalar(&input[at..], 2048) {
            match ReplyScanner::new().scan(&input[at..]) {
                Ok(Scan::Complete { len: scanned, info }) => {
                    assert_eq!(len, scanned, "peek_scalar and the scanner disagree at {at}");
                    assert!(!info.is_push(), "peek_scalar took a push");
                }
                other => panic!("peek_scalar took {len} bytes at {at}; the scanner: {other:?}"),
            }
        }
    }
});

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// End offset (exclusive) in the input and info of each complete frame.
    frames: Vec<(usize, FrameInfo)>,
    error: Option<ReplyError>,
    /// The scanner was inside a frame when the input ran out.
    in_frame: bool,
}

/// Scans `input` cut into pieces of `sizes` (cycled), resuming after every frame.
fn scan(input: &[u8], sizes: &[usize]) -> Outcome {
    let mut scanner = ReplyScanner::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    for &size in sizes.iter().cycle() {
        if offset >= input.len() {
            break;
        }
        let piece = &input[offset..input.len().min(offset + size)];
        let mut at = 0;
        while at < piece.len() {
            match scanner.scan(&piece[at..]) {
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error),
                        in_frame: scanner.in_frame(),
                    }
                }
                Ok(Scan::Partial) => {
                    assert!(scanner.in_frame(), "Partial outside a frame");
                    at = piece.len();
                }
                Ok(Scan::Complete { len, info }) => {
                    assert!(
                        len >= 1 && len <= piece.len() - at,
                        "Complete with bad len {len}"
                    );
                    assert!(!scanner.in_frame(), "still in a frame after Complete");
                    at += len;
                    frames.push((offset + at, info));
                }
            }
        }
        offset += piece.len();
    }
    Outcome {
        frames,
        error: None,
        in_frame: scanner.in_frame(),
    }
}

/// Where redis-protocol decodes a complete frame at the same start, it must be `len` long.
fn agree_with_redis_protocol(from_start: &[u8], len: usize) {
    use redis_protocol::resp3::decode::complete::decode;
    if let Ok(Some((frame, used))) = decode(from_start) {
        assert_eq!(
            used, len,
            "scanner frame of {len} bytes, redis-protocol frame of {used} bytes: {frame:?}"
        );
    }
}
