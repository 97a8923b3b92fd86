//! Idle, logged-in backend sessions kept for the next client with the same
//! key. Bookkeeping only: the gateways decide what a key is, when a session is
//! clean enough to keep, and how to reset it; this module bounds how many are
//! kept and for how long, and checks without waiting that an idle stream is
//! still quiet. Expired and evicted sessions are handed back to the caller to
//! close outside the lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// An idle session has nothing to say: a readable stream means the server
/// closed it or sent something (a shutdown notice). Never waits.
pub fn is_quiet<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// How many idle sessions are kept, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle sessions kept per key; 0 turns reuse off.
    pub per_key: usize,
    /// Idle sessions kept in all (the oldest idle one makes room for a newer).
    pub total: usize,
    /// An idle session older than this (since its last use) is closed.
    pub idle_timeout: Duration,
    /// A session older than this (since its login) is closed rather than reused.
    pub max_lifetime: Duration,
}

impl PoolConfig {
    /// No reuse: every client gets a new backend session.
    pub const OFF: PoolConfig = PoolConfig {
        per_key: 0,
        total: 0,
        idle_timeout: Duration::ZERO,
        max_lifetime: Duration::ZERO,
    };

    /// Whether sessions are kept at all.
    pub fn enabled(&self) -> bool {
        self.per_key > 0 && self.total > 0
    }
}

/// A pooled backend session, as [`checkout`] sees it.
pub trait Pooled: Sized + Send + 'static {
    /// Its stream.
    fn stream(&mut self) -> &mut crate::stream::BackendStream;
    /// Closes it within `limit`, as its protocol would.
    fn close(self, limit: Duration) -> impl std::future::Future<Output = ()> + Send + 'static;
}

/// How long closing a backend session may take.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The most recently used idle session for `key` that is still open, ready
/// for the calling worker thread, with when it logged in. The expired and dead
/// ones met on the way are closed; each outcome is counted for `backend`.
pub fn checkout<K: Eq + Hash + Clone, C: Pooled>(
    pool: &Pool<K, C>,
    key: &K,
    backend: &str,
    metrics: &crate::metrics::Metrics,
) -> Option<(C, Instant)> {
    let found = loop {
        let (taken, expired) = pool.take(key, Instant::now());
        for e in expired {
            metrics.pool_event(backend, "expired");
            tokio::spawn(e.close(CLOSE_WAIT));
        }
        let Some(mut t) = taken else {
            metrics.pool_event(backend, "new");
            break None;
        };
        if is_quiet(t.conn.stream()) && settle(t.conn.stream(), t.home) {
            metrics.pool_event(backend, "reused");
            break Some((t.conn, t.born));
        }
        metrics.pool_event(backend, "dead");
    };
    metrics
        .pool_idle
        .with_label_values(&[backend])
        .set(pool.idle() as i64);
    found
}

/// Readies a session taken from the pool for the calling worker thread: one
/// opened on another shard is moved to this one's poller
/// ([`crate::stream::BackendStream::rehome`]). `false`: it could not be, close it.
fn settle(stream: &mut crate::stream::BackendStream, home: Option<usize>) -> bool {
    let here = crate::shards::current();
    here.is_none() || here == home || stream.rehome().is_ok()
}

/// A session taken from the pool, with when it logged in.
#[derive(Debug)]
pub struct Taken<C> {
    /// The session.
    pub conn: C,
    /// When it logged in to the backend.
    pub born: Instant,
    /// The worker thread whose poller watches it ([`crate::shards::current`]).
    pub home: Option<usize>,
}

struct Idle<C> {
    conn: C,
    born: Instant,
    since: Instant,
    /// The worker thread whose poller watches it ([`crate::shards::current`]).
    home: Option<usize>,
}

struct Inner<K, C> {
    idle: HashMap<K, Vec<Idle<C>>>,
    count: usize,
}

/// Idle sessions by key.
pub struct Pool<K, C> {
    config: PoolConfig,
    inner: Mutex<Inner<K, C>>,
}

impl<K, C> std::fmt::Debug for Pool<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("idle", &self.inner.lock().map(|i| i.count).unwrap_or(0))
            .finish()
    }
}

/// What happened to a session offered back to the pool.
#[derive(Debug)]
pub enum Put<C> {
    /// Kept; the sessions it displaced (the oldest idle ones) are to be closed.
    Kept(Vec<C>),
    /// Not kept (reuse off, too old, or its key is full): close it.
    Refused(C),
}

impl<K: Eq + Hash + Clone, C> Pool<K, C> {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Pool<K, C> {
        Pool {
            config,
            inner: Mutex::new(Inner {
                idle: HashMap::new(),
                count: 0,
            }),
        }
    }

    /// The limits this pool keeps.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, C>> {
        // The lock guards plain bookkeeping; a panic elsewhere cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, e: &Idle<C>, now: Instant) -> bool {
        now.saturating_duration_since(e.since) < self.config.idle_timeout
            && now.saturating_duration_since(e.born) < self.config.max_lifetime
    }

    /// The most recently used idle session for `key` (its cache is the warmest),
    /// and the expired ones met on the way, to be closed by the caller. One
    /// opened on the calling worker thread comes first: its socket is watched
    /// by this thread's poller, so its events need no other thread.
    pub fn take(&self, key: &K, now: Instant) -> (Option<Taken<C>>, Vec<C>) {
        let mut expired = Vec::new();
        let mut inner = self.lock();
        let Some(list) = inner.idle.get_mut(key) else {
            return (None, expired);
        };
        let here = crate::shards::current();
        if here.is_some() {
            if let Some(i) = list
                .iter()
                .rposition(|e| e.home == here && self.fresh(e, now))
            {
                let e = list.remove(i);
                if list.is_empty() {
                    inner.idle.remove(key);
                }
                inner.count -= 1;
                let taken = Taken {
                    conn: e.conn,
                    born: e.born,
                    home: e.home,
                };
                return (Some(taken), expired);
            }
        }
        let mut found = None;
        while let Some(e) = list.pop() {
            if self.fresh(&e, now) {
                found = Some(Taken {
                    conn: e.conn,
                    born: e.born,
                    home: e.home,
                });
                break;
            }
            expired.push(e.conn);
        }
        let empty = list.is_empty();
        let removed = expired.len() + usize::from(found.is_some());
        if empty {
            inner.idle.remove(key);
        }
        inner.count -= removed;
        (found, expired)
    }

    /// Offers a clean session back.
    pub fn put(&self, key: K, conn: C, born: Instant, now: Instant) -> Put<C> {
        if !self.config.enabled() || now.saturating_duration_since(born) >= self.config.max_lifetime
        {
            return Put::Refused(conn);
        }
        let mut inner = self.lock();
        if inner.idle.get(&key).map_or(0, Vec::len) >= self.config.per_key {
            return Put::Refused(conn);
        }
        let mut displaced = Vec::new();
        while inner.count >= self.config.total {
            match inner.oldest() {
                Some(k) => {
                    let list = inner.idle.get_mut(&k).expect("oldest key is present");
                    displaced.push(list.remove(0).conn);
                    if list.is_empty() {
                        inner.idle.remove(&k);
                    }
                    inner.count -= 1;
                }
                None => return Put::Refused(conn),
            }
        }
        inner.idle.entry(key).or_default().push(Idle {
            conn,
            born,
            since: now,
            home: crate::shards::current(),
        });
        inner.count += 1;
        Put::Kept(displaced)
    }

    /// Removes every expired session and returns them to be closed.
    pub fn sweep(&self, now: Instant) -> Vec<C> {
        let mut expired = Vec::new();
        let mut inner = self.lock();
        inner.idle.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                if self.fresh(&list[i], now) {
                    i += 1;
                } else {
                    expired.push(list.remove(i).conn);
                }
            }
            !list.is_empty()
        });
        inner.count -= expired.len();
        expired
    }

    /// Removes every idle session (shutdown) and returns them to be closed.
    pub fn drain(&self) -> Vec<C> {
        let mut inner = self.lock();
        inner.count = 0;
        inner
            .idle
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|e| e.conn))
            .collect()
    }

    /// Idle sessions held now.
    pub fn idle(&self) -> usize {
        self.lock().count
    }
}

impl<K: Eq + Hash + Clone, C> Inner<K, C> {
    /// The key whose least recently used session has been idle longest.
    /// Each list is in order of use, so its first entry is its oldest.
    fn oldest(&self) -> Option<K> {
        self.idle
            .iter()
            .filter_map(|(k, list)| list.first().map(|e| (k, e.since)))
            .min_by_key(|(_, since)| *since)
            .map(|(k, _)| k.clone())
    }
}

/// The pools of every backend, by backend name. A reload keeps a backend's
/// pool while its address, TLS and pool settings stay the same, and starts a
/// new one when they change (sessions of the old one close as they come back).
pub struct Registry<K, C> {
    pools: Mutex<HashMap<String, Slot<K, C>>>,
}

/// A backend's pool and the fingerprint of the settings it was made for.
struct Slot<K, C> {
    fingerprint: String,
    pool: Arc<Pool<K, C>>,
}

impl<K, C> std::fmt::Debug for Registry<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl<K, C> Default for Registry<K, C> {
    fn default() -> Self {
        Registry {
            pools: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, C> Registry<K, C> {
    /// The pool for backend `name`, new if `fingerprint` (what the sessions
    /// depend on) differs from the one the current pool was made for.
    pub fn get(&self, name: &str, fingerprint: String, config: PoolConfig) -> Arc<Pool<K, C>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        match pools.get(name) {
            Some(slot) if slot.fingerprint == fingerprint => slot.pool.clone(),
            _ => {
                let pool = Arc::new(Pool::new(config));
                let slot = Slot {
                    fingerprint,
                    pool: pool.clone(),
                };
                pools.insert(name.to_string(), slot);
                pool
            }
        }
    }

    /// Forgets the pools of backends not in `names` (their sessions close when
    /// the last session using them ends).
    pub fn retain(&self, names: &std::collections::HashSet<&str>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|name, _| names.contains(name.as_str()));
    }

    /// Every current pool, by backend name.
    pub fn all(&self) -> Vec<(String, Arc<Pool<K, C>>)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .map(|(name, slot)| (name.clone(), slot.pool.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PoolConfig {
        PoolConfig {
            per_key: 2,
            total: 3,
            idle_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(100),
        }
    }

    fn kept<C: std::fmt::Debug>(p: Put<C>) -> Vec<C> {
        match p {
            Put::Kept(d) => d,
            Put::Refused(c) => panic!("refused {c:?}"),
        }
    }

    #[test]
    fn the_most_recently_used_session_of_the_key_comes_back() {
        let p = Pool::new(config());
        let t = Instant::now();
        kept(p.put("a", 1, t, t));
        kept(p.put("a", 2, t, t + Duration::from_secs(1)));
        kept(p.put("b", 3, t, t));
        let (got, expired) = p.take(&"a", t + Duration::from_secs(2));
        assert_eq!((got.map(|g| g.conn), expired), (Some(2), vec![]));
        assert_eq!(p.take(&"c", t).0.map(|g| g.conn), None);
        assert_eq!(p.idle(), 2);
    }

    #[test]
    fn a_session_of_the_calling_worker_thread_comes_first() {
        let p = Pool::new(config());
        let t = Instant::now();
        crate::shards::set_current(Some(1));
        kept(p.put("a", 1, t, t));
        crate::shards::set_current(Some(0));
        kept(p.put("a", 2, t, t));
        crate::shards::set_current(Some(1));
        let (got, _) = p.take(&"a", t);
        assert_eq!(got.map(|g| g.conn), Some(1), "this thread's, though older");
        // None of this thread's left: any other comes back.
        let (got, _) = p.take(&"a", t);
        assert_eq!(got.map(|g| g.conn), Some(2));
        assert_eq!(p.idle(), 0);
        crate::shards::set_current(None);
    }

    #[test]
    fn per_key_and_total_bounds_hold() {
        let p = Pool::new(config());
        let t = Instant::now();
        kept(p.put("a", 1, t, t));
        kept(p.put("a", 2, t, t));
        assert!(matches!(p.put("a", 3, t, t), Put::Refused(3)));
        kept(p.put("b", 4, t, t + Duration::from_secs(1)));
        // Full: the session idle longest (a's first) makes room.
        assert_eq!(kept(p.put("c", 5, t, t + Duration::from_secs(2))), vec![1]);
        assert_eq!(p.idle(), 3);
        assert_eq!(p.take(&"a", t).0.map(|g| g.conn), Some(2));
        assert_eq!(p.take(&"a", t).0.map(|g| g.conn), None);
    }

    #[test]
    fn expired_sessions_are_handed_back_not_reused() {
        let p = Pool::new(config());
        let t = Instant::now();
        kept(p.put("a", 1, t, t));
        kept(p.put("a", 2, t, t + Duration::from_secs(5)));
        // 1 idle 12 s (expired), 2 idle 7 s: take finds 2 first (newest).
        let (got, expired) = p.take(&"a", t + Duration::from_secs(12));
        assert_eq!((got.map(|g| g.conn), expired), (Some(2), vec![]));
        assert_eq!(p.sweep(t + Duration::from_secs(12)), vec![1]);
        assert_eq!(p.idle(), 0);
        // Past its lifetime a session is neither kept nor reused.
        assert!(matches!(
            p.put("a", 3, t, t + Duration::from_secs(100)),
            Put::Refused(3)
        ));
        kept(p.put("a", 4, t, t + Duration::from_secs(95)));
        let (got, expired) = p.take(&"a", t + Duration::from_secs(101));
        assert_eq!((got.map(|g| g.conn), expired), (None, vec![4]));
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn off_keeps_nothing_and_drain_empties() {
        let p: Pool<&str, i32> = Pool::new(PoolConfig::OFF);
        let t = Instant::now();
        assert!(matches!(p.put("a", 1, t, t), Put::Refused(1)));
        let p = Pool::new(config());
        kept(p.put("a", 1, t, t));
        kept(p.put("b", 2, t, t));
        let mut all = p.drain();
        all.sort();
        assert_eq!(all, vec![1, 2]);
        assert_eq!(p.idle(), 0);
    }

    #[test]
    fn a_registry_keeps_a_pool_while_its_fingerprint_holds() {
        let r: Registry<&str, i32> = Registry::default();
        let a = r.get("pg", "v1".into(), config());
        let t = Instant::now();
        kept(a.put("k", 1, t, t));
        assert!(Arc::ptr_eq(&a, &r.get("pg", "v1".into(), config())));
        let b = r.get("pg", "v2".into(), config());
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.idle(), 0);
        r.retain(&["other"].into_iter().collect());
        assert!(r.all().is_empty());
    }
}
