//! The Redis codec's hot paths: every client byte goes through `request::decode`
//! (and `Tail::advance` for large values), every backend byte through
//! `ReplyScanner::scan`. Throughput is in input bytes, so the numbers compare
//! directly with a link's bandwidth.
//!
//! Run with `cargo bench --bench redis_codec`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use portcullis::redis::reply::{peek_scalar, ReplyScanner, Scan};
use portcullis::redis::request::{decode, peek_whole, Decoded, RequestLimits, Tail};

/// Requests in one pipelined batch, as a client library's pipeline would send them.
const PIPELINE: usize = 16;

/// A socket read's worth of bytes, for the streamed cases.
const READ_SIZE: usize = 16 * 1024;

/// One MiB: a value large enough to be streamed, not buffered.
const LARGE: usize = 1 << 20;

fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn set_pipeline() -> Vec<u8> {
    let value = [b'v'; 100];
    (0..PIPELINE)
        .flat_map(|i| multibulk(&[b"SET", format!("key:{i:04}").as_bytes(), &value]))
        .collect()
}

fn get_pipeline() -> Vec<u8> {
    (0..PIPELINE)
        .flat_map(|i| multibulk(&[b"GET", format!("key:{i:04}").as_bytes()]))
        .collect()
}

fn inline_pipeline() -> Vec<u8> {
    (0..PIPELINE)
        .flat_map(|i| format!("SET key:{i:04} \"hello world\\n\" EX 60\r\n").into_bytes())
        .collect()
}

/// Decodes every request in `buf`, as the session does after a read.
fn decode_all(buf: &mut BytesMut, limits: &RequestLimits) -> usize {
    let mut n = 0;
    while let Ok(Some(d)) = decode(buf, limits) {
        if let Decoded::Request(r) = d {
            black_box(r.arg(0));
            n += 1;
        }
    }
    n
}

/// Feeds `input` in reads of [`READ_SIZE`], streaming any tail as the session does;
/// returns the bytes forwarded.
fn stream_all(input: &[u8], limits: &RequestLimits) -> usize {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut tail: Option<Tail> = None;
    let mut forwarded = 0;
    for read in input.chunks(READ_SIZE) {
        buf.extend_from_slice(read);
        loop {
            if let Some(t) = tail.as_mut() {
                let Ok((bytes, done)) = t.advance(&mut buf, limits) else {
                    return forwarded;
                };
                forwarded += black_box(bytes).len();
                if !done {
                    break;
                }
                tail = None;
            }
            match decode(&mut buf, limits) {
                Ok(Some(Decoded::Request(r))) => {
                    forwarded += r.raw().len();
                    tail = r.tail;
                }
                Ok(Some(Decoded::Skip)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    forwarded
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_decode");
    let limits = RequestLimits::AUTHENTICATED;
    for (name, input) in [
        ("pipeline_16_set_100b", set_pipeline()),
        ("pipeline_16_get", get_pipeline()),
        ("inline_16_set", inline_pipeline()),
    ] {
        assert_eq!(
            decode_all(&mut BytesMut::from(&input[..]), &limits),
            PIPELINE
        );
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| decode_all(buf, &limits),
                BatchSize::SmallInput,
            )
        });
    }

    // The relay's fast path: whole requests seen in place, nothing split or built.
    for (name, input) in [
        ("peek_pipeline_16_set_100b", set_pipeline()),
        ("peek_pipeline_16_get", get_pipeline()),
    ] {
        assert_eq!(peek_all(&input), PIPELINE);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| b.iter(|| peek_all(black_box(&input))));
    }

    let mut large = format!("*3\r\n$3\r\nSET\r\n$9\r\nkey:large\r\n${LARGE}\r\n").into_bytes();
    large.resize(large.len() + LARGE, b'v');
    large.extend_from_slice(b"\r\n");
    assert_eq!(stream_all(&large, &limits), large.len());
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("set_1mib_streamed_16k_reads", |b| {
        b.iter(|| stream_all(black_box(&large), &limits))
    });
    g.finish();
}

/// Peeks every whole request in `input`, as the relay's fast path does.
fn peek_all(input: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Some(p) = peek_whole(&input[at..]) {
        black_box(&input[at + p.name.0..at + p.name.1]);
        at += p.len;
        n += 1;
    }
    n
}

/// Takes every scalar reply in `input` with `peek_scalar`, as the relay does between frames.
fn peek_scalars(input: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Some(len) = peek_scalar(&input[at..], 2048) {
        at += len;
        n += 1;
    }
    n
}

/// Scans `input` in reads of `read` bytes; returns the replies found.
fn scan_all(input: &[u8], read: usize) -> usize {
    let mut scanner = ReplyScanner::new();
    let mut frames = 0;
    for chunk in input.chunks(read) {
        let mut at = 0;
        while at < chunk.len() {
            match scanner.scan(&chunk[at..]) {
                Ok(Scan::Complete { len, info }) => {
                    black_box(info);
                    at += len;
                    frames += 1;
                }
                Ok(Scan::Partial) => break,
                Err(_) => return frames,
            }
        }
    }
    frames
}

fn replies(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_scan");

    let mut bulks = Vec::new();
    for i in 0..PIPELINE {
        bulks.extend_from_slice(b"$100\r\n");
        bulks.extend_from_slice(&[b'a' + i as u8; 100]);
        bulks.extend_from_slice(b"\r\n");
    }

    // An HGETALL-style RESP3 map: 16 fields with bulk, integer and double values.
    let mut map = format!("%{PIPELINE}\r\n").into_bytes();
    for i in 0..PIPELINE {
        map.extend_from_slice(format!("$8\r\nfield:{i:02}\r\n").as_bytes());
        match i % 3 {
            0 => map.extend_from_slice(format!("$32\r\n{}\r\n", "x".repeat(32)).as_bytes()),
            1 => map.extend_from_slice(format!(":{}\r\n", i * 1000).as_bytes()),
            _ => map.extend_from_slice(format!(",{i}.25\r\n").as_bytes()),
        }
    }

    let mut large = format!("${LARGE}\r\n").into_bytes();
    large.resize(large.len() + LARGE, b'x');
    large.extend_from_slice(b"\r\n");

    for (name, input, read, frames) in [
        ("pipeline_16_bulk_100b", &bulks, bulks.len(), PIPELINE),
        ("resp3_map_16", &map, map.len(), 1),
        ("bulk_1mib_16k_reads", &large, READ_SIZE, 1),
    ] {
        assert_eq!(scan_all(input, read), frames, "{name}");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan_all(black_box(input), read)));
    }
    assert_eq!(peek_scalars(&bulks), PIPELINE);
    g.throughput(Throughput::Bytes(bulks.len() as u64));
    g.bench_function("peek_scalar_pipeline_16_bulk_100b", |b| {
        b.iter(|| peek_scalars(black_box(&bulks)))
    });
    g.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);
