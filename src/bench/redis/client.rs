//! One `bench redis` client task: its connection (connect, TLS, AUTH) and the
//! loop that keeps its window of requests in flight.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{wire, Endpoint, Load, Workload};
use crate::bench::report::Stats;
use crate::bench::schedule::Schedule;
use crate::bench::{Clock, Gate, Progress, CONNECT_TIMEOUT, RECONNECT_PAUSE};
use crate::redis::reply::{FrameInfo, ReplyError, ReplyScanner, Scan};
use crate::stream::BackendStream;

/// Each client's read buffer: replies are scanned in place and dropped, so
/// this only sets how much one read syscall can take.
const READ_BUF: usize = 16 << 10;

/// A failure of one connection, by who is at fault.
#[derive(Debug, Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Connect, TLS and AUTH together took longer than [`CONNECT_TIMEOUT`].
    #[error("connect timed out")]
    ConnectTimeout,
    /// The TLS handshake failed.
    #[error("tls handshake: {0}")]
    Tls(io::Error),
    /// The target refused AUTH; the target's message.
    #[error("auth refused: {0}")]
    Auth(String),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The target closed the connection.
    #[error("connection closed by the target")]
    Closed,
    /// The target sent something that is not RESP.
    #[error("invalid reply: {0}")]
    Protocol(#[from] ReplyError),
    /// A reply arrived with no request waiting for it.
    #[error("reply without a request")]
    Unexpected,
    /// A write did not finish before the drain deadline.
    #[error("write not accepted before the deadline")]
    WriteTimeout,
}

impl ClientError {
    /// A bounded label for the error tally.
    pub(super) fn kind(&self) -> String {
        match self {
            ClientError::Connect(_) => "connect".into(),
            ClientError::ConnectTimeout => "connect_timeout".into(),
            ClientError::Tls(e) => format!("tls_{}", crate::tls::handshake_failure_reason(e)),
            ClientError::Auth(_) => "auth".into(),
            ClientError::Io(_) => "io".into(),
            ClientError::Closed => "closed".into(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Unexpected => "unexpected_reply".into(),
            ClientError::WriteTimeout => "write_timeout".into(),
        }
    }
}

/// One client: connect, wait for the start, then load until the deadline.
pub(super) async fn client(
    ep: Arc<Endpoint>,
    load: Arc<Load>,
    index: u32,
    gate: Gate,
    progress: Arc<Progress>,
) -> Stats {
    let mut c = Client {
        load: load.clone(),
        stats: Stats::new(load.rate.is_some()),
        schedule: load
            .rate
            .and_then(|r| Schedule::new(r, u64::from(load.clients), u64::from(index))),
        wake: gate.wake(),
        final_pass: false,
        rng: StdRng::from_entropy(),
        inflight: VecDeque::with_capacity(load.pipeline),
        out: Vec::new(),
        buf: vec![0; READ_BUF].into_boxed_slice(),
        progress,
    };
    let first = timeout_at(Instant::now() + CONNECT_TIMEOUT, connect(&ep)).await;
    let mut conn = match first.unwrap_or(Err(ClientError::ConnectTimeout)) {
        Ok(s) => Some(s),
        Err(e) => {
            c.failed(&e, 1);
            None
        }
    };
    let Some(clock) = gate.open(conn.is_some()).await else {
        return c.stats;
    };
    while Instant::now() < clock.deadline {
        let mut stream = match conn.take() {
            Some(s) => s,
            None => {
                sleep_until((Instant::now() + RECONNECT_PAUSE).min(clock.deadline)).await;
                if Instant::now() >= clock.deadline {
                    break;
                }
                let limit = (Instant::now() + CONNECT_TIMEOUT).min(clock.hard_stop);
                match timeout_at(limit, connect(&ep)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        c.failed(&e, 1);
                        continue;
                    }
                    Err(_) => {
                        c.failed(&ClientError::ConnectTimeout, 1);
                        continue;
                    }
                }
            }
        };
        match c.drive(&mut stream, &clock).await {
            Ok(()) => break,
            Err(e) => {
                // Every request in flight on the lost connection failed with it.
                let lost = c.inflight.len().max(1) as u64;
                c.inflight.clear();
                c.failed(&e, lost);
            }
        }
    }
    if let Some(s) = &c.schedule {
        c.stats.behind = s.behind_at(clock.deadline - clock.start);
    }
    c.stats
}

/// Connects, handshakes TLS and logs in.
pub(super) async fn connect(ep: &Endpoint) -> Result<BackendStream, ClientError> {
    let tcp = TcpStream::connect(&ep.addrs[..])
        .await
        .map_err(ClientError::Connect)?;
    // Requests are written in whole batches: Nagle would only delay them.
    tcp.set_nodelay(true).map_err(ClientError::Connect)?;
    let mut stream = match &ep.tls {
        None => BackendStream::Plain(tcp),
        Some((connector, name)) => BackendStream::Tls(Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(ClientError::Tls)?,
        )),
    };
    if let Some(auth) = &ep.auth {
        stream
            .write_all(auth.expose())
            .await
            .map_err(ClientError::Io)?;
        let reply = read_one(&mut stream).await?;
        if reply.is_error() {
            return Err(ClientError::Auth(wire::error_text(&reply)));
        }
    }
    Ok(stream)
}

/// Reads exactly one reply (the answer to AUTH) and nothing after it.
pub(super) async fn read_one(stream: &mut BackendStream) -> Result<FrameInfo, ClientError> {
    let mut scanner = ReplyScanner::new();
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).await.map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        match scanner.scan(&buf[..n])? {
            Scan::Complete { len, info } if len == n => return Ok(info),
            Scan::Complete { .. } => return Err(ClientError::Unexpected),
            Scan::Partial => {}
        }
    }
}

/// One client's state, kept across reconnects.
struct Client {
    load: Arc<Load>,
    stats: Stats,
    schedule: Option<Schedule>,
    /// With `--rate`: the pacer's signal that a slot may be due.
    wake: Option<Arc<Notify>>,
    /// With `--rate`: the requests due before the deadline but found only after
    /// it (the wake-up came a little late) have been sent.
    final_pass: bool,
    rng: StdRng,
    /// Send time (with `--rate`, intended send time) of each request in flight, oldest first.
    inflight: VecDeque<Instant>,
    /// One batch of requests, at most `pipeline` of them (bounded by [`super::MAX_BATCH_BYTES`]).
    out: Vec<u8>,
    buf: Box<[u8]>,
    progress: Arc<Progress>,
}

/// What ended a wait in [`Client::drive`].
enum Event {
    Read(io::Result<usize>),
    MaySend,
    End,
}

impl Client {
    fn failed(&mut self, e: &ClientError, n: u64) {
        self.stats.errors.add(&e.kind(), n, || e.to_string());
        self.progress.failed(n);
    }

    /// Appends one request of the workload to the write buffer.
    fn push_request(&mut self) {
        let load = &*self.load;
        let key = self.rng.gen_range(0..load.keyspace);
        let op = match load.workload {
            Workload::Mixed if self.rng.gen_ratio(1, 10) => Workload::Set,
            Workload::Mixed => Workload::Get,
            w => w,
        };
        wire::encode_request(&mut self.out, op, key, load.key_digits, &load.value);
    }

    /// Fills the window: without `--rate` to the brim, with it with the requests
    /// that are due (before the deadline, for the one pass after it).
    fn fill(&mut self, now: Instant, clock: &Clock) {
        self.out.clear();
        let room = self.load.pipeline - self.inflight.len();
        let limit = match &self.schedule {
            None if now < clock.deadline => {
                for _ in 0..room {
                    self.inflight.push_back(now);
                    self.push_request();
                }
                return;
            }
            None => return,
            Some(_) if now < clock.deadline => now - clock.start,
            Some(_) if !self.final_pass => {
                self.final_pass = true;
                (clock.deadline - clock.start).saturating_sub(Duration::from_nanos(1))
            }
            Some(_) => return,
        };
        let mut taken = 0;
        while taken < room {
            let Some(due) = self.schedule.as_mut().and_then(|s| s.take_due(limit)) else {
                break;
            };
            let intended = clock.start + due;
            self.stats
                .record_lag(now.saturating_duration_since(intended));
            self.inflight.push_back(intended);
            taken += 1;
        }
        for _ in 0..taken {
            self.push_request();
        }
    }

    /// Loads one connection until the deadline and the drain; `Ok` at the end,
    /// `Err` when the connection failed (the caller reconnects).
    async fn drive(
        &mut self,
        stream: &mut BackendStream,
        clock: &Clock,
    ) -> Result<(), ClientError> {
        let mut scanner = ReplyScanner::new();
        loop {
            let now = Instant::now();
            self.fill(now, clock);
            if !self.out.is_empty() {
                timeout_at(clock.hard_stop, stream.write_all(&self.out))
                    .await
                    .map_err(|_| ClientError::WriteTimeout)?
                    .map_err(ClientError::Io)?;
            }
            let reading = !self.inflight.is_empty();
            if now >= clock.deadline && !reading {
                return Ok(());
            }
            // With --rate and room in the window, also wake for the next send:
            // the pacer's signal, with tokio's (coarser) timer as a backstop.
            let next_send = match &self.schedule {
                Some(s) if now < clock.deadline && self.inflight.len() < self.load.pipeline => {
                    Some((clock.start + s.next_due()).min(clock.deadline))
                }
                _ => None,
            };
            let end = if reading {
                clock.hard_stop
            } else {
                clock.deadline
            };
            let event = tokio::select! {
                r = stream.read(&mut self.buf), if reading => Event::Read(r),
                _ = notified(self.wake.as_deref()), if next_send.is_some() => Event::MaySend,
                _ = sleep_until(next_send.unwrap_or(end)), if next_send.is_some() => Event::MaySend,
                _ = sleep_until(end) => Event::End,
            };
            let n = match event {
                Event::MaySend => continue,
                Event::End if reading => {
                    self.stats.unanswered += self.inflight.len() as u64;
                    self.inflight.clear();
                    return Ok(());
                }
                Event::End => continue,
                Event::Read(r) => r.map_err(ClientError::Io)?,
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.answers(&mut scanner, n)?;
        }
    }

    /// Matches the replies in `buf[..n]` to the requests in flight.
    fn answers(&mut self, scanner: &mut ReplyScanner, n: usize) -> Result<(), ClientError> {
        let now = Instant::now();
        let mut pos = 0;
        let mut answered = 0;
        while pos < n {
            match scanner.scan(&self.buf[pos..n])? {
                Scan::Partial => break,
                Scan::Complete { len, info } => {
                    pos += len;
                    answered += 1;
                    let sent = self.inflight.pop_front().ok_or(ClientError::Unexpected)?;
                    if info.is_error() {
                        let text = wire::error_text(&info);
                        self.stats.errors.add(&wire::error_kind(&info), 1, || text);
                        self.progress.failed(1);
                    } else {
                        self.stats.record_ok(now - sent);
                    }
                }
            }
        }
        self.progress.done(answered);
        Ok(())
    }
}

async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}
