//! Fuzzes the request counter of shared backend connections
//! (`portcullis::redis::mux::RequestCounter`).
//!
//! Input: the first byte `k` says how many of the following bytes (`k % 16`)
//! are split sizes; the rest is a session's byte stream to the backend. It is
//! fed whole, one byte at a time, and cut at those sizes (cycled), and the
//! three must count the same requests and end in the same state: the counter
//! may stop and resume at any byte.
//!
//! The end it reports for a piece is the last point between requests: what
//! comes before it counts the same on its own, and nothing after it ends a
//! request (a session hands the shared connection only whole requests, cut
//! there).
//!
//! Where the session's own parser (`peek_whole`) finds whole multibulk
//! requests one after another from the start, the counter must count exactly
//! those and stand between requests after each (it decides which session a
//! reply goes to, so it must agree with what the relay forwards).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::redis::mux::RequestCounter;
use portcullis::redis::request::peek_whole;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(k % 16).min(rest.len());
    let (sizes, input) = rest.split_at(n);
    let sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s) + 1).collect();

    let whole = count(input, &[input.len().max(1)]);
    assert_eq!(whole, count(input, &[1]), "whole and byte-at-a-time disagree");
    let split = count(input, if sizes.is_empty() { &[7] } else { &sizes });
    assert_eq!(whole, split, "whole and split disagree (sizes {sizes:?})");

    // The end reported is the last point between requests: the bytes up to it
    // count the same and end there; nothing after it ends a request.
    let mut counter = RequestCounter::default();
    let (n, end) = counter.feed_ends(input);
    let mut head = RequestCounter::default();
    assert_eq!(head.feed_ends(&input[..end]), (n, end), "the head alone");
    assert!(!head.mid_request(), "mid-request at the end reported");
    assert_eq!(head.feed_ends(&input[end..]), (0, 0), "a request ends after the end reported");

    let mut counter = RequestCounter::default();
    let mut at = 0;
    while let Some(p) = peek_whole(&input[at..]) {
        assert_eq!(counter.feed(&input[at..at + p.len]), 1, "one request at {at}");
        assert!(!counter.mid_request(), "mid-request after a whole one at {at}");
        at += p.len;
    }
});

/// Feeds `input` cut into pieces of `sizes` (cycled): requests counted, and the end state.
fn count(input: &[u8], sizes: &[usize]) -> (u64, RequestCounter) {
    let mut counter = RequestCounter::default();
    let mut total = 0;
    let mut offset = 0;
    for &size in sizes.iter().cycle() {
        if offset >= input.len() {
            break;
        }
        let end = input.len().min(offset + size);
        total += counter.feed(&input[offset..end]);
        offset = end;
    }
    (total, counter)
}
