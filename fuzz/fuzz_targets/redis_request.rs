//! Fuzzes the Redis request decoder (`portcullis::redis::request`) the way a
//! session drives it: `decode` in a loop, and `Tail::advance` while a streamed
//! request is open.
//!
//! Input: the first byte picks the limits (bit 0: `UNAUTHENTICATED` or
//! `AUTHENTICATED`) and a chunk size (bits 1..8, plus one); the rest is the
//! client's byte stream. The stream is fed whole, one byte at a time, and in
//! chunks of that size, and the three runs must agree:
//!
//! - `UNAUTHENTICATED` never streams, so every run must produce the same
//!   requests (arguments and bytes) and the same first error.
//! - `AUTHENTICATED` streams where the buffer happens to end, so heads differ
//!   between runs; what must agree is the request shapes (argument counts),
//!   the bytes forwarded (heads plus tail chunks), and the first error.
//!
//! Per call, in every run: `Ok(None)` consumes nothing, `Ok(Some(..))`
//! consumes at least one byte, a multibulk request's bytes are exactly what it
//! consumed, and a whole request's bytes decode again to the same arguments.
//! Where `peek_whole` (the session's fast path) takes the front of the buffer,
//! decode must return a whole multibulk request of that length and argc.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis::redis::request::{
    count_whole, decode, peek_whole, Decoded, ProtocolError, Request, RequestLimits, Tail,
    MAX_CAPTURED,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let limits = if selector & 1 == 0 {
        RequestLimits::UNAUTHENTICATED
    } else {
        RequestLimits::AUTHENTICATED
    };
    let chunk = usize::from(selector >> 1) + 1;

    let whole = Run::feed(input, limits, input.len().max(1));
    let bytewise = Run::feed(input, limits, 1);
    let chunked = Run::feed(input, limits, chunk);

    for (name, other) in [("byte-at-a-time", &bytewise), ("chunked", &chunked)] {
        assert_eq!(
            whole.error, other.error,
            "first error differs: whole vs {name}"
        );
        if limits.stream_after.is_none() {
            assert_eq!(
                whole.events, other.events,
                "requests differ: whole vs {name}"
            );
            assert_eq!(
                whole.consumed, other.consumed,
                "consumed differs: whole vs {name}"
            );
            assert!(!whole.tail_open && !other.tail_open);
        } else if whole.error.is_none() {
            assert_eq!(
                whole.shapes(),
                other.shapes(),
                "shapes differ: whole vs {name}"
            );
            assert!(
                whole.forwarded == other.forwarded,
                "forwarded bytes differ: whole vs {name}"
            );
            assert_eq!(
                whole.consumed, other.consumed,
                "consumed differs: whole vs {name}"
            );
            assert_eq!(whole.tail_open, other.tail_open);
        } else {
            // A request that fails part way may have had its head streamed in
            // one run and not in another; what was forwarded is still one stream.
            let (a, b) = (&whole.forwarded, &other.forwarded);
            let n = a.len().min(b.len());
            assert!(a[..n] == b[..n], "forwarded bytes diverge: whole vs {name}");
        }
    }
});

/// What the decoder produced for one request, as a session would see it.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Bytes Redis ignores (`Decoded::Skip`).
    Skip,
    /// A request or the head of a streamed one.
    Request {
        argc: usize,
        inline: bool,
        streamed: bool,
        /// The arguments the decoder captured.
        args: Vec<Vec<u8>>,
        /// The bytes to forward.
        raw: Vec<u8>,
    },
}

/// One pass over the input with a given chunk size.
struct Run<'a> {
    input: &'a [u8],
    limits: RequestLimits,
    buf: BytesMut,
    tail: Option<Tail>,
    events: Vec<Event>,
    /// Head bytes and tail chunks, in order: what goes to the backend.
    forwarded: Vec<u8>,
    /// Input bytes taken out of the buffer so far.
    consumed: usize,
    /// Input bytes put into the buffer so far.
    fed: usize,
    error: Option<ProtocolError>,
    /// A streamed request was still open when the input ran out.
    tail_open: bool,
}

impl<'a> Run<'a> {
    fn feed(input: &'a [u8], limits: RequestLimits, chunk: usize) -> Run<'a> {
        let mut run = Run {
            input,
            limits,
            buf: BytesMut::new(),
            tail: None,
            events: Vec::new(),
            forwarded: Vec::new(),
            consumed: 0,
            fed: 0,
            error: None,
            tail_open: false,
        };
        for piece in input.chunks(chunk) {
            run.buf.extend_from_slice(piece);
            run.fed += piece.len();
            if let Err(e) = run.drain() {
                run.error = Some(e);
                return run;
            }
        }
        run.tail_open = run.tail.is_some();
        run
    }

    /// Argument counts only: what must not depend on where streaming started.
    fn shapes(&self) -> Vec<Option<(usize, bool)>> {
        self.events
            .iter()
            .map(|e| match e {
                Event::Skip => None,
                Event::Request { argc, inline, .. } => Some((*argc, *inline)),
            })
            .collect()
    }

    /// The next `n` input bytes, which are what the decoder just took from the buffer.
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.consumed + n <= self.fed, "consumed bytes not yet fed");
        let src = &self.input[self.consumed..self.consumed + n];
        self.consumed += n;
        src
    }

    /// Decodes everything the buffer holds, as a session's read loop does.
    fn drain(&mut self) -> Result<(), ProtocolError> {
        loop {
            if let Some(tail) = self.tail.as_mut() {
                let before = self.buf.len();
                let (bytes, done) = tail.advance(&mut self.buf, &self.limits)?;
                assert_eq!(bytes.len() + self.buf.len(), before, "advance lost bytes");
                let src = self.take(bytes.len());
                assert!(bytes == src, "tail chunk is not the input");
                self.forwarded.extend_from_slice(&bytes);
                if !done {
                    // Stopping early is only allowed while a `$<len>` line is incomplete.
                    assert!(
                        self.buf.is_empty() || self.buf[0] == b'$',
                        "advance stopped with bytes it could use"
                    );
                    return Ok(());
                }
                assert!(
                    !bytes.is_empty(),
                    "a tail finished without consuming anything"
                );
                self.tail = None;
            }

            // The session's fast path (after login only) sees the same front first.
            let peeked = peek_whole(&self.buf).filter(|_| self.limits.authenticated);
            let counted = count_whole(&self.buf, usize::MAX);
            let before = self.buf.len();
            let decoded = decode(&mut self.buf, &self.limits);
            if let Some(p) = peeked {
                match &decoded {
                    Ok(Some(Decoded::Request(r))) => {
                        assert!(
                            r.tail.is_none() && !r.is_inline(),
                            "peeked a streamed or inline request"
                        );
                        assert_eq!(before - self.buf.len(), p.len, "peeked length differs");
                        assert_eq!(r.argc(), p.argc, "peeked argc differs");
                        assert!(counted >= 1, "count_whole missed a peeked request");
                    }
                    other => panic!("peek_whole took {p:?}; decode: {other:?}"),
                }
            } else if self.limits.authenticated {
                assert_eq!(counted, 0, "count_whole counted what peek_whole refused");
            }
            let decoded = decoded?;
            let used = before - self.buf.len();
            let Some(decoded) = decoded else {
                assert_eq!(used, 0, "Ok(None) consumed bytes");
                return Ok(());
            };
            assert!(used >= 1, "Ok(Some(..)) consumed nothing");
            let src = self.take(used);
            match decoded {
                Decoded::Skip => self.events.push(Event::Skip),
                Decoded::Request(request) => {
                    check_request(&request, src, &self.limits);
                    self.forwarded.extend_from_slice(request.raw());
                    self.events.push(Event::Request {
                        argc: request.argc(),
                        inline: request.is_inline(),
                        streamed: request.tail.is_some(),
                        args: captured(&request),
                        raw: request.raw().to_vec(),
                    });
                    self.tail = request.tail;
                }
            }
        }
    }
}

fn captured(request: &Request) -> Vec<Vec<u8>> {
    (0..request.argc().min(MAX_CAPTURED))
        .map_while(|i| request.arg(i).map(<[u8]>::to_vec))
        .collect()
}

/// Checks one decoded request against the bytes it consumed (`src`).
fn check_request(request: &Request, src: &[u8], limits: &RequestLimits) {
    let argc = request.argc();
    assert!(argc >= 1, "a request with no arguments");
    assert!(argc <= limits.max_args, "argument count over the limit");
    let args = captured(request);
    if limits.stream_after.is_none() {
        assert!(
            request.tail.is_none(),
            "streamed although the limits never stream"
        );
        assert!(args.iter().all(|a| a.len() <= limits.max_bulk));
    }
    if request.is_inline() {
        // Re-encoded as multibulk from one line.
        assert!(src.ends_with(b"\n"), "inline request not ended by LF");
        assert!(request.raw().starts_with(b"*"));
        assert!(request.tail.is_none(), "inline requests are never streamed");
    } else {
        assert!(
            request.raw()[..] == *src,
            "multibulk raw is not the bytes consumed"
        );
    }
    if request.tail.is_some() {
        assert!(!request.is_whole());
        return;
    }
    assert_eq!(
        args.len(),
        argc.min(MAX_CAPTURED),
        "a whole request lacks arguments"
    );
    assert_eq!(request.is_whole(), argc <= MAX_CAPTURED);

    // The backend parses what we forward; it must be the request we checked.
    let mut again = BytesMut::from(&request.raw()[..]);
    match decode(&mut again, limits) {
        Ok(Some(Decoded::Request(r))) => {
            assert!(again.is_empty(), "re-decode left bytes over");
            assert!(!r.is_inline());
            assert!(r.tail.is_none(), "re-decode streamed a whole request");
            assert_eq!(r.argc(), argc);
            assert_eq!(captured(&r), args, "re-decode gives other arguments");
            assert!(r.raw() == request.raw());
        }
        other => panic!("forwarded bytes do not decode again: {other:?}"),
    }
}
