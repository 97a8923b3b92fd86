//! Reply scanner: finds where each backend reply ends without buffering it.
//!
//! The proxy never needs a reply's contents, only its boundary (so that a reply
//! the proxy writes itself lands exactly where Redis would have put it) and a
//! few leading bytes (to tell a pub/sub push from a reply). The scanner is a
//! byte-level state machine: bulk payloads are skipped by length, so a 100 MB
//! value costs no memory, and it can stop and resume at any byte.
//!
//! It reads RESP2 and RESP3 (<https://redis.io/docs/latest/develop/reference/protocol-spec/>).
//! Streamed strings and aggregates (`$?`, `*?`) are refused: Redis never sends them.

use thiserror::Error;

/// Deepest nesting accepted; Redis's own replies nest a handful of levels
/// (COMMAND DOCS is the deepest), and the stack is the scanner's only memory.
pub const MAX_DEPTH: usize = 64;

/// Longest header line (`$123\r\n`, `*5\r\n`): an i64 with sign.
const MAX_NUMBER_DIGITS: u8 = 19;

/// How many bytes of a leading element the scanner keeps for classification.
pub const CAPTURE_LEN: usize = 32;

/// How many direct children of a top-level aggregate are captured.
pub const CAPTURED_CHILDREN: usize = 3;

/// The backend sent something that is not RESP.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    /// A byte that cannot start a RESP value.
    #[error("invalid reply type byte 0x{0:02x}")]
    BadType(u8),
    /// A length or count that is not a decimal integer.
    #[error("invalid length in reply header")]
    BadLength,
    /// A bulk payload not followed by CRLF, or a bare CR.
    #[error("missing CRLF in reply")]
    MissingCrlf,
    /// Aggregates nested deeper than [`MAX_DEPTH`].
    #[error("reply nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// RESP3 streamed types, which Redis does not send.
    #[error("streamed reply types are not supported")]
    Streamed,
}

/// The first bytes of a value, kept for classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// RESP type byte (`+`, `$`, `:` …); 0 when nothing was captured.
    pub ty: u8,
    len: u8,
    data: [u8; CAPTURE_LEN],
    /// The value was longer than [`CAPTURE_LEN`].
    pub truncated: bool,
}

impl Capture {
    const EMPTY: Capture = Capture {
        ty: 0,
        len: 0,
        data: [0; CAPTURE_LEN],
        truncated: false,
    };

    /// The captured bytes (possibly truncated).
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    /// The captured value if it is a complete string equal to `s`, ignoring ASCII case.
    pub fn is_str(&self, s: &str) -> bool {
        matches!(self.ty, b'+' | b'$')
            && !self.truncated
            && self.bytes().eq_ignore_ascii_case(s.as_bytes())
    }

    /// The captured value as an integer, when it is one.
    pub fn integer(&self) -> Option<i64> {
        if self.ty != b':' || self.truncated {
            return None;
        }
        std::str::from_utf8(self.bytes()).ok()?.parse().ok()
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = CAPTURE_LEN - self.len as usize;
        let take = room.min(bytes.len());
        self.data[self.len as usize..self.len as usize + take].copy_from_slice(&bytes[..take]);
        self.len += take as u8;
        if take < bytes.len() {
            self.truncated = true;
        }
    }
}

/// What the scanner learned about one top-level reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Type byte of the top-level value (after any RESP3 attribute).
    pub ty: u8,
    /// Element count of a top-level aggregate (-1 for a null aggregate).
    pub count: i64,
    /// The top-level value itself when it is a scalar (e.g. `+OK`, `-ERR ...`).
    pub scalar: Capture,
    /// The first direct children of a top-level aggregate.
    pub children: [Capture; CAPTURED_CHILDREN],
}

impl FrameInfo {
    const EMPTY: FrameInfo = FrameInfo {
        ty: 0,
        count: 0,
        scalar: Capture::EMPTY,
        children: [Capture::EMPTY; CAPTURED_CHILDREN],
    };

    /// An error reply (simple or blob error).
    pub fn is_error(&self) -> bool {
        matches!(self.ty, b'-' | b'!')
    }

    /// A RESP3 out-of-band push.
    pub fn is_push(&self) -> bool {
        self.ty == b'>'
    }

    /// An array or push whose first element is the string `name` (pub/sub shape).
    pub fn is_pubsub(&self, name: &str) -> bool {
        matches!(self.ty, b'*' | b'>') && self.count >= 1 && self.children[0].is_str(name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a type byte.
    Type,
    /// Reading the decimal number of a length-prefixed header.
    Number {
        ty: u8,
        neg: bool,
        digits: u8,
        value: i64,
    },
    /// Expecting LF after a header's CR.
    NumberLf { ty: u8, value: i64 },
    /// Inside a simple line (`+`, `-`, `:`, `,`, `#`, `(`, `_`), up to CR.
    Line,
    /// Expecting LF after a simple line's CR.
    LineLf,
    /// Inside a bulk payload.
    Bulk { left: u64 },
    /// Expecting the CR after a bulk payload.
    BulkCr,
    /// Expecting the LF after a bulk payload.
    BulkLf,
}

/// Where a reply ended, or that more bytes are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Every byte given was consumed; the current reply continues.
    Partial,
    /// A top-level reply ends after this many bytes of the input.
    Complete {
        /// Bytes of the input that finish the reply.
        len: usize,
        /// What was learned about it.
        info: FrameInfo,
    },
}

/// Incremental RESP2/RESP3 reply boundary scanner (see the module docs).
#[derive(Clone, Debug)]
pub struct ReplyScanner {
    state: State,
    /// Children still expected by each open aggregate, innermost last.
    stack: [u64; MAX_DEPTH],
    depth: usize,
    /// Index of the next direct child of the top-level aggregate.
    child: u64,
    /// What is known about the current top-level reply.
    info: FrameInfo,
    /// Which open aggregates are RESP3 attributes. An attribute describes the
    /// value after it and does not count as one of its parent's children.
    is_attr: [bool; MAX_DEPTH],
    /// Open attributes; nothing inside one is captured.
    attrs_open: usize,
    /// True while inside a top-level reply.
    in_frame: bool,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyScanner {
    /// A scanner positioned before the first reply.
    pub fn new() -> Self {
        ReplyScanner {
            state: State::Type,
            stack: [0; MAX_DEPTH],
            depth: 0,
            child: 0,
            info: FrameInfo::EMPTY,
            is_attr: [false; MAX_DEPTH],
            attrs_open: 0,
            in_frame: false,
        }
    }

    /// What is known so far about the reply in progress.
    pub fn partial_info(&self) -> &FrameInfo {
        &self.info
    }

    /// True when the scanner is inside a reply (some of its bytes were consumed).
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Which capture slot the current value feeds, if any.
    fn capture_slot(&mut self) -> Option<&mut Capture> {
        if self.attrs_open > 0 {
            return None;
        }
        match self.depth {
            0 => Some(&mut self.info.scalar),
            1 if (self.child as usize) < CAPTURED_CHILDREN => {
                Some(&mut self.info.children[self.child as usize])
            }
            _ => None,
        }
    }

    /// Consumes bytes from `input` up to the end of the current top-level reply.
    ///
    /// Returns [`Scan::Complete`] with the number of bytes that finish the reply
    /// (the caller scans the rest of the input again), or [`Scan::Partial`] when
    /// all of `input` belongs to an unfinished reply.
    pub fn scan(&mut self, input: &[u8]) -> Result<Scan, ReplyError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Type => {
                    i += 1;
                    self.begin_value(b)?;
                }
                State::Number {
                    ty,
                    neg,
                    digits,
                    value,
                } => {
                    i += 1;
                    match b {
                        b'0'..=b'9' if digits < MAX_NUMBER_DIGITS => {
                            let value = value
                                .checked_mul(10)
                                .and_then(|v| v.checked_add(i64::from(b - b'0')))
                                .ok_or(ReplyError::BadLength)?;
                            self.state = State::Number {
                                ty,
                                neg,
                                digits: digits + 1,
                                value,
                            };
                        }
                        b'-' if digits == 0 && !neg => {
                            self.state = State::Number {
                                ty,
                                neg: true,
                                digits,
                                value,
                            }
                        }
                        b'?' if digits == 0 && !neg => return Err(ReplyError::Streamed),
                        b'\r' if digits > 0 => {
                            self.state = State::NumberLf {
                                ty,
                                value: if neg { -value } else { value },
                            };
                        }
                        _ => return Err(ReplyError::BadLength),
                    }
                }
                State::NumberLf { ty, value } => {
                    i += 1;
                    if b != b'\n' {
                        return Err(ReplyError::MissingCrlf);
                    }
                    if let Some(len) = self.header_done(ty, value)? {
                        return Ok(Scan::Complete { len: i, info: len });
                    }
                }
                State::Line => {
                    // Skip to the CR in one pass; capture what belongs to a slot.
                    let rest = &input[i..];
                    let end = rest.iter().position(|&c| c == b'\r').unwrap_or(rest.len());
                    if let Some(slot) = self.capture_slot() {
                        slot.push(&rest[..end]);
                    }
                    i += end;
                    if end < rest.len() {
                        i += 1;
                        self.state = State::LineLf;
                    }
                }
                State::LineLf => {
                    i += 1;
                    if b != b'\n' {
                        return Err(ReplyError::MissingCrlf);
                    }
                    if let Some(info) = self.value_done()? {
                        return Ok(Scan::Complete { len: i, info });
                    }
                }
                State::Bulk { left } => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    if let Some(slot) = self.capture_slot() {
                        slot.push(&input[i..i + take]);
                    }
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::BulkCr
                    } else {
                        State::Bulk { left }
                    };
                }
                State::BulkCr => {
                    i += 1;
                    if b != b'\r' {
                        return Err(ReplyError::MissingCrlf);
                    }
                    self.state = State::BulkLf;
                }
                State::BulkLf => {
                    i += 1;
                    if b != b'\n' {
                        return Err(ReplyError::MissingCrlf);
                    }
                    if let Some(info) = self.value_done()? {
                        return Ok(Scan::Complete { len: i, info });
                    }
                }
            }
        }
        Ok(Scan::Partial)
    }

    fn begin_value(&mut self, ty: u8) -> Result<(), ReplyError> {
        if !self.in_frame {
            self.in_frame = true;
            self.info = FrameInfo::EMPTY;
        }
        if self.depth == 0 && self.attrs_open == 0 {
            self.info.ty = ty;
        }
        if let Some(slot) = self.capture_slot() {
            *slot = Capture {
                ty,
                ..Capture::EMPTY
            };
        }
        self.state = match ty {
            b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => State::Line,
            b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|' => State::Number {
                ty,
                neg: false,
                digits: 0,
                value: 0,
            },
            other => return Err(ReplyError::BadType(other)),
        };
        Ok(())
    }

    /// A header line is complete: open a bulk or an aggregate, or finish a null.
    fn header_done(&mut self, ty: u8, value: i64) -> Result<Option<FrameInfo>, ReplyError> {
        if value < -1 {
            return Err(ReplyError::BadLength);
        }
        match ty {
            b'$' | b'!' | b'=' => {
                if value == -1 {
                    // RESP2 null bulk string.
                    return self.value_done();
                }
                self.state = if value == 0 {
                    State::BulkCr
                } else {
                    State::Bulk { left: value as u64 }
                };
                Ok(None)
            }
            _ => {
                if self.depth == 0 && self.attrs_open == 0 && ty != b'|' {
                    self.info.count = value;
                }
                let children = match (ty, value) {
                    (_, -1) => 0,
                    (b'%' | b'|', n) => (n as u64).checked_mul(2).ok_or(ReplyError::BadLength)?,
                    (_, n) => n as u64,
                };
                if ty == b'|' && children == 0 {
                    // An empty attribute describes nothing; the reply follows.
                    self.state = State::Type;
                    return Ok(None);
                }
                if children == 0 {
                    return self.value_done();
                }
                if self.depth == MAX_DEPTH {
                    return Err(ReplyError::TooDeep);
                }
                let attr = ty == b'|';
                if self.depth == 0 && self.attrs_open == 0 && !attr {
                    self.child = 0;
                }
                self.stack[self.depth] = children;
                self.is_attr[self.depth] = attr;
                self.attrs_open += usize::from(attr);
                self.depth += 1;
                self.state = State::Type;
                Ok(None)
            }
        }
    }

    /// A value is complete: count it against its parent, closing finished aggregates.
    fn value_done(&mut self) -> Result<Option<FrameInfo>, ReplyError> {
        self.state = State::Type;
        loop {
            if self.depth == 0 {
                self.in_frame = false;
                return Ok(Some(self.info));
            }
            if self.depth == 1 && self.attrs_open == 0 {
                self.child += 1;
            }
            let top = &mut self.stack[self.depth - 1];
            *top -= 1;
            if *top > 0 {
                return Ok(None);
            }
            self.depth -= 1;
            if self.is_attr[self.depth] {
                // An attribute is done: the value it describes is still to come,
                // and the attribute itself is not a value of its parent.
                self.is_attr[self.depth] = false;
                self.attrs_open -= 1;
                return Ok(None);
            }
        }
    }
}

/// The length of a whole scalar reply at the front of `buf` (a simple string,
/// error, integer, null, boolean, double, big number or bulk string), when it
/// is at most `max` bytes and [`ReplyScanner::scan`] would take it as one
/// frame of that length; `None` leaves the decision to the scanner
/// (aggregates, pushes, attributes, anything incomplete, odd or longer).
///
/// Scalars are most replies, and the session passes them on without
/// scanning byte by byte; it calls this only between frames.
pub fn peek_scalar(buf: &[u8], max: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(max)];
    match window.first()? {
        b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
            let cr = window.iter().position(|&c| c == b'\r')?;
            (window.get(cr + 1) == Some(&b'\n')).then_some(cr + 2)
        }
        b'$' => {
            if window.starts_with(b"$-1\r\n") {
                return Some(5);
            }
            let (len, start) = super::request::length_line(window, 1)?;
            let end = start.checked_add(len)?;
            (window.get(end..end.checked_add(2)?)? == b"\r\n").then_some(end + 2)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What peek_scalar says of the front of `buf` must be what the scanner finds.
    fn peek_agrees(buf: &[u8]) {
        let Some(len) = peek_scalar(buf, 2048) else {
            return;
        };
        match ReplyScanner::new().scan(buf) {
            Ok(Scan::Complete { len: scanned, info }) => {
                assert_eq!(len, scanned, "{buf:?}");
                assert!(!info.is_push() && info.count == 0, "{buf:?}");
            }
            other => panic!("peeked {len} but the scanner gave {other:?} for {buf:?}"),
        }
    }

    #[test]
    fn peek_scalar_agrees_with_the_scanner() {
        let replies: &[u8] = b"+OK\r\n-ERR no\r\n:12\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n_\r\n#t\r\n,1.5\r\n\
            (12345678901234567890\r\n*2\r\n$1\r\na\r\n:1\r\n>2\r\n+x\r\n+y\r\n|1\r\n+a\r\n+b\r\n+z\r\n\
            $03\r\nabc\r\n$-2\r\n+a\rb\r\n$4\r\nabc\r\n\r\n";
        for start in 0..replies.len() {
            for end in start..=replies.len() {
                peek_agrees(&replies[start..end]);
            }
        }
        assert_eq!(peek_scalar(b"+OK\r\n", 2048), Some(5));
        assert_eq!(peek_scalar(b"$3\r\nabc\r\n+OK", 2048), Some(9));
        assert_eq!(peek_scalar(b"$3\r\nabc\r\n", 8), None, "over max");
        assert_eq!(peek_scalar(b"*1\r\n+OK\r\n", 2048), None, "aggregate");
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"+-:$_#,(*>|\r\n0123456789ab";
        for _ in 0..20_000 {
            let mut m = replies[..48].to_vec();
            for _ in 0..=next() % 3 {
                let at = (next() % m.len() as u64) as usize;
                m[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            for start in 0..m.len() {
                peek_agrees(&m[start..]);
            }
        }
    }

    /// Scans `input` whole, returning each frame's end offset and info.
    fn frames_whole(input: &[u8]) -> Result<Vec<(usize, FrameInfo)>, ReplyError> {
        let mut s = ReplyScanner::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            match s.scan(&input[pos..])? {
                Scan::Partial => break,
                Scan::Complete { len, info } => {
                    pos += len;
                    out.push((pos, info));
                }
            }
        }
        Ok(out)
    }

    /// The same, one byte at a time.
    fn frames_bytewise(input: &[u8]) -> Result<Vec<(usize, FrameInfo)>, ReplyError> {
        let mut s = ReplyScanner::new();
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if let Scan::Complete { len, info } = s.scan(std::slice::from_ref(b))? {
                assert_eq!(len, 1);
                out.push((i + 1, info));
            }
        }
        Ok(out)
    }

    fn both(input: &[u8]) -> Vec<(usize, FrameInfo)> {
        let whole = frames_whole(input).expect("whole");
        let bytewise = frames_bytewise(input).expect("bytewise");
        assert_eq!(whole, bytewise, "whole and byte-by-byte disagree");
        whole
    }

    #[test]
    fn resp2_frames() {
        let input = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n$0\r\n\r\n";
        let f = both(input);
        let ends: Vec<usize> = f.iter().map(|(e, _)| *e).collect();
        assert_eq!(ends, vec![5, 14, 19, 30, 35, 40, 44, 63, 69]);
        assert!(f[0].1.scalar.is_str("ok"));
        assert!(f[1].1.is_error());
        assert_eq!(f[2].1.scalar.integer(), Some(42));
        assert_eq!(f[7].1.count, 2);
        assert!(f[7].1.children[0].is_str("a"));
    }

    #[test]
    fn resp3_frames() {
        let input = b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n_\r\n~1\r\n#t\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nhey\r\n,1.5\r\n(123\r\n=7\r\ntxt:abc\r\n!3\r\nbad\r\n_\r\n";
        let f = both(input);
        assert_eq!(f.len(), 8);
        assert!(f[2].1.is_push());
        assert!(f[2].1.is_pubsub("message"));
        assert!(f[6].1.is_error());
    }

    #[test]
    fn attribute_is_part_of_the_reply() {
        let input = b"|1\r\n+key\r\n+val\r\n*1\r\n$3\r\nabc\r\n+OK\r\n";
        let f = both(input);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1.ty, b'*');
        assert!(f[0].1.children[0].is_str("abc"));
    }

    /// Found by the `redis_reply` fuzz target: an attribute inside an attribute.
    #[test]
    fn nested_attributes_are_not_values() {
        let input = b"|1\r\n+\r\n|1\r\n+\r\n+\r\n:1\r\n+_\r\n";
        // The outer attribute's value (`:1`) carries its own attribute; the reply is `+_`.
        let f = both(input);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, input.len());
        assert_eq!((f[0].1.ty, f[0].1.scalar.bytes()), (b'+', &b"_"[..]));
        let inner = b"*2\r\n|1\r\n+k\r\n|0\r\n+v\r\n:1\r\n:2\r\n";
        let f = both(inner);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1.children[0].integer(), Some(1));
        assert_eq!(f[0].1.children[1].integer(), Some(2));
    }

    #[test]
    fn subscribe_confirmation_captures_count() {
        let input = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:3\r\n";
        let f = both(input);
        assert!(f[0].1.is_pubsub("subscribe"));
        assert_eq!(f[0].1.children[2].integer(), Some(3));
    }

    #[test]
    fn large_bulk_costs_nothing() {
        let mut s = ReplyScanner::new();
        assert_eq!(s.scan(b"$104857600\r\n").unwrap(), Scan::Partial);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            assert_eq!(s.scan(&chunk).unwrap(), Scan::Partial);
        }
        assert!(matches!(
            s.scan(b"\r\n").unwrap(),
            Scan::Complete { len: 2, .. }
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$-5\r\n",
            b"*99999999999999999999\r\n",
            b"$3\r\nabcde",
            b"+ok\rx",
            b"$?\r\n",
        ] {
            assert!(frames_whole(bad).is_err(), "{bad:?}");
            assert!(frames_bytewise(bad).is_err(), "{bad:?}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(frames_whole(&deep), Err(ReplyError::TooDeep));
    }

    #[test]
    fn agrees_with_redis_protocol_decoder() {
        use redis_protocol::resp3::decode::complete::decode;
        let input: &[u8] = b"*3\r\n$3\r\nfoo\r\n%1\r\n+a\r\n*2\r\n:1\r\n:2\r\n_\r\n$3\r\nbar\r\n>2\r\n+x\r\n#f\r\n";
        let mut pos = 0;
        for (end, _) in both(input) {
            let (_, used) = decode(&input[pos..]).expect("decode").expect("complete");
            assert_eq!(pos + used, end);
            pos = end;
        }
    }
}
