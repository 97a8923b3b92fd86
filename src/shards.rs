//! Worker threads of one event loop each (`runtime.scheduler = "per_thread"`).
//!
//! Each shard is a single-threaded tokio runtime on a thread of its own; the
//! accept loops hand each new connection to the next shard, round robin, and
//! the session lives there to the end: its sockets are registered with that
//! shard's poller, its timers are in that shard's wheel, and its wakeups never
//! cross threads. This is how HAProxy, nginx and Envoy spread connections over
//! their threads. On a 2-core machine it cut the CPU per relayed Redis request
//! at pipeline 1 by 4–16 % against tokio's work-stealing scheduler, whose idle
//! threads are woken to look for work on almost every event (BENCHMARKS.md).
//!
//! What stays shared is shared as before (`Arc`s: config, users, limiters,
//! metrics, backend pools). An idle pooled backend connection stays
//! registered with the shard that last used it, so the pools hand a session
//! one of its own shard's first ([`current`]); one from another shard is moved
//! to the taking shard's poller ([`crate::pool::checkout`]), so that its events
//! do not need a cross-thread wakeup either.
//!
//! A busy shard that runs out of tasks can yield its CPU (`sched_yield`)
//! before it waits in epoll (`runtime.yield_before_sleep`, off by default). A
//! proxy shares its cores with what it proxies for: a sidecar with the
//! application and Redis, a load test with the load generator. Each wait that
//! sleeps costs an interrupt and a context switch to end; letting the peer run
//! first means the next event has often arrived by the time the shard looks,
//! so it does not sleep at all. "Busy" is a last wait shorter than
//! [`BUSY_WAIT`]: an idle shard waits at once, where a yield would only add a
//! system call per event. On the 2-core benchmark machine, shared with
//! redis-server and redis-benchmark, the CPU per relayed request at pipeline 1
//! fell by a quarter in plain text in one session, and rose by up to a tenth
//! in two others, as the host scheduled the cores differently; every yield
//! also counts as a context switch. Since the gain depends on the host, it is
//! off unless asked for (BENCHMARKS.md).
//!
//! The server stops the shards with [`Shards::stop`] once the sessions have
//! ended or been closed and the pools are closed; they also stop when the last
//! [`Shards`] handle is dropped.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};

thread_local! {
    /// The shard this thread runs, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    /// When this thread last began to wait for events.
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether its last wait was short: it is busy, and its peers with it.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// A wait for events shorter than this means the thread is busy. At 50 µs a
/// shard relaying TLS at full load fell back to sleeping too often; at 100 µs
/// one relaying 5,000 requests a second yields too rarely to cost anything.
pub const BUSY_WAIT: Duration = Duration::from_micros(100);

/// Sets a runtime's worker threads to yield before they wait while busy (see
/// the module's docs): `runtime.yield_before_sleep`.
pub fn yield_before_sleep(rt: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    rt.on_thread_park(before_wait).on_thread_unpark(after_wait)
}

/// Runs before a worker thread waits for events: yields its CPU first while
/// the thread is busy (see the module's docs). An idle thread waits at once:
/// there the yield would only cost a system call per event.
fn before_wait() {
    if BUSY.get() {
        std::thread::yield_now();
    }
    WAITING_SINCE.set(Some(Instant::now()));
}

/// Runs when a worker thread's wait for events ends.
fn after_wait() {
    if let Some(since) = WAITING_SINCE.take() {
        note_wait(since.elapsed());
    }
}

/// Records how long the thread's last wait for events lasted.
fn note_wait(waited: Duration) {
    BUSY.set(waited < BUSY_WAIT);
}

/// The shard the calling thread runs (`None` off the shards): the backend
/// pools use it to hand a session a connection its own poller watches.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Marks the calling thread as shard `i` (tests of shard-aware code).
pub fn set_current(i: Option<usize>) {
    CURRENT.with(|c| c.set(i));
}

/// The shards; clones share them.
#[derive(Clone)]
pub struct Shards(Arc<Inner>);

struct Inner {
    handles: Vec<Handle>,
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Stops every shard when the last handle goes.
    stop: DropGuard,
}

impl Shards {
    /// Starts `n` shards (at least one), each on a thread named `portcullis-N`.
    /// Each runtime is built on its own thread, so that a failure to start one
    /// is an error here, and the shards already started stop again.
    pub fn start(n: usize, yield_before_sleep: bool) -> io::Result<Shards> {
        let stop = CancellationToken::new().drop_guard();
        let mut handles = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let token = stop.token().clone();
            let thread = std::thread::Builder::new()
                // Linux shows at most 15 bytes of a thread's name.
                .name(format!("portcullis-{i}"))
                .spawn(move || {
                    let mut rt = tokio::runtime::Builder::new_current_thread();
                    rt.enable_all().thread_name(format!("pc-{i}-blocking"));
                    if yield_before_sleep {
                        // Called each time the loop runs out of tasks, just
                        // before it waits in epoll (see the module's docs).
                        self::yield_before_sleep(&mut rt);
                    }
                    let rt = rt.build();
                    let rt = match rt {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    set_current(Some(i));
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Runs the shard's tasks until told to stop; dropping the
                    // runtime then drops whatever is left on it.
                    rt.block_on(token.cancelled_owned());
                })?;
            match rx.recv() {
                Ok(Ok(handle)) => handles.push(handle),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a worker thread ended while starting")),
            }
            threads.push(thread);
        }
        Ok(Shards(Arc::new(Inner {
            handles,
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
            stop,
        })))
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.0.handles.len()
    }

    /// Always false: there is at least one shard.
    pub fn is_empty(&self) -> bool {
        self.0.handles.is_empty()
    }

    /// Runs `task` on the next shard, round robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.0.next.fetch_add(1, Ordering::Relaxed) % self.0.handles.len();
        drop(self.0.handles[i].spawn(task));
    }

    /// Stops every shard and waits until their threads have ended (their
    /// remaining tasks dropped, their blocking work finished).
    pub async fn stop(self) {
        self.0.stop.token().clone().cancel();
        let threads = std::mem::take(
            &mut *self
                .0
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[tokio::test]
    async fn tasks_go_round_robin_each_shard_on_its_own_thread() {
        let shards = Shards::start(3, true).expect("start");
        assert_eq!(shards.len(), 3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(6);
        for _ in 0..6 {
            let (seen, tx) = (seen.clone(), tx.clone());
            shards.spawn(async move {
                // A shard's tasks run on its thread, with its own timer.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let name = std::thread::current().name().map(str::to_owned);
                seen.lock().expect("lock").push(name.unwrap_or_default());
                let _ = tx.send(()).await;
            });
        }
        for _ in 0..6 {
            rx.recv().await.expect("task ran");
        }
        let seen = seen.lock().expect("lock").clone();
        let threads: HashSet<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(
            threads,
            HashSet::from(["portcullis-0", "portcullis-1", "portcullis-2"])
        );
        for t in &threads {
            assert_eq!(seen.iter().filter(|s| s == t).count(), 2, "{seen:?}");
        }
    }

    #[tokio::test]
    async fn stop_waits_for_the_threads() {
        let shards = Shards::start(2, true).expect("start");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        shards.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        shards.stop().await;
        // The runtime, and the task with it, is gone once stop returns.
        assert!(rx.try_recv().is_err());
        assert!(matches!(
            rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn each_shard_knows_itself() {
        let shards = Shards::start(2, true).expect("start");
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            shards.spawn(async move {
                let _ = tx.send(current());
            });
        }
        let mut seen = [rx.recv().expect("one"), rx.recv().expect("two")];
        seen.sort();
        assert_eq!(seen, [Some(0), Some(1)]);
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_shards() {
        let shards = Shards::start(1, true).expect("start");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A task that would run forever holds the sender: it is dropped with its runtime.
        shards.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(shards);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the shard stopped")
            .expect_err("the task was dropped, not completed");
    }

    #[test]
    fn a_thread_yields_before_waiting_only_after_a_short_wait() {
        std::thread::spawn(|| {
            assert!(!BUSY.get(), "a new thread is idle");
            note_wait(Duration::from_micros(5));
            assert!(BUSY.get());
            note_wait(BUSY_WAIT);
            assert!(!BUSY.get());
            note_wait(BUSY_WAIT - Duration::from_micros(1));
            assert!(BUSY.get());
            note_wait(Duration::from_millis(3));
            assert!(!BUSY.get());
            // The hooks themselves, as the runtime calls them.
            before_wait();
            assert!(WAITING_SINCE.get().is_some());
            after_wait();
            assert!(WAITING_SINCE.get().is_none());
        })
        .join()
        .expect("thread");
    }
}
