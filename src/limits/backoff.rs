//! Failed-login backoff and bans, per client IP and per client IP + user name.
//!
//! Password guessing is slowed in three steps: the first few failures are
//! free (people mistype), further ones make the next attempt wait a delay
//! that doubles per failure, and `ban_after` failures within the window ban
//! the key for a while. The proxy asks [`AuthGuard::check`] before it spends a
//! PBKDF2 on a password, and reports the outcome afterwards.
//!
//! Two keys are tracked with the same policy. The IP key catches one client
//! spraying many accounts; the IP + user key is what a correct password clears
//! (see [`AuthGuard::record_success`]). As the IP key counts every failure the
//! IP + user key counts, it usually decides; the IP + user key decides when
//! the IP's window restarted while the user's run goes on, and is where a
//! stricter per-account policy would go. Keys for different IPs are
//! independent: an attacker who gets a user banned from his address does not
//! lock that user out from anywhere else.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::client_key;

/// Most keys each table holds (IP, and IP + user). A full table sheds its
/// oldest state (see [`AuthGuard`]). A table of a million 48-byte entries
/// takes about 100 MB, and filling it takes a million distinct clients
/// failing within one window, far beyond what the PBKDF2 cost of a failure
/// allows a real attack.
pub const MAX_TRACKED: usize = 1_000_000;

/// How a full table makes room: it sheds this fraction of its capacity at
/// once, so the O(n) pass that picks what to drop runs once per many inserts.
const EVICT_DIVISOR: usize = 10;

/// Bans longer than this are clamped: `Instant` arithmetic must not overflow,
/// and a ban longer than a year outlives any process anyway.
const MAX_BAN: Duration = Duration::from_secs(365 * 24 * 3600);

/// When failed logins are slowed down and when they are banned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures within the window that carry no delay.
    pub free_failures: u32,
    /// Wait after the first failure past the free ones; it doubles with every
    /// further failure.
    pub base_delay: Duration,
    /// Cap on that wait.
    pub max_delay: Duration,
    /// Failures within the window that ban the key.
    pub ban_after: u32,
    /// Failures older than this (counted from the first of a run) are forgotten.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban_for: Duration,
}

impl Default for BackoffPolicy {
    /// Three free failures, then 200 ms, and a five-minute ban at the fifth
    /// failure within a minute: a person who mistypes three times never
    /// notices, a guesser gets five tries per five minutes per address.
    fn default() -> Self {
        BackoffPolicy {
            free_failures: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            ban_after: 5,
            window: Duration::from_secs(60),
            ban_for: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    /// The wait after the `failures`-th failure of a run (zero while free).
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures <= self.free_failures {
            return Duration::ZERO;
        }
        let steps = failures - self.free_failures - 1;
        // 2^steps; past 2^31 any base delay exceeds every sane cap anyway.
        1u32.checked_shl(steps)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }
}

/// What to do with a login attempt before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Check the password now.
    Allow,
    /// Wait this long, then check it.
    Delay(Duration),
    /// Refuse without checking: the key is banned for `remaining` more.
    Banned {
        /// Time left on the ban.
        remaining: Duration,
    },
}

impl AuthVerdict {
    /// The stricter of two verdicts: a ban beats a delay beats allow; of two
    /// bans or two delays, the longer.
    pub fn stricter(self, other: AuthVerdict) -> AuthVerdict {
        use AuthVerdict::*;
        match (self, other) {
            (Banned { remaining: a }, Banned { remaining: b }) => Banned {
                remaining: a.max(b),
            },
            (b @ Banned { .. }, _) | (_, b @ Banned { .. }) => b,
            (Delay(a), Delay(b)) => Delay(a.max(b)),
            (d @ Delay(_), Allow) | (Allow, d @ Delay(_)) => d,
            (Allow, Allow) => Allow,
        }
    }
}

/// One key's run of failures: 40 bytes, so a million of them fit in a
/// table of about 100 MB.
///
/// No ban end is stored: failures during a ban are not recorded, so a ban
/// always started at the last failure and ends `ban_for` after it.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    last_failure: Instant,
}

impl Failures {
    fn first(now: Instant) -> Failures {
        Failures {
            count: 0,
            window_start: now,
            last_failure: now,
        }
    }

    /// When the ban ends, if this run reached one (it may be over already).
    fn ban_end(&self, policy: &BackoffPolicy) -> Option<Instant> {
        // A policy of 0 would ban state that has no failure; 1 is the least.
        (self.count >= policy.ban_after.max(1)).then(|| {
            self.last_failure
                .checked_add(policy.ban_for.min(MAX_BAN))
                .unwrap_or(self.last_failure)
        })
    }

    fn banned_until(&self, policy: &BackoffPolicy, now: Instant) -> Option<Instant> {
        self.ban_end(policy).filter(|&end| end > now)
    }

    /// Whether this state says nothing any more (it behaves as no state):
    /// a ban that ran out, or a window that passed without one.
    fn expired(&self, policy: &BackoffPolicy, now: Instant) -> bool {
        match self.ban_end(policy) {
            Some(end) => end <= now,
            None => now.saturating_duration_since(self.window_start) >= policy.window,
        }
    }

    fn verdict(&self, policy: &BackoffPolicy, now: Instant) -> AuthVerdict {
        if let Some(end) = self.banned_until(policy, now) {
            return AuthVerdict::Banned {
                remaining: end - now,
            };
        }
        if self.expired(policy, now) {
            return AuthVerdict::Allow;
        }
        // The delay runs from the last failure: a client that already waited
        // (or came back on a new connection later) owes nothing more.
        let ready = self.last_failure + policy.delay_after(self.count);
        match ready.checked_duration_since(now) {
            Some(wait) if !wait.is_zero() => AuthVerdict::Delay(wait),
            _ => AuthVerdict::Allow,
        }
    }

    fn record_failure(&mut self, policy: &BackoffPolicy, now: Instant) {
        if self.banned_until(policy, now).is_some() {
            // A ban is not extended by failures during it: the proxy refuses
            // banned attempts before checking a password, so such "failures"
            // only come from attempts that raced the ban, and a fixed end lets
            // a locked-out user (or one behind the same NAT) know when to retry.
            return;
        }
        if self.expired(policy, now) {
            *self = Failures::first(now);
        }
        self.count = self.count.saturating_add(1);
        self.last_failure = now;
    }

    /// Order in which a full table sheds entries: unbanned before banned; the
    /// longest-quiet unbanned first, the bans closest to their end first.
    fn eviction_rank(&self, policy: &BackoffPolicy, now: Instant) -> (bool, Instant) {
        match self.banned_until(policy, now) {
            Some(end) => (true, end),
            None => (false, self.last_failure),
        }
    }
}

/// A bounded table of failure runs, keyed by a keyed hash (see [`AuthGuard`]).
struct Table {
    map: HashMap<u64, Failures, BuildHasherDefault<PreHashed>>,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            map: HashMap::default(),
            max: max.max(1),
        }
    }

    fn verdict(&self, key: u64, policy: &BackoffPolicy, now: Instant) -> AuthVerdict {
        self.map
            .get(&key)
            .map_or(AuthVerdict::Allow, |f| f.verdict(policy, now))
    }

    fn record_failure(&mut self, key: u64, policy: &BackoffPolicy, now: Instant) {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            self.make_room(policy, now);
        }
        self.map
            .entry(key)
            .or_insert_with(|| Failures::first(now))
            .record_failure(policy, now);
    }

    fn cleanup(&mut self, policy: &BackoffPolicy, now: Instant) {
        self.map.retain(|_, f| !f.expired(policy, now));
        // Give memory back after a spike; the slack avoids reallocating a
        // large table on every sweep while its size hovers.
        if self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
        }
    }

    /// The table is full: drop expired state, then, if that freed too little,
    /// the oldest state (see [`Failures::eviction_rank`]) down to nine tenths.
    ///
    /// Shedding live state, rather than refusing to track new keys, keeps the
    /// table about the clients failing now: a full table means an attack from
    /// a million addresses, against which per-IP counting has stopped mattering
    /// and the global caps do the work, while the newest attackers are the
    /// ones whose delays still bite. Bans go last.
    fn make_room(&mut self, policy: &BackoffPolicy, now: Instant) {
        self.map.retain(|_, f| !f.expired(policy, now));
        let target = self.max - (self.max / EVICT_DIVISOR).max(1);
        let Some(excess) = self.map.len().checked_sub(target).filter(|&e| e > 0) else {
            return;
        };
        let mut ranks: Vec<(bool, Instant)> = self
            .map
            .values()
            .map(|f| f.eviction_rank(policy, now))
            .collect();
        let (_, &mut threshold, _) = ranks.select_nth_unstable(excess - 1);
        drop(ranks);
        let mut removed = 0;
        self.map.retain(|_, f| {
            let shed = f.eviction_rank(policy, now) < threshold;
            removed += usize::from(shed);
            !shed
        });
        // Ties at the threshold: shed just enough of them.
        self.map.retain(|_, f| {
            if removed < excess && f.eviction_rank(policy, now) == threshold {
                removed += 1;
                false
            } else {
                true
            }
        });
    }
}

/// Hasher for keys that already are a keyed hash: hashing them again would
/// only cost time.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); fold anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Failed-login state for the whole process.
///
/// Keys: the client IP (through [`client_key`], so an IPv6 client is its /64)
/// and the client IP + user name. The tables store neither: each key is a
/// 64-bit SipHash of it under a random per-process key. User names are chosen
/// by the client, so this is what bounds an entry: every entry is 48 bytes
/// whatever name is sent, and no client-supplied bytes are kept. Two keys
/// share a counter only by a hash collision, which an attacker cannot aim at
/// without the key, and which among a million keys has odds of about 1 in 30
/// million.
///
/// Memory: [`cleanup`](Self::cleanup) (called every few seconds) drops state
/// that no longer affects a verdict, and each table is capped at
/// [`MAX_TRACKED`] entries; a full table drops expired state, then its oldest
/// unbanned state, then the bans closest to their end, down to nine tenths.
pub struct AuthGuard {
    policy: BackoffPolicy,
    hasher: RandomState,
    by_ip: Mutex<Table>,
    by_user: Mutex<Table>,
}

impl std::fmt::Debug for AuthGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuard")
            .field("policy", &self.policy)
            .field("tracked", &self.len())
            .finish_non_exhaustive()
    }
}

impl AuthGuard {
    /// An empty guard enforcing `policy`, capped at [`MAX_TRACKED`] per table.
    pub fn new(policy: BackoffPolicy) -> AuthGuard {
        AuthGuard::with_max_tracked(policy, MAX_TRACKED)
    }

    /// An empty guard with a different cap per table (tests, small hosts).
    pub fn with_max_tracked(policy: BackoffPolicy, max_tracked: usize) -> AuthGuard {
        AuthGuard {
            policy,
            hasher: RandomState::new(),
            by_ip: Mutex::new(Table::new(max_tracked)),
            by_user: Mutex::new(Table::new(max_tracked)),
        }
    }

    /// The policy enforced.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// The verdict for a login as `user` from `ip`: the stricter of the IP's
    /// and the IP + user's (a ban on either bans; of two delays, the longer).
    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> AuthVerdict {
        let (ip_key, user_key) = self.keys(ip, user);
        let by_ip = lock(&self.by_ip).verdict(ip_key, &self.policy, now);
        let by_user = lock(&self.by_user).verdict(user_key, &self.policy, now);
        by_ip.stricter(by_user)
    }

    /// Counts a failed login as `user` from `ip` against both keys.
    pub fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) {
        let (ip_key, user_key) = self.keys(ip, user);
        lock(&self.by_ip).record_failure(ip_key, &self.policy, now);
        lock(&self.by_user).record_failure(user_key, &self.policy, now);
    }

    /// A login as `user` from `ip` succeeded: that user's state from that IP
    /// is cleared.
    ///
    /// The IP's own state is kept and goes on counting toward its window: an
    /// attacker spraying many accounts from one address may own one of them,
    /// and logging into it must not wash away the failures against the others.
    pub fn record_success(&self, ip: IpAddr, user: &str, _now: Instant) {
        let (_, user_key) = self.keys(ip, user);
        lock(&self.by_user).map.remove(&user_key);
    }

    /// Drops state that no longer affects any verdict (its window passed
    /// without a ban, or its ban ended) and gives memory back.
    pub fn cleanup(&self, now: Instant) {
        lock(&self.by_ip).cleanup(&self.policy, now);
        lock(&self.by_user).cleanup(&self.policy, now);
    }

    /// Keys tracked, in both tables together.
    pub fn len(&self) -> usize {
        lock(&self.by_ip).map.len() + lock(&self.by_user).map.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table keys of the client and of the client + user.
    fn keys(&self, ip: IpAddr, user: &str) -> (u64, u64) {
        let ip = client_key(ip);
        (self.hasher.hash_one(ip), self.hasher.hash_one((ip, user)))
    }
}

/// Every update leaves a table consistent (one entry changed, or a `retain`),
/// so the state behind a lock poisoned by a panic elsewhere is still good.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
