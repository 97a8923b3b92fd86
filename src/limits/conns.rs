//! Caps on concurrent connections, as permits.
//!
//! A [`ConnectionCaps`] counts live connections in total and per key; a
//! [`ConnPermit`] is one counted connection and gives its slot back when
//! dropped, so a session that ends by any path (error, panic, shutdown)
//! cannot leak a slot. The server combines several caps (total, per IP, per
//! user, unauthenticated per IP and in total) by holding one permit of each.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CapExceeded {
    /// The cap on all connections counted here.
    #[error("too many connections in total")]
    Total,
    /// The cap on connections with this key.
    #[error("too many connections for this key")]
    PerKey,
}

/// Counts of live connections, capped in total and per key.
///
/// The map holds only keys with a live permit (a key's entry goes with its
/// last permit), so its size is bounded by the connections open, whatever
/// keys clients bring. A `Mutex<HashMap>` is enough: the critical sections are
/// one lookup and one add, taken once per connection, not per command.
pub struct ConnectionCaps<K: Hash + Eq + Clone> {
    max_total: Option<u32>,
    max_per_key: Option<u32>,
    state: Mutex<Counts<K>>,
}

struct Counts<K> {
    total: u32,
    per_key: HashMap<K, u32>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for ConnectionCaps<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = self.lock();
        f.debug_struct("ConnectionCaps")
            .field("max_total", &self.max_total)
            .field("max_per_key", &self.max_per_key)
            .field("total", &counts.total)
            .field("keys", &counts.per_key.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> ConnectionCaps<K> {
    /// Caps of `max_total` connections in all and `max_per_key` per key;
    /// `None` is no cap (the connections are still counted).
    pub fn new(max_total: Option<u32>, max_per_key: Option<u32>) -> ConnectionCaps<K> {
        ConnectionCaps {
            max_total,
            max_per_key,
            state: Mutex::new(Counts {
                total: 0,
                per_key: HashMap::new(),
            }),
        }
    }

    /// Counts one more connection for `key`, or says which cap is full.
    /// The total cap is checked first: when both are full, the answer is the
    /// one that is not the client's own doing.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Result<ConnPermit<K>, CapExceeded> {
        let mut counts = self.lock();
        if self.max_total.is_some_and(|max| counts.total >= max) {
            return Err(CapExceeded::Total);
        }
        let for_key = counts.per_key.get(&key).copied().unwrap_or(0);
        if self.max_per_key.is_some_and(|max| for_key >= max) {
            return Err(CapExceeded::PerKey);
        }
        // Saturating: without caps, 4 billion live connections is not reachable,
        // but an overflow must not wrap to a count that admits everyone.
        counts.total = counts.total.saturating_add(1);
        counts
            .per_key
            .insert(key.clone(), for_key.saturating_add(1));
        drop(counts);
        Ok(ConnPermit {
            caps: Arc::clone(self),
            key,
        })
    }

    /// The cap on all connections, if any.
    pub fn max_total(&self) -> Option<u32> {
        self.max_total
    }

    /// The cap per key, if any.
    pub fn max_per_key(&self) -> Option<u32> {
        self.max_per_key
    }

    /// Live connections for `key`.
    pub fn count(&self, key: &K) -> u32 {
        self.lock().per_key.get(key).copied().unwrap_or(0)
    }

    /// Live connections in all.
    pub fn total(&self) -> u32 {
        self.lock().total
    }

    /// Keys with at least one live connection.
    pub fn keys(&self) -> usize {
        self.lock().per_key.len()
    }

    /// The counts stay consistent even if a holder panicked: every change is a
    /// single add or subtract, so the state behind a poisoned lock is sound.
    fn lock(&self) -> MutexGuard<'_, Counts<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, key: &K) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_key.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_key.remove(key);
            }
        }
        // Let the table shrink after a spike, so memory follows live keys
        // rather than the largest crowd ever seen.
        let capacity = counts.per_key.capacity();
        if capacity > 64 && counts.per_key.len() < capacity / 4 {
            counts.per_key.shrink_to(capacity / 2);
        }
    }
}

/// One counted connection; dropping it gives the slot back.
#[must_use = "the slot is released when the permit is dropped"]
pub struct ConnPermit<K: Hash + Eq + Clone> {
    caps: Arc<ConnectionCaps<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> ConnPermit<K> {
    /// The key this permit counts against.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> std::fmt::Debug for ConnPermit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPermit")
            .field("key", &self.key)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Drop for ConnPermit<K> {
    fn drop(&mut self) {
        self.caps.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::thread;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn permits_are_send_and_static() {
        fn assert_send_static<T: Send + 'static>() {}
        assert_send_static::<ConnPermit<IpAddr>>();
        assert_send_static::<ConnPermit<()>>();
        assert_send_static::<Arc<ConnectionCaps<IpAddr>>>();
    }

    #[test]
    fn per_key_cap_then_release() {
        let caps = Arc::new(ConnectionCaps::new(None, Some(2)));
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let p1 = caps.try_acquire(a).unwrap();
        let p2 = caps.try_acquire(a).unwrap();
        assert_eq!(caps.try_acquire(a).unwrap_err(), CapExceeded::PerKey);
        // Another key is not affected.
        let p3 = caps.try_acquire(b).unwrap();
        assert_eq!((caps.count(&a), caps.count(&b), caps.total()), (2, 1, 3));
        drop(p1);
        assert_eq!(caps.count(&a), 1);
        let p4 = caps.try_acquire(a).unwrap();
        drop((p2, p3, p4));
        assert_eq!((caps.total(), caps.keys()), (0, 0));
    }

    #[test]
    fn total_cap_is_reported_before_per_key() {
        let caps = Arc::new(ConnectionCaps::new(Some(2), Some(1)));
        let _p1 = caps.try_acquire(1u8).unwrap();
        assert_eq!(caps.try_acquire(1).unwrap_err(), CapExceeded::PerKey);
        let _p2 = caps.try_acquire(2).unwrap();
        assert_eq!(caps.try_acquire(3).unwrap_err(), CapExceeded::Total);
        assert_eq!(caps.try_acquire(1).unwrap_err(), CapExceeded::Total);
        // Refusals count nothing.
        assert_eq!((caps.total(), caps.keys()), (2, 2));
    }

    #[test]
    fn unit_key_is_a_plain_counter() {
        let caps = Arc::new(ConnectionCaps::new(Some(1), None));
        let p = caps.try_acquire(()).unwrap();
        assert_eq!(caps.try_acquire(()).unwrap_err(), CapExceeded::Total);
        drop(p);
        assert!(caps.try_acquire(()).is_ok());
    }

    #[test]
    fn no_caps_still_counts() {
        let caps = Arc::new(ConnectionCaps::new(None, None));
        let permits: Vec<_> = (0..100u32)
            .map(|i| caps.try_acquire(i % 7).unwrap())
            .collect();
        assert_eq!(caps.total(), 100);
        assert_eq!(caps.count(&0), 15);
        drop(permits);
        assert_eq!((caps.total(), caps.keys()), (0, 0));
    }

    #[test]
    fn many_threads_leave_the_map_empty() {
        let caps = Arc::new(ConnectionCaps::new(Some(64), Some(4)));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let caps = Arc::clone(&caps);
                thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut admitted = 0u32;
                    for i in 0..5_000u32 {
                        match caps.try_acquire((t * 31 + i) % 16) {
                            Ok(p) => {
                                admitted += 1;
                                held.push(p);
                            }
                            Err(_) => {
                                held.clear();
                            }
                        }
                        // Caps hold at every moment, seen from any thread.
                        assert!(caps.total() <= 64);
                        if i % 3 == 0 {
                            held.pop();
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert_eq!((caps.total(), caps.keys()), (0, 0));
    }

    #[test]
    fn permit_moves_to_another_thread_and_releases_there() {
        let caps = Arc::new(ConnectionCaps::new(None, Some(1)));
        let p = caps.try_acquire(ip("::1")).unwrap();
        thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(caps.total(), 0);
    }

    #[test]
    fn survives_a_poisoned_lock() {
        let caps = Arc::new(ConnectionCaps::new(None, Some(1)));
        let p = caps.try_acquire(1u8).unwrap();
        let poisoner = Arc::clone(&caps);
        let _ = thread::spawn(move || {
            let _guard = poisoner.state.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(caps.state.is_poisoned());
        assert_eq!(caps.try_acquire(1).unwrap_err(), CapExceeded::PerKey);
        drop(p);
        assert_eq!((caps.total(), caps.keys()), (0, 0));
    }
}
