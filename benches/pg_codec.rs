//! The PostgreSQL codec's hot paths. After login every byte in either
//! direction goes through `Framer::advance`, the way the relay's
//! `pump_client` / `pump_backend` drive it: one call per message header (and
//! per read of a message larger than the buffer), the message's tag looked at,
//! and the whole buffered run split off as one chunk for the other side.
//! `decode_message` frames the login phase and `decode_startup` runs once per
//! connection. Throughput is in input bytes.
//!
//! Run with `cargo bench --bench pg_codec`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use portcullis::postgres::codec::{
    decode_message, decode_startup, Frame, Framer, StartupPacket, MAX_AUTH_MESSAGE,
};
use portcullis::postgres::messages;

/// Transactions in one pipelined batch: what a busy client's socket buffer
/// holds at once (pgbench with pipelining, a driver's batch).
const PIPELINE: usize = 16;

/// The relay's read size (`READ_CHUNK` in the session).
const READ_SIZE: usize = 16 * 1024;

/// The default `postgres.max_message_size`.
const MAX_MESSAGE: usize = 64 << 20;

/// One MiB: a row far larger than one read.
const LARGE: usize = 1 << 20;

/// pgbench -S's statement.
const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// A tagged message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// pgbench -S -M extended, as libpq's `PQexecParams` sends it:
/// Parse, Bind, Describe (portal), Execute, Sync per transaction.
fn extended_pipeline() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..PIPELINE {
        let mut parse = Vec::new();
        cstr(&mut parse, "");
        cstr(&mut parse, SELECT);
        parse.extend_from_slice(&0u16.to_be_bytes());
        out.extend(msg(b'P', &parse));

        let aid = format!("{}", 1_000 + i * 7_919);
        let mut bind = Vec::new();
        cstr(&mut bind, "");
        cstr(&mut bind, "");
        bind.extend_from_slice(&0u16.to_be_bytes()); // parameter formats: all text
        bind.extend_from_slice(&1u16.to_be_bytes());
        bind.extend_from_slice(&(aid.len() as u32).to_be_bytes());
        bind.extend_from_slice(aid.as_bytes());
        bind.extend_from_slice(&0u16.to_be_bytes()); // result formats: all text
        out.extend(msg(b'B', &bind));

        out.extend(msg(b'D', b"P\0"));
        out.extend(msg(b'E', b"\0\0\0\0\0"));
        out.extend(msg(b'S', b""));
    }
    out
}

/// pgbench -S -M simple: one Query per transaction.
fn simple_pipeline() -> Vec<u8> {
    (0..PIPELINE)
        .flat_map(|i| {
            let sql = format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                1_000 + i * 7_919
            );
            let mut body = Vec::new();
            cstr(&mut body, &sql);
            msg(b'Q', &body)
        })
        .collect()
}

/// RowDescription for `columns` text columns.
fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for (i, name) in columns.iter().enumerate() {
        cstr(&mut body, name);
        body.extend_from_slice(&16_400u32.to_be_bytes()); // table oid
        body.extend_from_slice(&(i as u16 + 1).to_be_bytes()); // column number
        body.extend_from_slice(&23u32.to_be_bytes()); // int4
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    msg(b'T', &body)
}

/// DataRow of text values.
fn data_row(values: &[&[u8]]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    msg(b'D', &body)
}

fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    msg(b'C', &body)
}

fn ready_for_query() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// The backend's answers to [`extended_pipeline`]: ParseComplete, BindComplete,
/// RowDescription, DataRow, CommandComplete, ReadyForQuery per transaction.
fn extended_replies() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..PIPELINE {
        out.extend(msg(b'1', b""));
        out.extend(msg(b'2', b""));
        out.extend(row_description(&["abalance"]));
        out.extend(data_row(&[format!("{}", i * 31).as_bytes()]));
        out.extend(command_complete("SELECT 1"));
        out.extend(ready_for_query());
    }
    out
}

/// One query's result of 100 rows of four columns.
fn result_set() -> Vec<u8> {
    let mut out = row_description(&["aid", "bid", "abalance", "filler"]);
    let filler = [b' '; 84];
    for i in 0..100u32 {
        let (aid, bid, bal) = (format!("{i}"), format!("{}", i / 10), format!("{}", i * 3));
        out.extend(data_row(&[
            aid.as_bytes(),
            bid.as_bytes(),
            bal.as_bytes(),
            &filler,
        ]));
    }
    out.extend(command_complete("SELECT 100"));
    out.extend(ready_for_query());
    out
}

/// One row holding a 1 MiB `bytea` in hex, then CommandComplete and ReadyForQuery.
fn large_row() -> Vec<u8> {
    let mut out = row_description(&["data"]);
    out.extend(data_row(&[&vec![b'a'; LARGE]]));
    out.extend(command_complete("SELECT 1"));
    out.extend(ready_for_query());
    out
}

/// What the relay's pumps do with the bytes buffered from one side: walk the
/// headers, look at each message's tag (Query/Execute for the command rates,
/// ReadyForQuery and its status for reply order), and split everything framed
/// off as one chunk. Returns the messages started and the bytes forwarded.
fn pump(framer: &mut Framer, buf: &mut BytesMut, out: &mut Vec<Bytes>) -> (usize, usize) {
    let (mut run, mut started) = (0, 0);
    while let Ok(Some(frame)) = framer.advance(&buf[run..], MAX_MESSAGE) {
        let take = match frame {
            Frame::Start { tag, take } => {
                started += 1;
                match tag {
                    b'Q' | b'E' => {
                        black_box(tag);
                    }
                    b'Z' if take >= 6 => {
                        black_box(buf[run + 5]);
                    }
                    _ => {}
                }
                take
            }
            Frame::Continue { take } => take,
        };
        run += take;
    }
    if run > 0 {
        out.push(buf.split_to(run).freeze());
    }
    (started, run)
}

/// Feeds `input` to [`pump`] in reads of `read` bytes, as the relay does;
/// returns the messages started and the bytes forwarded.
fn relay(input: &[u8], read: usize) -> (usize, usize) {
    let mut framer = Framer::default();
    let mut buf = BytesMut::with_capacity(read);
    let mut out = Vec::new();
    let (mut started, mut forwarded) = (0, 0);
    for chunk in input.chunks(read) {
        buf.extend_from_slice(chunk);
        let (s, f) = pump(&mut framer, &mut buf, &mut out);
        started += s;
        forwarded += f;
        // The writer takes the chunks; the buffer's space is reused.
        out.clear();
    }
    (started, forwarded)
}

/// Decodes every whole message in `buf`, as the login phase reads them.
fn decode_all(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(m)) = decode_message(buf, MAX_AUTH_MESSAGE) {
        black_box(m.tag);
        n += 1;
    }
    n
}

/// Frames one buffered run, as the relay does after a read that brought all
/// of it; the copy into the read buffer is left out, as in `redis_codec`.
fn bench_run(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, input: &[u8], messages: usize) {
    let mut out = Vec::new();
    assert_eq!(
        pump(&mut Framer::default(), &mut BytesMut::from(input), &mut out),
        (messages, input.len()),
        "{name}"
    );
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                (
                    Framer::default(),
                    BytesMut::from(input),
                    Vec::with_capacity(1),
                )
            },
            |(framer, buf, out)| pump(framer, buf, out),
            BatchSize::SmallInput,
        )
    });
}

fn client_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("pg_client_frame");
    let extended = extended_pipeline();
    bench_run(
        &mut g,
        "pipeline_16_extended_pbdes",
        &extended,
        PIPELINE * 5,
    );
    bench_run(
        &mut g,
        "pipeline_16_simple_query",
        &simple_pipeline(),
        PIPELINE,
    );
    // The same bytes through `decode_message`, which splits off every message.
    assert_eq!(decode_all(&mut BytesMut::from(&extended[..])), PIPELINE * 5);
    g.throughput(Throughput::Bytes(extended.len() as u64));
    g.bench_function("decode_message_16_extended_pbdes", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&extended[..]),
            decode_all,
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn backend_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("pg_backend_frame");
    bench_run(
        &mut g,
        "pipeline_16_extended_replies",
        &extended_replies(),
        PIPELINE * 6,
    );
    bench_run(&mut g, "result_100_rows", &result_set(), 103);
    // Streamed: each 16 KiB read is appended to the buffer and framed.
    let large = large_row();
    assert_eq!(relay(&large, READ_SIZE), (4, large.len()));
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("datarow_1mib_16k_reads", |b| {
        b.iter(|| relay(black_box(&large), READ_SIZE))
    });
    g.finish();
}

fn startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("pg_startup");
    let psql = messages::startup_message(&[
        ("user", "app"),
        ("database", "app"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
    ]);
    // pgjdbc's startup packet: the most parameters among common drivers.
    let jdbc = messages::startup_message(&[
        ("user", "app"),
        ("database", "app"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "Europe/Berlin"),
        ("extra_float_digits", "2"),
        ("application_name", "PostgreSQL JDBC Driver"),
        ("search_path", "app,public"),
    ]);
    let ssl = messages::ssl_request();
    let cancel = messages::cancel_request(4_242, &[1, 2, 3, 4]);
    for (name, input) in [
        ("startup_psql", &psql),
        ("startup_jdbc_8_params", &jdbc),
        ("ssl_request", &ssl),
        ("cancel_request", &cancel),
    ] {
        match decode_startup(&mut BytesMut::from(&input[..])) {
            Ok(Some(StartupPacket::Startup(s))) => assert_eq!(s.get("user"), Some("app")),
            Ok(Some(StartupPacket::Ssl | StartupPacket::Cancel { .. })) => {}
            other => panic!("{name}: {other:?}"),
        }
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| decode_startup(buf).is_ok(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, client_messages, backend_messages, startup);
criterion_main!(benches);
