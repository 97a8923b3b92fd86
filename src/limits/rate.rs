//! Token buckets on governor: [`KeyedRate`] (one bucket per key, e.g. per
//! client IP) and [`Rate`] (one bucket, e.g. per connection or per user).
//!
//! Both answer `Ok(())` (the units conform and are charged) or `Err(wait)`
//! (nothing was charged; ask again after `wait`). The caller picks what to do
//! with a refusal ([`super::Action`]): wait and ask again, or reject.
//!
//! Time comes from governor's default clock (quanta), which is monotonic and
//! cheap enough to read on every command.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, InsufficientCapacity, NotUntil, Quota,
};

type ClockInstant = <DefaultClock as Clock>::Instant;

/// A rate: `per_second` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Tokens added per second (the long-run rate).
    pub per_second: NonZeroU32,
    /// Size of the bucket: how many tokens an idle client may spend at once.
    pub burst: NonZeroU32,
}

impl RateSpec {
    /// A rate from plain numbers; `None` if either is zero (a zero rate is
    /// "refuse everything", which is not what an operator means by a limit).
    pub fn new(per_second: u32, burst: u32) -> Option<RateSpec> {
        Some(RateSpec {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    /// The governor quota for this rate.
    pub fn quota(&self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }

    /// How long one token takes to come back.
    pub fn interval(&self) -> Duration {
        self.quota().replenish_interval()
    }
}

/// One bucket per key (per client IP, say).
///
/// Keys are created on first use. A key whose bucket has refilled is
/// indistinguishable from a new one, so [`KeyedRate::maintain`] drops it: the
/// server calls it every few seconds and memory then follows the keys that
/// were active within the last bucket-refill time, not every key ever seen.
pub struct KeyedRate<K: Hash + Eq + Clone> {
    spec: RateSpec,
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedRate<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRate")
            .field("spec", &self.spec)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    /// An empty keyed limiter at `spec`.
    pub fn new(spec: RateSpec) -> KeyedRate<K> {
        KeyedRate {
            spec,
            limiter: DefaultKeyedRateLimiter::keyed(spec.quota()),
        }
    }

    /// The rate this limiter enforces.
    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| wait_from(&not_until, self.limiter.clock()))
    }

    /// Takes `n` tokens from `key`'s bucket at once (a byte count, say), or
    /// says how long until they are there. See [`Rate::check_n`] for the
    /// contract, including `n` larger than the burst.
    pub fn check_n(&self, key: &K, n: u32) -> Result<(), Duration> {
        check_n_with(&self.spec, self.limiter.clock(), n, |batch| {
            self.limiter.check_key_n(key, batch)
        })
    }

    /// Keys currently held (active within the last refill time, or not yet swept).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Drops keys whose buckets are full again (they behave like new keys).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// Gives back the table's spare capacity after keys were dropped.
    pub fn shrink_to_fit(&self) {
        self.limiter.shrink_to_fit();
    }

    /// Periodic upkeep: [`retain_recent`](Self::retain_recent), then
    /// [`shrink_to_fit`](Self::shrink_to_fit). Without the shrink a table that
    /// once held a million keys keeps their slots allocated after they go.
    pub fn maintain(&self) {
        self.retain_recent();
        self.shrink_to_fit();
    }
}

/// One bucket (per connection, per user).
pub struct Rate {
    spec: RateSpec,
    limiter: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rate").field("spec", &self.spec).finish()
    }
}

impl Rate {
    /// A full bucket at `spec`.
    pub fn new(spec: RateSpec) -> Rate {
        Rate {
            spec,
            limiter: DefaultDirectRateLimiter::direct(spec.quota()),
        }
    }

    /// The rate this bucket enforces.
    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    /// Takes one token, or says how long until one is there.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| wait_from(&not_until, self.limiter.clock()))
    }

    /// Takes `n` tokens at once (a byte count, say), or says how long until
    /// they are there.
    ///
    /// Contract: `Ok(())` means the `n` units are charged; `Err(wait)` means
    /// nothing was charged and the caller should ask again with the same `n`
    /// after `wait` (or give up). `n == 0` is always `Ok`.
    ///
    /// `n` larger than the burst can never fit in the bucket, and governor
    /// would refuse it forever (`InsufficientCapacity`). Instead such a batch
    /// waits for the time its tokens take: while the bucket is not full, the
    /// wait is "until the bucket is full" plus the time of the `n - burst`
    /// tokens it cannot hold; once full, the batch is admitted and empties the
    /// bucket. A caller that keeps sending oversized batches thus gets `n`
    /// units per `n` token-times, the configured rate. The excess is forgiven
    /// only when a batch finds the bucket already full (after an idle spell of
    /// at least one refill time), so a sender that pauses between oversized
    /// batches can exceed the rate by `n / burst`: callers that need an exact
    /// byte budget read at most `spec().burst` units between checks.
    pub fn check_n(&self, n: u32) -> Result<(), Duration> {
        check_n_with(&self.spec, self.limiter.clock(), n, |batch| {
            self.limiter.check_n(batch)
        })
    }
}

/// The wait a governor refusal stands for, measured from now.
fn wait_from(not_until: &NotUntil<ClockInstant>, clock: &DefaultClock) -> Duration {
    not_until.wait_time_from(clock.now())
}

/// The shared body of both `check_n`s; `try_batch` is governor's all-or-nothing
/// check of the keyed or the direct limiter.
fn check_n_with(
    spec: &RateSpec,
    clock: &DefaultClock,
    n: u32,
    try_batch: impl FnOnce(
        NonZeroU32,
    ) -> Result<Result<(), NotUntil<ClockInstant>>, InsufficientCapacity>,
) -> Result<(), Duration> {
    let Some(n) = NonZeroU32::new(n) else {
        return Ok(());
    };
    // A batch the bucket can hold is checked as it is; a larger one as a full
    // bucket, with the tokens it could not hold added to the wait.
    let batch = n.min(spec.burst);
    let excess = spec.interval().saturating_mul(n.get() - batch.get());
    match try_batch(batch) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(wait_from(&not_until, clock).saturating_add(excess)),
        // Cannot happen with batch <= burst; answer with a finite wait rather
        // than a panic or an error the caller could not act on.
        Err(InsufficientCapacity(_)) => Err(spec.interval().saturating_mul(n.get())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::thread::sleep;
    use std::time::Instant;

    fn spec(per_second: u32, burst: u32) -> RateSpec {
        RateSpec::new(per_second, burst).unwrap()
    }

    #[test]
    fn zero_is_not_a_rate() {
        assert_eq!(RateSpec::new(0, 1), None);
        assert_eq!(RateSpec::new(1, 0), None);
        assert_eq!(spec(100, 10).interval(), Duration::from_millis(10));
    }

    #[test]
    fn burst_then_steady_rate_keyed_and_direct() {
        let keyed = KeyedRate::<IpAddr>::new(spec(100, 10));
        let direct = Rate::new(spec(100, 10));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();

        // At once: the burst, plus at most one token that came back meanwhile.
        let k_burst = (0..50).filter(|_| keyed.check(&ip).is_ok()).count();
        let d_burst = (0..50).filter(|_| direct.check().is_ok()).count();
        assert!((10..=11).contains(&k_burst), "keyed burst {k_burst}");
        assert!((10..=11).contains(&d_burst), "direct burst {d_burst}");

        // Then 2 s of polling admits 100/s * 2 s, within 10 %.
        let start = Instant::now();
        let (mut k, mut d) = (0u32, 0u32);
        while start.elapsed() < Duration::from_secs(2) {
            k += u32::from(keyed.check(&ip).is_ok());
            d += u32::from(direct.check().is_ok());
            sleep(Duration::from_millis(1));
        }
        assert!((180..=220).contains(&k), "keyed admitted {k} in 2 s");
        assert!((180..=220).contains(&d), "direct admitted {d} in 2 s");
    }

    #[test]
    fn refusal_says_how_long_and_charges_nothing() {
        let r = Rate::new(spec(100, 1));
        assert_eq!(r.check(), Ok(()));
        let wait = r.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
        sleep(wait);
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn check_n_within_burst_is_all_or_nothing() {
        let r = Rate::new(spec(100, 10));
        assert_eq!(r.check_n(0), Ok(()));
        assert_eq!(r.check_n(8), Ok(()));
        // 2 left: 5 does not fit; the wait is for 3 more tokens (30 ms).
        let wait = r.check_n(5).unwrap_err();
        assert!(
            wait > Duration::from_millis(20) && wait <= Duration::from_millis(30),
            "{wait:?}"
        );
        sleep(wait);
        assert_eq!(r.check_n(5), Ok(()));
    }

    #[test]
    fn check_n_over_burst_waits_a_finite_time() {
        let keyed = KeyedRate::<u8>::new(spec(100, 10));
        let direct = Rate::new(spec(100, 10));
        // A full bucket admits an oversized batch.
        assert_eq!(keyed.check_n(&1, 25), Ok(()));
        assert_eq!(direct.check_n(25), Ok(()));
        // The next one waits for a full bucket (100 ms) plus 15 tokens (150 ms).
        for wait in [
            keyed.check_n(&1, 25).unwrap_err(),
            direct.check_n(25).unwrap_err(),
        ] {
            assert!(
                wait > Duration::from_millis(200) && wait <= Duration::from_millis(250),
                "{wait:?}"
            );
        }
        // Even an absurd batch gets a finite wait, never an error or a hang.
        let wait = direct.check_n(u32::MAX).unwrap_err();
        assert!(
            wait < Duration::from_secs(u64::from(u32::MAX) / 100 + 1),
            "{wait:?}"
        );
        // After the wait it is admitted.
        let wait = keyed.check_n(&1, 25).unwrap_err();
        sleep(wait);
        assert_eq!(keyed.check_n(&1, 25), Ok(()));
    }

    #[test]
    fn oversized_batches_back_to_back_keep_the_rate() {
        // 1000/s, bucket of 10, batches of 50: a busy sender that waits as told
        // gets 50 units per 50 ms.
        let r = Rate::new(spec(1000, 10));
        let start = Instant::now();
        let mut units = 0u32;
        while start.elapsed() < Duration::from_millis(500) {
            match r.check_n(50) {
                Ok(()) => units += 50,
                Err(wait) => sleep(wait),
            }
        }
        // 500 units earned in 0.5 s, plus the first batch taken from the full bucket.
        assert!(
            (450..=600).contains(&units),
            "admitted {units} units in 0.5 s"
        );
    }

    #[test]
    fn maintain_forgets_full_buckets() {
        let r = KeyedRate::<u32>::new(spec(1000, 1));
        for k in 0..1000 {
            assert_eq!(r.check(&k), Ok(()));
        }
        assert_eq!(r.len(), 1000);
        // Refill time is 1 ms; after it the keys look new and go.
        sleep(Duration::from_millis(10));
        r.maintain();
        assert_eq!(r.len(), 0);
        assert!(r.is_empty());
        // A dropped key starts again with a full bucket.
        assert_eq!(r.check(&7), Ok(()));
    }
}
