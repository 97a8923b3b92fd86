//! One PostgreSQL client session, in named phases:
//!
//! 1. **negotiate**: SSLRequest → `S` and TLS (or `N`), GSSENCRequest → `N`,
//!    PG17 direct TLS (ALPN `postgresql` required), CancelRequest; bytes sent
//!    after an SSL/GSS request but before our answer are refused;
//! 2. **startup**: the StartupMessage is checked (user, protocol version, the
//!    options a client may not set);
//! 3. **authenticate**: SCRAM-SHA-256(-PLUS) against the proxy's verifier, or
//!    a clear-text password over TLS; unknown users run a mock exchange;
//! 4. **backend**: only now does the proxy connect and log in with its own
//!    credentials; the client gets the backend's ParameterStatus, the proxy's
//!    own BackendKeyData and ReadyForQuery;
//! 5. **relay**: framed messages both ways, bounded in size, unchanged.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

use super::backend::{self, LoginError};
use super::cancel::CancelTarget;
use super::codec::{
    decode_message, decode_startup, Frame, FrameError, Framer, Message, Startup, StartupPacket,
    MAX_AUTH_MESSAGE,
};
use super::messages::{self, Severity};
use super::pool;
use crate::auth::scram::{Mechanism, ScramError, ScramFault};
use crate::auth::scram_server::{ChannelBinding, ScramServer};
use crate::auth::{AuthFailure, Identity};
use crate::config::PgAuth;
use crate::error::{BackendError, SessionError};
use crate::guards::{Admission, ByteBudget};
use crate::limits::backoff::AuthVerdict;
use crate::limits::rate::Rate;
use crate::limits::Action;
use crate::logging::escape;
use crate::outbox::{Outbox, COPY_MAX};
use crate::pool::Put;
use crate::relay::{
    numbered, poll_client_read, poll_due, poll_read_into, poll_write_both, pop_front_rewound,
    Cancelled, Due, Parked, Reloads, Side, Timer, READ_CHUNK,
};
use crate::server::{Context, UsersEpoch};
use crate::stream::{BackendStream, ClientStream, ClientTcp};

/// First byte of a TLS handshake record: a client doing PG17 direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// ALPN protocol PostgreSQL requires for direct TLS.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Bytes queued towards either side before the proxy stops reading the other.
const OUT_CAP: usize = 256 * 1024;

/// SQLSTATE codes used here.
mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
}

/// A client connection and its read buffer.
struct Conn {
    stream: ClientStream,
    buf: BytesMut,
}

impl Conn {
    fn on_tls(&self) -> bool {
        self.stream.is_tls()
    }

    async fn read_more(&mut self) -> Result<(), SessionError> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(SessionError::ClientIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(SessionError::ClientIo)?;
        self.stream.flush().await.map_err(SessionError::ClientIo)
    }

    /// Reads one tagged message of at most `max` bytes.
    async fn message(&mut self, max: usize) -> Result<Message, SessionError> {
        loop {
            match decode_message(&mut self.buf, max) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => self.read_more().await?,
                Err(e) => return Err(SessionError::ClientProtocol(e.to_string())),
            }
        }
    }
}

/// Serves one accepted connection to the end, logging how it ended.
pub async fn serve(ctx: &Arc<Context>, tcp: ClientTcp, peer: SocketAddr, admission: Admission) {
    let result = tokio::select! {
        // The session first: its relay says goodbye with a FATAL on shutdown.
        biased;
        r = run(ctx, tcp, peer, admission) => r,
        _ = Cancelled::new(&ctx.close) => Err(SessionError::Shutdown),
    };
    match result {
        Ok(()) => debug!(event = "session_end", listener = %ctx.listener.name, %peer),
        Err(e) => {
            if !matches!(e, SessionError::ClientIo(_)) {
                ctx.metrics.connection_refused(e.label());
            }
            info!(event = "session_end", listener = %ctx.listener.name, %peer, side = ?e.side(), reason = e.label(), error = %e);
        }
    }
}

/// Sends a FATAL error, closes, and returns the session error to log.
async fn fatal(
    ctx: &Context,
    conn: &mut Conn,
    code: &str,
    text: &str,
    reason: &'static str,
) -> SessionError {
    ctx.metrics.refused(reason);
    let _ = conn
        .send(&messages::error_response(Severity::Fatal, code, text))
        .await;
    let _ = conn.stream.shutdown().await;
    SessionError::ClientProtocol(format!("{reason}: {}", escape(text.as_bytes())))
}

/// What the negotiation phase ended with.
enum Negotiated {
    Startup(Conn, Startup),
    Done,
}

async fn run(
    ctx: &Arc<Context>,
    tcp: ClientTcp,
    peer: SocketAddr,
    mut admission: Admission,
) -> Result<(), SessionError> {
    let deadline = Instant::now() + ctx.limits.login_timeout;
    let login = async {
        let (conn, startup) = match negotiate(ctx, tcp, peer).await? {
            Negotiated::Startup(c, s) => (c, s),
            Negotiated::Done => return Ok(None),
        };
        let mut conn = conn;
        let (identity, database) =
            authenticate(ctx, &mut conn, &startup, peer, &mut admission).await?;
        Ok::<_, SessionError>(Some((conn, startup, identity, database)))
    };
    let (mut conn, startup, identity, database) =
        match tokio::time::timeout_at(deadline, login).await {
            Ok(Ok(Some(x))) => x,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                ctx.metrics.refused("login_timeout");
                return Err(SessionError::LoginTimeout);
            }
        };

    // Phase 4: the backend, only now: an idle pooled session for the same
    // role, database and parameters if there is one, else a new login.
    let backend = ctx.listener.backend.clone();
    let cred = identity.backend_credential(&backend.credential).clone();
    let pooling = ctx
        .pg_pool
        .as_ref()
        .filter(|p| p.config().enabled())
        .map(|p| {
            let role = cred.user.as_deref().unwrap_or("postgres");
            (p.clone(), pool::Key::new(role, &database, &startup.params))
        });
    let pooled = pooling.as_ref().and_then(|(p, key)| {
        crate::pool::checkout(p, key, &ctx.listener.backend.name, ctx.metrics.all())
    });
    let (session, born) = match pooled {
        Some((idle, born)) => (
            backend::Session {
                stream: idle.stream,
                greeting: idle.params,
                key: idle.key,
                ready: Bytes::from_static(&[b'Z', 0, 0, 0, 5, b'I']),
                leftover: BytesMut::new(),
            },
            born,
        ),
        None => match backend::connect(
            &backend,
            &cred,
            &database,
            &startup.params,
            ctx.metrics.all(),
        )
        .await
        {
            Ok(s) => (s, std::time::Instant::now()),
            Err(LoginError::Passed(raw, fields)) => {
                ctx.metrics.refused("backend_refused");
                let _ = conn.send(&raw).await;
                return Err(SessionError::ClientProtocol(format!(
                    "backend refused the session: {}",
                    escape(fields.code.as_bytes())
                )));
            }
            Err(LoginError::Failed(e)) => {
                info!(event = "backend_unavailable", listener = %ctx.listener.name, backend = %backend.name, error = %e);
                let text = "could not connect to the server";
                let _ = fatal(
                    ctx,
                    &mut conn,
                    sqlstate::CONNECTION_FAILURE,
                    text,
                    "backend_unavailable",
                )
                .await;
                return Err(e.into());
            }
        },
    };
    // What a later client is told about this session if it is pooled.
    let params: Vec<Bytes> = session
        .greeting
        .iter()
        .filter(|m| m.first() == Some(&b'S'))
        .cloned()
        .collect();
    let backend_key = session.key.clone();
    let registration = session.key.as_ref().map(|(pid, secret)| {
        ctx.cancels.register(CancelTarget {
            backend: backend.clone(),
            pid: *pid,
            secret: secret.clone(),
        })
    });
    let mut greeting = BytesMut::new();
    for m in &session.greeting {
        greeting.extend_from_slice(m);
    }
    if let Some(r) = &registration {
        greeting.extend_from_slice(&messages::backend_key_data(r.pid, &r.secret));
    }
    greeting.extend_from_slice(&session.ready);
    conn.send(&greeting).await?;
    debug!(event = "session_ready", listener = %ctx.listener.name, %peer, user = %identity.name());

    let max = ctx.listener.postgres.max_message_size;
    let mut relay = Relay {
        ctx,
        max,
        client: conn.stream,
        backend: session.stream,
        client_in: conn.buf,
        backend_in: session.leftover,
        to_client: Outbox::default(),
        to_backend: Outbox::default(),
        client_framer: Framer::default(),
        backend_framer: Framer::default(),
        terminating: false,
        admission,
        bytes_rate: ctx
            .listener
            .limits
            .bytes_per_connection
            .map(|r| ByteBudget::new(Rate::new(r))),
        commands_paused_until: None,
        reads_paused_until: None,
        last_activity: Instant::now(),
        idle_check_at: ctx.listener.limits.idle_timeout.map(|d| Instant::now() + d),
        idle_timer: Timer::default(),
        pause_timer: Timer::default(),
        ready_owed: 0,
        ready_seen: 0,
        status: b'I',
        skipping: false,
        dropping: false,
        owed: VecDeque::new(),
        reloads: Reloads::new(&ctx.reloads),
        parked: Parked::default(),
        close: Cancelled::new(&ctx.close),
        identity: identity.clone(),
        pooling: pooling.is_some(),
        unsynced: false,
    };
    let result = numbered(relay.run()).await;
    drop(registration);
    let reusable = result.is_ok() && relay.reusable();
    let Relay {
        backend: stream,
        admission,
        ..
    } = relay;
    // The client is gone: its permits go now, not after the reset.
    drop(admission);
    if let Some((pool, key)) = pooling {
        let idle = pool::Idle {
            stream,
            params,
            key: backend_key,
        };
        if reusable {
            give_back(ctx, &pool, key, idle, born).await;
        } else {
            ctx.metrics.all().pool_event(&backend.name, "discarded");
            pool::close(idle, crate::pool::CLOSE_WAIT).await;
        }
    }
    result
}

/// Resets a session the client left clean and keeps it, or closes it.
async fn give_back(
    ctx: &Context,
    pool: &pool::Pool,
    key: pool::Key,
    mut idle: pool::Idle,
    born: std::time::Instant,
) {
    let backend = &ctx.listener.backend;
    let metrics = ctx.metrics.all();
    if born.elapsed() >= pool.config().max_lifetime {
        metrics.pool_event(&backend.name, "expired");
        pool::close(idle, crate::pool::CLOSE_WAIT).await;
        return;
    }
    if let Err(e) = pool::reset(&mut idle, backend.connect_timeout).await {
        debug!(event = "pool_reset_failed", backend = %backend.name, error = ?e);
        metrics.pool_event(&backend.name, "reset_failed");
        pool::close(idle, crate::pool::CLOSE_WAIT).await;
        return;
    }
    match pool.put(key, idle, born, std::time::Instant::now()) {
        Put::Kept(displaced) => {
            metrics.pool_event(&backend.name, "kept");
            for d in displaced {
                metrics.pool_event(&backend.name, "evicted");
                tokio::spawn(pool::close(d, crate::pool::CLOSE_WAIT));
            }
        }
        Put::Refused(idle) => {
            metrics.pool_event(&backend.name, "full");
            pool::close(idle, crate::pool::CLOSE_WAIT).await;
        }
    }
    metrics
        .pool_idle
        .with_label_values(&[&backend.name])
        .set(pool.idle() as i64);
}

/// Phase 1: the first packet(s), TLS, and cancel requests.
async fn negotiate(
    ctx: &Arc<Context>,
    tcp: ClientTcp,
    peer: SocketAddr,
) -> Result<Negotiated, SessionError> {
    let tls = ctx.listener.tls.as_ref();
    let mut tcp = tcp;
    let Some(first) = tcp.peek_first().await.map_err(SessionError::ClientIo)? else {
        return Ok(Negotiated::Done);
    };
    let mut tcp = Some(tcp);
    let mut conn: Option<Conn> = None;
    if first == TLS_HANDSHAKE {
        if let (Some(tls), Some(tcp)) = (tls, tcp.take()) {
            // PG17 direct TLS: the handshake starts at once and must negotiate ALPN.
            let stream = accept_tls(ctx, tls, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                ctx.metrics.refused("direct_tls_without_alpn");
                return Err(SessionError::ClientProtocol(
                    "direct TLS connection without ALPN protocol negotiation".into(),
                ));
            }
            conn = Some(Conn {
                stream: ClientStream::Tls(Box::new(stream)),
                buf: BytesMut::new(),
            });
        }
    }
    let mut plain_buf = BytesMut::new();
    let mut gss_answered = false;
    loop {
        // Read a startup packet: from the plain socket until TLS starts, then from the connection.
        let packet = loop {
            let buf = match conn.as_mut() {
                Some(c) => &mut c.buf,
                None => &mut plain_buf,
            };
            match decode_startup(buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    let code = match e {
                        FrameError::UnsupportedVersion(..) => sqlstate::FEATURE_NOT_SUPPORTED,
                        _ => sqlstate::PROTOCOL_VIOLATION,
                    };
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => plain_conn(tcp.take(), std::mem::take(&mut plain_buf))?,
                    };
                    return Err(fatal(ctx, &mut c, code, &e.to_string(), "bad_startup").await);
                }
            }
            match (conn.as_mut(), tcp.as_mut()) {
                (Some(c), _) => c.read_more().await?,
                (None, Some(t)) => {
                    plain_buf.reserve(1024);
                    if t.read_buf(&mut plain_buf)
                        .await
                        .map_err(SessionError::ClientIo)?
                        == 0
                    {
                        return Ok(Negotiated::Done);
                    }
                }
                (None, None) => return Ok(Negotiated::Done),
            }
        };
        match packet {
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                if let Some(mut c) = conn.take() {
                    let text = "duplicate SSL negotiation request";
                    return Err(fatal(
                        ctx,
                        &mut c,
                        sqlstate::PROTOCOL_VIOLATION,
                        text,
                        "bad_startup",
                    )
                    .await);
                }
                let ssl = matches!(packet, StartupPacket::Ssl);
                if !plain_buf.is_empty() {
                    // CVE-2021-23214: bytes pipelined after the request would otherwise be
                    // taken as if they had arrived over the encrypted channel.
                    let mut c = plain_conn(tcp.take(), std::mem::take(&mut plain_buf))?;
                    let what = if ssl { "SSL" } else { "GSSAPI encryption" };
                    let text = format!("received unencrypted data after {what} request");
                    return Err(fatal(
                        ctx,
                        &mut c,
                        sqlstate::PROTOCOL_VIOLATION,
                        &text,
                        "data_after_ssl_request",
                    )
                    .await);
                }
                let Some(t) = tcp.as_mut() else {
                    return Ok(Negotiated::Done);
                };
                match (ssl, tls) {
                    (true, Some(tls)) => {
                        t.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let Some(t) = tcp.take() else {
                            return Ok(Negotiated::Done);
                        };
                        let stream = accept_tls(ctx, tls, t).await?;
                        conn = Some(Conn {
                            stream: ClientStream::Tls(Box::new(stream)),
                            buf: BytesMut::new(),
                        });
                    }
                    (false, _) if gss_answered => {
                        let mut c = plain_conn(tcp.take(), BytesMut::new())?;
                        return Err(fatal(
                            ctx,
                            &mut c,
                            sqlstate::PROTOCOL_VIOLATION,
                            "duplicate GSSAPI encryption request",
                            "bad_startup",
                        )
                        .await);
                    }
                    _ => {
                        gss_answered |= !ssl;
                        t.write_all(b"N").await.map_err(SessionError::ClientIo)?;
                    }
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                cancel(ctx, peer, pid, &secret).await;
                return Ok(Negotiated::Done);
            }
            StartupPacket::Startup(startup) => {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => plain_conn(tcp.take(), std::mem::take(&mut plain_buf))?,
                };
                if tls.is_some_and(|t| t.required) && !c.on_tls() {
                    let text = "connection requires TLS (sslmode=require)";
                    return Err(fatal(
                        ctx,
                        &mut c,
                        sqlstate::INVALID_AUTHORIZATION,
                        text,
                        "tls_required",
                    )
                    .await);
                }
                return Ok(Negotiated::Startup(c, startup));
            }
        }
    }
}

fn plain_conn(tcp: Option<ClientTcp>, buf: BytesMut) -> Result<Conn, SessionError> {
    let tcp = tcp.ok_or_else(|| SessionError::ClientIo(std::io::ErrorKind::NotConnected.into()))?;
    Ok(Conn {
        stream: ClientStream::Plain(tcp),
        buf,
    })
}

async fn accept_tls(
    ctx: &Context,
    tls: &crate::config::ServerTls,
    tcp: ClientTcp,
) -> Result<tokio_rustls::server::TlsStream<ClientTcp>, SessionError> {
    match tokio_rustls::TlsAcceptor::from(tls.config.clone())
        .accept(tcp)
        .await
    {
        Ok(s) => Ok(s),
        Err(e) => {
            ctx.metrics
                .tls_failure(crate::tls::handshake_failure_reason(&e));
            Err(SessionError::ClientTls(e))
        }
    }
}

/// A CancelRequest: forwarded only for a live key, rate limited per IP, never answered.
async fn cancel(ctx: &Context, peer: SocketAddr, pid: u32, secret: &[u8]) {
    if !ctx.cancels.allow(peer.ip()) {
        ctx.metrics.refused("cancel_rate_limited");
        return;
    }
    let Some(target) = ctx.cancels.lookup(pid, secret) else {
        ctx.metrics.refused("cancel_unknown_key");
        debug!(event = "cancel_refused", %peer, reason = "unknown_key");
        return;
    };
    match backend::cancel(&target.backend, target.pid, &target.secret).await {
        Ok(()) => info!(event = "cancel_forwarded", %peer, backend = %target.backend.name),
        Err(e) => info!(event = "cancel_failed", %peer, backend = %target.backend.name, error = %e),
    }
}

/// Whether `options` (PostgreSQL's `-c name=value` list) sets a GUC the client
/// may not set through the proxy: `role` or `session_authorization` would let it
/// act as another backend role than the one it was mapped to.
fn forbidden_option(options: &str) -> bool {
    let words = split_options(options);
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let setting = if w == "-c" {
            i += 1;
            words.get(i).cloned()
        } else {
            w.strip_prefix("-c")
                .or_else(|| w.strip_prefix("--"))
                .map(str::to_string)
        };
        if let Some(s) = setting {
            if forbidden_setting(s.split('=').next().unwrap_or("")) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// GUCs a client may not set, in any spelling PostgreSQL accepts: `role` or
/// `session_authorization` would make the session act as another role than the
/// one the proxy user maps to.
fn forbidden_setting(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    name == "role" || name == "session_authorization"
}

/// Splits `options` as `pg_split_opts` does: whitespace separates, backslash escapes.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut cur));
                in_word = false;
            }
        } else {
            in_word = true;
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else {
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

fn wants_replication(startup: &Startup) -> bool {
    startup.get("replication").is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        )
    })
}

/// Phases 2 and 3: check the startup packet and authenticate the client.
async fn authenticate(
    ctx: &Arc<Context>,
    conn: &mut Conn,
    startup: &Startup,
    peer: SocketAddr,
    admission: &mut Admission,
) -> Result<(Identity, String), SessionError> {
    let options = startup.protocol_options();
    if startup.minor > 0 || !options.is_empty() {
        // We speak 3.0: protocol 3.2's longer cancel keys are negotiated away here.
        conn.send(&messages::negotiate_protocol_version(196_608, &options))
            .await?;
    }
    let Some(user_name) = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .map(str::to_string)
    else {
        let text = "no PostgreSQL user name specified in startup packet";
        return Err(fatal(
            ctx,
            conn,
            sqlstate::INVALID_AUTHORIZATION,
            text,
            "bad_startup",
        )
        .await);
    };
    if startup.get("options").is_some_and(forbidden_option)
        || startup.params.iter().any(|(k, _)| forbidden_setting(k))
    {
        let text = "setting role or session_authorization in startup options is not allowed";
        return Err(fatal(
            ctx,
            conn,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            text,
            "forbidden_option",
        )
        .await);
    }
    let database = startup
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user_name)
        .to_string();
    let shown = escape(user_name.as_bytes());
    let failed_text = format!("password authentication failed for user \"{shown}\"");

    // Login backoff: a banned client runs the exchange against a mock verifier, so
    // its password is never checked and the failure looks like any other.
    let banned = match ctx.guards.login_verdict(peer.ip(), user_name.as_bytes()) {
        AuthVerdict::Allow => false,
        AuthVerdict::Delay(d) => {
            ctx.metrics.refused("login_backoff");
            tokio::time::sleep(d).await;
            false
        }
        AuthVerdict::Banned { .. } => {
            ctx.metrics.refused("login_banned");
            true
        }
    };
    let result = match (ctx.listener.postgres.auth, banned) {
        (PgAuth::ScramSha256 | PgAuth::Md5, false) => {
            scram_exchange(ctx, conn, &user_name, false).await?
        }
        (PgAuth::ScramSha256 | PgAuth::Md5, true) => {
            scram_exchange(ctx, conn, &user_name, true).await?
        }
        (PgAuth::Password, false) => cleartext_exchange(ctx, conn, &user_name).await?,
        (PgAuth::Password, true) => {
            conn.send(&messages::auth_cleartext()).await?;
            let _ = password_message(ctx, conn).await?;
            Err(AuthFailure::Banned)
        }
    };
    let result = if banned {
        Err(AuthFailure::Banned)
    } else {
        result
    };
    if !banned {
        ctx.guards
            .record_login(peer.ip(), user_name.as_bytes(), result.is_ok());
    }
    // Admission after the proof, so that a user refused here looks exactly like a wrong password.
    let result = result.and_then(|id| {
        if id.user().may_open(&database) {
            Ok(id)
        } else {
            Err(AuthFailure::ListenerNotAllowed)
        }
    });
    ctx.audit_login(peer, user_name.as_bytes(), result.as_ref().map_err(|f| *f));
    let identity = match result {
        Ok(id) => id,
        Err(_) => {
            return Err(fatal(
                ctx,
                conn,
                sqlstate::INVALID_PASSWORD,
                &failed_text,
                "auth_failed",
            )
            .await);
        }
    };
    if let Err(refusal) = admission.authenticated(&ctx.guards, &identity) {
        let text = format!("too many connections for role \"{shown}\"");
        return Err(fatal(
            ctx,
            conn,
            sqlstate::TOO_MANY_CONNECTIONS,
            &text,
            refusal.label(),
        )
        .await);
    }
    if wants_replication(startup) && !identity.user().pg_allow_replication {
        let text = "replication connections are not allowed for this user";
        return Err(fatal(
            ctx,
            conn,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            text,
            "replication_refused",
        )
        .await);
    }
    conn.send(&messages::auth_ok()).await?;
    Ok((identity, database))
}

/// Reads a password-phase message; anything but `p` (a second StartupMessage
/// included) is a protocol violation, decided on the type byte alone as
/// PostgreSQL does, before any length is trusted.
async fn password_message(ctx: &Context, conn: &mut Conn) -> Result<Bytes, SessionError> {
    while conn.buf.is_empty() {
        conn.read_more().await?;
    }
    if conn.buf[0] != b'p' {
        let text = format!(
            "expected password response, got message type {}",
            conn.buf[0]
        );
        return Err(fatal(
            ctx,
            conn,
            sqlstate::PROTOCOL_VIOLATION,
            &text,
            "bad_auth_message",
        )
        .await);
    }
    let m = match conn.message(MAX_AUTH_MESSAGE).await {
        Ok(m) => m,
        Err(SessionError::ClientProtocol(e)) => {
            return Err(fatal(
                ctx,
                conn,
                sqlstate::PROTOCOL_VIOLATION,
                &e,
                "bad_auth_message",
            )
            .await)
        }
        Err(e) => return Err(e),
    };
    if m.tag != b'p' {
        let text = format!("expected password response, got message type {}", m.tag);
        return Err(fatal(
            ctx,
            conn,
            sqlstate::PROTOCOL_VIOLATION,
            &text,
            "bad_auth_message",
        )
        .await);
    }
    Ok(m.body)
}

/// SCRAM-SHA-256 against the user's verifier, or a mock one: the exchange and
/// its cost are the same for unknown users, users without a password and
/// users not allowed here.
async fn scram_exchange(
    ctx: &Arc<Context>,
    conn: &mut Conn,
    user_name: &str,
    mock_only: bool,
) -> Result<Result<Identity, AuthFailure>, SessionError> {
    let user = if mock_only {
        None
    } else {
        ctx.users.get(user_name).cloned()
    };
    let mock;
    let verifier = match user.as_ref().and_then(|u| u.verifier.as_ref()) {
        Some(v) => v,
        None => {
            mock = ctx.users.mock_verifier(user_name.as_bytes());
            &mock
        }
    };
    let binding = match (&ctx.listener.tls, conn.on_tls()) {
        (Some(tls), true) => ChannelBinding::TlsServerEndPoint(tls.end_point.clone()),
        _ => ChannelBinding::Unsupported,
    };
    let offered = binding.offered_mechanisms();
    let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
    conn.send(&messages::auth_sasl(&names)).await?;

    let body = password_message(ctx, conn).await?;
    let Some((mech, client_first)) = messages::parse_sasl_initial(&body) else {
        return Err(fatal(
            ctx,
            conn,
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse message",
            "bad_auth_message",
        )
        .await);
    };
    let Some(mechanism) = Mechanism::from_name(mech).filter(|m| offered.contains(m)) else {
        let text = "client selected an invalid SASL authentication mechanism";
        return Err(fatal(
            ctx,
            conn,
            sqlstate::PROTOCOL_VIOLATION,
            text,
            "bad_auth_message",
        )
        .await);
    };
    let permit = ctx.auth_permits.acquire().await;
    let started = ScramServer::start(verifier, mechanism, client_first, binding);
    drop(permit);
    let (state, server_first) = match started {
        Ok(x) => x,
        Err(e) => return Err(scram_failure(ctx, conn, e).await),
    };
    conn.send(&messages::auth_sasl_continue(&server_first))
        .await?;
    let body = password_message(ctx, conn).await?;
    let permit = ctx.auth_permits.acquire().await;
    let finished = state.finish(&body);
    drop(permit);
    match finished {
        Ok(server_final) => {
            let Some(user) = user else {
                return Ok(Err(AuthFailure::UnknownUser));
            };
            let admitted = ctx.users.admit_scram(&user, &ctx.listener.name);
            if admitted.is_ok() {
                conn.send(&messages::auth_sasl_final(&server_final)).await?;
            }
            Ok(admitted)
        }
        Err(ScramError::AuthenticationFailed) => Ok(Err(if user.is_some() {
            AuthFailure::WrongPassword
        } else {
            AuthFailure::UnknownUser
        })),
        Err(e) => Err(scram_failure(ctx, conn, e).await),
    }
}

async fn scram_failure(ctx: &Context, conn: &mut Conn, e: ScramError) -> SessionError {
    let code = match e.fault() {
        ScramFault::Client => sqlstate::PROTOCOL_VIOLATION,
        _ => sqlstate::INVALID_PASSWORD,
    };
    fatal(ctx, conn, code, &e.to_string(), "bad_auth_message").await
}

/// A clear-text password (TLS listeners only, checked at config load).
async fn cleartext_exchange(
    ctx: &Arc<Context>,
    conn: &mut Conn,
    user_name: &str,
) -> Result<Result<Identity, AuthFailure>, SessionError> {
    conn.send(&messages::auth_cleartext()).await?;
    let body = password_message(ctx, conn).await?;
    let password = zeroize::Zeroizing::new(body.strip_suffix(&[0]).unwrap_or(&body).to_vec());
    let cached =
        ctx.users
            .authenticate_password_cached(user_name.as_bytes(), &password, &ctx.listener.name);
    if let Some(r) = cached {
        // Verified lately: no thread hop.
        return Ok(r);
    }
    let _permit = ctx.auth_permits.acquire().await;
    let users = ctx.users.clone();
    let listener = ctx.listener.name.clone();
    let name = user_name.as_bytes().to_vec();
    Ok(tokio::task::spawn_blocking(move || {
        users.authenticate_password(&name, &password, &listener)
    })
    .await
    .unwrap_or(Err(AuthFailure::UnknownUser)))
}

/// `ERROR 53400` for a command over its rate (reject mode).
fn rate_limited_error() -> Bytes {
    messages::error_response(
        Severity::Error,
        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        "rate limit exceeded",
    )
}

/// Phase 5: framed relay in both directions. Both connections are driven
/// from this one task, whole: no `split`, so no lock between a stream's read
/// and write halves on every poll.
struct Relay<'a> {
    ctx: &'a Arc<Context>,
    max: usize,
    client: ClientStream,
    backend: BackendStream,
    client_in: BytesMut,
    backend_in: BytesMut,
    to_client: Outbox,
    to_backend: Outbox,
    client_framer: Framer,
    backend_framer: Framer,
    /// The client sent Terminate: forward it and close.
    terminating: bool,
    /// Permits, and the per-IP and per-user command rates.
    admission: Admission,
    /// Bytes per second read from this client.
    bytes_rate: Option<ByteBudget>,
    /// No Query/Execute is forwarded before this (`delay` mode).
    commands_paused_until: Option<Instant>,
    /// The client is not read before this (byte rate).
    reads_paused_until: Option<Instant>,
    /// Last byte from the client (kept only with an idle timeout).
    last_activity: Instant,
    /// When the session may have been idle for the idle timeout (when one is set).
    idle_check_at: Option<Instant>,
    /// Fires at `idle_check_at`.
    idle_timer: Timer,
    /// Fires at the end of a pause (`commands_paused_until`, `reads_paused_until`).
    pause_timer: Timer,
    /// ReadyForQuery messages the backend owes for forwarded Query/Sync/FunctionCall.
    ready_owed: u64,
    /// ReadyForQuery messages seen from the backend.
    ready_seen: u64,
    /// Transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    status: u8,
    /// After a refused Execute: client messages are dropped up to the next Sync,
    /// as PostgreSQL does after an error in the extended protocol.
    skipping: bool,
    /// The message being read is dropped, not forwarded.
    dropping: bool,
    /// Errors the proxy owes, each due when the backend's ReadyForQuery count reaches its mark.
    owed: VecDeque<Owed>,
    /// Reloads, to close the session if its user was removed (when so configured).
    reloads: Reloads,
    /// The sockets already polled in vain in this wakeup.
    parked: Parked,
    /// Shutdown: the client gets a FATAL, as from PostgreSQL.
    close: Cancelled,
    /// Who the session runs as.
    identity: Identity,
    /// The backend session may be reused: Terminate is not forwarded.
    pooling: bool,
    /// Extended-protocol messages went to the backend after the last Sync.
    unsynced: bool,
}

/// An error the proxy writes itself, in the place PostgreSQL would have put it.
enum Owed {
    /// A refused simple Query: ErrorResponse then ReadyForQuery, once every earlier
    /// ReadyForQuery has been relayed.
    AfterReady(u64),
    /// A refused Execute: ErrorResponse just before the ReadyForQuery that answers the Sync.
    BeforeReady(u64),
}

/// What woke the relay.
enum Event {
    /// Bytes were read, or a write made room: process what is buffered.
    Io,
    /// The client closed its side.
    ClientClosed,
    /// The backend closed its side.
    BackendClosed,
    /// The proxy is shutting down.
    Shutdown,
    /// The users were reloaded.
    Reload(UsersEpoch),
    /// A pause (command rate, byte rate) may be over.
    Paused,
    /// The idle timeout (this long) may have passed.
    IdleCheck(std::time::Duration),
}

impl From<Due> for Event {
    fn from(due: Due) -> Event {
        match due {
            Due::Paused => Event::Paused,
            Due::IdleCheck(d) => Event::IdleCheck(d),
        }
    }
}

impl Relay<'_> {
    /// Whether the backend session is as a new one would be, up to what
    /// `DISCARD ALL` resets: every answer read, idle outside a transaction,
    /// no message half-sent, no extended-protocol batch left without Sync.
    fn reusable(&self) -> bool {
        self.pooling
            && self.ready_seen == self.ready_owed
            && self.status == b'I'
            && !self.unsynced
            && !self.skipping
            && self.owed.is_empty()
            && self.client_framer.at_boundary()
            && self.backend_framer.at_boundary()
            && self.backend_in.is_empty()
            && !self.to_backend.wants_write()
    }

    async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            if let Err(e) = self.pump_client() {
                self.say_fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                    .await;
                self.ctx.metrics.refused("protocol_error");
                return Err(SessionError::ClientProtocol(e.to_string()));
            }
            self.pump_backend()
                .map_err(|e| SessionError::Backend(BackendError::Protocol(e.to_string())))?;
            if self.terminating && !self.to_backend.wants_write() {
                if !self.pooling {
                    let _ = self.backend.shutdown().await;
                }
                self.flush_client().await;
                return Ok(());
            }
            if let Some(until) = self.reads_paused_until {
                let now = Instant::now();
                if until <= now {
                    // The byte debt of the last read must be paid before the next one.
                    self.reads_paused_until = self
                        .bytes_rate
                        .as_mut()
                        .and_then(ByteBudget::settle)
                        .map(|wait| now + wait);
                }
            }
            match std::future::poll_fn(|cx| self.poll_io(cx)).await? {
                Event::Io => {}
                Event::ClientClosed => return Ok(()),
                Event::BackendClosed => {
                    // The backend ended the session (it sent its FATAL first, if any).
                    self.pump_backend().map_err(|e| {
                        SessionError::Backend(BackendError::Protocol(e.to_string()))
                    })?;
                    self.flush_client().await;
                    return Err(BackendError::Closed.into());
                }
                Event::Shutdown => {
                    self.say_fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .await;
                    return Err(SessionError::Shutdown);
                }
                Event::Reload(epoch) => {
                    if self.ctx.must_close(&epoch, &self.identity) {
                        self.ctx.metrics.refused("user_removed");
                        self.say_fatal(
                            sqlstate::ADMIN_SHUTDOWN,
                            "terminating connection: the user was removed",
                        )
                        .await;
                        return Err(SessionError::Limit("user_removed"));
                    }
                }
                Event::Paused => {
                    if self
                        .commands_paused_until
                        .is_some_and(|t| t <= Instant::now())
                    {
                        self.commands_paused_until = None;
                    }
                }
                Event::IdleCheck(d) => {
                    let now = Instant::now();
                    if self.last_activity + d <= now {
                        if self.ready_seen >= self.ready_owed {
                            self.ctx.metrics.refused("idle_timeout");
                            self.say_fatal(
                                sqlstate::IDLE_SESSION_TIMEOUT,
                                "terminating connection due to idle-session timeout",
                            )
                            .await;
                            return Err(SessionError::Limit("idle_timeout"));
                        }
                        // Answers are still owed: not idle. Look again a full period from now.
                        self.last_activity = now;
                    }
                    self.idle_check_at = Some(self.last_activity + d);
                }
            }
        }
    }

    /// Drives both sockets from this one task: writes what is queued, then
    /// reads what has arrived, and returns as soon as there is something to
    /// process; otherwise waits on the sockets, the timers, reloads and
    /// shutdown at once. Nothing is built per call (no futures of `select!`
    /// branches, no timer registrations).
    fn poll_io(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, SessionError>> {
        // A write that makes room for more work only matters when something
        // waits for that room (a full queue) or for the queue to empty (Terminate).
        let stalled =
            self.terminating || self.to_backend.len >= OUT_CAP || self.to_client.len >= OUT_CAP;
        let mut progress = poll_write_both(
            cx,
            &mut self.to_backend,
            &mut self.backend,
            &mut self.to_client,
            &mut self.client,
            stalled,
            &self.ctx.metrics.bytes_out,
        )?;

        let read_client = !self.terminating
            && self.reads_paused_until.is_none()
            && self.to_backend.len < OUT_CAP
            && self.client_in.len() < READ_CHUNK * 4;
        if read_client && !self.parked.is_parked(Side::Client) {
            let last_activity = self
                .idle_check_at
                .is_some()
                .then_some(&mut self.last_activity);
            let read = poll_client_read(
                cx,
                &mut self.client,
                &mut self.client_in,
                &mut self.bytes_rate,
                &mut self.reads_paused_until,
                last_activity,
                &self.ctx.metrics.bytes_in,
            );
            self.parked.note(Side::Client, &read);
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::ClientClosed)),
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ClientIo(e))),
                Poll::Pending => {}
            }
        }
        let read_backend = self.to_client.len < OUT_CAP && self.backend_in.len() < READ_CHUNK * 4;
        if read_backend && !self.parked.is_parked(Side::Backend) {
            let read = poll_read_into(cx, &mut self.backend, &mut self.backend_in, usize::MAX);
            self.parked.note(Side::Backend, &read);
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::BackendClosed)),
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(SessionError::Backend(BackendError::Io(e))))
                }
                Poll::Pending => {}
            }
        }
        if progress {
            // A session with bytes always moving still gets here: once the
            // task's cooperative budget is spent, the sockets return Pending.
            return Poll::Ready(Ok(Event::Io));
        }

        if Pin::new(&mut self.close).poll(cx).is_ready() {
            return Poll::Ready(Ok(Event::Shutdown));
        }
        if let Poll::Ready(epoch) = self.reloads.poll_reload(cx) {
            return Poll::Ready(Ok(Event::Reload(epoch)));
        }
        poll_due(
            cx,
            &mut self.pause_timer,
            self.commands_paused_until,
            self.reads_paused_until,
            &mut self.idle_timer,
            self.idle_check_at,
            self.ctx.listener.limits.idle_timeout,
        )
        .map(|due| Ok(due.into()))
    }

    /// Ends the session as PostgreSQL would: a FATAL ErrorResponse, unless a
    /// backend message is half relayed (the client would misread it), then
    /// what is queued for the client.
    async fn say_fatal(&mut self, code: &str, text: &str) {
        if self.backend_framer.at_boundary() {
            let msg = messages::error_response(Severity::Fatal, code, text);
            self.to_client.push(msg);
            self.flush_client().await;
        }
    }

    /// Moves whole buffered runs of client messages to the backend queue,
    /// applying the command rates to Query and Execute messages.
    fn pump_client(&mut self) -> Result<(), FrameError> {
        // Bytes at the front of `client_in` to forward as one chunk.
        let mut run = 0;
        while !self.terminating
            && self.to_backend.len + run < OUT_CAP
            && self.commands_paused_until.is_none()
        {
            let mut refuse = false;
            // Checked once per message, when its header is in (so no token is spent twice).
            if self.client_framer.at_boundary() && self.client_in.len() >= run + 5 && !self.skipping
            {
                let tag = self.client_in[run];
                if matches!(tag, b'Q' | b'E') {
                    match self
                        .admission
                        .command(self.ctx.listener.limits.action, || 0)
                    {
                        Ok(()) => {}
                        Err((wait, Action::Delay)) => {
                            // Hold it: nothing lost, order kept, and the client is not read meanwhile.
                            self.commands_paused_until = Some(Instant::now() + wait);
                            break;
                        }
                        Err((_, Action::Reject)) => refuse = true,
                    }
                }
            }
            let Some(frame) = self
                .client_framer
                .advance(&self.client_in[run..], self.max)?
            else {
                break;
            };
            let (take, forward) = match frame {
                Frame::Start { tag, take } => {
                    if refuse {
                        self.refuse_command(tag);
                    } else {
                        match tag {
                            // Simple and extended-protocol queries.
                            b'Q' | b'E' => self.ctx.metrics.allowed.inc(),
                            b'X' => self.terminating = true,
                            _ => {}
                        }
                    }
                    self.dropping = refuse || self.skipping;
                    if self.skipping && tag == b'S' {
                        self.skipping = false;
                        self.dropping = false;
                        // The backend answers this Sync; the refused Execute's error goes just before.
                        self.owed.push_back(Owed::BeforeReady(self.ready_owed));
                    }
                    if !self.dropping {
                        match tag {
                            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
                            b'S' | b'Q' => self.unsynced = false,
                            _ => {}
                        }
                    }
                    if !self.dropping && matches!(tag, b'Q' | b'S' | b'F') {
                        self.ready_owed += 1;
                    }
                    if tag == b'X' && self.pooling {
                        // The session outlives the client: the pool says goodbye.
                        self.dropping = true;
                    }
                    (take, !self.dropping)
                }
                Frame::Continue { take } => (take, !self.dropping),
            };
            if forward {
                run += take;
            } else {
                self.forward_run(&mut run);
                self.client_in.advance(take);
            }
        }
        self.forward_run(&mut run);
        Ok(())
    }

    /// Queues the first `run` bytes of `client_in` for the backend as one chunk.
    fn forward_run(&mut self, run: &mut usize) {
        queue_front(&mut self.client_in, run, &mut self.to_backend);
    }

    /// Queues the first `run` bytes of `backend_in` for the client as one chunk.
    fn relay_run(&mut self, run: &mut usize) {
        queue_front(&mut self.backend_in, run, &mut self.to_client);
    }

    /// A Query or Execute over its rate in reject mode: it is dropped, and the
    /// client gets ERROR 53400 where PostgreSQL would have put an error.
    fn refuse_command(&mut self, tag: u8) {
        self.ctx.metrics.denied.inc();
        self.ctx.metrics.refused("rate_limited");
        if self
            .ctx
            .guards
            .log_refusal(self.admission.ip, "rate_limited")
        {
            info!(event = "command_refused", listener = %self.ctx.listener.name, peer = %self.admission.ip, reason = "rate_limited");
        }
        if tag == b'Q' {
            self.owed.push_back(Owed::AfterReady(self.ready_owed));
            self.release_owed();
        } else {
            // Execute: PostgreSQL discards messages up to the next Sync after an error.
            self.skipping = true;
        }
    }

    /// Writes owed errors whose turn has come.
    fn release_owed(&mut self) {
        while let Some(Owed::AfterReady(mark)) = self.owed.front() {
            if self.ready_seen < *mark {
                break;
            }
            pop_front_rewound(&mut self.owed);
            self.to_client.push(rate_limited_error());
            self.to_client.push_slice(&[b'Z', 0, 0, 0, 5, self.status]);
        }
    }

    /// Moves backend messages to the client queue, checking every header and
    /// counting ReadyForQuery so that the proxy's own errors land in order.
    fn pump_backend(&mut self) -> Result<(), FrameError> {
        // Bytes at the front of `backend_in` to relay as one chunk.
        let mut run = 0;
        while self.to_client.len + run < OUT_CAP {
            let Some(frame) = self
                .backend_framer
                .advance(&self.backend_in[run..], self.max)?
            else {
                break;
            };
            let (take, ready) = match frame {
                Frame::Start { tag, take } => (take, tag == b'Z'),
                Frame::Continue { take } => (take, false),
            };
            if ready {
                if let Some(Owed::BeforeReady(mark)) = self.owed.front() {
                    if *mark == self.ready_seen {
                        pop_front_rewound(&mut self.owed);
                        self.relay_run(&mut run);
                        self.to_client.push(rate_limited_error());
                    }
                }
                if take >= 6 {
                    self.status = self.backend_in[run + 5];
                }
            }
            run += take;
            if ready {
                self.ready_seen += 1;
                if matches!(self.owed.front(), Some(Owed::AfterReady(mark)) if *mark <= self.ready_seen)
                {
                    self.relay_run(&mut run);
                    self.release_owed();
                }
            }
        }
        self.relay_run(&mut run);
        Ok(())
    }

    async fn flush_client(&mut self) {
        let flush = async {
            while self.to_client.wants_write() {
                if self.to_client.write_to(&mut self.client).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), flush).await;
    }
}

/// Moves the first `run` bytes of `buf` to `out` and sets `run` to 0. Small
/// runs are copied, so `buf` stays unshared and is rewound in place; large
/// ones are handed over without a copy.
fn queue_front(buf: &mut BytesMut, run: &mut usize, out: &mut Outbox) {
    match *run {
        0 => {}
        n if n <= COPY_MAX => {
            out.push_slice(&buf[..n]);
            buf.advance(n);
        }
        n => out.push(buf.split_to(n).freeze()),
    }
    *run = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_options_are_found_however_written() {
        for bad in [
            "-c role=admin",
            "-crole=admin",
            "--role=admin",
            "-c  session_authorization=x",
            "-c ROLE=x",
            "-c session-authorization=x",
        ] {
            assert!(forbidden_option(bad), "{bad}");
        }
        for ok in [
            "-c search_path=app",
            "-c statement_timeout=5s",
            "",
            "-c application_name=role\\ x",
        ] {
            assert!(!forbidden_option(ok), "{ok}");
        }
    }

    #[test]
    fn top_level_role_parameters_are_found() {
        assert!(forbidden_setting("role"));
        assert!(forbidden_setting("ROLE"));
        assert!(forbidden_setting("Session-Authorization"));
        assert!(!forbidden_setting("application_name"));
    }

    #[test]
    fn options_split_like_postgres() {
        assert_eq!(
            split_options(" -c  a=b\\ c  -c d=e"),
            vec!["-c", "a=b c", "-c", "d=e"]
        );
    }

    #[test]
    fn replication_values() {
        let s = |v: &str| Startup {
            minor: 0,
            params: vec![("replication".into(), v.into())],
        };
        assert!(wants_replication(&s("database")));
        assert!(wants_replication(&s("true")));
        assert!(!wants_replication(&s("false")));
        assert!(!wants_replication(&Startup::default()));
    }
}
