//! What the Redis and PostgreSQL relays share to drive both sockets of a
//! session from one hand-written poll function instead of a `select!` per
//! request: a `select!` builds every branch's future on each turn, and each of
//! those re-registers its waker (a timer entry, a lock in the watch channel or
//! the cancellation token) on every poll. These are built once, and polling
//! them between events takes no lock.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::{BackendError, SessionError};
use crate::guards::ByteBudget;
use crate::outbox::Outbox;
use crate::server::UsersEpoch;

/// Read buffer growth step: a few TLS records, most requests and replies whole.
pub const READ_CHUNK: usize = 16 * 1024;

/// Reads what has arrived into `buf` (at most `cap` bytes; `usize::MAX`: no cap),
/// making room first.
pub fn poll_read_into<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    r: &mut R,
    buf: &mut BytesMut,
    cap: usize,
) -> Poll<io::Result<usize>> {
    rewind(buf);
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        // Allocates (or moves the bytes held back to the start) only when
        // they leave less than half a chunk: an empty buffer was rewound above.
        buf.reserve(READ_CHUNK);
    }
    if cap == usize::MAX {
        std::pin::pin!(r.read_buf(buf)).poll(cx)
    } else {
        std::pin::pin!(r.take(cap as u64).read_buf(buf)).poll(cx)
    }
}

/// Moves an emptied buffer's start back to the beginning of its memory, so
/// the next read or copy lands on the bytes the last one used, which are still
/// in the CPU's cache. Without it, each read lands after the previous one and
/// a buffer walks through its whole capacity (16 KiB and more) before it
/// starts over: with many connections, every read then touches cold memory,
/// both for the kernel's copy and for the parse. No allocation, no copy (it is
/// empty), and nothing while the memory is still shared with a `Bytes` split
/// off it.
pub fn rewind(buf: &mut BytesMut) {
    if buf.is_empty() {
        // Asks for more than the handle holds: the only way to get that
        // without allocating is to reclaim the space before its start.
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
}

/// Takes the front of a queue (a session's replies owed, in request order).
/// An emptied queue starts over at the start of its memory, as [`rewind`]
/// does for buffers: a ring that kept going round would reach a new cache
/// line every other request.
pub fn pop_front_rewound<T>(q: &mut VecDeque<T>) -> Option<T> {
    let front = q.pop_front();
    if q.is_empty() {
        // Resets the ring's head (nothing to drop).
        q.clear();
    }
    front
}

/// Reads what the client has sent into `buf`, paced by its byte rate: at most
/// a burst per read, and a read the rate cannot pay for yet pauses the next
/// (`reads_paused_until`). Counts the bytes, and notes the time of the read in
/// `last_activity` when the session keeps one (an idle timeout is set).
pub fn poll_client_read<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    client: &mut R,
    buf: &mut BytesMut,
    bytes_rate: &mut Option<ByteBudget>,
    reads_paused_until: &mut Option<Instant>,
    last_activity: Option<&mut Instant>,
    bytes_in: &IntCounter,
) -> Poll<io::Result<usize>> {
    let cap = bytes_rate.as_ref().map_or(usize::MAX, ByteBudget::read_cap);
    let read = poll_read_into(cx, client, buf, cap);
    if let Poll::Ready(Ok(n)) = read {
        if n > 0 {
            bytes_in.inc_by(n as u64);
            if let Some(at) = last_activity {
                *at = Instant::now();
            }
            if let Some(wait) = bytes_rate.as_mut().and_then(|b| b.charge(n)) {
                // Over the byte rate: what was read is served, the next read waits.
                *reads_paused_until = Some(Instant::now() + wait);
            }
        }
    }
    read
}

/// Writes what the two queues hold, the backend's first. `Ok(true)` when that
/// made room something waits for: `stalled` says a queue was full or the
/// session waits for both to empty (it is closing).
pub fn poll_write_both<B, C>(
    cx: &mut Context<'_>,
    to_backend: &mut Outbox,
    backend: &mut B,
    to_client: &mut Outbox,
    client: &mut C,
    stalled: bool,
    bytes_out: &IntCounter,
) -> Result<bool, SessionError>
where
    B: AsyncWrite + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut progress = false;
    if to_backend.wants_write() {
        let n = to_backend
            .poll_drain(cx, backend)
            .map_err(|e| SessionError::Backend(BackendError::Io(e)))?;
        progress |= stalled && (n > 0 || !to_backend.wants_write());
    }
    if to_client.wants_write() {
        let n = to_client
            .poll_drain(cx, client)
            .map_err(SessionError::ClientIo)?;
        if n > 0 {
            bytes_out.inc_by(n as u64);
        }
        progress |= stalled && (n > 0 || !to_client.wants_write());
    }
    Ok(progress)
}

/// What a session's timers say is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A pause (command rate, byte rate) may be over.
    Paused,
    /// The session may have been idle for the idle timeout (this long).
    IdleCheck(std::time::Duration),
}

/// Polls a session's two timers: the end of the earlier pause (commands or
/// reads), and the next idle check (with an idle timeout only).
pub fn poll_due(
    cx: &mut Context<'_>,
    pause_timer: &mut Timer,
    commands_paused_until: Option<Instant>,
    reads_paused_until: Option<Instant>,
    idle_timer: &mut Timer,
    idle_check_at: Option<Instant>,
    idle_timeout: Option<std::time::Duration>,
) -> Poll<Due> {
    let wake = match (commands_paused_until, reads_paused_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(deadline) = wake {
        if pause_timer.poll_until(cx, deadline).is_ready() {
            return Poll::Ready(Due::Paused);
        }
    }
    if let (Some(at), Some(d)) = (idle_check_at, idle_timeout) {
        if idle_timer.poll_until(cx, at).is_ready() {
            return Poll::Ready(Due::IdleCheck(d));
        }
    }
    Poll::Pending
}

/// Wakes the task for a source of rare events (shutdown, reloads) and notes
/// that the source is worth polling again.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        RARE_WAKES.fetch_add(1, Ordering::AcqRel);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(w) = task {
            w.wake();
        }
    }
}

/// Wake-ups of every [`Flag`] so far, process-wide. Nothing writes it
/// between rare events, so every core keeps it in its cache, where each
/// session's own flag is a cache line of its own, cold by the next wake-up.
static RARE_WAKES: AtomicU64 = AtomicU64::new(0);

/// Polls a future that rarely resolves from a session polled a few times per
/// request. The future is polled with a waker of its own, so its registration
/// (under the source's lock: the cancellation token's, the watch channel's)
/// stands for good, and it is polled again only after that waker fired.
/// Otherwise a poll compares a waker and reads [`RARE_WAKES`]; only after
/// some flag, anywhere, was woken does it look at its own.
struct RarePoll {
    flag: Arc<Flag>,
    waker: Waker,
    /// The task waker `flag` passes wake-ups to.
    task: Option<Waker>,
    /// `RARE_WAKES` when this last looked at its flag; `None`: look next time.
    seen: Option<u64>,
}

impl RarePoll {
    fn new() -> Self {
        let flag = Arc::new(Flag {
            // The first poll registers.
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        RarePoll {
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
            seen: None,
        }
    }

    fn poll<F: Future + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *self
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(w.clone());
            self.task = Some(w);
        }
        // A flag is set before the count moves, and the count before the
        // task is woken: a poll after the wake-up sees both.
        let wakes = RARE_WAKES.load(Ordering::Acquire);
        if self.seen == Some(wakes) {
            return Poll::Pending;
        }
        self.seen = Some(wakes);
        // A load first: the read-modify-write only once woken.
        if !self.flag.woken.load(Ordering::Acquire)
            || !self.flag.woken.swap(false, Ordering::AcqRel)
        {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(&self.waker))
    }

    /// The next poll polls (a new future).
    fn rearm(&mut self) {
        self.flag.woken.store(true, Ordering::Release);
        self.seen = None;
    }
}

/// Waits for a token like `token.cancelled()`, but without taking the token's
/// lock on every poll (see [`RarePoll`]): a busy session is polled a few times
/// per request, and every session shares the token.
pub struct Cancelled {
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    poll: RarePoll,
    /// Stays ready once it was.
    done: bool,
}

impl Cancelled {
    /// Waits for `token`.
    pub fn new(token: &CancellationToken) -> Self {
        Cancelled {
            wait: Box::pin(token.clone().cancelled_owned()),
            poll: RarePoll::new(),
            done: false,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        let polled = this.poll.poll(cx, this.wait.as_mut());
        this.done = polled.is_ready();
        polled
    }
}

type UsersReloads = tokio::sync::watch::Receiver<UsersEpoch>;

/// Resolves to the receiver once the users are reloaded, `None` if the sender is gone.
type ReloadWait = Pin<Box<dyn Future<Output = Option<UsersReloads>> + Send>>;

/// Waits for the next reload. Owned (the receiver moves in and comes back out),
/// so it is built once per reload, not on every wait.
fn wait_reload(mut rx: UsersReloads) -> ReloadWait {
    Box::pin(async move { rx.changed().await.ok().map(|()| rx) })
}

/// The users' reloads, as a session waits for them (to close when its user
/// was removed), without the channel's lock on every poll (see [`RarePoll`]).
pub struct Reloads {
    /// `None` once the sender is gone: no reload will come.
    wait: Option<ReloadWait>,
    poll: RarePoll,
}

impl Reloads {
    /// Waits for reloads after the one `rx` has seen.
    pub fn new(rx: &UsersReloads) -> Self {
        Reloads {
            wait: Some(wait_reload(rx.clone())),
            poll: RarePoll::new(),
        }
    }

    /// Ready with the users after each reload.
    pub fn poll_reload(&mut self, cx: &mut Context<'_>) -> Poll<UsersEpoch> {
        let Some(wait) = &mut self.wait else {
            return Poll::Pending;
        };
        let Poll::Ready(rx) = self.poll.poll(cx, wait.as_mut()) else {
            return Poll::Pending;
        };
        let Some(mut rx) = rx else {
            self.wait = None;
            return Poll::Pending;
        };
        let epoch = rx.borrow_and_update().clone();
        self.wait = Some(wait_reload(rx));
        self.poll.rearm();
        Poll::Ready(epoch)
    }
}

/// A timer made on first use and then reset, not a new `Sleep` (a new entry
/// in the runtime's timer wheel) per wait.
#[derive(Default)]
pub struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Ready once `deadline` has passed.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

thread_local! {
    /// The number of the poll of a [`numbered`] future running on this thread; 0: none.
    static POLL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The numbers this thread gives next: from the first up to the second.
    static NUMBERS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Where the next block of poll numbers starts: numbers are unique across
/// threads too, as a task may move between the threads of a work-stealing runtime.
static NEXT_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Poll numbers a thread takes at once.
const BLOCK: u64 = 1 << 20;

fn next_poll_number() -> u64 {
    let (mut next, mut end) = NUMBERS.get();
    if next == end {
        next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
        end = next + BLOCK;
    }
    NUMBERS.set((next + 1, end));
    next
}

/// Runs `fut`, giving each of its polls a number no other poll has, which
/// [`Parked`] reads while it runs. Wraps a session's relay loop: a poll of it
/// is a poll of the task, so every wakeup of the task starts a new number.
pub async fn numbered<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let _scope = PollScope(POLL.replace(next_poll_number()));
        fut.as_mut().poll(cx)
    })
    .await
}

/// Restores the enclosing poll's number, also when the poll unwinds.
struct PollScope(u64);

impl Drop for PollScope {
    fn drop(&mut self) {
        POLL.set(self.0);
    }
}

/// Which of a session's sockets already returned `Pending` for reading in the
/// current poll of its task, so are not polled again in it: the first
/// `Pending` registered the task's waker, and whatever the socket does next
/// wakes the task, which polls it in a new poll. Each skipped poll would have
/// taken the socket's waiter lock for nothing, two or three times per event.
/// Outside a [`numbered`] future nothing is ever skipped.
#[derive(Debug, Default)]
pub struct Parked {
    client: u64,
    backend: u64,
}

/// One of a session's two sockets.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The client's.
    Client,
    /// The backend's.
    Backend,
}

impl Parked {
    /// Whether reading `side` returned `Pending` earlier in this poll.
    pub fn is_parked(&self, side: Side) -> bool {
        let at = match side {
            Side::Client => self.client,
            Side::Backend => self.backend,
        };
        let now = POLL.get();
        now != 0 && at == now
    }

    /// Notes what polling `side` for reading returned.
    pub fn note<T>(&mut self, side: Side, read: &Poll<T>) {
        if read.is_pending() {
            let at = match side {
                Side::Client => &mut self.client,
                Side::Backend => &mut self.backend,
            };
            *at = POLL.get();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config::RemovedUserSessions;
    use bytes::Buf;
    use std::sync::atomic::AtomicUsize;

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn epoch(removed: RemovedUserSessions) -> UsersEpoch {
        UsersEpoch {
            users: Arc::new(Users::new(Vec::new())),
            removed,
        }
    }

    #[test]
    fn an_emptied_buffer_starts_over_where_its_memory_starts() {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[b'x'; 100]);
        buf.advance(60);
        rewind(&mut buf);
        assert_eq!(buf.len(), 40, "a buffer holding bytes is left alone");
        assert_ne!(buf.as_ptr(), start);
        buf.advance(40);
        rewind(&mut buf);
        assert_eq!(buf.as_ptr(), start, "emptied: back to the start");
        assert_eq!(buf.capacity(), READ_CHUNK, "with all of its memory");

        // Memory still shared with a split-off part is not reused until it is free.
        buf.extend_from_slice(&[b'y'; 100]);
        let sent = buf.split_to(100).freeze();
        rewind(&mut buf);
        assert_ne!(buf.as_ptr(), start);
        assert_eq!(&sent[..], &[b'y'; 100][..], "the shared bytes are intact");
        drop(sent);
        rewind(&mut buf);
        assert_eq!(buf.as_ptr(), start, "once it is no longer shared");

        // A buffer at the start already, or one with no memory, stays as it is.
        rewind(&mut buf);
        assert_eq!((buf.as_ptr(), buf.capacity()), (start, READ_CHUNK));
        let mut none = BytesMut::new();
        rewind(&mut none);
        assert_eq!(none.capacity(), 0);
    }

    #[test]
    fn an_emptied_queue_starts_over_at_its_front() {
        let mut q: VecDeque<u64> = VecDeque::with_capacity(8);
        q.push_back(1);
        let start = q.as_slices().0.as_ptr();
        for i in 2..6 {
            q.push_back(i);
            assert_eq!(pop_front_rewound(&mut q), Some(i - 1));
        }
        assert_eq!(q.len(), 1, "a queue holding items keeps its place");
        assert_ne!(q.as_slices().0.as_ptr(), start);
        assert_eq!(pop_front_rewound(&mut q), Some(5));
        assert_eq!(pop_front_rewound(&mut q), None);
        q.push_back(9);
        assert_eq!(
            q.as_slices().0.as_ptr(),
            start,
            "emptied: back to the front"
        );
    }

    #[test]
    fn cancelled_wakes_the_task_and_resolves_once_cancelled() {
        let token = CancellationToken::new();
        let mut c = Cancelled::new(&token);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        }
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut c).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut c).poll(&mut cx).is_ready(), "and stays ready");
    }

    #[test]
    fn cancelled_passes_the_wake_up_to_the_latest_task_waker() {
        let token = CancellationToken::new();
        let mut c = Cancelled::new(&token);
        let first = Arc::new(Count::default());
        let second = Arc::new(Count::default());
        let w1 = Waker::from(first.clone());
        let w2 = Waker::from(second.clone());
        assert!(Pin::new(&mut c)
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        assert!(Pin::new(&mut c)
            .poll(&mut Context::from_waker(&w2))
            .is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut c)
            .poll(&mut Context::from_waker(&w2))
            .is_ready());
    }

    /// Polls `fut` once with a counting waker.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(Count::default()));
        Pin::new(fut).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_socket_is_parked_for_the_rest_of_the_poll_that_saw_it_pending() {
        let mut parked = Parked::default();
        // Outside a numbered future nothing is skipped.
        parked.note(Side::Client, &Poll::<()>::Pending);
        assert!(!parked.is_parked(Side::Client));

        let mut step = 0;
        let mut seen = Vec::new();
        let mut fut = Box::pin(numbered(std::future::poll_fn(|_| {
            step += 1;
            match step {
                1 => {
                    assert!(!parked.is_parked(Side::Client));
                    parked.note(Side::Client, &Poll::<()>::Pending);
                    parked.note(Side::Backend, &Poll::Ready(()));
                    seen.push((
                        parked.is_parked(Side::Client),
                        parked.is_parked(Side::Backend),
                    ));
                    Poll::Pending
                }
                _ => {
                    // A new poll: both are polled again.
                    seen.push((
                        parked.is_parked(Side::Client),
                        parked.is_parked(Side::Backend),
                    ));
                    Poll::Ready(())
                }
            }
        })));
        assert!(poll_once(&mut fut).is_pending());
        assert!(poll_once(&mut fut).is_ready());
        drop(fut);
        assert_eq!(seen, [(true, false), (false, false)]);
        assert!(!parked.is_parked(Side::Client), "not outside the poll");
    }

    #[test]
    fn poll_numbers_are_unique_across_threads_and_restored_after_a_poll() {
        let take = || {
            (0..2 * BLOCK + 3)
                .map(|_| next_poll_number())
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(take).join().expect("thread");
        let mine = take();
        let all: std::collections::HashSet<_> = other.iter().chain(&mine).collect();
        assert_eq!(all.len(), other.len() + mine.len());
        assert!(!all.contains(&0));

        let outer = POLL.get();
        let mut inner = 0;
        let mut fut = Box::pin(numbered(std::future::poll_fn(|_| {
            inner = POLL.get();
            Poll::Ready(())
        })));
        assert!(poll_once(&mut fut).is_ready());
        drop(fut);
        assert_ne!(inner, 0);
        assert_eq!(POLL.get(), outer);
    }

    #[test]
    fn every_reload_is_seen_once_and_none_after_the_sender_is_gone() {
        let (tx, rx) = tokio::sync::watch::channel(epoch(RemovedUserSessions::Continue));
        let mut reloads = Reloads::new(&rx);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(reloads.poll_reload(&mut cx).is_pending());
        for removed in [RemovedUserSessions::Close, RemovedUserSessions::Continue] {
            tx.send(epoch(removed)).expect("send");
            let polled = reloads.poll_reload(&mut cx);
            assert!(polled.is_ready(), "reload not seen");
            if let Poll::Ready(e) = polled {
                assert_eq!(e.removed, removed);
            }
            assert!(reloads.poll_reload(&mut cx).is_pending());
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        drop(tx);
        assert!(reloads.poll_reload(&mut cx).is_pending());
        assert!(reloads.poll_reload(&mut cx).is_pending());
    }
}
