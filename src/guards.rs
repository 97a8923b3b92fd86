//! Runtime state of the abuse controls, built from the config at start:
//! keyed rate limiters and connection caps per listener, per user and for the
//! whole process, the login backoff table and the log sampler. Sessions hold
//! [`Admission`] permits; everything is released when they drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::config::{Config, Listener, UserLimits};
use crate::limits::backoff::{AuthGuard, AuthVerdict};
use crate::limits::conns::{CapExceeded, ConnPermit, ConnectionCaps};
use crate::limits::rate::{KeyedRate, Rate, RateSpec};
use crate::limits::sample::LogSampler;
use crate::limits::Action;
use crate::proxy_protocol::TrustedProxies;

/// How often keyed limiters and tables are swept, so memory follows live keys.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Process-wide guards.
pub struct Guards {
    /// Failed-login backoff and bans, per IP and per IP + user.
    pub auth: Option<Arc<AuthGuard>>,
    /// Unauthenticated connections, in total and per IP.
    pub unauthenticated: Arc<ConnectionCaps<IpAddr>>,
    /// One log line per second per client and reason.
    pub sampler: Arc<LogSampler>,
    users: HashMap<String, Arc<UserGuard>>,
    listeners: HashMap<String, Arc<ListenerGuard>>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards").finish_non_exhaustive()
    }
}

/// Per-user state: open sessions and the command bucket shared by them.
pub struct UserGuard {
    /// Sessions open as this user.
    pub sessions: Arc<ConnectionCaps<()>>,
    /// Commands per second across the user's sessions.
    pub commands: Option<Rate>,
    /// What a command over the rate gets.
    pub action: Action,
}

/// Per-listener state.
pub struct ListenerGuard {
    /// New connections per second per IP.
    pub new_connections: Option<KeyedRate<IpAddr>>,
    /// Connections open per IP.
    pub connections: Arc<ConnectionCaps<IpAddr>>,
    /// Commands per second per IP.
    pub commands: Option<KeyedRate<IpAddr>>,
    /// Peers whose PROXY headers are trusted (and required).
    pub trusted: Option<TrustedProxies>,
}

impl Guards {
    /// Builds every guard the config asks for.
    pub fn new(config: &Config) -> Guards {
        let l = &config.limits;
        let users = config
            .users
            .iter()
            .map(|u| (u.name.clone(), Arc::new(UserGuard::new(&u.limits))))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|li| (li.name.clone(), Arc::new(ListenerGuard::new(li))))
            .collect();
        Guards {
            auth: l.login_backoff.clone().map(|p| Arc::new(AuthGuard::new(p))),
            unauthenticated: Arc::new(ConnectionCaps::new(
                Some(l.max_unauthenticated),
                Some(l.max_unauthenticated_per_ip),
            )),
            sampler: Arc::new(LogSampler::new(Duration::from_secs(1))),
            users,
            listeners,
        }
    }

    /// Guards for a reloaded config. Bans and backoff state carry over (unless the
    /// backoff policy itself changed), and so do the unauthenticated pool while its
    /// caps are unchanged; rates and per-user caps start afresh with the new values
    /// (sessions already open keep their permits on the old ones).
    pub fn reloaded(&self, config: &Config) -> Guards {
        let mut next = Guards::new(config);
        let same_policy = match (&self.auth, &config.limits.login_backoff) {
            (Some(old), Some(new)) => old.policy() == new,
            (None, None) => true,
            _ => false,
        };
        if same_policy {
            next.auth = self.auth.clone();
        }
        let l = &config.limits;
        if self.unauthenticated.max_total() == Some(l.max_unauthenticated)
            && self.unauthenticated.max_per_key() == Some(l.max_unauthenticated_per_ip)
        {
            next.unauthenticated = self.unauthenticated.clone();
        }
        next.sampler = self.sampler.clone();
        next
    }

    /// The guard of a listener (every configured listener has one).
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerGuard>> {
        self.listeners.get(name).cloned()
    }

    /// The guard of a configured user.
    pub fn user(&self, name: &str) -> Option<&Arc<UserGuard>> {
        self.users.get(name)
    }

    /// The login verdict for `user` from `ip` before its password is checked.
    pub fn login_verdict(&self, ip: IpAddr, user: &[u8]) -> AuthVerdict {
        match &self.auth {
            Some(a) => a.check(ip, &String::from_utf8_lossy(user), Instant::now()),
            None => AuthVerdict::Allow,
        }
    }

    /// Records a login outcome for the backoff table.
    pub fn record_login(&self, ip: IpAddr, user: &[u8], ok: bool) {
        if let Some(a) = &self.auth {
            let user = String::from_utf8_lossy(user);
            if ok {
                a.record_success(ip, &user, Instant::now());
            } else {
                a.record_failure(ip, &user, Instant::now());
            }
        }
    }

    /// Whether to write a log line for this refusal now (sampled per client and reason).
    pub fn log_refusal(&self, ip: IpAddr, reason: &'static str) -> bool {
        self.sampler.allow(ip, reason, Instant::now()).is_some()
    }

    /// Sweeps expired state; the server calls this every [`MAINTENANCE_INTERVAL`].
    pub fn maintain(&self) {
        let now = Instant::now();
        if let Some(a) = &self.auth {
            a.cleanup(now);
        }
        self.sampler.cleanup(now);
        for l in self.listeners.values() {
            if let Some(r) = &l.new_connections {
                r.maintain();
            }
            if let Some(r) = &l.commands {
                r.maintain();
            }
        }
    }
}

impl UserGuard {
    fn new(limits: &UserLimits) -> UserGuard {
        UserGuard {
            sessions: Arc::new(ConnectionCaps::new(limits.max_connections, None)),
            commands: limits.commands_per_second.map(Rate::new),
            action: limits.action,
        }
    }
}

impl ListenerGuard {
    fn new(l: &Listener) -> ListenerGuard {
        let lim = &l.limits;
        ListenerGuard {
            new_connections: lim.new_connections_per_ip.map(KeyedRate::new),
            connections: Arc::new(ConnectionCaps::new(None, lim.max_connections_per_ip)),
            commands: lim.commands_per_ip.map(KeyedRate::new),
            trusted: lim.proxy_protocol.clone().map(TrustedProxies::new),
        }
    }
}

/// Why a connection or session was refused by a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    /// Too many new connections per second from this IP.
    ConnectionRate,
    /// Too many open connections from this IP.
    ConnectionsPerIp,
    /// Too many unauthenticated connections in total.
    Unauthenticated,
    /// Too many unauthenticated connections from this IP.
    UnauthenticatedPerIp,
    /// Too many sessions for this user.
    SessionsPerUser,
}

impl CapRefusal {
    /// Bounded label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            CapRefusal::ConnectionRate => "connection_rate",
            CapRefusal::ConnectionsPerIp => "max_connections_per_ip",
            CapRefusal::Unauthenticated => "max_unauthenticated",
            CapRefusal::UnauthenticatedPerIp => "max_unauthenticated_per_ip",
            CapRefusal::SessionsPerUser => "max_connections_per_user",
        }
    }
}

/// The permits a session holds. Dropping it releases them.
pub struct Admission {
    /// The client's real address (after any PROXY header).
    pub ip: IpAddr,
    _per_ip: ConnPermit<IpAddr>,
    unauthenticated: Option<ConnPermit<IpAddr>>,
    user: Option<ConnPermit<()>>,
    user_guard: Option<Arc<UserGuard>>,
    listener: Arc<ListenerGuard>,
    credits: Credits,
}

impl Admission {
    /// Admits a new connection from `ip` on `listener`, or says which cap refused it.
    pub fn admit(
        guards: &Guards,
        listener: Arc<ListenerGuard>,
        ip: IpAddr,
    ) -> Result<Admission, CapRefusal> {
        // IPv6 clients are keyed by their /64, so one host cannot rotate addresses to reset its limits.
        let key = crate::limits::client_key(ip);
        if let Some(r) = &listener.new_connections {
            if r.check(&key).is_err() {
                return Err(CapRefusal::ConnectionRate);
            }
        }
        let per_ip = listener
            .connections
            .try_acquire(key)
            .map_err(|_| CapRefusal::ConnectionsPerIp)?;
        let unauth = guards
            .unauthenticated
            .try_acquire(key)
            .map_err(|e| match e {
                CapExceeded::Total => CapRefusal::Unauthenticated,
                CapExceeded::PerKey => CapRefusal::UnauthenticatedPerIp,
            })?;
        Ok(Admission {
            ip,
            _per_ip: per_ip,
            unauthenticated: Some(unauth),
            user: None,
            user_guard: None,
            listener,
            credits: Credits::default(),
        })
    }

    /// The client authenticated: it leaves the unauthenticated pool and takes a
    /// session slot of its user (or of the user it switched to).
    pub fn authenticated(&mut self, guards: &Guards, who: &Identity) -> Result<(), CapRefusal> {
        let guard = guards.user(who.name()).cloned();
        let permit = match &guard {
            Some(g) => Some(
                g.sessions
                    .try_acquire(())
                    .map_err(|_| CapRefusal::SessionsPerUser)?,
            ),
            None => None,
        };
        self.unauthenticated = None;
        self.user = permit;
        self.user_guard = guard;
        // Tokens paid ahead came from the previous user's bucket.
        self.credits.user = 0;
        Ok(())
    }

    /// Checks the command rates (per IP, then per user) for one command. `Err`
    /// carries how long to wait for a token and what the configured action is.
    ///
    /// `upcoming` says how many more commands are already here behind this one
    /// (asked only when a bucket must be charged): a bucket that holds tokens
    /// for all of them is charged once for the lot, and their checks then cost
    /// nothing. Each command is still charged exactly one token per bucket, in
    /// order; only the bucket's shared state is touched once per batch.
    pub fn command(
        &mut self,
        listener_action: Action,
        upcoming: impl FnOnce() -> u32,
    ) -> Result<(), (Duration, Action)> {
        let mut upcoming = Some(upcoming);
        let mut ahead = None;
        let mut ahead = || *ahead.get_or_insert_with(|| upcoming.take().map_or(0, |f| f()));
        if let Some(r) = &self.listener.commands {
            let key = crate::limits::client_key(self.ip);
            take(
                &mut self.credits.ip,
                r.spec(),
                &mut ahead,
                |n| r.check_n(&key, n),
                || r.check(&key),
            )
            .map_err(|wait| (wait, listener_action))?;
        }
        if let Some(g) = &self.user_guard {
            if let Some(r) = &g.commands {
                take(
                    &mut self.credits.user,
                    r.spec(),
                    &mut ahead,
                    |n| r.check_n(n),
                    || r.check(),
                )
                .map_err(|wait| (wait, g.action))?;
            }
        }
        Ok(())
    }

    /// Forgets the tokens paid ahead: the caller stopped before handling the
    /// commands they were for, and will charge them again when it does. Kept
    /// across a pause they would let a session spend them on top of what the
    /// buckets refilled meanwhile.
    pub fn drop_credits(&mut self) {
        self.credits = Credits::default();
    }
}

/// Command tokens a session has paid for ahead (see [`Admission::command`]).
#[derive(Debug, Default)]
struct Credits {
    ip: u32,
    user: u32,
}

/// One token from `credit`, or from the bucket: for this command and, when
/// the bucket has them, for the `ahead()` commands behind it.
fn take(
    credit: &mut u32,
    spec: RateSpec,
    ahead: &mut impl FnMut() -> u32,
    check_n: impl Fn(u32) -> Result<(), Duration>,
    check: impl Fn() -> Result<(), Duration>,
) -> Result<(), Duration> {
    if *credit > 0 {
        *credit -= 1;
        return Ok(());
    }
    // At most a bucketful at once, so a batch is never admitted over the burst.
    let more = ahead().min(spec.burst.get() - 1);
    if more > 0 && check_n(1 + more).is_ok() {
        *credit = more;
        return Ok(());
    }
    check()
}

/// A per-connection byte budget over a [`Rate`]: reads are capped at the
/// bucket's burst, and a read the bucket cannot pay for yet becomes a debt
/// that must be paid before the next read. So a client gets its configured
/// bytes per second, however large its writes.
pub struct ByteBudget {
    rate: Rate,
    debt: u32,
}

impl ByteBudget {
    /// A full budget.
    pub fn new(rate: Rate) -> ByteBudget {
        ByteBudget { rate, debt: 0 }
    }

    /// Most bytes to read at once.
    pub fn read_cap(&self) -> usize {
        self.rate.spec().burst.get() as usize
    }

    /// Charges a read of `n` bytes; `Some(wait)` when reading must pause.
    pub fn charge(&mut self, n: usize) -> Option<Duration> {
        self.debt = self
            .debt
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.settle()
    }

    /// Tries to pay what is owed; `Some(wait)` while it cannot.
    pub fn settle(&mut self) -> Option<Duration> {
        if self.debt == 0 {
            return None;
        }
        match self.rate.check_n(self.debt) {
            Ok(()) => {
                self.debt = 0;
                None
            }
            Err(wait) => Some(wait.max(Duration::from_millis(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::ScramVerifier;
    use std::path::Path;

    fn setup(limits: &str) -> (Guards, Identity) {
        let verifier = ScramVerifier::generate(b"pw")
            .expect("verifier")
            .to_pg_string();
        let text = format!(
            "[admin]\nenabled = false\n[limits]\n{limits}\n\
             [[backend]]\nname = \"r\"\nprotocol = \"redis\"\naddress = \"127.0.0.1:6379\"\n\
             password = \"Test-Only-Backend-Password-0123456789\"\n\
             [[listener]]\nname = \"l\"\nprotocol = \"redis\"\nlisten = \"127.0.0.1:0\"\n\
             backend = \"r\"\n[listener.tls]\nmode = \"disabled\"\n\
             [[user]]\nname = \"alice\"\npassword = \"{verifier}\"\n"
        );
        let config = Config::parse(&text, Path::new(".")).expect("config");
        let who = config
            .users
            .authenticate_password(b"alice", b"pw", "l")
            .expect("login");
        (Guards::new(&config), who)
    }

    fn session(guards: &Guards, who: &Identity) -> Admission {
        let listener = guards.listener("l").expect("listener guard");
        let mut a =
            Admission::admit(guards, listener, "192.0.2.7".parse().unwrap()).expect("admitted");
        a.authenticated(guards, who).expect("session slot");
        a
    }

    /// Commands admitted back to back until the first refusal.
    fn admitted(a: &mut Admission, upcoming_first: u32) -> u32 {
        let mut n = 0;
        let mut upcoming = upcoming_first;
        while a.command(Action::Reject, || upcoming).is_ok() {
            n += 1;
            upcoming = upcoming.saturating_sub(1);
        }
        n
    }

    #[test]
    fn paying_ahead_admits_what_one_by_one_admits() {
        // 100/s: a bucket of 10, a token back every 10 ms.
        for upcoming in [0, 3, 15, 500] {
            let (guards, who) = setup("commands_per_second_per_ip = 100");
            let mut a = session(&guards, &who);
            let n = admitted(&mut a, upcoming);
            assert!((10..=11).contains(&n), "{upcoming} ahead: admitted {n}");
        }
    }

    #[test]
    fn a_new_user_does_not_inherit_tokens_paid_from_the_old_users_bucket() {
        // 250/s per user: a bucket of 25.
        let (guards, who) = setup("commands_per_second_per_user = 250");
        let mut a = session(&guards, &who);
        // 16 paid at once; one used.
        assert_eq!(a.command(Action::Reject, || 15), Ok(()));
        // Logging in again drops the 15 paid ahead: 9 are left in the bucket.
        a.authenticated(&guards, &who).expect("session slot");
        let n = admitted(&mut a, 0);
        assert!((9..=10).contains(&n), "admitted {n}");
    }

    #[test]
    fn dropped_credits_are_charged_again() {
        let (guards, who) = setup("commands_per_second_per_user = 250");
        let mut a = session(&guards, &who);
        assert_eq!(a.command(Action::Reject, || 15), Ok(()));
        // The session stopped before the 15 it paid for: they are charged again
        // when they run, against the 9 tokens left.
        a.drop_credits();
        let n = admitted(&mut a, 0);
        assert!((9..=10).contains(&n), "admitted {n}");
    }
}
