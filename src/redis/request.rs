//! Request decoder: RESP multibulk and inline commands, parsed in place.
//!
//! A request is returned whole when it is small (the common case: the proxy
//! sees every argument, so AUTH and HELLO can be handled here). A request that
//! is still incomplete past [`RequestLimits::stream_after`] bytes is returned
//! as a head (its first arguments) plus a [`Tail`] that the session streams to
//! the backend or drops, so a 100 MB `SET` costs bounded memory.
//!
//! The rules follow Redis's `processMultibulkBuffer` and `processInlineBuffer`
//! (networking.c), including the tighter limits for unauthenticated clients.
//! Inline commands are split like `sdssplitargs` and re-encoded as multibulk
//! before forwarding, so the backend parses exactly what the proxy checked.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Arguments whose position the decoder records (AUTH and HELLO need the most:
/// `HELLO 3 AUTH user pass SETNAME name` is 7).
pub const MAX_CAPTURED: usize = 8;

/// Longest `*<count>` or `$<len>` line: an i64 in decimal. Redis allows 64 KiB
/// of digits, but no valid count needs more than 20 characters.
const MAX_COUNT_LINE: usize = 32;

/// Redis's PROTO_INLINE_MAX_SIZE: an inline request line may be at most 64 KiB.
pub const MAX_INLINE: usize = 64 * 1024;

/// The client sent something Redis would refuse with a protocol error.
///
/// `Display` is the text after `-ERR ` in the reply, as Redis words it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Argument count out of range.
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    /// More arguments than an unauthenticated client may send.
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk length out of range.
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    /// A bulk longer than an unauthenticated client may send.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// A count line with no CRLF in sight.
    #[error("Protocol error: too big mbulk count string")]
    CountLineTooLong,
    /// A bulk length line with no CRLF in sight.
    #[error("Protocol error: too big bulk count string")]
    BulkLineTooLong,
    /// Something other than `$` where an argument should start.
    #[error("Protocol error: expected '$', got '{}'", printable(*.0))]
    ExpectedDollar(u8),
    /// A bulk payload not followed by CRLF.
    #[error("Protocol error: expected CRLF after bulk argument")]
    MissingCrlf,
    /// An inline line longer than [`MAX_INLINE`].
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// Inline quoting that does not close.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// A client byte as text for an error reply or a log: printable ASCII as
/// itself, anything else as `\xHH` (never a raw control character).
fn printable(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// Where an argument lies in a request's bytes. 32 bits: a request the
/// decoder holds whole is at most a few hundred KiB (larger ones stream), and
/// a smaller `Request` is cheaper to move on the per-command path.
type Span = (u32, u32);

fn span(start: usize, end: usize) -> Span {
    let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    (at(start), at(end))
}

/// Limits for one connection phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest single argument.
    pub max_bulk: usize,
    /// Stream a request that is still incomplete past this many bytes;
    /// `None` keeps waiting (the caller caps its buffer instead).
    pub stream_after: Option<usize>,
    /// Whether the client has authenticated (selects Redis's error wording).
    pub authenticated: bool,
}

impl RequestLimits {
    /// Redis 7 before authentication: 10 arguments of at most 16 KiB
    /// (networking.c, `!authRequired(c)` checks).
    pub const UNAUTHENTICATED: RequestLimits = RequestLimits {
        max_args: 10,
        max_bulk: 16 * 1024,
        stream_after: None,
        authenticated: false,
    };

    /// After authentication: Redis's defaults (`proto-max-bulk-len` 512 MB,
    /// counts up to 2^31), streaming anything incomplete past 64 KiB.
    pub const AUTHENTICATED: RequestLimits = RequestLimits {
        max_args: i32::MAX as usize,
        max_bulk: 512 * 1024 * 1024,
        stream_after: Some(64 * 1024),
        authenticated: true,
    };
}

/// One decoded request (or its head, when it is streamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    raw: Bytes,
    argc: usize,
    /// Where the command name lies in `raw` (the argument asked for most).
    name: Span,
    /// Arguments held whole in `raw`, at most [`MAX_CAPTURED`]; the others are
    /// found by walking `raw` when asked for (kept small, as it moves per command).
    captured: usize,
    inline: bool,
    /// The rest of a request too large to buffer; `None` when `raw` is whole.
    pub tail: Option<Tail>,
}

impl Request {
    /// The bytes to forward (re-encoded for inline commands).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Takes the bytes to forward.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Number of arguments, the command name included.
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// Argument `i`, if the decoder holds all of it.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        if i >= self.captured {
            return None;
        }
        if i == 0 {
            return self.raw.get(self.name.0 as usize..self.name.1 as usize);
        }
        // `raw` is multibulk the decoder checked (inline requests are re-encoded).
        let raw = &self.raw[..];
        let mut pos = self.name.1 as usize + 2;
        for k in 1..=i {
            let (len, start) = length_line(raw, pos + 1)?;
            let end = start.checked_add(len)?;
            if k == i {
                return raw.get(start..end);
            }
            pos = end + 2;
        }
        None
    }

    /// True when every argument is held (no tail and within [`MAX_CAPTURED`]).
    pub fn is_whole(&self) -> bool {
        self.tail.is_none() && self.captured == self.argc
    }

    /// The command came in inline form.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Builds a multibulk request from arguments (used for commands the proxy itself sends).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut out = BytesMut::new();
        let mut pos = [(0, 0); MAX_CAPTURED];
        write_multibulk(
            &mut out,
            args.iter().map(AsRef::as_ref),
            args.len(),
            &mut pos,
        );
        Request {
            raw: out.freeze(),
            argc: args.len(),
            name: pos[0],
            captured: args.len().min(MAX_CAPTURED),
            inline: false,
            tail: None,
        }
    }
}

/// What one call to [`decode`] found.
// `Request` is large next to `Skip`, but boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Bytes Redis ignores without replying (an empty line, `*0`, `*-1`).
    Skip,
    /// A request, whole or as a head.
    Request(Request),
}

/// Decodes the next request from `buf`, consuming its bytes.
///
/// `Ok(None)` means more bytes are needed and nothing was consumed.
pub fn decode(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Decoded>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => decode_multibulk(buf, limits),
        Some(_) => decode_inline(buf, limits),
    }
}

/// A whole multibulk request at the front of a buffer, seen in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peeked {
    /// Its bytes.
    pub len: usize,
    /// Its arguments, the name included.
    pub argc: usize,
    /// Where the command name lies.
    pub name: (usize, usize),
    /// Where the second argument (a subcommand) lies, if there is one.
    pub sub: Option<(usize, usize)>,
}

/// The request at the front of `buf`, when it is whole and in multibulk form
/// that [`decode`] would return as it is. `None` leaves the decision to
/// decode: an inline request, `*0`, anything malformed or incomplete.
///
/// The session forwards such a request straight from its read buffer, with
/// no copy of its own and no [`Request`] built.
pub fn peek_whole(buf: &[u8]) -> Option<Peeked> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (argc, mut at) = length_line(buf, 1)?;
    if argc == 0 {
        return None;
    }
    let mut name = (0, 0);
    let mut sub = None;
    for k in 0..argc {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len, start) = length_line(buf, at + 1)?;
        let end = start.checked_add(len)?;
        if buf.get(end..)?.get(..2)? != b"\r\n" {
            return None;
        }
        match k {
            0 => name = (start, end),
            1 => sub = Some((start, end)),
            _ => {}
        }
        at = end + 2;
    }
    Some(Peeked {
        len: at,
        argc,
        name,
        sub,
    })
}

/// How many whole multibulk requests `buf` starts with (as [`peek_whole`]
/// sees them), counting at most `max` and stopping after an AUTH or HELLO
/// (what follows may be charged to another user). The session charges its
/// command rates for that many at once instead of one by one; for
/// well-formed input it never counts a request decode would not return.
pub fn count_whole(buf: &[u8], max: usize) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while n < max {
        let Some(p) = peek_whole(&buf[pos..]) else {
            break;
        };
        n += 1;
        let name = &buf[pos + p.name.0..pos + p.name.1];
        if is_login_name(name) {
            break;
        }
        pos += p.len;
    }
    n
}

/// AUTH or HELLO (any case): a command that may switch the user, so what
/// follows it is not charged with it.
pub fn is_login_name(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"auth") || name.eq_ignore_ascii_case(b"hello")
}

/// A non-negative length at `buf[from..]` ended by CRLF, as [`parse_int`]
/// accepts it (at most 19 digits, no leading zero): the length and the
/// position after the CRLF.
pub(super) fn length_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let line = buf.get(from..)?;
    // Counts and lengths under 100 first: most of what clients send.
    let digit = |d: u8| usize::from(d - b'0');
    match *line {
        [d, b'\r', b'\n', ..] if d.is_ascii_digit() => return Some((digit(d), from + 3)),
        [d1 @ b'1'..=b'9', d2, b'\r', b'\n', ..] if d2.is_ascii_digit() => {
            return Some((digit(d1) * 10 + digit(d2), from + 4));
        }
        _ => {}
    }
    let mut v: u64 = 0;
    let mut digits = 0;
    // Twenty digits at most are looked at: nineteen cannot overflow, a twentieth is refused.
    for &b in line.iter().take(20) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        digits += 1;
    }
    if digits == 0 || digits > 19 || (digits > 1 && line[0] == b'0') {
        return None;
    }
    if line.get(digits..)?.get(..2)? != b"\r\n" {
        return None;
    }
    Some((usize::try_from(v).ok()?, from + digits + 2))
}

/// Finds CRLF in `buf[from..]` within `max` bytes; `Err(())` when it is not there and cannot be.
fn find_line(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, ()> {
    let window = &buf[from..buf.len().min(from + max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(p) => Ok(Some(from + p)),
        None if window.len() >= max + 2 => Err(()),
        None => Ok(None),
    }
}

/// Parses a signed decimal as Redis's `string2ll` does (no sign for zero, no spaces, no leading zeros).
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

fn decode_multibulk(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Decoded>, ProtocolError> {
    let Some(eol) =
        find_line(buf, 1, MAX_COUNT_LINE).map_err(|()| ProtocolError::CountLineTooLong)?
    else {
        return Ok(None);
    };
    let count = parse_int(&buf[1..eol]).ok_or(ProtocolError::MultibulkLength)?;
    if count <= 0 {
        // Redis reads `*0` and `*-1` and replies nothing.
        let _ = buf.split_to(eol + 2);
        return Ok(Some(Decoded::Skip));
    }
    let argc = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
    if argc > limits.max_args {
        return Err(if limits.authenticated {
            ProtocolError::MultibulkLength
        } else {
            ProtocolError::UnauthenticatedMultibulkLength
        });
    }
    let mut args = [(0, 0); MAX_CAPTURED];
    let mut captured = 0;
    let mut pos = eol + 2;
    let over = |pos: usize, len: usize| match limits.stream_after {
        Some(t) => pos >= t || len > t,
        None => false,
    };
    for k in 0..argc {
        let Some(&first) = buf.get(pos) else {
            return Ok(over(pos, 0)
                .then(|| stream(buf, pos, argc, args, captured, TailState::Header, argc - k)));
        };
        if first != b'$' {
            return Err(ProtocolError::ExpectedDollar(first));
        }
        let Some(eol) =
            find_line(buf, pos + 1, MAX_COUNT_LINE).map_err(|()| ProtocolError::BulkLineTooLong)?
        else {
            return Ok(over(pos, 0)
                .then(|| stream(buf, pos, argc, args, captured, TailState::Header, argc - k)));
        };
        let len = parse_int(&buf[pos + 1..eol]).ok_or(ProtocolError::BulkLength)?;
        let len = checked_bulk_len(len, limits)?;
        let start = eol + 2;
        let end = start + len;
        if buf.len() < end + 2 {
            if !over(start, len) {
                return Ok(None);
            }
            let have = buf.len() - start;
            let state = if have <= len {
                TailState::Payload { left: len - have }
            } else {
                // The payload is here but its CR is the last buffered byte.
                check_crlf(&buf[end..])?;
                TailState::Lf
            };
            let upto = buf.len();
            return Ok(Some(stream(
                buf,
                upto,
                argc,
                args,
                captured,
                state,
                argc - k - 1,
            )));
        }
        check_crlf(&buf[end..end + 2])?;
        if k < MAX_CAPTURED {
            args[k] = span(start, end);
            captured = k + 1;
        }
        pos = end + 2;
    }
    let raw = buf.split_to(pos).freeze();
    Ok(Some(Decoded::Request(Request {
        raw,
        argc,
        name: args[0],
        captured,
        inline: false,
        tail: None,
    })))
}

fn checked_bulk_len(len: i64, limits: &RequestLimits) -> Result<usize, ProtocolError> {
    match usize::try_from(len) {
        Ok(len) if len <= limits.max_bulk => Ok(len),
        Ok(_) if !limits.authenticated => Err(ProtocolError::UnauthenticatedBulkLength),
        _ => Err(ProtocolError::BulkLength),
    }
}

fn check_crlf(b: &[u8]) -> Result<(), ProtocolError> {
    let expect = &b"\r\n"[..b.len().min(2)];
    if &b[..expect.len()] == expect {
        Ok(())
    } else {
        Err(ProtocolError::MissingCrlf)
    }
}

/// Returns the first `upto` buffered bytes as the head of a streamed request.
fn stream(
    buf: &mut BytesMut,
    upto: usize,
    argc: usize,
    args: [Span; MAX_CAPTURED],
    captured: usize,
    state: TailState,
    args_left: usize,
) -> Decoded {
    let raw = buf.split_to(upto).freeze();
    let tail = Tail { state, args_left };
    let tail = (!tail.is_done()).then_some(tail);
    Decoded::Request(Request {
        raw,
        argc,
        name: args[0],
        captured,
        inline: false,
        tail,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TailState {
    /// Expecting a `$<len>` line.
    Header,
    /// Inside an argument's payload.
    Payload { left: usize },
    /// Expecting the CR after a payload.
    Cr,
    /// Expecting the LF after a payload.
    Lf,
}

/// The part of a streamed request not yet read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    state: TailState,
    /// Arguments still to come after the current one.
    args_left: usize,
}

impl Tail {
    fn is_done(&self) -> bool {
        self.args_left == 0 && matches!(self.state, TailState::Header)
    }

    /// Consumes as much of this request as `buf` holds, without copying.
    ///
    /// Returns the bytes consumed and whether the request is now complete.
    pub fn advance(
        &mut self,
        buf: &mut BytesMut,
        limits: &RequestLimits,
    ) -> Result<(Bytes, bool), ProtocolError> {
        let mut pos = 0;
        while !self.is_done() && pos < buf.len() {
            match self.state {
                TailState::Header => {
                    if buf[pos] != b'$' {
                        return Err(ProtocolError::ExpectedDollar(buf[pos]));
                    }
                    let Some(eol) = find_line(buf, pos + 1, MAX_COUNT_LINE)
                        .map_err(|()| ProtocolError::BulkLineTooLong)?
                    else {
                        break;
                    };
                    let len = parse_int(&buf[pos + 1..eol]).ok_or(ProtocolError::BulkLength)?;
                    let len = checked_bulk_len(len, limits)?;
                    self.args_left -= 1;
                    self.state = TailState::Payload { left: len };
                    pos = eol + 2;
                }
                TailState::Payload { left } => {
                    let take = left.min(buf.len() - pos);
                    pos += take;
                    self.state = if take == left {
                        TailState::Cr
                    } else {
                        TailState::Payload { left: left - take }
                    };
                }
                TailState::Cr | TailState::Lf => {
                    let want = if self.state == TailState::Cr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if buf[pos] != want {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    pos += 1;
                    self.state = if want == b'\r' {
                        TailState::Lf
                    } else {
                        TailState::Header
                    };
                }
            }
        }
        Ok((buf.split_to(pos).freeze(), self.is_done()))
    }
}

fn decode_inline(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Decoded>, ProtocolError> {
    let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(nl + 1);
    let mut text = &line[..nl];
    if let Some(stripped) = text.strip_suffix(b"\r") {
        text = stripped;
    }
    let words = split_args(text)?;
    if words.is_empty() {
        return Ok(Some(Decoded::Skip));
    }
    if words.len() > limits.max_args {
        return Err(if limits.authenticated {
            ProtocolError::MultibulkLength
        } else {
            ProtocolError::UnauthenticatedMultibulkLength
        });
    }
    if !limits.authenticated && words.iter().any(|w| w.len() > limits.max_bulk) {
        return Err(ProtocolError::UnauthenticatedBulkLength);
    }
    let mut out = BytesMut::with_capacity(text.len() + 16 * words.len());
    let mut args = [(0, 0); MAX_CAPTURED];
    write_multibulk(
        &mut out,
        words.iter().map(Vec::as_slice),
        words.len(),
        &mut args,
    );
    let argc = words.len();
    Ok(Some(Decoded::Request(Request {
        raw: out.freeze(),
        argc,
        name: args[0],
        captured: argc.min(MAX_CAPTURED),
        inline: true,
        tail: None,
    })))
}

fn write_multibulk<'a>(
    out: &mut BytesMut,
    args: impl Iterator<Item = &'a [u8]>,
    argc: usize,
    pos: &mut [Span; MAX_CAPTURED],
) {
    let mut itoa = itoa::Buffer::new();
    out.put_u8(b'*');
    out.put_slice(itoa.format(argc).as_bytes());
    out.put_slice(b"\r\n");
    for (i, a) in args.enumerate() {
        out.put_u8(b'$');
        out.put_slice(itoa.format(a.len()).as_bytes());
        out.put_slice(b"\r\n");
        if i < MAX_CAPTURED {
            pos[i] = span(out.len(), out.len() + a.len());
        }
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Splits an inline line as Redis's `sdssplitargs` does: whitespace separates,
/// "double quotes" take `\n \r \t \b \a \\ \" \xHH` escapes, 'single quotes'
/// take only `\'`, and a closing quote must be followed by a space or the end.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut out = Vec::new();
    let mut i = 0;
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c);
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(out);
        }
        let mut cur = Vec::new();
        let mut inq = false;
        let mut insq = false;
        loop {
            let Some(&c) = line.get(i) else {
                if inq || insq {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if inq {
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                    if let (Some(h), Some(l)) = (hex(line.get(i + 2)), hex(line.get(i + 3))) {
                        cur.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    // The closing quote must be followed by a space or the end.
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if is_space(c) {
                break;
            } else if c == b'"' {
                inq = true;
            } else if c == b'\'' {
                insq = true;
            } else {
                cur.push(c);
            }
            i += 1;
        }
        out.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes everything in `input`, handing it over all at once.
    fn whole(input: &[u8], limits: &RequestLimits) -> Result<Vec<Decoded>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = decode(&mut buf, limits)? {
            out.push(d);
        }
        Ok(out)
    }

    /// Decodes `input` fed one byte at a time.
    fn bytewise(input: &[u8], limits: &RequestLimits) -> Result<Vec<Decoded>, ProtocolError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.put_u8(b);
            while let Some(d) = decode(&mut buf, limits)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn both(input: &[u8], limits: &RequestLimits) -> Result<Vec<Decoded>, ProtocolError> {
        let a = whole(input, limits);
        let b = bytewise(input, limits);
        assert_eq!(a, b, "whole and byte-by-byte disagree on {input:?}");
        a
    }

    fn args(d: &Decoded) -> Vec<Vec<u8>> {
        match d {
            Decoded::Request(r) => (0..r.argc())
                .map(|i| r.arg(i).expect("captured").to_vec())
                .collect(),
            Decoded::Skip => vec![],
        }
    }

    #[test]
    fn multibulk_and_inline() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\n*0\r\nset  \"a b\\x41\\n\" 'it\\'s'\n*1\r\n$0\r\n\r\n";
        let got = both(input, &RequestLimits::AUTHENTICATED).expect("valid");
        assert_eq!(got.len(), 6);
        assert_eq!(args(&got[0]), vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(args(&got[1]), vec![b"PING".to_vec()]);
        assert_eq!(got[2], Decoded::Skip);
        assert_eq!(got[3], Decoded::Skip);
        assert_eq!(
            args(&got[4]),
            vec![b"set".to_vec(), b"a bA\n".to_vec(), b"it's".to_vec()]
        );
        if let Decoded::Request(r) = &got[4] {
            assert_eq!(
                &r.raw()[..],
                b"*3\r\n$3\r\nset\r\n$5\r\na bA\n\r\n$4\r\nit's\r\n"
            );
            assert!(r.is_inline());
        }
        assert_eq!(args(&got[5]), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn count_whole_never_runs_ahead_of_decode() {
        let pipeline: &[u8] =
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n\
            *1\r\n$4\r\nPING\r\n*2\r\n$4\r\nauth\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n";
        // Whole: everything up to and including the AUTH (what follows may be another user's).
        assert_eq!(count_whole(pipeline, 64), 4);
        assert_eq!(count_whole(pipeline, 2), 2);
        assert_eq!(count_whole(&pipeline[pipeline.len() - 14..], 64), 1);
        // Every prefix, as a client's bytes arrive: never more than decode finds in it.
        for cut in 0..=pipeline.len() {
            let found = whole(&pipeline[..cut], &RequestLimits::AUTHENTICATED)
                .expect("valid")
                .len();
            let counted = count_whole(&pipeline[..cut], 64);
            assert!(
                counted <= found,
                "prefix {cut}: counted {counted}, decoded {found}"
            );
            assert_eq!(counted, found.min(4), "prefix {cut}");
        }
        // Forms it leaves to decode: inline, *0, bad lines, missing CRLF, huge lengths.
        for odd in [
            &b"PING\r\n*1\r\n$4\r\nPING\r\n"[..],
            b"*0\r\n*1\r\n$4\r\nPING\r\n",
            b"*-1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*1\n$4\r\nPING\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*1\r\n$18446744073709551615\r\n",
            b"*99999999999999999999\r\n",
            b"*\r\n",
            b"*1\r\n:4\r\n",
            b"*01\r\n$4\r\nPING\r\n",
            b"*1\r\n$04\r\nPING\r\n",
        ] {
            assert_eq!(count_whole(odd, 64), 0, "{odd:?}");
        }
    }

    #[test]
    fn length_lines_as_parse_int_reads_them() {
        type Case = (&'static [u8], Option<(usize, usize)>);
        let cases: &[Case] = &[
            (b"$0\r\n", Some((0, 4))),
            (b"$7\r\n", Some((7, 4))),
            (b"$42\r\n", Some((42, 5))),
            (b"$100\r\n", Some((100, 6))),
            (
                b"$9999999999999999999\r\n",
                Some((9_999_999_999_999_999_999, 22)),
            ),
            (b"$10000000000000000000\r\n", None),
            (b"$00\r\n", None),
            (b"$01\r\n", None),
            (b"$-1\r\n", None),
            (b"$\r\n", None),
            (b"$1 \r\n", None),
            (b"$1\r", None),
            (b"$1\rx", None),
            (b"$12", None),
            (b"$", None),
        ];
        for (line, want) in cases {
            assert_eq!(length_line(line, 1), *want, "{line:?}");
            let int = line
                .strip_prefix(b"$")
                .and_then(|l| l.strip_suffix(b"\r\n"))
                .and_then(parse_int)
                .filter(|v| *v >= 0);
            if want.is_none_or(|w| i64::try_from(w.0).is_ok()) {
                assert_eq!(want.map(|w| w.0 as i64), int, "{line:?}");
            }
        }
    }

    /// What peek_whole says of the front of `buf` must be what decode returns.
    fn peek_agrees(buf: &[u8]) {
        let mut owned = BytesMut::from(buf);
        let decoded = decode(&mut owned, &RequestLimits::AUTHENTICATED);
        let Some(p) = peek_whole(buf) else { return };
        let Ok(Some(Decoded::Request(r))) = decoded else {
            panic!("peeked {p:?} but decode gave {decoded:?} for {buf:?}");
        };
        assert!(r.tail.is_none() && !r.is_inline(), "{buf:?}");
        assert_eq!(&r.raw()[..], &buf[..p.len], "{buf:?}");
        assert_eq!(r.argc(), p.argc);
        assert_eq!(r.arg(0), Some(&buf[p.name.0..p.name.1]));
        assert_eq!(r.arg(1), p.sub.map(|(a, b)| &buf[a..b]));
    }

    #[test]
    fn peek_whole_agrees_with_decode() {
        let pipeline: &[u8] =
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$0\r\n\r\n\
            PING\r\n*0\r\n*1\r\n$04\r\nPING\r\n*01\r\n$4\r\nPING\r\n*1\r\n$4\r\nPINGxx";
        for start in 0..pipeline.len() {
            for end in start..=pipeline.len() {
                peek_agrees(&pipeline[start..end]);
            }
        }
        // Mutations of a valid pipeline: one to three bytes changed, deterministically.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"*$\r\n0123456789-+:aA ";
        for _ in 0..20_000 {
            let mut m = pipeline[..64].to_vec();
            for _ in 0..=next() % 3 {
                let at = (next() % m.len() as u64) as usize;
                m[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            peek_agrees(&m);
            // Never more than decode returns before anything it refuses.
            let mut buf = BytesMut::from(&m[..]);
            let mut decoded = 0;
            while let Ok(Some(d)) = decode(&mut buf, &RequestLimits::AUTHENTICATED) {
                decoded += usize::from(matches!(d, Decoded::Request(_)));
            }
            assert!(count_whole(&m, 64) <= decoded, "{m:?}");
        }
    }

    #[test]
    fn protocol_errors() {
        let a = RequestLimits::AUTHENTICATED;
        let u = RequestLimits::UNAUTHENTICATED;
        let cases: &[(&[u8], &RequestLimits, ProtocolError)] = &[
            (b"*x\r\n", &a, ProtocolError::MultibulkLength),
            (
                b"*11\r\n",
                &u,
                ProtocolError::UnauthenticatedMultibulkLength,
            ),
            (
                b"*1\r\n$16385\r\n",
                &u,
                ProtocolError::UnauthenticatedBulkLength,
            ),
            (b"*1\r\n$-1\r\n", &a, ProtocolError::BulkLength),
            (b"*1\r\n$536870913\r\n", &a, ProtocolError::BulkLength),
            (b"*1\r\n:1\r\n", &a, ProtocolError::ExpectedDollar(b':')),
            (b"*1\r\n$1\r\nab\r\n", &a, ProtocolError::MissingCrlf),
            (b"set \"a\"b\r\n", &a, ProtocolError::UnbalancedQuotes),
            (b"set 'a\r\n", &a, ProtocolError::UnbalancedQuotes),
            (
                b"a b c d e f g h i j k\r\n",
                &u,
                ProtocolError::UnauthenticatedMultibulkLength,
            ),
        ];
        for (input, limits, err) in cases {
            assert_eq!(both(input, limits), Err(err.clone()), "{input:?}");
        }
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(both(&long, &a), Err(ProtocolError::InlineTooLong));
        let mut count = b"*".to_vec();
        count.extend(std::iter::repeat_n(b'1', 40));
        assert_eq!(both(&count, &a), Err(ProtocolError::CountLineTooLong));
    }

    #[test]
    fn unauthenticated_waits_instead_of_streaming() {
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$16384\r\nxx"[..]);
        assert_eq!(decode(&mut buf, &RequestLimits::UNAUTHENTICATED), Ok(None));
        assert_eq!(buf.len(), 24, "nothing consumed");
    }

    /// A large SET is streamed: the head holds the name and key, the tail the value.
    #[test]
    fn large_request_streams() {
        let value = vec![b'v'; 200_000];
        let mut input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$200000\r\n".to_vec();
        input.extend_from_slice(&value);
        input.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
        let limits = RequestLimits::AUTHENTICATED;
        for chunk in [1usize, 7, 4096, 70_000, input.len()] {
            let mut buf = BytesMut::new();
            let mut forwarded = Vec::new();
            let mut heads = Vec::new();
            let mut tail: Option<Tail> = None;
            for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    if let Some(t) = tail.as_mut() {
                        let (bytes, done) = t.advance(&mut buf, &limits).expect("tail");
                        forwarded.extend_from_slice(&bytes);
                        if done {
                            tail = None;
                        } else {
                            break;
                        }
                    }
                    match decode(&mut buf, &limits).expect("decode") {
                        Some(Decoded::Request(r)) => {
                            heads.push((
                                r.arg(0).map(<[u8]>::to_vec),
                                r.arg(1).map(<[u8]>::to_vec),
                                r.argc(),
                            ));
                            tail = r.tail;
                            forwarded.extend_from_slice(r.raw());
                        }
                        Some(Decoded::Skip) => {}
                        None => break,
                    }
                }
            }
            assert_eq!(forwarded, input, "chunk {chunk}");
            assert_eq!(heads.len(), 2, "chunk {chunk}");
            assert_eq!(heads[0].0.as_deref(), Some(&b"SET"[..]));
            assert_eq!(heads[0].1.as_deref(), Some(&b"key"[..]));
            assert_eq!(heads[0].2, 3);
            assert_eq!(heads[1].0.as_deref(), Some(&b"PING"[..]));
        }
    }

    #[test]
    fn from_args_round_trips() {
        let r = Request::from_args(&["AUTH", "user", "pass"]);
        let mut buf = BytesMut::from(&r.raw()[..]);
        let d = decode(&mut buf, &RequestLimits::AUTHENTICATED)
            .expect("ok")
            .expect("some");
        assert_eq!(d, Decoded::Request(Request { inline: false, ..r }));
    }

    #[test]
    fn agrees_with_redis_protocol_decoder() {
        use redis_protocol::resp2::decode::decode as oracle;
        let input: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::from(input);
        let mut pos = 0;
        while let Some(Decoded::Request(r)) =
            decode(&mut buf, &RequestLimits::AUTHENTICATED).expect("ok")
        {
            let (_, used) = oracle(&input[pos..]).expect("oracle").expect("complete");
            assert_eq!(used, r.raw().len());
            pos += used;
        }
        assert_eq!(pos, input.len());
    }
}
