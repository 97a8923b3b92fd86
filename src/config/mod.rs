//! Configuration: raw TOML structs, then validated types the proxy runs on.
//!
//! Parsing happens once, at startup (and at reload): secrets are resolved from
//! `${ENV}` or `*_file`, clear-text user passwords become SCRAM verifiers and
//! are dropped, TLS material is loaded into rustls configs and command rules
//! are compiled. Every error names the key at fault; none prints a secret.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::auth::scram::ScramVerifier;
use crate::auth::secret::Secret;
use crate::auth::{Credential, User, Users};
use crate::pool::PoolConfig;
use crate::redis::policy::{CommandPolicy, DEFAULT_RULES};
use crate::tls::{self, ClientCertMode};

mod abuse;
pub use abuse::{ListenerLimits, UserLimits};
use abuse::{RawListenerLimits, RawProxyProtocol, RawUserLimits};

/// A configuration error; `Display` names the offending key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys. Only the parser's message and
    /// the position are kept: its usual snippet would quote the line, which may
    /// hold a secret.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said (never the line's text).
        message: String,
    },
    /// A key holds an unacceptable value.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `listener[redis].tls.cert`.
        key: String,
        /// What is wrong (never the secret itself).
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Which protocol a listener or backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// RESP (Redis, Valkey, KeyDB).
    Redis,
    /// The PostgreSQL frontend/backend protocol.
    Postgres,
}

impl Protocol {
    /// Lowercase name for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

// ---------------------------------------------------------------- raw TOML

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    allow_weak_secrets: bool,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "listener")]
    listeners: Vec<RawListener>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default)]
    removed_user_sessions: RemovedUserSessions,
}

/// A missing key takes its default, as a missing section does: 0 worker
/// threads (one per CPU), the per-thread scheduler, no yield before sleeping.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRuntime {
    worker_threads: usize,
    scheduler: Scheduler,
    yield_before_sleep: bool,
}

/// How connections are spread over the worker threads (`runtime.scheduler`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Each worker thread runs its own event loop and keeps the connections
    /// handed to it (round robin at accept), as HAProxy, nginx and Envoy do:
    /// a session's sockets, timers and wakeups stay on one thread.
    #[default]
    PerThread,
    /// One tokio runtime whose threads steal work from each other: a busy
    /// connection can move to an idle thread, at the cost of cross-thread wakeups.
    WorkStealing,
}

/// What a reload does to the live sessions of a user it removes or disables.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovedUserSessions {
    /// They run on until the client ends them (the default, as a password
    /// change in PostgreSQL leaves sessions open).
    #[default]
    Continue,
    /// They are closed at once.
    Close,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    login_timeout: Duration,
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    max_concurrent_auth: Option<usize>,
    #[serde(default = "default_password_cache_ttl", with = "humantime_serde")]
    password_cache_ttl: Duration,
    #[serde(default = "default_max_pipeline")]
    max_pipeline: usize,
    // Abuse controls (see `abuse.rs`); per-IP and per-connection ones may be overridden per listener.
    #[serde(default)]
    max_connections_per_ip: Option<u32>,
    #[serde(default)]
    new_connections_per_second_per_ip: Option<u32>,
    #[serde(default = "default_max_unauthenticated")]
    max_unauthenticated: u32,
    #[serde(default = "default_max_unauthenticated_per_ip")]
    max_unauthenticated_per_ip: u32,
    #[serde(default = "default_max_auth_attempts")]
    max_auth_attempts: u32,
    #[serde(default)]
    commands_per_second_per_ip: Option<u32>,
    #[serde(default)]
    commands_per_second_per_user: Option<u32>,
    #[serde(default)]
    bytes_per_second_per_connection: Option<u32>,
    #[serde(default)]
    rate_limit_action: crate::limits::Action,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default)]
    login_backoff: abuse::RawBackoff,
}

// Connection pools open dozens of connections at once from one host (and many
// clients may share one NAT address): the per-IP default leaves room for that
// while still bounding a single address's idle handshakes.
fn default_max_unauthenticated() -> u32 {
    4096
}
fn default_max_unauthenticated_per_ip() -> u32 {
    256
}
fn default_max_auth_attempts() -> u32 {
    5
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            login_timeout: default_login_timeout(),
            shutdown_grace: default_shutdown_grace(),
            max_connections: default_max_connections(),
            max_concurrent_auth: None,
            password_cache_ttl: default_password_cache_ttl(),
            max_pipeline: default_max_pipeline(),
            max_connections_per_ip: None,
            new_connections_per_second_per_ip: None,
            max_unauthenticated: default_max_unauthenticated(),
            max_unauthenticated_per_ip: default_max_unauthenticated_per_ip(),
            max_auth_attempts: default_max_auth_attempts(),
            commands_per_second_per_ip: None,
            commands_per_second_per_user: None,
            bytes_per_second_per_connection: None,
            rate_limit_action: crate::limits::Action::default(),
            idle_timeout: None,
            login_backoff: abuse::RawBackoff::default(),
        }
    }
}

fn default_login_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_pipeline() -> usize {
    4096
}
fn default_password_cache_ttl() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    protocol: Protocol,
    listen: String,
    backend: String,
    #[serde(default)]
    tls: RawServerTls,
    #[serde(default)]
    postgres: RawPgListener,
    #[serde(default)]
    limits: RawListenerLimits,
    #[serde(default)]
    proxy_protocol: Option<RawProxyProtocol>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgListener {
    #[serde(default)]
    auth: PgAuth,
    max_message_size: Option<usize>,
}

/// How PostgreSQL clients prove their password to the proxy.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum PgAuth {
    /// SCRAM-SHA-256 (and -PLUS on TLS).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `md5` in pg_hba.conf terms: with SCRAM verifiers stored, PostgreSQL
    /// runs SCRAM instead, and so does the proxy.
    #[serde(rename = "md5")]
    Md5,
    /// Clear-text password (TLS listeners only), checked against the verifier.
    #[serde(rename = "password")]
    Password,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawTlsMode {
    #[default]
    Required,
    Optional,
    Disabled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    #[serde(default)]
    mode: RawTlsMode,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_cert: ClientCertMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    protocol: Protocol,
    address: String,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default)]
    tls: RawClientTls,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    multiplex: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

/// `[backend.pool]`: logged-in backend sessions kept for reuse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default = "default_pool_size")]
    size: usize,
    #[serde(default = "default_pool_max_idle")]
    max_idle: usize,
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default = "default_pool_max_lifetime", with = "humantime_serde")]
    max_lifetime: Duration,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            size: default_pool_size(),
            max_idle: default_pool_max_idle(),
            idle_timeout: default_pool_idle_timeout(),
            max_lifetime: default_pool_max_lifetime(),
        }
    }
}

/// PgBouncer's `default_pool_size`.
fn default_pool_size() -> usize {
    20
}

fn default_pool_max_idle() -> usize {
    100
}

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// PgBouncer's `server_lifetime`.
fn default_pool_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}

impl RawPool {
    fn validate(self, key: &str) -> Result<PoolConfig, ConfigError> {
        if self.size == 0 || self.max_idle == 0 {
            return Ok(PoolConfig::OFF);
        }
        Ok(PoolConfig {
            per_key: self.size,
            total: self.max_idle.max(self.size),
            idle_timeout: positive(self.idle_timeout, &format!("{key}.pool.idle_timeout"))?,
            max_lifetime: positive(self.max_lifetime, &format!("{key}.pool.max_lifetime"))?,
        })
    }
}

/// TLS towards a backend.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP.
    #[default]
    Disabled,
    /// PostgreSQL only: TLS when the server offers it (chain checked), else plain.
    Prefer,
    /// TLS, chain checked against the CA, name not checked.
    Required,
    /// TLS, chain and name checked.
    VerifyFull,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    #[serde(default)]
    mode: BackendTlsMode,
    ca: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
    listeners: Option<Vec<String>>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    client_cert_names: Vec<String>,
    backend_user: Option<String>,
    backend_password: Option<String>,
    backend_password_file: Option<PathBuf>,
    #[serde(default)]
    redis: RawRedisPolicy,
    #[serde(default)]
    postgres: RawPgPolicy,
    #[serde(default)]
    limits: RawUserLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgPolicy {
    databases: Option<Vec<String>>,
    #[serde(default)]
    allow_replication: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisPolicy {
    commands: Option<String>,
}

// ---------------------------------------------------------- validated types

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Log output format.
    pub log_format: LogFormat,
    /// Admin HTTP endpoint, if enabled.
    pub admin: Option<SocketAddr>,
    /// What a reload does to sessions of removed or disabled users.
    pub removed_user_sessions: RemovedUserSessions,
    /// Threads serving connections; `None`: one per CPU. Read at start only.
    pub worker_threads: Option<usize>,
    /// How connections are spread over those threads. Read at start only.
    pub scheduler: Scheduler,
    /// Whether a worker thread with nothing to run first yields its CPU to
    /// other runnable threads before it sleeps ([`crate::shards`]). Read at start only.
    pub yield_before_sleep: bool,
    /// Process-wide limits.
    pub limits: Limits,
    /// Client-facing listeners.
    pub listeners: Vec<Arc<Listener>>,
    /// Backends, by name.
    pub backends: Vec<Arc<Backend>>,
    /// The proxy's own users.
    pub users: Arc<Users>,
    /// Non-fatal findings to log at startup (world-readable secrets …).
    pub warnings: Vec<String>,
}

/// Process-wide limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time from accept to authenticated, across TLS and login (absolute, not per read).
    pub login_timeout: Duration,
    /// How long shutdown waits for sessions before closing them.
    pub shutdown_grace: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most password verifications running at once (each costs a PBKDF2).
    pub max_concurrent_auth: usize,
    /// Most replies a session may owe its client at once; past it the proxy stops reading.
    pub max_pipeline: usize,
    /// Unauthenticated connections allowed at once, in total.
    pub max_unauthenticated: u32,
    /// Unauthenticated connections allowed at once from one IP.
    pub max_unauthenticated_per_ip: u32,
    /// Password checks one connection may make before it is closed.
    pub max_auth_attempts: u32,
    /// Failed-login backoff and bans; `None` when disabled.
    pub login_backoff: Option<crate::limits::backoff::BackoffPolicy>,
}

/// TLS on a client-facing listener.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls config (certificate, client verifier, versions).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether the listener also accepts plain connections.
    pub required: bool,
    /// Whether client certificates are requested or required.
    pub client_cert: ClientCertMode,
    /// `tls-server-end-point` channel binding data for our certificate (RFC 5929).
    pub end_point: Vec<u8>,
    /// When the certificate expires (Unix seconds), for `portcullis audit`.
    pub not_after: i64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("required", &self.required)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// A client-facing listener.
#[derive(Debug)]
pub struct Listener {
    /// Name used in logs, metrics and user allowlists.
    pub name: String,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Address to bind.
    pub listen: SocketAddr,
    /// TLS, unless disabled.
    pub tls: Option<ServerTls>,
    /// Where authenticated sessions go.
    pub backend: Arc<Backend>,
    /// PostgreSQL options.
    pub postgres: PgListener,
    /// Abuse controls (global values with this listener's overrides).
    pub limits: ListenerLimits,
}

/// PostgreSQL listener options.
#[derive(Debug, Clone)]
pub struct PgListener {
    /// Password method offered to clients.
    pub auth: PgAuth,
    /// Largest message relayed in either direction.
    pub max_message_size: usize,
}

/// Default cap on one PostgreSQL message: large enough for big rows and COPY
/// chunks, small enough that a lying length cannot make the proxy wait forever.
pub const DEFAULT_PG_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Most worker threads `runtime.worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

/// TLS towards a backend.
#[derive(Clone)]
pub struct BackendTls {
    /// The rustls client config.
    pub config: Arc<rustls::ClientConfig>,
    /// Name sent as SNI and checked against the certificate.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A backend server the proxy logs in to.
#[derive(Debug)]
pub struct Backend {
    /// Name used in logs and metrics.
    pub name: String,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// `host:port`.
    pub address: String,
    /// Credentials used unless a user overrides them.
    pub credential: Credential,
    /// Connect (TCP + TLS + login) deadline.
    pub connect_timeout: Duration,
    /// TLS mode.
    pub tls_mode: BackendTlsMode,
    /// TLS, if enabled.
    pub tls: Option<BackendTls>,
    /// Logged-in sessions kept for reuse.
    pub pool: PoolConfig,
    /// Redis: the sessions of a worker thread share one connection per
    /// backend user (`redis::mux`), instead of one connection each.
    pub multiplex: bool,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Validates config text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(&e, text))?;
        let mut warnings = Vec::new();
        let mut ctx = Ctx {
            base,
            warnings: &mut warnings,
            allow_weak: raw.allow_weak_secrets,
        };

        let limits = Limits {
            login_timeout: positive(raw.limits.login_timeout, "limits.login_timeout")?,
            shutdown_grace: raw.limits.shutdown_grace,
            max_connections: at_least_one(raw.limits.max_connections, "limits.max_connections")?,
            max_concurrent_auth: match raw.limits.max_concurrent_auth {
                Some(n) => at_least_one(n, "limits.max_concurrent_auth")?,
                // One PBKDF2 per core keeps a login flood from taking more than the CPU it has.
                None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            },
            max_pipeline: at_least_one(raw.limits.max_pipeline, "limits.max_pipeline")?,
            max_unauthenticated: raw.limits.max_unauthenticated,
            max_unauthenticated_per_ip: raw.limits.max_unauthenticated_per_ip,
            max_auth_attempts: raw.limits.max_auth_attempts.max(1),
            login_backoff: raw.limits.login_backoff.validate()?,
        };
        let global_abuse = abuse::GlobalAbuse::from_raw(&raw.limits)?;

        let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
        let mut backend_list = Vec::new();
        for b in raw.backends {
            let key = format!("backend[{}]", b.name);
            if backends.contains_key(&b.name) {
                return Err(invalid(key, "duplicate backend name"));
            }
            let backend = Arc::new(ctx.backend(b, &key)?);
            backends.insert(backend.name.clone(), backend.clone());
            backend_list.push(backend);
        }

        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        for l in raw.listeners {
            let key = format!("listener[{}]", l.name);
            if !names.insert(l.name.clone()) {
                return Err(invalid(key, "duplicate listener name"));
            }
            let listen: SocketAddr = l
                .listen
                .parse()
                .map_err(|e| invalid(format!("{key}.listen"), format!("not an address: {e}")))?;
            let backend = backends
                .get(&l.backend)
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.backend"),
                        format!("no backend named {:?}", l.backend),
                    )
                })?
                .clone();
            if backend.protocol != l.protocol {
                return Err(invalid(
                    format!("{key}.backend"),
                    "backend speaks another protocol",
                ));
            }
            let tls = ctx.server_tls(&l.tls, l.protocol, &key)?;
            if l.protocol == Protocol::Redis
                && (l.postgres.max_message_size.is_some() || l.postgres.auth != PgAuth::default())
            {
                return Err(invalid(
                    format!("{key}.postgres"),
                    "only for postgres listeners",
                ));
            }
            if l.postgres.auth == PgAuth::Password && tls.as_ref().is_none_or(|t| !t.required) {
                return Err(invalid(
                    format!("{key}.postgres.auth"),
                    "clear-text passwords need tls.mode = \"required\"",
                ));
            }
            let postgres = PgListener {
                auth: l.postgres.auth,
                max_message_size: at_least_one(
                    l.postgres
                        .max_message_size
                        .unwrap_or(DEFAULT_PG_MAX_MESSAGE),
                    &format!("{key}.postgres.max_message_size"),
                )?,
            };
            let limits = global_abuse.listener(&l.limits, l.proxy_protocol.as_ref(), &key)?;
            listeners.push(Arc::new(Listener {
                name: l.name,
                protocol: l.protocol,
                listen,
                tls,
                backend,
                postgres,
                limits,
            }));
        }
        if listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is required"));
        }

        let mut users = Vec::new();
        let mut user_names = HashSet::new();
        for u in raw.users {
            let key = format!("user[{}]", u.name);
            if !user_names.insert(u.name.clone()) {
                return Err(invalid(key, "duplicate user name"));
            }
            if let Some(ls) = &u.listeners {
                if let Some(bad) = ls.iter().find(|l| !names.contains(*l)) {
                    return Err(invalid(
                        format!("{key}.listeners"),
                        format!("no listener named {bad:?}"),
                    ));
                }
            }
            let limits = global_abuse.user(&u.limits, &key)?;
            users.push(ctx.user(u, limits, &key)?);
        }

        // Mock verifiers for unknown names need a key that is secret and the same on
        // every restart and replica: derive it from the backend secrets, which are.
        let mock_key = {
            use hmac::Mac;
            let mut mac =
                <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(b"portcullis mock-auth key v1")
                    .expect("HMAC takes any key length");
            for b in &backend_list {
                let pw = b.credential.password.expose();
                mac.update(&(pw.len() as u64).to_be_bytes());
                mac.update(pw);
            }
            let out: [u8; 32] = mac.finalize().into_bytes().into();
            out
        };

        let admin = if raw.admin.enabled {
            Some(
                raw.admin
                    .listen
                    .parse()
                    .map_err(|e| invalid("admin.listen", format!("not an address: {e}")))?,
            )
        } else {
            None
        };

        Ok(Config {
            log_format: raw.log_format,
            admin,
            removed_user_sessions: raw.reload.removed_user_sessions,
            worker_threads: match raw.runtime.worker_threads {
                0 => None,
                n if n > MAX_WORKER_THREADS => {
                    return Err(invalid(
                        "runtime.worker_threads",
                        format!("at most {MAX_WORKER_THREADS}"),
                    ))
                }
                n => Some(n),
            },
            scheduler: raw.runtime.scheduler,
            yield_before_sleep: raw.runtime.yield_before_sleep,
            limits,
            listeners,
            backends: backend_list,
            users: {
                let users = Users::with_mock_key(users, mock_key)
                    .with_password_cache(raw.limits.password_cache_ttl);
                let odd = users.odd_iteration_users();
                if !odd.is_empty() {
                    warnings.push(format!(
                        "users {odd:?} have verifiers with an unusual iteration count: they can be told apart \
                         from unknown names; re-hash them with the count the others use"
                    ));
                }
                Arc::new(users)
            },
            warnings,
        })
    }
}

fn syntax_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text.as_bytes()[..at];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    ConfigError::Syntax {
        line,
        column,
        message: e.message().to_string(),
    }
}

fn positive(d: Duration, key: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn at_least_one(n: usize, key: &str) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(n)
    }
}

/// Shared state while validating: where relative paths start, warnings, policy on weak secrets.
struct Ctx<'a> {
    base: &'a Path,
    warnings: &'a mut Vec<String>,
    allow_weak: bool,
}

impl Ctx<'_> {
    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Warns when a file holding a key or secret can be read by anyone.
    fn check_private(&mut self, path: &Path, key: &str) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                self.warnings.push(format!(
                    "{key}: {} is world-readable; chmod o-r it",
                    path.display()
                ));
            }
        }
    }

    /// Resolves a secret written inline as `${ENV_VAR}` or read from a `*_file` path.
    ///
    /// Returns `Ok(None)` when neither key is set, and the literal when the
    /// value is not an `${...}` reference (callers decide whether that is allowed).
    fn secret(
        &mut self,
        value: Option<&str>,
        file: Option<&Path>,
        key: &str,
    ) -> Result<Option<(Secret, SecretSource)>, ConfigError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(invalid(
                key,
                format!("set either {key} or {key}_file, not both"),
            )),
            (None, None) => Ok(None),
            (None, Some(f)) => {
                let path = self.path(f);
                let mut bytes = std::fs::read(&path).map_err(|e| {
                    invalid(
                        format!("{key}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                self.check_private(&path, &format!("{key}_file"));
                // Docker secrets and `echo > file` end in a newline that is not part of the secret.
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                Ok(Some((Secret::new(bytes), SecretSource::External)))
            }
            (Some(v), None) => match env_reference(v) {
                Some(var) => {
                    let val = std::env::var_os(var).ok_or_else(|| {
                        invalid(key, format!("environment variable {var} is not set"))
                    })?;
                    use std::os::unix::ffi::OsStringExt;
                    Ok(Some((Secret::new(val.into_vec()), SecretSource::External)))
                }
                None => Ok(Some((
                    Secret::new(v.as_bytes().to_vec()),
                    SecretSource::Literal,
                ))),
            },
        }
    }

    fn backend(&mut self, b: RawBackend, key: &str) -> Result<Backend, ConfigError> {
        let (password, _) = self
            .secret(
                b.password.as_deref(),
                b.password_file.as_deref(),
                &format!("{key}.password"),
            )?
            .ok_or_else(|| {
                invalid(
                    format!("{key}.password"),
                    "a backend needs the password the proxy logs in with",
                )
            })?;
        self.check_strength(&password, &format!("{key}.password"))?;
        let tls = match b.tls.mode {
            BackendTlsMode::Disabled => None,
            mode => {
                let ca = b.tls.ca.as_ref().map(|p| self.path(p));
                let host = b
                    .tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&b.address).to_string());
                let server_name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| invalid(format!("{key}.tls.server_name"), e.to_string()))?;
                let verify = mode == BackendTlsMode::VerifyFull;
                let config = tls::client_config(ca.as_deref(), verify)
                    .map_err(|e| invalid(format!("{key}.tls.ca"), e.to_string()))?;
                Some(BackendTls {
                    config,
                    server_name,
                })
            }
        };
        if b.protocol == Protocol::Redis && b.tls.mode == BackendTlsMode::Prefer {
            return Err(invalid(
                format!("{key}.tls.mode"),
                "\"prefer\" is for PostgreSQL backends only",
            ));
        }
        if b.protocol == Protocol::Postgres && b.multiplex {
            return Err(invalid(
                format!("{key}.multiplex"),
                "is for Redis backends only (PostgreSQL sessions are pooled, see [backend.pool])",
            ));
        }
        if b.protocol == Protocol::Postgres && b.user.is_none() {
            return Err(invalid(
                format!("{key}.user"),
                "a PostgreSQL backend needs the role the proxy logs in as",
            ));
        }
        if b.address.parse::<SocketAddr>().is_err() && !b.address.contains(':') {
            return Err(invalid(format!("{key}.address"), "expected host:port"));
        }
        Ok(Backend {
            name: b.name,
            protocol: b.protocol,
            address: b.address,
            tls_mode: b.tls.mode,
            credential: Credential::new(b.user, password),
            connect_timeout: positive(b.connect_timeout, &format!("{key}.connect_timeout"))?,
            tls,
            pool: b.pool.validate(key)?,
            multiplex: b.multiplex,
        })
    }

    /// The security guide's rule: backend passwords of at least 32 characters from 3 classes.
    fn check_strength(&self, s: &Secret, key: &str) -> Result<(), ConfigError> {
        if self.allow_weak || is_strong(s.expose()) {
            return Ok(());
        }
        Err(invalid(
            key,
            "too weak: use at least 32 characters from 3 of lower case, upper case, digits and symbols \
             (or set allow_weak_secrets = true)",
        ))
    }

    fn server_tls(
        &mut self,
        t: &RawServerTls,
        protocol: Protocol,
        key: &str,
    ) -> Result<Option<ServerTls>, ConfigError> {
        if t.mode == RawTlsMode::Disabled {
            return Ok(None);
        }
        if t.mode == RawTlsMode::Optional && protocol == Protocol::Redis {
            return Err(invalid(
                format!("{key}.tls.mode"),
                "Redis has no in-band TLS upgrade: use \"required\" or \"disabled\"",
            ));
        }
        let cert = t
            .cert
            .as_ref()
            .ok_or_else(|| invalid(format!("{key}.tls.cert"), "required when TLS is on"))?;
        let tls_key = t
            .key
            .as_ref()
            .ok_or_else(|| invalid(format!("{key}.tls.key"), "required when TLS is on"))?;
        let (cert, tls_key) = (self.path(cert), self.path(tls_key));
        self.check_private(&tls_key, &format!("{key}.tls.key"));
        let client_ca = t.client_ca.as_ref().map(|p| self.path(p));
        if t.client_cert != ClientCertMode::None && client_ca.is_none() {
            return Err(invalid(
                format!("{key}.tls.client_ca"),
                "required when client_cert is optional or required",
            ));
        }
        let alpn: &[&[u8]] = match protocol {
            // PostgreSQL 17's direct TLS requires ALPN "postgresql".
            Protocol::Postgres => &[b"postgresql"],
            Protocol::Redis => &[],
        };
        let config = tls::server_config(&cert, &tls_key, client_ca.as_deref(), t.client_cert, alpn)
            .map_err(|e| invalid(format!("{key}.tls"), e.to_string()))?;
        let end_point = tls::end_point_hash(&cert)
            .map_err(|e| invalid(format!("{key}.tls.cert"), e.to_string()))?;
        Ok(Some(ServerTls {
            config,
            required: t.mode == RawTlsMode::Required,
            client_cert: t.client_cert,
            end_point,
            not_after: tls::not_after(&cert)
                .map_err(|e| invalid(format!("{key}.tls.cert"), e.to_string()))?,
        }))
    }

    fn user(&mut self, u: RawUser, limits: UserLimits, key: &str) -> Result<User, ConfigError> {
        let pkey = format!("{key}.password");
        let verifier = match self.secret(
            u.password.as_deref(),
            u.password_file.as_deref(),
            &pkey,
        )? {
            None if !u.client_cert_names.is_empty() => None,
            None => return Err(invalid(
                pkey,
                "set password (a SCRAM verifier or ${ENV}), password_file, or client_cert_names",
            )),
            Some((secret, SecretSource::Literal)) => {
                let text = std::str::from_utf8(secret.expose()).unwrap_or("");
                Some(ScramVerifier::parse(text).map_err(|e| {
                    invalid(
                        &pkey,
                        format!(
                            "not a SCRAM-SHA-256 verifier ({e}); clear-text passwords belong in ${{ENV}} or password_file \
                             (or hash one with `portcullis hash-password`)"
                        ),
                    )
                })?)
            }
            // Clear text from the environment or a file: derive the verifier now; the text is zeroized on drop.
            Some((secret, SecretSource::External)) => {
                Some(match std::str::from_utf8(secret.expose()) {
                    Ok(s) if s.starts_with("SCRAM-SHA-256$") => ScramVerifier::parse(s)
                        .map_err(|e| invalid(&pkey, format!("bad SCRAM verifier: {e}")))?,
                    _ => ScramVerifier::generate(secret.expose())
                        .map_err(|e| invalid(&pkey, e.to_string()))?,
                })
            }
        };
        let backend_credential = match self.secret(
            u.backend_password.as_deref(),
            u.backend_password_file.as_deref(),
            &format!("{key}.backend_password"),
        )? {
            Some((password, _)) => {
                self.check_strength(&password, &format!("{key}.backend_password"))?;
                Some(Credential::new(u.backend_user.clone(), password))
            }
            None if u.backend_user.is_some() => {
                return Err(invalid(
                    format!("{key}.backend_password"),
                    "backend_user needs a backend_password",
                ))
            }
            None => None,
        };
        let rules = u.redis.commands.as_deref().unwrap_or(DEFAULT_RULES);
        let redis_policy = CommandPolicy::parse(rules)
            .map_err(|e| invalid(format!("{key}.redis.commands"), e.to_string()))?;
        Ok(User {
            name: u.name,
            verifier,
            listeners: u.listeners,
            disabled: u.disabled,
            client_cert_names: u.client_cert_names,
            backend_credential,
            redis_policy: Arc::new(redis_policy),
            pg_databases: u.postgres.databases,
            pg_allow_replication: u.postgres.allow_replication,
            limits,
        })
    }
}

/// Where a secret came from: a literal in the file or outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretSource {
    Literal,
    External,
}

/// `${NAME}` → `NAME`.
fn env_reference(v: &str) -> Option<&str> {
    let name = v.strip_prefix("${")?.strip_suffix('}')?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(name)
}

/// At least 32 characters from at least 3 of: lower, upper, digit, other.
pub fn is_strong(s: &[u8]) -> bool {
    let classes = [
        s.iter().any(u8::is_ascii_lowercase),
        s.iter().any(u8::is_ascii_uppercase),
        s.iter().any(u8::is_ascii_digit),
        s.iter().any(|b| !b.is_ascii_alphanumeric()),
    ];
    s.len() >= 32 && classes.iter().filter(|c| **c).count() >= 3
}

fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND: &str = r#"
[[backend]]
name = "r"
protocol = "redis"
address = "127.0.0.1:6379"
password = "Correct-Horse-Battery-Staple-0123456789"
"#;

    fn with_listener(extra: &str) -> String {
        format!(
            "{BACKEND}\n[[listener]]\nname = \"l\"\nprotocol = \"redis\"\nlisten = \"127.0.0.1:0\"\nbackend = \"r\"\n[listener.tls]\nmode = \"disabled\"\n{extra}"
        )
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("."))
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn weak_backend_password_is_refused() {
        let text = with_listener("").replace("Correct-Horse-Battery-Staple-0123456789", "short");
        let e = err(&text);
        assert!(e.starts_with("backend[r].password: too weak"), "{e}");
        assert!(!e.contains("short"));
        let ok = format!("allow_weak_secrets = true\n{text}");
        Config::parse(&ok, Path::new(".")).expect("allowed when weak secrets are allowed");
    }

    #[test]
    fn worker_threads() {
        let parse =
            |extra: &str| Config::parse(&format!("{extra}\n{}", with_listener("")), Path::new("."));
        assert_eq!(parse("").expect("valid").worker_threads, None);
        let one = parse("[runtime]\nworker_threads = 1").expect("valid");
        assert_eq!(one.worker_threads, Some(1));
        let zero = parse("[runtime]\nworker_threads = 0").expect("valid");
        assert_eq!(zero.worker_threads, None);
        let e = parse("[runtime]\nworker_threads = 5000").expect_err("too many");
        assert_eq!(e.to_string(), "runtime.worker_threads: at most 1024");
        assert_eq!(parse("").expect("valid").scheduler, Scheduler::PerThread);
        assert!(
            !parse("").expect("valid").yield_before_sleep,
            "off by default"
        );
        assert!(
            !parse("[runtime]\nworker_threads = 2")
                .expect("valid")
                .yield_before_sleep,
            "a section without the key takes the default too"
        );
        let with_yield = parse("[runtime]\nyield_before_sleep = true").expect("valid");
        assert!(with_yield.yield_before_sleep);
        let stealing = parse("[runtime]\nscheduler = \"work_stealing\"").expect("valid");
        assert_eq!(stealing.scheduler, Scheduler::WorkStealing);
        assert!(parse("[runtime]\nscheduler = \"fastest\"").is_err());
    }

    #[test]
    fn missing_env_var_is_named() {
        let text = with_listener("").replace(
            "\"Correct-Horse-Battery-Staple-0123456789\"",
            "\"${PORTCULLIS_TEST_SURELY_UNSET}\"",
        );
        assert_eq!(
            err(&text),
            "backend[r].password: environment variable PORTCULLIS_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn clear_text_user_password_is_refused_inline() {
        let text = with_listener("[[user]]\nname = \"u\"\npassword = \"hunter2\"\n");
        let e = err(&text);
        assert!(
            e.starts_with("user[u].password: not a SCRAM-SHA-256 verifier"),
            "{e}"
        );
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn clear_text_from_file_becomes_a_verifier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").expect("write");
        let text = with_listener(&format!(
            "[[user]]\nname = \"u\"\npassword_file = {:?}\n",
            f.display().to_string()
        ));
        let c = Config::parse(&text, Path::new(".")).expect("valid");
        let u = c.users.get("u").expect("user");
        let v = u.verifier.as_ref().expect("verifier");
        assert!(v.verify_password(b"s3cret"));
        assert!(
            c.warnings.iter().any(|w| w.contains("world-readable")) || {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&f).expect("meta").permissions().mode() & 0o004 == 0
            }
        );
    }

    #[test]
    fn unknown_keys_and_bad_rules_are_named() {
        let e = err(&with_listener("[[user]]\nname = \"u\"\npasword = \"x\"\n"));
        assert!(e.contains("pasword"), "{e}");
        let v = ScramVerifier::generate(b"pw")
            .expect("verifier")
            .to_string();
        let e = err(&with_listener(&format!(
            "[[user]]\nname = \"u\"\npassword = \"{v}\"\n[user.redis]\ncommands = \"+@nosuch\"\n"
        )));
        assert!(e.starts_with("user[u].redis.commands:"), "{e}");
        let e = err(&with_listener(&format!(
            "[[user]]\nname = \"u\"\npassword = \"{v}\"\nlisteners = [\"zz\"]\n"
        )));
        assert_eq!(e, "user[u].listeners: no listener named \"zz\"");
    }

    #[test]
    fn syntax_errors_do_not_quote_the_line() {
        let text = with_listener("").replace(
            "password = \"Correct-Horse-Battery-Staple-0123456789\"",
            "password = \"Correct-Horse-Battery-Staple-0123456789\\q\"",
        );
        let e = err(&text);
        assert!(e.starts_with("line "), "{e}");
        assert!(!e.contains("Correct-Horse"), "{e}");
    }

    #[test]
    fn strength_rule() {
        assert!(is_strong(b"abcdefghijABCDEFGHIJ0123456789xy"));
        assert!(!is_strong(b"abcdefghijabcdefghij0123456789xy"));
        assert!(!is_strong(b"aB1"));
    }
}
