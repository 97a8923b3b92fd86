//! Wakes `--rate` clients when their next slot of the [`Schedule`] is due.
//!
//! Tokio's timer wheel has a 1 ms resolution: a task sleeping until a due time
//! wakes up to a millisecond late, and since latency is measured from the
//! intended time, that lateness would be added to every request (at 1000
//! requests/s the median "latency" of a loopback Redis came out at 1 ms, the
//! timer's, not Redis's). So one OS thread walks the global grid with
//! `std::thread::sleep` (a high-resolution timer, late by the kernel's timer
//! slack, ~50 µs) and wakes the owner of each slot that falls due. It wakes
//! tasks, never sends: a wake-up that finds nothing due is harmless.
//!
//! [`Schedule`]: super::schedule::Schedule

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Longest single sleep, so that a stop request is seen promptly.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// The pacing thread of one run; stops at the deadline or when dropped.
pub(crate) struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Global slots due at `elapsed`: slot `x` is due at floor(x·1e9/R) ns, so the
/// slots 0..k with k = ceil((e+1)·R/1e9) are due (see `Schedule::due`).
pub(crate) fn slots_due(rate: u64, elapsed: Duration) -> u128 {
    ((elapsed.as_nanos() + 1) * u128::from(rate)).div_ceil(NANOS_PER_SEC)
}

/// When global slot `x` is due.
fn slot_time(rate: u64, x: u128) -> Duration {
    let nanos = x * NANOS_PER_SEC / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl Pacer {
    /// Starts pacing `wake.len()` clients at `rate` requests/s from `start` until `deadline`.
    pub fn start(
        rate: u64,
        wake: Vec<Arc<Notify>>,
        start: Instant,
        deadline: Instant,
    ) -> std::io::Result<Pacer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || pace(rate, &wake, start, deadline, &stopped))?;
        Ok(Pacer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // At most one MAX_SLEEP away from seeing the flag.
            let _ = t.join();
        }
    }
}

fn pace(rate: u64, wake: &[Arc<Notify>], start: Instant, deadline: Instant, stop: &AtomicBool) {
    let clients = wake.len() as u128;
    if clients == 0 || rate == 0 {
        return;
    }
    let mut announced: u128 = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = slots_due(rate, now - start);
        if due > announced {
            if due - announced >= clients {
                wake.iter().for_each(|n| n.notify_one());
            } else {
                for x in announced..due {
                    wake[(x % clients) as usize].notify_one();
                }
            }
            announced = due;
        }
        let next = start + slot_time(rate, announced);
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(MAX_SLEEP).min(deadline - now));
        }
    }
    // Clients waiting for a slot past the deadline see the deadline themselves.
    wake.iter().for_each(|n| n.notify_one());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::schedule::Schedule;

    #[test]
    fn slots_due_agrees_with_the_schedule() {
        for (rate, clients) in [(1000, 4), (7, 3), (300_000, 50)] {
            for e_us in [0, 1, 999, 1000, 1001, 54_321, 1_000_000] {
                let e = Duration::from_micros(e_us);
                let k = slots_due(rate, e);
                // Exactly the global slots below k are due: count them per client.
                let per_client: u128 = (0..clients)
                    .map(|c| {
                        let s = Schedule::new(rate, clients, c).expect("schedule");
                        (0..).take_while(|&i| s.due(i) <= e).count() as u128
                    })
                    .sum();
                assert_eq!(k, per_client, "{rate} {clients} {e_us}");
            }
        }
    }

    #[tokio::test]
    async fn wakes_each_client_when_its_slot_is_due() {
        let wake: Vec<Arc<Notify>> = (0..2).map(|_| Arc::new(Notify::new())).collect();
        let start = Instant::now();
        // 100/s over 2 clients: client 1's first slot is at 10 ms.
        let pacer = Pacer::start(100, wake.clone(), start, start + Duration::from_millis(200))
            .expect("thread");
        wake[1].notified().await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(10), "{waited:?}");
        assert!(waited < Duration::from_millis(100), "{waited:?}");
        drop(pacer);
    }
}
