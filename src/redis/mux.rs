//! Multiplexed backend connections (`[[backend]] multiplex = true`): the
//! sessions of one worker thread that log in to the backend as the same user
//! share one connection, as twemproxy and Envoy's Redis proxy do.
//!
//! Without it, every request costs the proxy four system calls (read from the
//! client, write to Redis, read from Redis, write to the client), and the
//! kernel's work under them is most of the proxy's CPU. Through a shared
//! connection, the requests of all the sessions that woke in one turn of the
//! event loop go to Redis in one write and their replies come back in one
//! read: the two backend-side calls are paid once per turn instead of once
//! per request.
//!
//! Each session keeps its own client connection, parser, policy, rate limits
//! and reply order (the relay is the same; its backend stream is a
//! [`MuxStream`]). What a shared connection cannot give is per-client state in
//! Redis, so a session refuses the commands that would change or depend on
//! its connection (`session::multiplexable`: MULTI and WATCH, blocking commands,
//! subscriptions, SELECT, CLIENT, HELLO 3, an AUTH to another backend user),
//! and answers RESET itself.
//!
//! How replies find their session: Redis answers requests in the order they
//! arrive, so the connection keeps, in that order, which session sent how many
//! whole requests ([`RequestCounter`] counts them in what each session writes),
//! and hands each reply, cut out by a [`ReplyScanner`], to the session at the
//! front. Only whole requests join the shared stream, so no session's bytes
//! ever come between another's, and a client that stops in the middle of a
//! request holds up no one: the relay buffers a request until it is whole, up
//! to [`MAX_REQUEST`] (longer ones are refused), instead of streaming it.
//!
//! Memory stays bounded: the outgoing buffer and each session's unread
//! replies have caps. While one session's replies are over its cap (its
//! client reads slowly) the connection stops reading Redis, which holds up
//! the other sessions on it too; if that lasts [`STALL_LIMIT`], the session is
//! dropped (its replies discarded, its client disconnected once it reads
//! what it was sent) and the others go on.
//!
//! When the connection fails (Redis closes it), every session on it sees its
//! backend close, as it would with a connection of its own; the next session
//! opens a new one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use super::backend::{self, Login};
use super::pool::Key;
use super::reply::{ReplyScanner, Scan};
use crate::auth::Credential;
use crate::config::Backend;
use crate::metrics::Metrics;
use crate::relay::poll_read_into;
use crate::stream::BackendStream;

/// Most bytes queued for Redis before sessions wait for room.
const OUT_CAP: usize = 256 * 1024;

/// Most reply bytes held for one session before the connection stops reading.
const INBOX_CAP: usize = 256 * 1024;

/// How long the connection stops reading for one session's unread replies
/// before it drops that session, so that the others go on.
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// Largest request a session sends through a shared connection (memcached's
/// default item limit): it is held whole before it joins the shared stream.
/// The relay refuses longer ones.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// What a session may hold of a request not yet whole (a guard: the relay
/// only hands over whole requests of at most [`MAX_REQUEST`]).
const MAX_PARTIAL: usize = MAX_REQUEST + 64 * 1024;

/// How long a connection no session uses stays open for the next one.
const LINGER: Duration = Duration::from_secs(10);

/// Where a shared connection belongs: a worker thread ([`crate::shards::current`]) and a backend user.
type Slot = (Option<usize>, Key);

/// The shared connections of one listener, per worker thread and backend user.
pub struct Muxes {
    backend: Arc<Backend>,
    metrics: Metrics,
    conns: Mutex<HashMap<Slot, Weak<Conn>>>,
}

impl std::fmt::Debug for Muxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxes")
            .field("backend", &self.backend.name)
            .finish_non_exhaustive()
    }
}

impl Muxes {
    /// Shared connections to `backend`.
    pub fn new(backend: Arc<Backend>, metrics: Metrics) -> Muxes {
        Muxes {
            backend,
            metrics,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A stream on this thread's shared connection for `cred`'s backend user,
    /// opening the connection (in a task of its own) if there is none.
    /// Wait for [`MuxStream::ready`] before relying on it.
    pub fn attach(&self, cred: &Credential) -> MuxStream {
        let key = (crate::shards::current(), Key::new(cred));
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|_, c| c.strong_count() > 0);
        if let Some(conn) = conns.get(&key).and_then(Weak::upgrade) {
            let attached = conn.state().attach();
            if let Some(id) = attached {
                return MuxStream::new(conn, id);
            }
        }
        let conn = Arc::new(Conn {
            state: Mutex::new(State::default()),
        });
        conns.insert(key, Arc::downgrade(&conn));
        drop(conns);
        let id = conn.state().attach().unwrap_or_default();
        tokio::spawn(drive(
            conn.clone(),
            self.backend.clone(),
            cred.clone(),
            self.metrics.clone(),
        ));
        MuxStream::new(conn, id)
    }
}

/// One shared backend connection; its task ([`drive`]) does the I/O.
struct Conn {
    state: Mutex<State>,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Status {
    #[default]
    Connecting,
    Up,
    /// Failed or closed: no new session attaches, the attached ones see EOF.
    Down,
}

#[derive(Default)]
struct State {
    status: Status,
    /// Requests not yet handed to the connection's task.
    out: BytesMut,
    /// Which session the next replies go to, and how many, in request order.
    fifo: VecDeque<(u64, u64)>,
    /// The attached sessions' replies not yet read.
    inboxes: HashMap<u64, Inbox>,
    next_id: u64,
    /// The connection's task.
    task: Option<Waker>,
    /// Sessions waiting for room in `out`, or for the connection.
    waiting: Vec<Waker>,
    /// Reading stopped because this session's inbox is full.
    paused_for: Option<u64>,
}

#[derive(Default)]
struct Inbox {
    buf: BytesMut,
    waker: Option<Waker>,
    /// Dropped for not reading its replies ([`STALL_LIMIT`]); its replies are discarded.
    evicted: bool,
}

impl State {
    fn attach(&mut self) -> Option<u64> {
        if self.status == Status::Down {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.inboxes.insert(id, Inbox::default());
        wake(&mut self.task);
        Some(id)
    }

    /// Takes the connection down: every session sees its backend close.
    fn fail(&mut self) {
        self.status = Status::Down;
        self.fifo.clear();
        self.out.clear();
        for inbox in self.inboxes.values_mut() {
            wake(&mut inbox.waker);
        }
        self.wake_waiting();
        wake(&mut self.task);
    }

    /// Wakes the task of `cx` at the next [`State::wake_waiting`].
    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
    }

    fn wake_waiting(&mut self) {
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }

    /// Nothing in flight: no request queued or unanswered.
    fn quiet(&self) -> bool {
        self.out.is_empty() && self.fifo.is_empty()
    }

    /// Drops a session that has not read its replies for [`STALL_LIMIT`]: the
    /// connection reads on for the others, and the session's replies, now and
    /// to come, are discarded; it sees an error.
    fn evict(&mut self, id: u64) {
        if let Some(inbox) = self.inboxes.get_mut(&id) {
            inbox.evicted = true;
            inbox.buf = BytesMut::new();
            wake(&mut inbox.waker);
        }
        self.paused_for = None;
    }

    /// Hands `bytes`, replies or a part of one, to the session at the front.
    fn deliver(&mut self, id: u64, bytes: &[u8]) {
        // A session that left, or was dropped, has its replies discarded.
        if let Some(inbox) = self.inboxes.get_mut(&id).filter(|i| !i.evicted) {
            inbox.buf.extend_from_slice(bytes);
            if inbox.buf.len() >= INBOX_CAP {
                self.paused_for = Some(id);
            }
            wake(&mut inbox.waker);
        }
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The connection's task: logs in, then writes what the sessions queue and
/// hands out the replies, until it fails or has been unused for [`LINGER`].
async fn drive(conn: Arc<Conn>, backend: Arc<Backend>, cred: Credential, metrics: Metrics) {
    let connected = backend::connect(&backend, &cred, &Login::Auth, &metrics).await;
    let (mut stream, leftover) = match connected {
        Ok(c) => (c.stream, c.leftover),
        Err(e) => {
            info!(event = "mux_connect_failed", backend = %backend.name, error = %e);
            conn.state().fail();
            return;
        }
    };
    {
        let mut state = conn.state();
        if state.status == Status::Connecting {
            state.status = Status::Up;
            state.wake_waiting();
            for inbox in state.inboxes.values_mut() {
                wake(&mut inbox.waker);
            }
        }
    }
    debug!(event = "mux_connected", backend = %backend.name);
    let open = metrics
        .shared_connections
        .with_label_values(&[&backend.name]);
    open.inc();
    let mut io = Io {
        rbuf: leftover,
        pending: BytesMut::new(),
        scanner: ReplyScanner::new(),
        idle: None,
        stall: None,
    };
    let end = std::future::poll_fn(|cx| io.poll(cx, &conn, &mut stream)).await;
    debug!(event = "mux_closed", backend = %backend.name, reason = end);
    open.dec();
    conn.state().fail();
}

/// What the connection's task holds between polls.
struct Io {
    rbuf: BytesMut,
    /// Requests taken from `State::out`, being written.
    pending: BytesMut,
    scanner: ReplyScanner,
    /// Fires [`LINGER`] after the last session left.
    idle: Option<Pin<Box<Sleep>>>,
    /// Fires [`STALL_LIMIT`] after reading stopped for a session's replies.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Io {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        conn: &Conn,
        stream: &mut BackendStream,
    ) -> Poll<&'static str> {
        loop {
            let mut state = conn.state();
            if state.status == Status::Down {
                return Poll::Ready("failed");
            }
            register(&mut state.task, cx);
            if self.pending.is_empty() && !state.out.is_empty() {
                self.pending = state.out.split();
                state.wake_waiting();
            }
            if let Some(id) = state.paused_for {
                let stall = self.stall.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + STALL_LIMIT))
                });
                if stall.as_mut().poll(cx).is_ready() {
                    state.evict(id);
                    self.stall = None;
                }
            } else {
                self.stall = None;
            }
            let paused = state.paused_for.is_some();
            if state.inboxes.is_empty() && state.quiet() && self.pending.is_empty() {
                let idle = self.idle.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + LINGER))
                });
                if idle.as_mut().poll(cx).is_ready() {
                    // Down before the lock is let go: no session attaches to a closing connection.
                    state.status = Status::Down;
                    return Poll::Ready("idle");
                }
            } else {
                self.idle = None;
            }
            drop(state);

            let mut progress = false;
            while !self.pending.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(0)) => return Poll::Ready("write returned 0"),
                    Poll::Ready(Ok(n)) => {
                        self.pending.advance(n);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready("write failed"),
                    Poll::Pending => break,
                }
            }
            if progress {
                let _ = Pin::new(&mut *stream).poll_flush(cx);
            }
            if !paused {
                match poll_read_into(cx, stream, &mut self.rbuf, usize::MAX) {
                    Poll::Ready(Ok(0)) => return Poll::Ready("closed by the backend"),
                    Poll::Ready(Ok(_)) => {
                        if let Err(reason) = self.route(conn) {
                            return Poll::Ready(reason);
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready("read failed"),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Hands the replies read to their sessions, in request order.
    fn route(&mut self, conn: &Conn) -> Result<(), &'static str> {
        let mut state = conn.state();
        while !self.rbuf.is_empty() {
            let Some(front) = state.fifo.front_mut() else {
                return Err("a reply nobody asked for");
            };
            let id = front.0;
            match self.scanner.scan(&self.rbuf) {
                Ok(Scan::Complete { len, .. }) => {
                    front.1 -= 1;
                    if front.1 == 0 {
                        state.fifo.pop_front();
                    }
                    state.deliver(id, &self.rbuf[..len]);
                    self.rbuf.advance(len);
                }
                Ok(Scan::Partial) => {
                    state.deliver(id, &self.rbuf);
                    self.rbuf.clear();
                }
                Err(_) => return Err("a reply that is not RESP"),
            }
        }
        Ok(())
    }
}

/// A session's end of a shared connection, used as its backend stream.
pub struct MuxStream {
    conn: Arc<Conn>,
    id: u64,
    counter: RequestCounter,
    /// The start of a request whose end has not been written yet.
    partial: BytesMut,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl MuxStream {
    fn new(conn: Arc<Conn>, id: u64) -> MuxStream {
        MuxStream {
            conn,
            id,
            counter: RequestCounter::default(),
            partial: BytesMut::new(),
        }
    }

    /// Waits until the connection has logged in; `false` if it could not.
    pub async fn ready(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.conn.state();
            match state.status {
                Status::Up => Poll::Ready(true),
                Status::Down => Poll::Ready(false),
                Status::Connecting => {
                    state.wait(cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn closed() -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the shared backend connection closed",
        )
    }

    fn evicted() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its replies: dropped from the shared backend connection",
        )
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut state = this.conn.state();
        if state.status == Status::Down {
            return Poll::Ready(Err(Self::closed()));
        }
        match state.inboxes.get(&this.id) {
            Some(inbox) if inbox.evicted => return Poll::Ready(Err(Self::evicted())),
            _ => {}
        }
        if state.out.len() >= OUT_CAP {
            state.wait(cx);
            return Poll::Pending;
        }
        let mut written = 0;
        let mut whole = 0;
        for b in bufs {
            // Only whole requests join the shared stream: the start of one
            // waits here for its end, so no other session's can come between.
            let (n, end) = this.counter.feed_ends(b);
            if end > 0 {
                let before = this.partial.split();
                state.out.extend_from_slice(&before);
                state.out.extend_from_slice(&b[..end]);
                this.partial.extend_from_slice(&b[end..]);
            } else {
                this.partial.extend_from_slice(b);
            }
            whole += n;
            written += b.len();
        }
        if this.partial.len() > MAX_PARTIAL {
            // The relay hands over whole requests of at most MAX_REQUEST
            // (longer ones are refused): this is a guard on memory, not a path.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a request too large for a shared backend connection",
            )));
        }
        if whole > 0 {
            match state.fifo.back_mut() {
                Some((id, n)) if *id == this.id => *n += whole,
                _ => state.fifo.push_back((this.id, whole)),
            }
            wake(&mut state.task);
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.conn.state();
        let down = state.status == Status::Down;
        let Some(inbox) = state.inboxes.get_mut(&this.id) else {
            return Poll::Ready(Ok(()));
        };
        if inbox.evicted {
            return Poll::Ready(Err(Self::evicted()));
        }
        if inbox.buf.is_empty() {
            if down {
                return Poll::Ready(Ok(()));
            }
            register(&mut inbox.waker, cx);
            return Poll::Pending;
        }
        let n = inbox.buf.len().min(buf.remaining());
        buf.put_slice(&inbox.buf[..n]);
        inbox.buf.advance(n);
        let left = inbox.buf.len();
        if state.paused_for == Some(this.id) && left < INBOX_CAP / 2 {
            state.paused_for = None;
            wake(&mut state.task);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut state = self.conn.state();
        state.inboxes.remove(&self.id);
        if state.paused_for == Some(self.id) {
            state.paused_for = None;
        }
        wake(&mut state.task);
    }
}

crate::stream::either_stream!(
    /// A session's backend: a connection of its own, or its end of a shared one.
    Upstream,
    /// A connection of its own.
    Own(BackendStream),
    /// Its end of a shared connection.
    Shared(MuxStream),
);

/// Counts the whole requests in a session's byte stream, fed in pieces of
/// any size: each has exactly one reply. The bytes are the relay's own
/// (requests it parsed and checked), multibulk or inline, as Redis reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestCounter {
    state: Counting,
    /// The number being read (array or bulk length).
    num: u64,
    /// Whether the number is negative.
    neg: bool,
    /// Bulk strings left in the current request.
    args_left: u64,
    /// Bytes left in the current bulk string, with its CRLF.
    bulk_left: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Counting {
    /// Between requests.
    #[default]
    Start,
    /// An inline request; whether it has a non-blank byte so far (a blank line gets no reply).
    Inline(bool),
    /// After `*`.
    ArrayLen,
    /// Expecting `$`.
    BulkType,
    /// After `$`.
    BulkLen,
    /// In a bulk string's payload.
    BulkBody,
}

impl RequestCounter {
    /// Consumes `input`; returns how many requests ended in it.
    pub fn feed(&mut self, input: &[u8]) -> u64 {
        self.feed_ends(input).0
    }

    /// Consumes `input`; returns how many requests ended in it, and how many
    /// bytes of it run up to the last point between requests (0 if none).
    pub fn feed_ends(&mut self, input: &[u8]) -> (u64, usize) {
        let mut whole = 0;
        let mut end = 0;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                Counting::Start => match b {
                    b'*' => {
                        self.state = Counting::ArrayLen;
                        self.num = 0;
                        self.neg = false;
                    }
                    b'\n' => {}
                    _ => self.state = Counting::Inline(!b.is_ascii_whitespace()),
                },
                Counting::Inline(seen) => {
                    if b == b'\n' {
                        whole += u64::from(seen);
                        self.state = Counting::Start;
                    } else {
                        self.state = Counting::Inline(seen || !b.is_ascii_whitespace());
                    }
                }
                Counting::ArrayLen | Counting::BulkLen => match b {
                    b'0'..=b'9' => {
                        self.num = self
                            .num
                            .saturating_mul(10)
                            .saturating_add(u64::from(b - b'0'))
                    }
                    b'-' => self.neg = true,
                    b'\n' if self.state == Counting::ArrayLen => {
                        // `*0` and `*-1` are no request (Redis skips them).
                        if self.neg || self.num == 0 {
                            self.state = Counting::Start;
                        } else {
                            self.args_left = self.num;
                            self.state = Counting::BulkType;
                        }
                    }
                    b'\n' => {
                        self.bulk_left = if self.neg {
                            0
                        } else {
                            self.num.saturating_add(2)
                        };
                        self.state = Counting::BulkBody;
                        if self.bulk_left == 0 {
                            whole += self.end_arg();
                        }
                    }
                    _ => {}
                },
                Counting::BulkType => {
                    if b == b'$' {
                        self.state = Counting::BulkLen;
                        self.num = 0;
                        self.neg = false;
                    }
                }
                Counting::BulkBody => {
                    // This byte and as many more as the bulk string has left.
                    let take = (input.len() - i + 1) as u64;
                    let n = take.min(self.bulk_left);
                    i += n as usize - 1;
                    self.bulk_left -= n;
                    if self.bulk_left == 0 {
                        whole += self.end_arg();
                    }
                }
            }
            if self.state == Counting::Start {
                end = i;
            }
        }
        (whole, end)
    }

    /// A bulk string ended: the request ends with its last one.
    fn end_arg(&mut self) -> u64 {
        self.args_left -= 1;
        if self.args_left == 0 {
            self.state = Counting::Start;
            1
        } else {
            self.state = Counting::BulkType;
            0
        }
    }

    /// Whether the bytes fed so far end inside a request.
    pub fn mid_request(&self) -> bool {
        self.state != Counting::Start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_whole(input: &[u8]) -> (u64, bool) {
        let mut c = RequestCounter::default();
        (c.feed(input), c.mid_request())
    }

    fn count_bytewise(input: &[u8]) -> (u64, bool) {
        let mut c = RequestCounter::default();
        let n = input.chunks(1).map(|b| c.feed(b)).sum();
        (n, c.mid_request())
    }

    #[test]
    fn counts_requests_whole_and_byte_at_a_time() {
        let cases: &[(&[u8], u64, bool)] = &[
            (b"*1\r\n$4\r\nPING\r\n", 1, false),
            (
                b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n",
                2,
                false,
            ),
            (b"PING\r\nGET k\n", 2, false),
            (b"\r\n  \r\n\n", 0, false),
            (b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", 1, false),
            (b"*2\r\n$3\r\nGET\r\n$10\r\n01234", 0, true),
            (b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI", 1, true),
            (b"PING", 0, true),
            // Payload bytes that look like protocol are payload.
            (b"*2\r\n$4\r\nECHO\r\n$6\r\n*1\r\n\r\n\r\n", 1, false),
        ];
        for (input, n, mid) in cases {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(count_whole(input), (*n, *mid), "{shown}");
            assert_eq!(count_bytewise(input), (*n, *mid), "{shown}");
        }
    }

    #[test]
    fn ends_are_where_requests_end() {
        let mut c = RequestCounter::default();
        assert_eq!(c.feed_ends(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI"), (1, 14));
        assert_eq!(c.feed_ends(b"NG\r\n\r\n*2"), (1, 6));
        assert_eq!(c.feed_ends(b"\r\n"), (0, 0));
        let mut c = RequestCounter::default();
        assert_eq!(
            c.feed_ends(b"\r\n*0\r\n"),
            (0, 6),
            "no request, but between requests"
        );
    }

    #[test]
    fn agrees_with_the_request_parser() {
        // Every split of a pipeline gives the same count as the relay's own parser.
        let pipeline = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        let expected = super::super::request::count_whole(pipeline, usize::MAX) as u64;
        assert_eq!(expected, 3);
        for cut in 0..=pipeline.len() {
            let mut c = RequestCounter::default();
            let n = c.feed(&pipeline[..cut]) + c.feed(&pipeline[cut..]);
            assert_eq!(n, expected, "cut at {cut}");
            assert!(!c.mid_request());
        }
    }

    #[test]
    fn hostile_numbers_do_not_panic() {
        let mut c = RequestCounter::default();
        c.feed(b"*99999999999999999999999999\r\n$99999999999999999999999\r\nab");
        assert!(c.mid_request());
        let mut c = RequestCounter::default();
        assert_eq!(c.feed(b"*1\r\n$-1\r\n"), 1);
        assert!(!c.mid_request());
    }
}
