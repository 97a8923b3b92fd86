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
//! metrics, backend pools). A pooled backend connection stays registered with
//! the shard that opened it; a session on another shard that takes it over
//! still gets its events, by a cross-thread wakeup.
//!
//! The shards stop when the last [`Shards`] handle is dropped (the server's
//! own, once every session has ended and the pools are closed).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The shards; clones share them.
#[derive(Clone)]
pub struct Shards(Arc<Inner>);

struct Inner {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Stops every shard when the last handle goes.
    _stop: DropGuard,
}

impl Shards {
    /// Starts `n` shards (at least one), each on a thread named `portcullis-N`.
    pub fn start(n: usize) -> io::Result<Shards> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("portcullis-{i}-blocking"))
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-{i}"))
                // Runs the shard's tasks until told to stop; dropping the
                // runtime then drops whatever is left on it.
                .spawn(move || rt.block_on(stop.cancelled_owned()))?;
        }
        Ok(Shards(Arc::new(Inner {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop.drop_guard(),
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
        let shards = Shards::start(3).expect("start");
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
    async fn dropping_the_last_handle_stops_the_shards() {
        let shards = Shards::start(1).expect("start");
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
}
