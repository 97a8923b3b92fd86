//! `--cpu-pid`: the CPU time another process (the proxy under test) spends
//! while a run loads it, read from `/proc/PID/stat` (Linux) when the clock
//! starts and once every client has stopped, so connection setup before the
//! start is not counted (except with `--connect-only`, where it is the load).
//!
//! The kernel counts CPU time in clock ticks (usually 10 ms), so a run should
//! cost the process many ticks: a few seconds at full load is plenty; a run
//! that barely loads it reads as 0 or 1 tick. The process's other work in the
//! same window (another client, a health check) is counted too.

use std::ops::{Add, Sub};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// CPU time a process spent, split as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// In user space (the process's own code and its libraries).
    pub user: Duration,
    /// In the kernel on the process's behalf (system calls, the network stack).
    pub system: Duration,
}

impl CpuTime {
    /// The process's CPU time so far.
    pub fn of(pid: u32) -> anyhow::Result<CpuTime> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let (user, system) =
            parse_stat(&stat).with_context(|| format!("no CPU times in {path}"))?;
        let hz = clock_ticks_per_second();
        Ok(CpuTime {
            user: ticks(user, hz),
            system: ticks(system, hz),
        })
    }

    /// User and system time together.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// Microseconds per unit of work (request, transaction, session); `None` for no work.
    pub fn per(&self, units: u64) -> Option<CpuPerUnit> {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / units as f64;
        (units > 0).then(|| CpuPerUnit {
            total: us(self.total()),
            user: us(self.user),
            system: us(self.system),
        })
    }
}

impl Add for CpuTime {
    type Output = CpuTime;
    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

impl Sub for CpuTime {
    type Output = CpuTime;
    /// The time spent between two readings (a reading never goes back; saturates if it did).
    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU microseconds per unit of work, as the report prints them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpuPerUnit {
    /// User and system together.
    pub total: f64,
    /// In user space.
    pub user: f64,
    /// In the kernel.
    pub system: f64,
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state is field 3, so utime (14) is the 12th, stime the 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// The unit of `/proc/PID/stat`'s times (`sysconf(_SC_CLK_TCK)`, 100 on common systems).
fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

fn ticks(n: u64, hz: u64) -> Duration {
    Duration::from_secs(n / hz) + Duration::from_nanos((n % hz) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_after_the_command_name() {
        // A name with spaces and a parenthesis of its own, as a process may choose.
        let stat = "4242 (we) ird (name) S 1 4242 4242 0 -1 4194560 512 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((1234, 567)));
        assert_eq!(parse_stat("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no name at all"), None);
        assert_eq!(ticks(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks(3, 1000), Duration::from_millis(3));
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = CpuTime::of(me).expect("own stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Busy for 100 ms: ten ticks at the usual 100 Hz.
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spent = CpuTime::of(me).expect("own stat") - before;
        assert!(spent.total() >= Duration::from_millis(50), "{spent:?}");
        assert!(CpuTime::of(u32::MAX).is_err());
    }

    #[test]
    fn per_unit_and_sums() {
        let a = CpuTime {
            user: Duration::from_millis(30),
            system: Duration::from_millis(70),
        };
        let both = a + a;
        assert_eq!(both.total(), Duration::from_millis(200));
        assert_eq!(both - a, a);
        assert_eq!(a - both, CpuTime::default());
        let per = a.per(10_000).expect("per request");
        assert!((per.total - 10.0).abs() < 1e-9, "{per:?}");
        assert!((per.user - 3.0).abs() < 1e-9 && (per.system - 7.0).abs() < 1e-9);
        assert_eq!(a.per(0), None);
    }
}
