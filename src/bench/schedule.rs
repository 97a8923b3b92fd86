//! The open-model send schedule behind `--rate`, as pure arithmetic.
//!
//! With `--rate R` and `C` clients the harness sends on a fixed global grid:
//! slot `k` is due `k / R` seconds after the start, and client `c` owns the
//! slots `c, c + C, c + 2C, …`, so the clients interleave evenly instead of
//! firing together. A request is sent when its slot is due, whatever happened
//! to the requests before it, and its latency is measured from the slot (the
//! *intended* send time), not from when the harness got round to sending it.
//! A target that stalls for a second therefore shows a second of latency on
//! every request that was due during the stall, as a real open-model client
//! population would see it; measuring from the actual send time would hide the
//! stall ("coordinated omission", Gil Tene; wrk2 corrects it the same way).
//!
//! Times are exact integer nanoseconds from the start (`u128`), so a long run
//! does not drift the way repeatedly adding a rounded interval would.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One client's share of a fixed-rate schedule (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Requests per second across all clients; never zero.
    rate: u64,
    /// Number of clients sharing the rate; never zero.
    clients: u64,
    /// This client's index, below `clients`.
    client: u64,
    /// Index (among this client's slots) of the next request to send.
    next: u64,
}

impl Schedule {
    /// Client `client` of `clients` sharing `rate` requests per second.
    /// Returns `None` for a zero rate or client count, or an index out of range.
    pub fn new(rate: u64, clients: u64, client: u64) -> Option<Schedule> {
        (rate > 0 && client < clients).then_some(Schedule {
            rate,
            clients,
            client,
            next: 0,
        })
    }

    /// When this client's `i`-th request is due, from the start.
    pub fn due(&self, i: u64) -> Duration {
        let slot = u128::from(i) * u128::from(self.clients) + u128::from(self.client);
        let nanos = slot * NANOS_PER_SEC / u128::from(self.rate);
        duration_from_nanos(nanos)
    }

    /// When the next unsent request is due.
    pub fn next_due(&self) -> Duration {
        self.due(self.next)
    }

    /// Takes the next request if it is due at `elapsed`, returning its due time.
    pub fn take_due(&mut self, elapsed: Duration) -> Option<Duration> {
        let due = self.next_due();
        (due <= elapsed).then(|| {
            self.next += 1;
            due
        })
    }

    /// Requests taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// How many of this client's requests are due strictly before `end`.
    pub fn due_before(&self, end: Duration) -> u64 {
        // Slot x is due before `end` iff floor(x·1e9/R) < T, i.e. x·1e9 < T·R,
        // i.e. x < ceil(T·R / 1e9): the global slots 0..k are due.
        let k = (end.as_nanos() * u128::from(self.rate)).div_ceil(NANOS_PER_SEC);
        let c = u128::from(self.client);
        if k <= c {
            return 0;
        }
        let n = (k - c).div_ceil(u128::from(self.clients));
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Requests that were due before `end` but never taken: the target (or the
    /// harness) could not keep up with the rate.
    pub fn behind_at(&self, end: Duration) -> u64 {
        self.due_before(end).saturating_sub(self.next)
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 1e9 and fits.
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_interleave_on_one_grid() {
        // 4 clients at 1000/s: the global grid is 1 ms; client 1 owns 1, 5, 9 ms …
        let s = Schedule::new(1000, 4, 1).expect("schedule");
        assert_eq!(s.due(0), Duration::from_millis(1));
        assert_eq!(s.due(1), Duration::from_millis(5));
        assert_eq!(s.due(2), Duration::from_millis(9));
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|c| {
                let s = Schedule::new(1000, 4, c).expect("schedule");
                (0..25).map(move |i| s.due(i))
            })
            .collect();
        all.sort();
        let grid: Vec<Duration> = (0..100).map(Duration::from_millis).collect();
        assert_eq!(all, grid);
    }

    #[test]
    fn no_drift_with_an_inexact_interval() {
        // 3 per second: 333.33… ms apart; the millionth is exact, not 1e6 × 333.333333 ms.
        let s = Schedule::new(3, 1, 0).expect("schedule");
        assert_eq!(s.due(3_000_000), Duration::from_secs(1_000_000));
        assert_eq!(s.due(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.due(2), Duration::from_nanos(666_666_666));
    }

    #[test]
    fn take_due_sends_only_what_is_due_and_catches_up_after_a_stall() {
        let mut s = Schedule::new(1000, 1, 0).expect("schedule");
        assert_eq!(s.take_due(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(s.take_due(Duration::from_micros(999)), None);
        // A 10 ms stall: the ten overdue requests are all due now, each keeping
        // its own intended time (what latency is measured from).
        let now = Duration::from_millis(10);
        let taken: Vec<Duration> = std::iter::from_fn(|| s.take_due(now)).collect();
        assert_eq!(
            taken,
            (1..=10).map(Duration::from_millis).collect::<Vec<_>>()
        );
        assert_eq!(s.taken(), 11);
    }

    #[test]
    fn due_before_matches_counting_one_by_one() {
        for (rate, clients) in [(1000, 4), (7, 3), (1, 1), (100_000, 50), (3, 5)] {
            for client in 0..clients {
                let s = Schedule::new(rate, clients, client).expect("schedule");
                for end_us in [0, 1, 999, 1000, 1001, 12_345, 1_000_000, 2_000_001] {
                    let end = Duration::from_micros(end_us);
                    let counted = (0..).take_while(|&i| s.due(i) < end).count() as u64;
                    assert_eq!(
                        s.due_before(end),
                        counted,
                        "{rate} {clients} {client} {end_us}"
                    );
                }
            }
        }
    }

    #[test]
    fn behind_counts_what_was_never_sent() {
        let mut s = Schedule::new(100, 1, 0).expect("schedule");
        let end = Duration::from_secs(1);
        for _ in 0..60 {
            assert!(s.take_due(end).is_some());
        }
        assert_eq!(s.behind_at(end), 40);
    }

    #[test]
    fn refuses_degenerate_inputs() {
        assert_eq!(Schedule::new(0, 1, 0), None);
        assert_eq!(Schedule::new(1, 0, 0), None);
        assert_eq!(Schedule::new(1, 2, 2), None);
    }
}
