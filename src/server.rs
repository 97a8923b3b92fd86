//! Listeners, the accept loop, connection permits and draining on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::{AuthFailure, Identity, Users};
use crate::config::{Config, Limits, Listener, Protocol, Scheduler};
use crate::guards::{Admission, Guards, MAINTENANCE_INTERVAL};
use crate::logging::escape;
use crate::metrics::UNKNOWN_USER;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::postgres::cancel::CancelRegistry;
use crate::shards::Shards;
use crate::stream::{discard_arrived, send_now, ClientTcp};
use arc_swap::ArcSwap;
use bytes::BytesMut;

/// Longest pause after an accept error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// After the grace period, how long closed sessions get to finish unwinding.
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How often idle backend sessions are checked for expiry.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Startup failed.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The worker threads could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

/// Everything a session needs, shared by all sessions of one listener.
#[derive(Debug)]
pub struct Context {
    /// The listener's config.
    pub listener: Arc<Listener>,
    /// The user table.
    pub users: Arc<Users>,
    /// Process-wide limits.
    pub limits: Limits,
    /// Metric handles for this listener.
    pub metrics: ListenerMetrics,
    /// Caps concurrent password verifications (PBKDF2) across the process.
    pub auth_permits: Arc<Semaphore>,
    /// Cancelled when sessions must close (end of the shutdown grace period).
    pub close: CancellationToken,
    /// PostgreSQL cancel keys, shared by every listener.
    pub cancels: Arc<CancelRegistry>,
    /// Rate limits, caps and login backoff, shared by every listener.
    pub guards: Arc<Guards>,
    /// The users after each reload, and what to do with removed users' sessions.
    pub reloads: tokio::sync::watch::Receiver<UsersEpoch>,
    /// Idle logged-in sessions of the listener's backend (PostgreSQL listeners).
    pub pg_pool: Option<Arc<crate::postgres::pool::Pool>>,
    /// Idle logged-in connections of the listener's backend (Redis listeners).
    pub redis_pool: Option<Arc<crate::redis::pool::Pool>>,
    /// Shared backend connections (Redis backends with `multiplex`).
    pub redis_mux: Option<Arc<crate::redis::mux::Muxes>>,
}

/// What a reload tells live sessions.
#[derive(Debug, Clone)]
pub struct UsersEpoch {
    /// The user table now.
    pub users: Arc<Users>,
    /// What happens to sessions of users no longer allowed.
    pub removed: crate::config::RemovedUserSessions,
}

impl Context {
    /// Whether a session of `who` on this listener must close after a reload.
    pub fn must_close(&self, epoch: &UsersEpoch, who: &Identity) -> bool {
        epoch.removed == crate::config::RemovedUserSessions::Close
            && !epoch
                .users
                .get(who.name())
                .is_some_and(|u| u.may_use(&self.listener.name))
    }
}

impl Context {
    /// One audit line and one metric per login attempt. The user label is the
    /// configured name or `unknown`; the logged name is escaped and truncated.
    pub fn audit_login(
        &self,
        peer: SocketAddr,
        user: &[u8],
        result: Result<&Identity, AuthFailure>,
    ) {
        let known = std::str::from_utf8(user)
            .ok()
            .filter(|u| self.users.contains(u));
        let label = known.unwrap_or(UNKNOWN_USER);
        match result {
            Ok(id) => {
                self.metrics.login(label, "success");
                info!(target: "portcullis::audit", event = "login", %peer, listener = %self.listener.name,
                    user = %escape(user), result = "success", method = id.method().as_str());
            }
            Err(f) => {
                self.metrics.login(label, "failure");
                info!(target: "portcullis::audit", event = "login", %peer, listener = %self.listener.name,
                    user = %escape(user), result = "failure", reason = f.as_str());
            }
        }
    }
}

/// Stops a running proxy.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    stop_accepting: CancellationToken,
}

impl Shutdown {
    /// A fresh handle.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts a graceful shutdown: stop accepting, drain, then close.
    pub fn trigger(&self) {
        self.stop_accepting.cancel();
    }
}

/// A proxy that is serving.
#[derive(Debug)]
pub struct Running {
    /// Bound address of each listener, by name.
    pub listeners: HashMap<String, SocketAddr>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    /// The metrics registry.
    pub metrics: Metrics,
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
    done: tokio::task::JoinHandle<()>,
}

/// Why a reload was refused (the old config keeps running).
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The new config does not load or validate.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Listeners were added, removed, renamed or moved: that needs a restart.
    #[error("listeners changed ({0}); restart to apply")]
    Listeners(String),
    /// No config file to reload from (the proxy was started from a value).
    #[error("no config file to reload")]
    NoSource,
}

/// Swaps in a new config for new connections and logins. Live sessions keep the
/// snapshot they started with.
pub struct Reloader {
    source: Option<std::path::PathBuf>,
    slots: HashMap<String, Arc<ArcSwap<Context>>>,
    shape: Vec<(String, SocketAddr, Protocol)>,
    guards: ArcSwap<Guards>,
    backends: ArcSwap<Vec<Arc<crate::config::Backend>>>,
    metrics: Metrics,
    auth_permits: Arc<Semaphore>,
    close: CancellationToken,
    cancels: Arc<CancelRegistry>,
    pools: Arc<Pools>,
    epochs: tokio::sync::watch::Sender<UsersEpoch>,
    lock: std::sync::Mutex<()>,
}

/// What pooled sessions depend on: a backend whose address, TLS, pool settings
/// or credentials change gets a new pool (the password enters only as a hash,
/// and the fingerprint is only ever compared).
fn pool_fingerprint(b: &crate::config::Backend) -> String {
    use sha2::Digest;
    let password = sha2::Sha256::digest(b.credential.password.expose());
    format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{password:x}",
        b.address,
        b.tls_mode,
        b.tls.as_ref().map(|t| &t.server_name),
        b.pool,
        b.credential.user,
    )
}

/// Idle backend sessions of every backend, by protocol.
#[derive(Debug, Default)]
struct Pools {
    pg: crate::postgres::pool::Registry,
    redis: crate::redis::pool::Registry,
}

impl Pools {
    fn retain(&self, names: &std::collections::HashSet<&str>) {
        self.pg.retain(names);
        self.redis.retain(names);
    }

    /// Closes expired idle sessions and updates the pool gauges.
    fn sweep(&self, metrics: &Metrics) {
        let now = Instant::now();
        let gauge = |name: &str, idle: usize| {
            metrics
                .pool_idle
                .with_label_values(&[name])
                .set(idle as i64);
        };
        for (name, pool) in self.pg.all() {
            for idle in pool.sweep(now) {
                metrics.pool_event(&name, "expired");
                tokio::spawn(crate::postgres::pool::close(idle, FORCE_CLOSE_WAIT));
            }
            gauge(&name, pool.idle());
        }
        for (name, pool) in self.redis.all() {
            for idle in pool.sweep(now) {
                metrics.pool_event(&name, "expired");
                tokio::spawn(crate::redis::pool::close(idle, FORCE_CLOSE_WAIT));
            }
            gauge(&name, pool.idle());
        }
    }

    /// Closes every idle session (shutdown, after every client session ended).
    async fn close_all(&self) {
        let mut closing = tokio::task::JoinSet::new();
        for (_, pool) in self.pg.all() {
            for s in pool.drain() {
                closing.spawn(crate::postgres::pool::close(s, FORCE_CLOSE_WAIT));
            }
        }
        for (_, pool) in self.redis.all() {
            for s in pool.drain() {
                closing.spawn(crate::redis::pool::close(s, FORCE_CLOSE_WAIT));
            }
        }
        while closing.join_next().await.is_some() {}
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn shape(config: &Config) -> Vec<(String, SocketAddr, Protocol)> {
    let mut v: Vec<_> = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen, l.protocol))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Reloader {
    fn context(&self, l: &Arc<Listener>, config: &Config, guards: &Arc<Guards>) -> Context {
        Context {
            listener: l.clone(),
            users: config.users.clone(),
            limits: config.limits.clone(),
            metrics: self.metrics.listener(&l.name),
            auth_permits: self.auth_permits.clone(),
            close: self.close.clone(),
            cancels: self.cancels.clone(),
            guards: guards.clone(),
            reloads: self.epochs.subscribe(),
            pg_pool: (l.backend.protocol == Protocol::Postgres).then(|| {
                self.pools.pg.get(
                    &l.backend.name,
                    pool_fingerprint(&l.backend),
                    l.backend.pool,
                )
            }),
            redis_pool: (l.backend.protocol == Protocol::Redis).then(|| {
                self.pools.redis.get(
                    &l.backend.name,
                    pool_fingerprint(&l.backend),
                    l.backend.pool,
                )
            }),
            redis_mux: (l.backend.protocol == Protocol::Redis && l.backend.multiplex).then(|| {
                Arc::new(crate::redis::mux::Muxes::new(
                    l.backend.clone(),
                    self.metrics.clone(),
                ))
            }),
        }
    }

    /// Applies a validated config: users, policies, limits, certificates and
    /// backend credentials for everything that starts from now on.
    pub fn apply(&self, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let new_shape = shape(&config);
        if new_shape != self.shape {
            let describe = |s: &[(String, SocketAddr, Protocol)]| {
                s.iter()
                    .map(|(n, a, p)| format!("{n}={}@{a}", p.as_str()))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            return Err(ReloadError::Listeners(format!(
                "{} -> {}",
                describe(&self.shape),
                describe(&new_shape)
            )));
        }
        for w in &config.warnings {
            warn!(event = "config_warning", "{w}");
        }
        let guards = Arc::new(self.guards.load().reloaded(&config));
        for l in &config.listeners {
            if let Some(slot) = self.slots.get(&l.name) {
                slot.store(Arc::new(self.context(l, &config, &guards)));
            }
        }
        self.guards.store(guards);
        self.backends.store(Arc::new(config.backends.clone()));
        let names: std::collections::HashSet<&str> =
            config.backends.iter().map(|b| b.name.as_str()).collect();
        self.pools.retain(&names);
        // Live sessions look at the new user table (and close if so configured).
        let _ = self.epochs.send(UsersEpoch {
            users: config.users.clone(),
            removed: config.removed_user_sessions,
        });
        info!(
            event = "config_reloaded",
            users = config.users.len(),
            listeners = config.listeners.len()
        );
        Ok(())
    }

    /// Reloads from the file the proxy was started with.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let result = Config::load(path)
            .map_err(ReloadError::from)
            .and_then(|c| self.apply(c));
        if let Err(e) = &result {
            warn!(event = "config_reload_failed", error = %e);
        }
        result
    }

    /// The backends `/readyz` checks now.
    pub fn backends(&self) -> Arc<Vec<Arc<crate::config::Backend>>> {
        self.backends.load_full()
    }
}

impl Running {
    /// Applies a new config (see [`Reloader::apply`]).
    pub fn reload_with(&self, config: Config) -> Result<(), ReloadError> {
        self.reloader.apply(config)
    }

    /// Reloads the config file the proxy was started with (SIGHUP does this).
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.reloader.reload()
    }

    /// The reloader, for signal handlers.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Handle to trigger shutdown from elsewhere.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Triggers shutdown and waits for it to complete.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        let _ = self.done.await;
    }

    /// Waits until the proxy has stopped (after a trigger from elsewhere).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Raises the soft limit on open files to the hard limit, as HAProxy and nginx
/// do: each proxied connection holds two descriptors, and many systems start
/// processes at a soft limit of 1024. Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Binds every listener and the admin endpoint, then serves in the background.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, StartError> {
    start_from(config, None, shutdown).await
}

/// [`start`], remembering the config file so that SIGHUP and `POST /reload` can reload it.
pub async fn start_from(
    config: Config,
    source: Option<std::path::PathBuf>,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    let close = CancellationToken::new();
    let tracker = TaskTracker::new();
    let conn_permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let auth_permits = Arc::new(Semaphore::new(config.limits.max_concurrent_auth));
    let cancels = Arc::new(CancelRegistry::new());
    let guards = Arc::new(Guards::new(&config));
    let pools = Arc::new(Pools::default());
    let shards = match config.scheduler {
        Scheduler::PerThread => {
            let n = config.worker_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            Some(Shards::start(n, config.yield_before_sleep).map_err(StartError::Workers)?)
        }
        Scheduler::WorkStealing => None,
    };
    for w in &config.warnings {
        warn!(event = "config_warning", "{w}");
    }
    if let Some(files) = raise_open_file_limit() {
        let wanted = 2 * config.limits.max_connections as u64 + 64;
        if files < wanted {
            warn!(event = "config_warning", open_files = files, max_connections = config.limits.max_connections,
                "the open-file limit is below two descriptors per connection: connections will be refused before max_connections");
        }
    }

    let mut bound = HashMap::new();
    let mut loops = Vec::new();
    for l in &config.listeners {
        let sock = TcpListener::bind(l.listen)
            .await
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.listen,
            source,
        })?;
        info!(event = "listening", listener = %l.name, protocol = l.protocol.as_str(), %addr, tls = l.tls.is_some());
        bound.insert(l.name.clone(), addr);
        loops.push((sock, l.clone()));
    }
    let mut reloader = Reloader {
        source,
        slots: HashMap::new(),
        shape: shape(&config),
        guards: ArcSwap::from(guards.clone()),
        backends: ArcSwap::from_pointee(config.backends.clone()),
        metrics: metrics.clone(),
        auth_permits,
        close: close.clone(),
        cancels,
        pools: pools.clone(),
        epochs: tokio::sync::watch::Sender::new(UsersEpoch {
            users: config.users.clone(),
            removed: config.removed_user_sessions,
        }),
        lock: std::sync::Mutex::new(()),
    };
    let mut accept = Vec::new();
    for (sock, l) in loops {
        let slot = Arc::new(ArcSwap::from_pointee(
            reloader.context(&l, &config, &guards),
        ));
        reloader.slots.insert(l.name.clone(), slot.clone());
        accept.push((sock, slot));
    }
    let reloader = Arc::new(reloader);
    {
        // Keyed limiters and tables shrink back as keys go quiet; idle
        // backend sessions close when they expire.
        let reloader = reloader.clone();
        let stop = shutdown.stop_accepting.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            let mut pool_tick = tokio::time::interval(POOL_SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => reloader.guards.load().maintain(),
                    _ = pool_tick.tick() => reloader.pools.sweep(&reloader.metrics),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    let admin = match config.admin {
        Some(addr) => {
            let sock = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    name: "admin".into(),
                    addr,
                    source,
                })?;
            let local = sock.local_addr().map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr,
                source,
            })?;
            info!(event = "listening", listener = "admin", addr = %local);
            let state = crate::admin::AdminState {
                metrics: metrics.clone(),
                reloader: reloader.clone(),
            };
            tokio::spawn(crate::admin::serve(
                sock,
                state,
                shutdown.stop_accepting.clone(),
            ));
            Some(local)
        }
        None => None,
    };

    let grace = config.limits.shutdown_grace;
    let stop = shutdown.stop_accepting.clone();
    let done = tokio::spawn(async move {
        let mut accept_loops = Vec::new();
        for (sock, slot) in accept {
            accept_loops.push(tokio::spawn(accept_loop(
                sock,
                slot,
                conn_permits.clone(),
                tracker.clone(),
                shards.clone(),
                stop.clone(),
            )));
        }
        for a in accept_loops {
            let _ = a.await;
        }
        tracker.close();
        info!(
            event = "draining",
            sessions = tracker.len(),
            grace_secs = grace.as_secs_f64()
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(event = "closing_sessions", sessions = tracker.len());
            close.cancel();
            let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, tracker.wait()).await;
        }
        // Every session has ended: the pooled backend sessions go too.
        pools.close_all().await;
        // The worker threads go last: the pooled connections were theirs.
        if let Some(shards) = shards {
            shards.stop().await;
        }
        info!(event = "stopped");
    });
    Ok(Running {
        listeners: bound,
        admin,
        metrics,
        reloader,
        shutdown,
        done,
    })
}

/// Accepts until shutdown. Errors (EMFILE, ECONNABORTED …) are counted, logged
/// at most once a second, and followed by a growing pause when the process is
/// out of descriptors or memory, so the loop never spins and never dies.
async fn accept_loop(
    sock: TcpListener,
    slot: Arc<ArcSwap<Context>>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shards: Option<Shards>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    let mut last_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = sock.accept() => r,
            _ = stop.cancelled() => return,
        };
        // Each connection runs on the config current when it arrived.
        let ctx = slot.load_full();
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                ctx.metrics
                    .all()
                    .connections_accepted
                    .with_label_values(&[ctx.metrics.listener()])
                    .inc();
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refuse_connection(&ctx, &tcp, "max_connections");
                    continue;
                };
                let ctx = ctx.clone();
                let Some(shards) = &shards else {
                    tracker.spawn(async move {
                        serve_connection(ctx, tcp, peer).await;
                        drop(permit);
                    });
                    continue;
                };
                // The socket moves to the shard's poller.
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        handoff_failed(&ctx, peer, &e);
                        continue;
                    }
                };
                shards.spawn(tracker.track_future(async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => serve_connection(ctx, tcp, peer).await,
                        // The socket is closed unanswered: the client sees what an
                        // accept error would have shown it.
                        Err(e) => handoff_failed(&ctx, peer, &e),
                    }
                    drop(permit);
                }));
            }
            Err(e) => {
                ctx.metrics
                    .all()
                    .accept_errors
                    .with_label_values(&[ctx.metrics.listener()])
                    .inc();
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(event = "accept_error", listener = %ctx.listener.name, error = %e);
                    last_log = Some(Instant::now());
                }
                if is_resource_exhaustion(&e) {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// A connection accepted but not handed to a worker thread (its poller could
/// not take the socket: `fs.epoll.max_user_watches`, memory): counted as an
/// accept error, and logged at most once a second per client address.
fn handoff_failed(ctx: &Context, peer: SocketAddr, e: &std::io::Error) {
    ctx.metrics
        .all()
        .accept_errors
        .with_label_values(&[ctx.metrics.listener()])
        .inc();
    if ctx.guards.log_refusal(peer.ip(), "worker_handoff") {
        warn!(event = "accept_error", listener = %ctx.listener.name, %peer, error = %e, stage = "worker_handoff");
    }
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Refuses a connection over the cap without any TLS work.
fn refuse_connection(ctx: &Arc<Context>, tcp: &TcpStream, reason: &'static str) {
    ctx.metrics.connection_refused(reason);
    // A plain Redis listener can say why; over TLS the reply would need a handshake first.
    // PostgreSQL clients read an ErrorResponse before any startup packet (as PostgreSQL
    // itself answers "too many clients" from the postmaster).
    match ctx.listener.protocol {
        Protocol::Redis if ctx.listener.tls.is_none() => {
            send_now(tcp, b"-ERR max number of clients reached\r\n");
        }
        Protocol::Postgres => {
            let e = crate::postgres::messages::error_response(
                crate::postgres::messages::Severity::Fatal,
                "53300",
                "sorry, too many clients already",
            );
            send_now(tcp, &e);
        }
        Protocol::Redis => {}
    }
    discard_arrived(tcp);
}

/// Longest wait for a PROXY protocol header (and for the first bytes of an
/// untrusted peer, to see whether it sends one): the login deadline bounds it too.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest PROXY header read: v2's 16-byte preamble plus its capped body.
const MAX_PROXY_READ: usize = 16 + crate::proxy_protocol::MAX_V2_LEN;

/// The PROXY protocol phase. From a trusted peer a header is required and gives
/// the real client address; from any other peer a header is refused. Bytes read
/// past the header (a ClientHello, an SSLRequest) are handed to the session.
async fn proxy_phase(
    ctx: &Context,
    mut tcp: TcpStream,
    peer: SocketAddr,
    trusted: &crate::proxy_protocol::TrustedProxies,
) -> Result<(ClientTcp, SocketAddr), (TcpStream, &'static str)> {
    use crate::proxy_protocol::{decode, starts_like_header, ProxyHeader};
    use tokio::io::AsyncReadExt;
    let from_trusted = trusted.trusts(peer.ip());
    let mut buf = BytesMut::with_capacity(256);
    let deadline = tokio::time::Instant::now() + PROXY_HEADER_TIMEOUT.min(ctx.limits.login_timeout);
    loop {
        if from_trusted {
            match decode(&buf) {
                Ok(Some((header, n))) => {
                    let rest = buf.split_off(n);
                    let addr = match header {
                        ProxyHeader::Proxied { source, .. } => source,
                        // LOCAL (the proxy's own health checks) and UNKNOWN: the peer itself.
                        ProxyHeader::Local | ProxyHeader::Unknown => peer,
                    };
                    return Ok((ClientTcp::new(tcp, rest), addr));
                }
                Ok(None) if buf.len() < MAX_PROXY_READ => {}
                Ok(None) | Err(_) => return Err((tcp, "proxy_header_invalid")),
            }
        } else {
            match starts_like_header(&buf) {
                Some(true) => return Err((tcp, "proxy_header_untrusted")),
                Some(false) => return Ok((ClientTcp::new(tcp, buf), peer)),
                None => {}
            }
        }
        let read = tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // The peer said nothing (yet) or went away: an untrusted peer is served as it is.
            _ if !from_trusted && !buf.is_empty() => return Ok((ClientTcp::new(tcp, buf), peer)),
            _ => {
                return Err((
                    tcp,
                    if from_trusted {
                        "proxy_header_missing"
                    } else {
                        "closed"
                    },
                ))
            }
        }
    }
}

/// [`refuse_connection`] for a connection already wrapped.
fn refuse_client(ctx: &Arc<Context>, tcp: &ClientTcp, reason: &'static str) {
    ctx.metrics.connection_refused(reason);
    match ctx.listener.protocol {
        Protocol::Redis if ctx.listener.tls.is_none() => {
            send_now(tcp.tcp(), b"-ERR max number of clients reached\r\n");
        }
        Protocol::Postgres => {
            let e = crate::postgres::messages::error_response(
                crate::postgres::messages::Severity::Fatal,
                "53300",
                "sorry, too many clients already",
            );
            send_now(tcp.tcp(), &e);
        }
        Protocol::Redis => {}
    }
    discard_arrived(tcp.tcp());
}

async fn serve_connection(ctx: Arc<Context>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Some(guard) = ctx.guards.listener(&ctx.listener.name) else {
        return;
    };
    let (tcp, client) = match &guard.trusted {
        None => (ClientTcp::new(tcp, BytesMut::new()), peer),
        Some(trusted) => match proxy_phase(&ctx, tcp, peer, trusted).await {
            Ok(x) => x,
            Err((tcp, reason)) => {
                if reason != "closed" {
                    if ctx.guards.log_refusal(peer.ip(), reason) {
                        info!(event = "connection_refused", listener = %ctx.listener.name, %peer, reason);
                    }
                    ctx.metrics.connection_refused(reason);
                }
                drop(tcp);
                return;
            }
        },
    };
    let admission = match Admission::admit(&ctx.guards, guard, client.ip()) {
        Ok(a) => a,
        Err(refusal) => {
            let reason = refusal.label();
            if ctx.guards.log_refusal(client.ip(), reason) {
                info!(event = "connection_refused", listener = %ctx.listener.name, peer = %client, reason);
            }
            refuse_client(&ctx, &tcp, reason);
            return;
        }
    };
    let started = Instant::now();
    ctx.metrics.active.inc();
    match ctx.listener.protocol {
        Protocol::Redis => crate::redis::session::serve(&ctx, tcp, client, admission).await,
        Protocol::Postgres => crate::postgres::session::serve(&ctx, tcp, client, admission).await,
    }
    ctx.metrics.active.dec();
    ctx.metrics
        .all()
        .session_seconds
        .with_label_values(&[ctx.metrics.listener()])
        .observe(started.elapsed().as_secs_f64());
}
