//! Log sampling: about one line per client and reason per interval, so a
//! flood of refused connections or logins cannot become a flood of log lines
//! (and a disk-filling attack). Lines that are held back are counted, and the
//! count rides on the next line that is written for the same client and reason.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::client_key;

/// One line per client and reason per second: enough to see that something
/// is happening and who does it, few enough that no flood fills a disk.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Most (client, reason) pairs tracked: at 64 bytes a pair, a table under
/// 10 MB. Past it, new clients share one slot per reason (see [`LogSampler`]).
pub const MAX_KEYS: usize = 100_000;

/// The address of the shared slot that untracked clients fall into when the
/// table is full ("::", which no real client has).
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Decides which log lines to write.
///
/// Keys are (client, reason), the client through [`client_key`] so an IPv6
/// host is its /64. When [`MAX_KEYS`] pairs are tracked and a sweep frees
/// nothing, a new client is counted under a shared per-reason slot for "all
/// other clients": the log still gets one line per reason per interval, and
/// the table stays bounded (at [`MAX_KEYS`] plus one per reason).
pub struct LogSampler {
    interval: Duration,
    max_keys: usize,
    state: Mutex<Slots>,
}

struct Slots {
    map: HashMap<(IpAddr, &'static str), Slot>,
    last_sweep: Option<Instant>,
    /// Held-back lines of slots swept while full, reported by the next `cleanup`.
    orphaned: u64,
}

struct Slot {
    last_written: Instant,
    held_back: u64,
}

impl Slot {
    fn admit(&mut self, interval: Duration, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.last_written) >= interval {
            self.last_written = now;
            Some(std::mem::take(&mut self.held_back))
        } else {
            self.held_back = self.held_back.saturating_add(1);
            None
        }
    }

    fn quiet(&self, interval: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.last_written) >= interval
    }
}

impl Default for LogSampler {
    fn default() -> Self {
        LogSampler::new(DEFAULT_INTERVAL)
    }
}

impl std::fmt::Debug for LogSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSampler")
            .field("interval", &self.interval)
            .field("keys", &self.len())
            .finish()
    }
}

impl LogSampler {
    /// A sampler writing about one line per client and reason per `interval`.
    pub fn new(interval: Duration) -> LogSampler {
        LogSampler::with_max_keys(interval, MAX_KEYS)
    }

    /// A sampler with a different bound on tracked pairs (tests, small hosts).
    pub fn with_max_keys(interval: Duration, max_keys: usize) -> LogSampler {
        LogSampler {
            interval,
            max_keys: max_keys.max(1),
            state: Mutex::new(Slots {
                map: HashMap::new(),
                last_sweep: None,
                orphaned: 0,
            }),
        }
    }

    /// The interval between lines for one key.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether to write a line for `reason` about `ip` now: `Some(n)` means
    /// write it, and `n` lines for this key were held back since the last one
    /// (worth putting in the line); `None` means hold it back.
    pub fn allow(&self, ip: IpAddr, reason: &'static str, now: Instant) -> Option<u64> {
        let key = (client_key(ip), reason);
        let mut slots = self.lock();
        if let Some(slot) = slots.map.get_mut(&key) {
            return slot.admit(self.interval, now);
        }
        let key = if slots.map.len() < self.max_keys || self.make_room(&mut slots, now) {
            key
        } else {
            (OVERFLOW, reason)
        };
        match slots.map.entry(key) {
            Entry::Occupied(mut slot) => slot.get_mut().admit(self.interval, now),
            Entry::Vacant(slot) => {
                slot.insert(Slot {
                    last_written: now,
                    held_back: 0,
                });
                Some(0)
            }
        }
    }

    /// Drops keys that have been quiet for an interval (their next line would
    /// be written anyway) and gives memory back. Returns how many held-back
    /// lines went with them, which would otherwise never be reported: the
    /// caller may log that total as one line.
    pub fn cleanup(&self, now: Instant) -> u64 {
        let mut slots = self.lock();
        let dropped = sweep(&mut slots, self.interval, now);
        let total = dropped.saturating_add(std::mem::take(&mut slots.orphaned));
        if slots.map.len() < slots.map.capacity() / 4 {
            slots.map.shrink_to_fit();
        }
        total
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table is full: sweep quiet keys, at most once per interval (a
    /// table full of live keys would otherwise be scanned on every line).
    /// Returns whether there is room now.
    fn make_room(&self, slots: &mut Slots, now: Instant) -> bool {
        let due = slots
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            let dropped = sweep(slots, self.interval, now);
            slots.orphaned = slots.orphaned.saturating_add(dropped);
        }
        slots.map.len() < self.max_keys
    }

    /// The state is a map of counters, consistent after any panic.
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Drops quiet slots; returns the held-back lines they carried.
fn sweep(slots: &mut Slots, interval: Duration, now: Instant) -> u64 {
    let mut dropped = 0u64;
    slots.map.retain(|_, slot| {
        let quiet = slot.quiet(interval, now);
        if quiet {
            dropped = dropped.saturating_add(slot.held_back);
        }
        !quiet
    });
    slots.last_sweep = Some(now);
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_line_per_interval_with_the_held_back_count() {
        let s = LogSampler::default();
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        assert_eq!(s.allow(a, "auth_failed", t0), Some(0));
        for i in 1..=9 {
            assert_eq!(s.allow(a, "auth_failed", t0 + i * 100 * MS), None);
        }
        assert_eq!(s.allow(a, "auth_failed", t0 + SEC), Some(9));
        assert_eq!(s.allow(a, "auth_failed", t0 + SEC), None);
        assert_eq!(s.allow(a, "auth_failed", t0 + 5 * SEC), Some(1));
    }

    #[test]
    fn keys_are_per_client_and_reason() {
        let s = LogSampler::default();
        let t0 = Instant::now();
        assert_eq!(s.allow(ip("192.0.2.1"), "a", t0), Some(0));
        assert_eq!(s.allow(ip("192.0.2.1"), "b", t0), Some(0));
        assert_eq!(s.allow(ip("192.0.2.2"), "a", t0), Some(0));
        assert_eq!(s.allow(ip("192.0.2.1"), "a", t0), None);
        // One IPv6 host rotating through its /64 is one client.
        assert_eq!(s.allow(ip("2001:db8::1"), "a", t0), Some(0));
        assert_eq!(s.allow(ip("2001:db8::2"), "a", t0), None);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn cleanup_drops_quiet_keys_and_reports_their_held_back_lines() {
        let s = LogSampler::default();
        let t0 = Instant::now();
        for i in 0..100u8 {
            let client = IpAddr::from([10, 0, 0, i]);
            s.allow(client, "x", t0);
            s.allow(client, "x", t0);
        }
        s.allow(ip("192.0.2.1"), "x", t0 + SEC / 2);
        assert_eq!(s.cleanup(t0 + SEC / 2), 0);
        assert_eq!(s.len(), 101);
        assert_eq!(s.cleanup(t0 + SEC), 100);
        assert_eq!(s.len(), 1);
        assert_eq!(s.cleanup(t0 + 2 * SEC), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_table_shares_one_slot_per_reason() {
        let s = LogSampler::with_max_keys(SEC, 10);
        let t0 = Instant::now();
        for i in 0..10u8 {
            assert_eq!(s.allow(IpAddr::from([10, 0, 0, i]), "x", t0), Some(0));
        }
        // Full of live keys: new clients share the overflow slot for "x".
        assert_eq!(s.allow(ip("192.0.2.1"), "x", t0), Some(0));
        assert_eq!(s.allow(ip("192.0.2.2"), "x", t0), None);
        assert_eq!(s.allow(ip("192.0.2.3"), "y", t0), Some(0));
        assert_eq!(s.len(), 12);
        // A flood of new clients does not grow the table.
        for i in 0..1000u32 {
            s.allow(
                IpAddr::from(std::net::Ipv4Addr::from(0xC000_0000 + i)),
                "x",
                t0 + MS,
            );
        }
        assert_eq!(s.len(), 12);
        // Once the old keys go quiet, new clients get their own slots again.
        assert_eq!(s.allow(ip("192.0.2.9"), "x", t0 + 2 * SEC), Some(0));
        assert!(s.len() <= 3, "{}", s.len());
        // The held-back lines of the swept overflow slot are reported.
        assert_eq!(s.cleanup(t0 + 10 * SEC), 1001);
    }
}
