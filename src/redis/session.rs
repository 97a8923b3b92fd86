//! One Redis client session, in named phases:
//!
//! 1. **handshake**: TLS from the first byte (unless the listener is plain);
//! 2. **login**: only AUTH, HELLO and QUIT are read, with Redis 7's limits for
//!    unauthenticated clients and an absolute deadline from accept; nothing
//!    reaches a backend (there is none yet);
//! 3. **backend**: connect and log in with the proxy's credentials;
//! 4. **relay**: requests are checked against the user's policy and forwarded
//!    or answered here; replies are matched to requests so that every reply,
//!    the proxy's own included, goes back in request order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

use super::backend::{self, Connected, Login};
use super::commands::{category, CommandSpec};
use super::mux::{self, Upstream};
use super::policy::{self, Verdict};
use super::pool;
use super::replies;
use super::reply::{peek_scalar, FrameInfo, ReplyScanner, Scan};
use super::request::{
    count_whole, decode, is_login_name, peek_whole, Decoded, Peeked, ProtocolError, Request,
    RequestLimits, Tail,
};
use crate::auth::{AuthFailure, Credential, Identity};
use crate::error::{BackendError, SessionError};
use crate::guards::{Admission, ByteBudget};
use crate::limits::backoff::AuthVerdict;
use crate::limits::rate::Rate;
use crate::limits::Action;
use crate::logging::escape;
use crate::outbox::Outbox;
use crate::relay::{
    numbered, poll_client_read, poll_due, poll_read_into, poll_write_both, pop_front_rewound,
    Cancelled, Due, Parked, Reloads, Side, Timer, READ_CHUNK,
};
use crate::server::Context;
use crate::stream::{ClientStream, ClientTcp};

/// Redis 7 closes an unauthenticated client whose query buffer passes 64 KiB... we do the same.
const PREAUTH_MAX_BUFFER: usize = 64 * 1024;

/// Client bytes held before parsing stops reading. The decoder needs at most
/// ~128 KiB to decide (two 64 KiB arguments before it streams), so this never stalls.
const CLIENT_IN_CAP: usize = 160 * 1024;

/// Backend bytes held unscanned; a reply longer than this is streamed.
const REPLY_STREAM_AFTER: usize = 64 * 1024;

/// Bytes queued towards either side before the proxy stops reading the other.
const OUT_CAP: usize = 256 * 1024;

/// The reply to a command over its rate in `reject` mode.
const RATE_LIMITED: &[u8] = b"-ERR rate limit exceeded\r\n";

/// Most requests buffered behind one that its command-rate check pays for
/// at once (see [`crate::guards::Admission::command`]).
const CHARGE_AHEAD: usize = 63;

/// Requests the fast path peeks at once (and so pays for at once).
const PASS_BATCH: usize = 32;
/// The reply when a cap on connections or sessions refuses the client.
const MAX_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";

/// Serves one accepted connection to the end, logging how it ended.
pub async fn serve(ctx: &Arc<Context>, tcp: ClientTcp, peer: SocketAddr, admission: Admission) {
    let result = tokio::select! {
        biased;
        _ = Cancelled::new(&ctx.close) => Err(SessionError::Shutdown),
        r = run(ctx, tcp, peer, admission) => r,
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

async fn run(
    ctx: &Arc<Context>,
    tcp: ClientTcp,
    peer: SocketAddr,
    mut admission: Admission,
) -> Result<(), SessionError> {
    let deadline = Instant::now() + ctx.limits.login_timeout;
    let (stream, cert_names) = match tokio::time::timeout_at(deadline, handshake(ctx, tcp)).await {
        Ok(r) => r?,
        Err(_) => {
            ctx.metrics.tls_failure("timeout");
            return Err(SessionError::LoginTimeout);
        }
    };
    let mut client = Client {
        stream,
        buf: BytesMut::new(),
    };

    let outcome = match cert_names {
        Some(names) => match ctx
            .users
            .authenticate_certificate(&names, &ctx.listener.name)
        {
            Ok(id) => {
                ctx.audit_login(peer, id.name().as_bytes(), Ok(&id));
                LoginOutcome::Login(id, Login::Auth, false)
            }
            Err(f) => {
                let shown = names.first().map(String::as_bytes).unwrap_or(b"");
                ctx.audit_login(peer, shown, Err(f));
                // Without a mapped certificate the client may still log in with a password.
                login_phase(ctx, &mut client, peer, deadline).await?
            }
        },
        None => login_phase(ctx, &mut client, peer, deadline).await?,
    };
    let LoginOutcome::Login(identity, login, reply_ok) = outcome else {
        return Ok(());
    };
    if let Err(refusal) = admission.authenticated(&ctx.guards, &identity) {
        let reason = refusal.label();
        ctx.metrics.refused(reason);
        if ctx.guards.log_refusal(peer.ip(), reason) {
            info!(event = "login_refused", listener = %ctx.listener.name, %peer, user = %escape(identity.name().as_bytes()), reason);
        }
        let _ = client.stream.write_all(MAX_CLIENTS).await;
        let _ = client.stream.shutdown().await;
        return Err(SessionError::Limit(reason));
    }

    let backend = &ctx.listener.backend;
    let cred = identity.backend_credential(&backend.credential).clone();
    if let Some(muxes) = &ctx.redis_mux {
        if let Err(reply) = mux_login(&login) {
            ctx.metrics.refused("not_multiplexed");
            let _ = client.stream.write_all(reply).await;
            let _ = client.stream.shutdown().await;
            return Err(SessionError::Limit("not_multiplexed"));
        }
        let shared = muxes.attach(&cred);
        let connected = if shared.ready().await {
            backend::reuse(Upstream::Shared(shared), backend, &cred, &login).await
        } else {
            Err(BackendError::Closed)
        };
        let result = match connected {
            Ok(c) => c,
            Err(e) => return backend_unavailable(ctx, &mut client, e).await,
        };
        let logged_in = (identity, login, reply_ok);
        return Relay::new(ctx, peer, client, admission, logged_in, cred, result)
            .run()
            .await;
    }
    let pool = ctx.redis_pool.clone().filter(|p| p.config().enabled());
    let pooled = pool.as_ref().and_then(|p| {
        crate::pool::checkout(
            p,
            &pool::Key::new(&cred),
            &ctx.listener.backend.name,
            ctx.metrics.all(),
        )
    });
    let (connected, born) = match pooled {
        Some((idle, born)) => (
            backend::reuse(Upstream::Own(idle.stream), backend, &cred, &login).await,
            born,
        ),
        None => (
            backend::connect(backend, &cred, &login, ctx.metrics.all())
                .await
                .map(|c| Connected {
                    stream: Upstream::Own(c.stream),
                    reply: c.reply,
                    leftover: c.leftover,
                }),
            std::time::Instant::now(),
        ),
    };
    let connected = match connected {
        Ok(c) => c,
        Err(e) => return backend_unavailable(ctx, &mut client, e).await,
    };
    let logged_in = (identity, login, reply_ok);
    let mut relay = Relay::new(ctx, peer, client, admission, logged_in, cred, connected);
    let result = relay.run().await;
    let Some(pool) = pool else {
        return result;
    };
    let reusable = result.is_ok() && relay.reusable();
    let Relay {
        backend: upstream,
        cred,
        admission,
        client,
        ..
    } = relay;
    // The client is gone: its connection and permits go now, not after the reset.
    drop(client);
    drop(admission);
    let Upstream::Own(stream) = upstream else {
        return result;
    };
    let idle = pool::Idle { stream };
    if reusable {
        give_back(ctx, &pool, &cred, idle, born).await;
    } else {
        ctx.metrics.all().pool_event(&backend.name, "discarded");
        pool::close(idle, crate::pool::CLOSE_WAIT).await;
    }
    result
}

/// The backend could not be reached or refused the proxy's login: the client
/// is told so, in RESP, and the session ends.
async fn backend_unavailable(
    ctx: &Context,
    client: &mut Client,
    e: BackendError,
) -> Result<(), SessionError> {
    ctx.metrics.refused("backend_unavailable");
    let _ = client.stream.write_all(replies::BACKEND_UNAVAILABLE).await;
    let _ = client.stream.shutdown().await;
    Err(e.into())
}

/// A login that a shared backend connection can take: RESP2, no client name
/// (both would be set on the connection every session shares). `Err`: the reply.
fn mux_login(login: &Login) -> Result<(), &'static [u8]> {
    match login {
        Login::Hello { proto: 3, .. } => Err(replies::MUX_NOPROTO),
        Login::Hello {
            setname: Some(_), ..
        } => Err(replies::MUX_SETNAME),
        _ => Ok(()),
    }
}

/// Resets a connection the client left clean (RESET, then the proxy's AUTH)
/// and keeps it, or closes it.
async fn give_back(
    ctx: &Context,
    pool: &pool::Pool,
    cred: &Credential,
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
    if let Err(e) = pool::reset(&mut idle, cred, backend.connect_timeout).await {
        debug!(event = "pool_reset_failed", backend = %backend.name, error = ?e);
        metrics.pool_event(&backend.name, "reset_failed");
        pool::close(idle, crate::pool::CLOSE_WAIT).await;
        return;
    }
    match pool.put(pool::Key::new(cred), idle, born, std::time::Instant::now()) {
        crate::pool::Put::Kept(displaced) => {
            metrics.pool_event(&backend.name, "kept");
            for d in displaced {
                metrics.pool_event(&backend.name, "evicted");
                tokio::spawn(pool::close(d, crate::pool::CLOSE_WAIT));
            }
        }
        crate::pool::Put::Refused(idle) => {
            metrics.pool_event(&backend.name, "full");
            pool::close(idle, crate::pool::CLOSE_WAIT).await;
        }
    }
    metrics
        .pool_idle
        .with_label_values(&[&backend.name])
        .set(pool.idle() as i64);
}

/// Phase 1: TLS. Returns the stream and, when the listener requires a client
/// certificate, the names it carries (a certificate is an identity only then).
async fn handshake(
    ctx: &Context,
    tcp: ClientTcp,
) -> Result<(ClientStream, Option<Vec<String>>), SessionError> {
    let Some(tls) = &ctx.listener.tls else {
        return Ok((ClientStream::Plain(tcp), None));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics
                .tls_failure(crate::tls::handshake_failure_reason(&e));
            return Err(SessionError::ClientTls(e));
        }
    };
    let names = if tls.client_cert == crate::tls::ClientCertMode::Required {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(crate::tls::certificate_names)
    } else {
        None
    };
    Ok((ClientStream::Tls(Box::new(stream)), names))
}

/// The client connection, driven from one task: no `split`, so no lock
/// between its read and write halves on every poll.
struct Client {
    stream: ClientStream,
    buf: BytesMut,
}

enum LoginOutcome {
    /// Authenticated; how to log in to the backend; whether to send `+OK` (AUTH) to the client.
    Login(Identity, Login, bool),
    /// The client quit or went away before authenticating.
    Quit,
}

/// What the login phase does with one request.
enum PreAuth {
    Reply(&'static [u8]),
    ReplyOwned(Vec<u8>),
    Authenticate {
        user: Vec<u8>,
        password: zeroize::Zeroizing<Vec<u8>>,
        login: Login,
    },
    Quit,
}

/// Phase 2: read AUTH / HELLO / QUIT only, answer everything else with NOAUTH.
async fn login_phase(
    ctx: &Arc<Context>,
    client: &mut Client,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<LoginOutcome, SessionError> {
    let mut attempts = 0u32;
    let limits = RequestLimits::UNAUTHENTICATED;
    loop {
        loop {
            let decoded = match decode(&mut client.buf, &limits) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => return Err(protocol_error(ctx, &mut client.stream, e).await),
            };
            let Decoded::Request(req) = decoded else {
                continue;
            };
            if is_http(&req) {
                ctx.metrics.refused("http_request");
                return Err(SessionError::Http);
            }
            let action = preauth_action(&req);
            let (user, password, login) = match action {
                PreAuth::Reply(r) => {
                    if r == replies::NOAUTH || r == replies::NOAUTH_HELLO {
                        ctx.metrics.refused("noauth");
                        if ctx.guards.log_refusal(peer.ip(), "noauth") {
                            info!(event = "command_refused", listener = %ctx.listener.name, %peer,
                                command = %escape(req.arg(0).unwrap_or(b"")), reason = "noauth");
                        }
                    }
                    client
                        .stream
                        .write_all(r)
                        .await
                        .map_err(SessionError::ClientIo)?;
                    continue;
                }
                PreAuth::ReplyOwned(r) => {
                    client
                        .stream
                        .write_all(&r)
                        .await
                        .map_err(SessionError::ClientIo)?;
                    continue;
                }
                PreAuth::Quit => {
                    let _ = client.stream.write_all(replies::OK).await;
                    let _ = client.stream.shutdown().await;
                    return Ok(LoginOutcome::Quit);
                }
                PreAuth::Authenticate {
                    user,
                    password,
                    login,
                } => (user, password, login),
            };
            attempts += 1;
            let result =
                tokio::time::timeout_at(deadline, check_password(ctx, peer, &user, &password))
                    .await
                    .map_err(|_| SessionError::LoginTimeout)?;
            ctx.audit_login(peer, &user, result.as_ref().map_err(|f| *f));
            match result {
                Ok(id) => return Ok(LoginOutcome::Login(id, login, true)),
                Err(_) => {
                    ctx.metrics.refused("wrongpass");
                    client
                        .stream
                        .write_all(replies::WRONGPASS)
                        .await
                        .map_err(SessionError::ClientIo)?;
                    if attempts >= ctx.limits.max_auth_attempts {
                        ctx.metrics.refused("too_many_auth_attempts");
                        let _ = client.stream.shutdown().await;
                        return Err(SessionError::ClientProtocol(
                            "too many failed AUTH attempts".into(),
                        ));
                    }
                }
            }
        }
        if client.buf.len() > PREAUTH_MAX_BUFFER {
            let e = ProtocolError::UnauthenticatedBulkLength;
            return Err(protocol_error(ctx, &mut client.stream, e).await);
        }
        client.buf.reserve(READ_CHUNK);
        let room = PREAUTH_MAX_BUFFER + 1 - client.buf.len().min(PREAUTH_MAX_BUFFER);
        let mut limited = (&mut client.stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut client.buf)).await {
            Err(_) => {
                ctx.metrics.refused("login_timeout");
                return Err(SessionError::LoginTimeout);
            }
            Ok(Err(e)) => return Err(SessionError::ClientIo(e)),
            Ok(Ok(0)) => return Ok(LoginOutcome::Quit),
            Ok(Ok(n)) => ctx.metrics.bytes_in.inc_by(n as u64),
        }
    }
}

/// Writes Redis's protocol error reply and ends the session, as Redis does.
async fn protocol_error(ctx: &Context, wr: &mut ClientStream, e: ProtocolError) -> SessionError {
    ctx.metrics.refused("protocol_error");
    let _ = wr.write_all(&replies::error(&e.to_string())).await;
    let _ = wr.shutdown().await;
    SessionError::ClientProtocol(e.to_string())
}

/// A request that looks like HTTP: Redis closes such connections silently
/// (server.c, `securityWarningCommand`) to stop cross-protocol scripting.
fn is_http(req: &Request) -> bool {
    let Some(name) = req.arg(0) else { return false };
    if name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:") {
        return true;
    }
    req.is_inline()
        && name.eq_ignore_ascii_case(b"get")
        && (1..req.argc())
            .filter_map(|i| req.arg(i))
            .any(|a| a.starts_with(b"HTTP/"))
}

/// Commands the session must see whole (their replies or effects change what
/// it tracks, or the proxy answers them itself): never passed through in place.
fn tracked_by_session(name: &str) -> bool {
    matches!(
        name,
        "auth"
            | "hello"
            | "quit"
            | "reset"
            | "multi"
            | "exec"
            | "discard"
            | "monitor"
            | "sync"
            | "psync"
            | "client"
            | "subscribe"
            | "psubscribe"
            | "ssubscribe"
            | "unsubscribe"
            | "punsubscribe"
            | "sunsubscribe"
    )
}

/// Whether a command can go through a shared backend connection ([`mux`]):
/// it neither changes nor depends on state Redis keeps per connection
/// (what the session tracks for that reason, the selected database, the
/// cluster and replica flags), and its one reply comes when its turn comes
/// (nothing blocking). The others are refused there.
fn multiplexable(spec: &CommandSpec) -> bool {
    spec.categories & (category::BLOCKING | category::TRANSACTION) == 0
        && !tracked_by_session(spec.name)
        && !matches!(
            spec.name,
            "select" | "readonly" | "readwrite" | "asking" | "wait" | "waitaof" | "replconf"
        )
}

/// AUTH or HELLO: may switch the user, and waits for a password check.
fn is_login(req: &Request) -> bool {
    req.arg(0).is_some_and(is_login_name)
}

fn eq(a: Option<&[u8]>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b.as_bytes()))
}

fn preauth_action(req: &Request) -> PreAuth {
    let name = req.arg(0);
    if eq(name, "auth") {
        return match parse_auth(req) {
            Ok((user, password)) => PreAuth::Authenticate {
                user,
                password,
                login: Login::Auth,
            },
            Err(reply) => PreAuth::Reply(reply),
        };
    }
    if eq(name, "hello") {
        return match parse_hello(req) {
            Err(r) => PreAuth::ReplyOwned(r),
            Ok(h) => match h.auth {
                Some((user, password)) => PreAuth::Authenticate {
                    user,
                    password,
                    login: Login::Hello {
                        proto: h.proto.unwrap_or(2),
                        setname: h.setname,
                    },
                },
                None => PreAuth::Reply(replies::NOAUTH_HELLO),
            },
        };
    }
    if eq(name, "quit") {
        return PreAuth::Quit;
    }
    PreAuth::Reply(replies::NOAUTH)
}

type UserPass = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// `AUTH password` (the `default` user) or `AUTH user password`.
fn parse_auth(req: &Request) -> Result<UserPass, &'static [u8]> {
    if !req.is_whole() {
        return Err(replies::WRONGPASS);
    }
    match (req.argc(), req.arg(1), req.arg(2)) {
        (2, Some(p), _) => Ok((b"default".to_vec(), zeroize::Zeroizing::new(p.to_vec()))),
        (3, Some(u), Some(p)) => Ok((u.to_vec(), zeroize::Zeroizing::new(p.to_vec()))),
        _ => Err(replies::AUTH_ARITY),
    }
}

struct Hello {
    proto: Option<u8>,
    auth: Option<UserPass>,
    setname: Option<Vec<u8>>,
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`, as networking.c's `helloCommand` reads it.
fn parse_hello(req: &Request) -> Result<Hello, Vec<u8>> {
    if !req.is_whole() {
        return Err(replies::WRONGPASS.to_vec());
    }
    let mut h = Hello {
        proto: None,
        auth: None,
        setname: None,
    };
    if let Some(v) = req.arg(1) {
        let v: i64 = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| replies::HELLO_BAD_VERSION.to_vec())?;
        if !(2..=3).contains(&v) {
            return Err(replies::NOPROTO.to_vec());
        }
        h.proto = Some(v as u8);
    }
    let mut j = 2;
    while j < req.argc() {
        let more = req.argc() - 1 - j;
        let opt = req.arg(j).unwrap_or(b"");
        if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
            let (u, p) = (req.arg(j + 1).unwrap_or(b""), req.arg(j + 2).unwrap_or(b""));
            h.auth = Some((u.to_vec(), zeroize::Zeroizing::new(p.to_vec())));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
            let name = req.arg(j + 1).unwrap_or(b"");
            // Redis's rule (networking.c, validateClientName): printable ASCII, no spaces.
            if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
                return Err(replies::BAD_CLIENT_NAME.to_vec());
            }
            h.setname = Some(name.to_vec());
            j += 2;
        } else {
            return Err(replies::hello_syntax_error(opt));
        }
    }
    Ok(h)
}

/// Checks a password through the login backoff: a banned IP or IP + user gets
/// the ordinary failure without the password being checked (no oracle), a
/// backed-off one waits first; the outcome feeds the backoff table.
async fn check_password(
    ctx: &Arc<Context>,
    peer: SocketAddr,
    user: &[u8],
    password: &[u8],
) -> Result<Identity, AuthFailure> {
    match ctx.guards.login_verdict(peer.ip(), user) {
        AuthVerdict::Allow => {}
        AuthVerdict::Delay(d) => {
            ctx.metrics.refused("login_backoff");
            tokio::time::sleep(d).await;
        }
        AuthVerdict::Banned { .. } => {
            ctx.metrics.refused("login_banned");
            return Err(AuthFailure::Banned);
        }
    }
    let result = verify(ctx, user, password).await;
    ctx.guards.record_login(peer.ip(), user, result.is_ok());
    result
}

/// Checks a password off the reactor, under the process-wide cap on concurrent checks.
/// A password verified lately is checked here, without a thread hop.
async fn verify(ctx: &Arc<Context>, user: &[u8], password: &[u8]) -> Result<Identity, AuthFailure> {
    let listener = &ctx.listener.name;
    if let Some(r) = ctx
        .users
        .authenticate_password_cached(user, password, listener)
    {
        return r;
    }
    let _permit = ctx.auth_permits.acquire().await;
    let users = ctx.users.clone();
    let listener = listener.clone();
    let user = user.to_vec();
    let password = zeroize::Zeroizing::new(password.to_vec());
    tokio::task::spawn_blocking(move || users.authenticate_password(&user, &password, &listener))
        .await
        .unwrap_or(Err(AuthFailure::UnknownUser))
}

/// A reply owed to the client, in request order.
#[derive(Debug)]
enum Slot {
    /// The next backend reply goes to the client as it is.
    Reply(Effect),
    /// Subscription confirmations of one kind; `None` until the count is known
    /// (an UNSUBSCRIBE without arguments answers once per current subscription).
    Subscribe {
        kind: SubKind,
        remaining: Option<usize>,
    },
    /// The backend reply is dropped and this one sent instead (EXEC → EXECABORT).
    Replace(&'static [u8]),
    /// A command the proxy sent itself (backend re-login); its reply must be OK and is dropped.
    Internal,
    /// A reply the proxy wrote itself.
    Local(Bytes),
    /// Close once everything before has been sent (QUIT, protocol error).
    Close,
}

/// State to update when a forwarded command's reply arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    /// HELLO switched the protocol version (if the reply is not an error).
    Proto(u8),
    /// RESET: RESP2, no subscriptions.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubKind {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
}

impl SubKind {
    fn of(name: &[u8]) -> Option<SubKind> {
        // Every name ends in "subscribe": one length check turns most commands away.
        if !(9..=12).contains(&name.len()) {
            return None;
        }
        [
            SubKind::Subscribe,
            SubKind::Unsubscribe,
            SubKind::PSubscribe,
            SubKind::PUnsubscribe,
            SubKind::SSubscribe,
            SubKind::SUnsubscribe,
        ]
        .into_iter()
        .find(|k| name.eq_ignore_ascii_case(k.reply_name().as_bytes()))
    }

    fn reply_name(self) -> &'static str {
        match self {
            SubKind::Subscribe => "subscribe",
            SubKind::Unsubscribe => "unsubscribe",
            SubKind::PSubscribe => "psubscribe",
            SubKind::PUnsubscribe => "punsubscribe",
            SubKind::SSubscribe => "ssubscribe",
            SubKind::SUnsubscribe => "sunsubscribe",
        }
    }

    fn of_reply(info: &FrameInfo) -> Option<SubKind> {
        [
            SubKind::Subscribe,
            SubKind::Unsubscribe,
            SubKind::PSubscribe,
            SubKind::PUnsubscribe,
            SubKind::SSubscribe,
            SubKind::SUnsubscribe,
        ]
        .into_iter()
        .find(|k| info.is_pubsub(k.reply_name()))
    }
}

/// Subscription counts, kept from the counts in Redis's confirmations.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: i64,
    patterns: i64,
    shard: i64,
}

impl Subscriptions {
    fn active(&self) -> bool {
        self.channels + self.patterns + self.shard > 0
    }

    /// Applies a confirmation: its third element is the count after it
    /// (channels + patterns, or shard channels for the S- commands; pubsub.c).
    fn apply(&mut self, kind: SubKind, count: i64) {
        match kind {
            SubKind::Subscribe | SubKind::Unsubscribe => {
                self.channels = (count - self.patterns).max(0)
            }
            SubKind::PSubscribe | SubKind::PUnsubscribe => {
                self.patterns = (count - self.channels).max(0)
            }
            SubKind::SSubscribe | SubKind::SUnsubscribe => self.shard = count.max(0),
        }
    }

    /// How many confirmations an argument-less unsubscribe of `kind` produces.
    fn unsubscribe_all_count(&self, kind: SubKind) -> usize {
        let n = match kind {
            SubKind::Unsubscribe => self.channels,
            SubKind::PUnsubscribe => self.patterns,
            SubKind::SUnsubscribe => self.shard,
            _ => 1,
        };
        usize::try_from(n).unwrap_or(0).max(1)
    }
}

#[derive(Debug, Default)]
struct Multi {
    active: bool,
    /// A command was refused inside MULTI: EXEC must fail with EXECABORT.
    dirty: bool,
}

/// What happens to the bytes of a reply being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// To the client, consuming the head slot.
    Reply,
    /// To the client, out of band (pub/sub message, RESP3 push).
    Unsolicited,
    /// Dropped (the head slot replaces or checks it).
    Swallow,
}

/// Phase 4: the authenticated relay.
struct Relay<'a> {
    ctx: &'a Arc<Context>,
    peer: SocketAddr,
    identity: Identity,
    /// The backend login in use (changes when an AUTH switches user).
    cred: Credential,
    proto: u8,
    client: Client,
    backend: Upstream,
    /// The backend connection is shared ([`super::mux`]).
    mux: bool,
    /// Most client bytes buffered: a request not whole by then is refused,
    /// or (with a connection of its own) streamed.
    in_cap: usize,
    backend_in: BytesMut,
    to_client: Outbox,
    to_backend: Outbox,
    slots: VecDeque<Slot>,
    scanner: ReplyScanner,
    /// Bytes of `backend_in` already given to the scanner.
    scanned: usize,
    /// How the reply being streamed is handled, once it is.
    streaming_reply: Option<Disposition>,
    /// The rest of a large request, and whether it goes to the backend.
    req_tail: Option<(Tail, bool)>,
    multi: Multi,
    subs: Subscriptions,
    /// No more client input is read (QUIT, protocol error).
    closing: bool,
    auth_attempts: u32,
    /// Bytes per second read from this client.
    bytes_rate: Option<ByteBudget>,
    /// Permits, and the per-IP and per-user command rates.
    admission: Admission,
    /// A request held back until its rate allows it (`delay` mode).
    stashed: Option<Request>,
    /// No request is dispatched before this (`delay` mode).
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
    /// Reloads, to close the session if its user was removed (when so configured).
    reloads: Reloads,
    /// The sockets already polled in vain in this wakeup.
    parked: Parked,
    /// The command table entry of the last command seen.
    last_command: Option<&'static super::commands::CommandSpec>,
    /// Commands allowed since the metric was last updated.
    allowed: u64,
    /// An AUTH or HELLO waiting for [`Relay::login_command`].
    login: Option<LoginRequest>,
}

/// What [`Relay::pass_through`] left at the front of the read buffer.
enum Front {
    /// No whole multibulk request: decode decides.
    NotWhole,
    /// The pipeline or the backend queue is full.
    Full,
    /// A request whose command rates were asked (`Err`: it is over them) and
    /// that needs [`Relay::handle`] or a refusal.
    Charged(Result<(), (std::time::Duration, Action)>),
}

/// An AUTH or HELLO after login, with its tail: handled by [`Relay::login_command`].
type LoginRequest = (Request, Option<Tail>);

/// What woke the relay.
enum Event {
    /// Bytes were read, or a write made room: process what is buffered.
    Io,
    /// The client closed its side.
    ClientClosed,
    /// The backend closed its side.
    BackendClosed,
    /// The users were reloaded.
    Reload(crate::server::UsersEpoch),
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

impl<'a> Relay<'a> {
    /// The relay of a session that has logged in (`reply_ok`: the client's
    /// AUTH is owed its `+OK`) and reached its backend.
    fn new(
        ctx: &'a Arc<Context>,
        peer: SocketAddr,
        client: Client,
        admission: Admission,
        (identity, login, reply_ok): (Identity, Login, bool),
        cred: Credential,
        connected: Connected<Upstream>,
    ) -> Relay<'a> {
        let mut to_client = Outbox::default();
        match &login {
            Login::Hello { .. } => to_client.push(connected.reply.freeze()),
            Login::Auth if reply_ok => to_client.push(Bytes::from_static(replies::OK)),
            Login::Auth => {}
        }
        let proto = match login {
            Login::Hello { proto, .. } => proto,
            Login::Auth => 2,
        };
        Relay {
            ctx,
            peer,
            identity,
            cred,
            proto,
            client,
            mux: matches!(connected.stream, Upstream::Shared(_)),
            in_cap: match connected.stream {
                Upstream::Shared(_) => mux::MAX_REQUEST,
                Upstream::Own(_) => CLIENT_IN_CAP,
            },
            backend: connected.stream,
            backend_in: connected.leftover,
            to_client,
            to_backend: Outbox::default(),
            slots: VecDeque::new(),
            scanner: ReplyScanner::new(),
            scanned: 0,
            streaming_reply: None,
            req_tail: None,
            multi: Multi::default(),
            subs: Subscriptions::default(),
            closing: false,
            auth_attempts: 0,
            bytes_rate: ctx
                .listener
                .limits
                .bytes_per_connection
                .map(|r| ByteBudget::new(Rate::new(r))),
            admission,
            stashed: None,
            commands_paused_until: None,
            reads_paused_until: None,
            last_activity: Instant::now(),
            idle_check_at: ctx.listener.limits.idle_timeout.map(|d| Instant::now() + d),
            idle_timer: Timer::default(),
            pause_timer: Timer::default(),
            reloads: Reloads::new(&ctx.reloads),
            parked: Parked::default(),
            last_command: None,
            allowed: 0,
            login: None,
        }
    }

    /// Whether the backend connection is in step and plain after the client
    /// left: every reply read, nothing half-sent, outside MULTI, not subscribed.
    /// (RESET undoes the rest: WATCH, tracking, SELECT, the name, RESP3.)
    fn reusable(&self) -> bool {
        self.slots.is_empty()
            && self.streaming_reply.is_none()
            && self.req_tail.is_none()
            && self.stashed.is_none()
            && self.backend_in.is_empty()
            && !self.scanner.in_frame()
            && !self.to_backend.wants_write()
            && !self.multi.active
            && !self.subscribed_or_subscribing()
    }

    async fn run(&mut self) -> Result<(), SessionError> {
        let result = numbered(self.relay()).await;
        if matches!(result, Err(SessionError::Backend(_))) {
            // The client may be owed an error reply (backend re-login refused): try to deliver it.
            let flush = async {
                while self.to_client.wants_write() {
                    if self
                        .to_client
                        .write_to(&mut self.client.stream)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), flush).await;
        }
        result
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        loop {
            self.process_client().await?;
            self.process_backend()?;
            if self.closing
                && self.req_tail.is_none()
                && self.slots.is_empty()
                && !self.to_client.wants_write()
            {
                let _ = self.client.stream.shutdown().await;
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
                    // Redis closed the connection (CLIENT KILL, timeout): pass on what it sent, then close.
                    self.process_backend()?;
                    return Err(BackendError::Closed.into());
                }
                Event::Reload(epoch) => {
                    if self.ctx.must_close(&epoch, &self.identity) {
                        self.ctx.metrics.refused("user_removed");
                        info!(event = "session_closed", listener = %self.ctx.listener.name, peer = %self.peer,
                            user = %escape(self.identity.name().as_bytes()), reason = "user_removed");
                        let _ = self.client.stream.shutdown().await;
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
                    if self.last_activity + d <= now && self.slots.is_empty() {
                        self.ctx.metrics.refused("idle_timeout");
                        if self.ctx.guards.log_refusal(self.peer.ip(), "idle_timeout") {
                            info!(event = "session_closed", listener = %self.ctx.listener.name, peer = %self.peer, reason = "idle_timeout");
                        }
                        let _ = self.client.stream.shutdown().await;
                        return Err(SessionError::Limit("idle_timeout"));
                    }
                    if self.last_activity + d <= now {
                        // Replies are still owed: not idle. Look again a full period from now.
                        self.last_activity = now;
                    }
                    self.idle_check_at = Some(self.last_activity + d);
                }
            }
        }
    }

    /// Drives both sockets from this one task: writes what is queued, then
    /// reads what has arrived, and returns as soon as there is something to
    /// process; otherwise waits on the sockets, the timers and reloads at once.
    /// Nothing is built per call (no futures of `select!` branches, no timer
    /// registrations), and reads and writes of one stream need no lock.
    fn poll_io(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, SessionError>> {
        // A write that makes room for more work only matters when something
        // waits for that room (a full queue) or for the queue to empty (closing).
        let stalled =
            self.closing || self.to_backend.len >= OUT_CAP || self.to_client.len >= OUT_CAP;
        let mut progress = poll_write_both(
            cx,
            &mut self.to_backend,
            &mut self.backend,
            &mut self.to_client,
            &mut self.client.stream,
            stalled,
            &self.ctx.metrics.bytes_out,
        )?;

        let read_client = !self.done_reading()
            && self.reads_paused_until.is_none()
            && self.stashed.is_none()
            && self.client.buf.len() < self.in_cap
            && self.slots.len() < self.ctx.limits.max_pipeline
            && self.to_backend.len < OUT_CAP
            && self.to_client.len < OUT_CAP;
        if read_client && !self.parked.is_parked(Side::Client) {
            let last_activity = self
                .idle_check_at
                .is_some()
                .then_some(&mut self.last_activity);
            let read = poll_client_read(
                cx,
                &mut self.client.stream,
                &mut self.client.buf,
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
        let read_backend =
            self.backend_in.len() < REPLY_STREAM_AFTER + READ_CHUNK && self.to_client.len < OUT_CAP;
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
            return Poll::Ready(Ok(Event::Io));
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

    /// Closing, with no tail left to read. A streamed argument (a QUIT's) is
    /// read to its end first: closing with it unread would reset the connection
    /// while the client is still sending it.
    fn done_reading(&self) -> bool {
        self.closing && self.req_tail.is_none()
    }

    /// True while an out-of-band frame (pub/sub message, push) is half relayed:
    /// nothing of the proxy's own may be written into the middle of it.
    fn mid_unsolicited(&self) -> bool {
        self.streaming_reply == Some(Disposition::Unsolicited)
    }

    /// Owes the client `reply` after everything already owed.
    fn push_local(&mut self, reply: Bytes) {
        if self.slots.is_empty() && !self.mid_unsolicited() {
            self.to_client.push(reply);
        } else {
            self.slots.push_back(Slot::Local(reply));
        }
    }

    fn close_after_pending(&mut self) {
        self.closing = true;
        if self.slots.is_empty() && !self.mid_unsolicited() {
            return;
        }
        self.slots.push_back(Slot::Close);
    }

    /// In RESP2 subscribed mode now, or about to be once a pipelined SUBSCRIBE lands.
    fn subscribed_or_subscribing(&self) -> bool {
        self.subs.active()
            || self.slots.iter().any(|s| {
                matches!(
                    s,
                    Slot::Subscribe {
                        kind: SubKind::Subscribe | SubKind::PSubscribe | SubKind::SSubscribe,
                        ..
                    }
                )
            })
    }

    /// Writes the replies the proxy owes that are now at the front.
    fn drain_locals(&mut self) {
        while let Some(Slot::Local(_) | Slot::Close) = self.slots.front() {
            match pop_front_rewound(&mut self.slots) {
                Some(Slot::Local(b)) => self.to_client.push(b),
                Some(Slot::Close) => self.closing = true,
                _ => {}
            }
        }
    }

    fn forward(&mut self, raw: Bytes, slot: Slot) {
        self.to_backend.push(raw);
        self.slots.push_back(slot);
    }

    /// Decodes and dispatches client requests while there is room for their replies.
    async fn process_client(&mut self) -> Result<(), SessionError> {
        let result = self.dispatch_requests().await;
        // Tokens paid ahead for requests left unhandled (a full queue, a pause) are not
        // kept: by the time those requests run, the buckets have refilled.
        self.admission.drop_credits();
        // Counted per batch: a shared counter touched per command costs more than the rest of its check.
        if self.allowed > 0 {
            self.ctx.metrics.allowed.inc_by(self.allowed);
            self.allowed = 0;
        }
        result
    }

    async fn dispatch_requests(&mut self) -> Result<(), SessionError> {
        let limits = if self.mux {
            // Through a shared connection requests go whole (mux::MAX_REQUEST).
            RequestLimits {
                stream_after: None,
                ..RequestLimits::AUTHENTICATED
            }
        } else {
            RequestLimits::AUTHENTICATED
        };
        // Whole requests at the front of the read buffer that go to the backend
        // as they are, not yet queued: a run of them is queued at once.
        let mut run = 0;
        while !self.done_reading()
            && self.commands_paused_until.is_none()
            && self.slots.len() < self.ctx.limits.max_pipeline
            && self.to_backend.len + run < OUT_CAP
            && self.to_client.len < OUT_CAP
        {
            if let Some((tail, forward)) = &mut self.req_tail {
                let (chunk, done) = match tail.advance(&mut self.client.buf, &limits) {
                    Ok(r) => r,
                    Err(e) => {
                        // Mid-request: the backend has part of it, so the connection cannot continue.
                        self.ctx.metrics.refused("protocol_error");
                        return Err(SessionError::ClientProtocol(e.to_string()));
                    }
                };
                if *forward {
                    self.to_backend.push(chunk);
                }
                if !done {
                    break;
                }
                self.req_tail = None;
                continue;
            }
            // The rate verdict on the request at the front, when already asked.
            let mut charged = None;
            if self.stashed.is_none() {
                match self.pass_through(&mut run) {
                    Front::NotWhole => {}
                    Front::Full => continue,
                    Front::Charged(verdict) => charged = Some(verdict),
                }
            }
            self.queue_run(&mut run);
            let req = match self.stashed.take() {
                Some(req) => req,
                None => match decode(&mut self.client.buf, &limits) {
                    Ok(Some(Decoded::Request(req))) => req,
                    Ok(Some(Decoded::Skip)) => continue,
                    Ok(None) if self.client.buf.len() >= self.in_cap && self.mux => {
                        // Refused as Redis refuses a request over its limits: an error, then close.
                        let reason = "request_too_large";
                        self.ctx.metrics.refused(reason);
                        info!(event = "command_refused", listener = %self.ctx.listener.name, peer = %self.peer,
                            user = %escape(self.identity.name().as_bytes()), reason);
                        let reply = replies::error(&format!(
                            "Protocol error: a request through a shared backend connection is limited to {} bytes",
                            mux::MAX_REQUEST
                        ));
                        self.push_local(Bytes::from(reply));
                        self.close_after_pending();
                        break;
                    }
                    Ok(None) => {
                        if self.client.buf.len() >= self.in_cap {
                            return Err(SessionError::ClientProtocol(
                                "request buffer overflow".into(),
                            ));
                        }
                        break;
                    }
                    Err(e) => {
                        self.ctx.metrics.refused("protocol_error");
                        info!(event = "command_refused", listener = %self.ctx.listener.name, peer = %self.peer,
                            user = %escape(self.identity.name().as_bytes()), reason = "protocol_error", error = %e);
                        self.push_local(Bytes::from(replies::error(&e.to_string())));
                        self.close_after_pending();
                        break;
                    }
                },
            };
            match charged {
                None => self.rate_checked(req)?,
                Some(Ok(())) => self.handle(req)?,
                Some(Err(refused)) => self.rate_refused(req, refused),
            }
            if let Some((req, tail)) = self.login.take() {
                self.login_command(req, tail).await;
            }
        }
        self.queue_run(&mut run);
        Ok(())
    }

    /// The fast path: passes whole requests at the front of the read buffer
    /// (after the `run` already passed) through in place, as long as each is an
    /// ordinary command the policy allows (see [`Relay::pass_one`]) and there
    /// is room. They are peeked a batch at a time, so the first check of a
    /// batch can pay the command rates for all of it.
    fn pass_through(&mut self, run: &mut usize) -> Front {
        loop {
            let mut batch = [Peeked::default(); PASS_BATCH];
            let mut n = 0;
            let mut at = *run;
            // Only what there is room for now: tokens paid ahead are for requests handled in this call.
            while n < PASS_BATCH
                && self.slots.len() + n < self.ctx.limits.max_pipeline
                && self.to_backend.len + at < OUT_CAP
            {
                let Some(p) = peek_whole(&self.client.buf[at..]) else {
                    break;
                };
                batch[n] = p;
                n += 1;
                at += p.len;
                // What follows an AUTH or HELLO may be another user's: not paid with it.
                let name = &self.client.buf[at - p.len + p.name.0..at - p.len + p.name.1];
                if is_login_name(name) {
                    break;
                }
            }
            if n == 0 {
                return Front::NotWhole;
            }
            for (i, p) in batch[..n].iter().enumerate() {
                if self.slots.len() >= self.ctx.limits.max_pipeline
                    || self.to_backend.len + *run >= OUT_CAP
                {
                    return Front::Full;
                }
                match self.pass_one(*run, p, (n - 1 - i) as u32) {
                    Ok(true) => *run += p.len,
                    Ok(false) => return Front::Charged(Ok(())),
                    Err(refused) => return Front::Charged(Err(refused)),
                }
            }
        }
    }

    /// One request of the fast path, at `client.buf[at..]`, whole as `p`
    /// describes it, with `upcoming` whole requests peeked behind it: charges
    /// its command rates, and when it is an ordinary command the policy
    /// allows, gives it a reply slot and leaves its bytes where they are, to be
    /// queued with the run (`Ok(true)`). `Ok(false)`: it is paid, but needs
    /// [`Relay::handle`] (refused by policy, or a command whose reply or effect
    /// the session tracks). `Err`: over its rate.
    fn pass_one(
        &mut self,
        at: usize,
        p: &Peeked,
        upcoming: u32,
    ) -> Result<bool, (std::time::Duration, Action)> {
        self.admission
            .command(self.ctx.listener.limits.action, || upcoming)?;
        let buf = &self.client.buf[at..];
        let name = &buf[p.name.0..p.name.1];
        let spec = match self.last_command {
            Some(c) if c.name.as_bytes().eq_ignore_ascii_case(name) => c,
            _ => match super::commands::lookup(name) {
                Some(c) => c,
                None => return Ok(false),
            },
        };
        self.last_command = Some(spec);
        if tracked_by_session(spec.name) || (self.mux && !multiplexable(spec)) {
            return Ok(false);
        }
        let sub = match p.sub {
            Some((start, end)) if spec.has_subcommands() => Some(&buf[start..end]),
            _ => None,
        };
        let verdict = self
            .identity
            .user()
            .redis_policy
            .check_spec(Some(spec), name, sub);
        if verdict != Verdict::Allow {
            return Ok(false);
        }
        self.allowed += 1;
        self.slots.push_back(Slot::Reply(Effect::None));
        Ok(true)
    }

    /// Queues the run of requests passed through in place (see `dispatch_requests`).
    fn queue_run(&mut self, run: &mut usize) {
        match *run {
            0 => return,
            n if n <= crate::outbox::COPY_MAX => {
                self.to_backend.push_slice(&self.client.buf[..n]);
                self.client.buf.advance(n);
            }
            n => self.to_backend.push(self.client.buf.split_to(n).freeze()),
        }
        *run = 0;
    }

    /// Applies the command rates (per IP, per user) before handling a request:
    /// `delay` holds it and stops reading the client until a token is due
    /// (nothing lost, order kept); `reject` answers it in order with an error.
    /// An AUTH or HELLO is left in `login`, for [`Relay::login_command`].
    fn rate_checked(&mut self, req: Request) -> Result<(), SessionError> {
        // The requests already buffered behind this one are charged with it
        // (unless it is streamed, or may switch the user they are charged to).
        let buf = &self.client.buf;
        let upcoming = || {
            if req.tail.is_some() || is_login(&req) {
                0
            } else {
                // Only requests there is room for now (see `pass_through`).
                let room = self
                    .ctx
                    .limits
                    .max_pipeline
                    .saturating_sub(self.slots.len() + 1);
                count_whole(buf, CHARGE_AHEAD.min(room)) as u32
            }
        };
        match self
            .admission
            .command(self.ctx.listener.limits.action, upcoming)
        {
            Ok(()) => self.handle(req),
            Err(refused) => {
                self.rate_refused(req, refused);
                Ok(())
            }
        }
    }

    /// A request over its command rate: held back (`delay`) or answered with an error (`reject`).
    fn rate_refused(&mut self, mut req: Request, (wait, action): (std::time::Duration, Action)) {
        match action {
            Action::Delay => {
                self.stashed = Some(req);
                self.commands_paused_until = Some(Instant::now() + wait);
            }
            Action::Reject => {
                let name = req.arg(0).unwrap_or(b"").to_vec();
                if let Some(tail) = req.tail.take() {
                    self.req_tail = Some((tail, false));
                }
                self.deny(&name, "rate_limited", Bytes::from_static(RATE_LIMITED));
            }
        }
    }

    /// One authenticated request: answer it here, or forward it with a slot for its reply.
    /// AUTH and HELLO, which may wait for a password check, are left with
    /// their tail in `login`, for [`Relay::login_command`] (values this large
    /// are not returned: the moves cost more than the checks on this path).
    fn handle(&mut self, mut req: Request) -> Result<(), SessionError> {
        if is_http(&req) {
            self.ctx.metrics.refused("http_request");
            return Err(SessionError::Http);
        }
        let tail = req.tail.take();
        let name = req.arg(0).unwrap_or(b"");
        let in_multi_refused = self.multi.active
            && (["auth", "hello", "reset"].iter().any(|c| eq(Some(name), c))
                || SubKind::of(name).is_some());
        let subscribed_refused = self.proto == 2
            && ["auth", "hello"].iter().any(|c| eq(Some(name), c))
            && self.subscribed_or_subscribing();
        let forward = if subscribed_refused {
            // Redis refuses these in RESP2 subscribed mode; the proxy must not send its
            // own re-login there either.
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            let reply = replies::error(&format!(
                "Can't execute '{lower}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ));
            self.deny(name, "subscribed_context", Bytes::from(reply));
            false
        } else if in_multi_refused {
            // These change the login or the subscription state the proxy tracks;
            // inside MULTI their replies would hide in EXEC's array, so the proxy
            // refuses them (flagging the transaction, as Redis does for a refused command).
            let reply = Bytes::from_static(replies::NOT_IN_MULTI);
            self.deny(name, "not_in_multi", reply);
            false
        } else if is_login(&req) {
            self.login = Some((req, tail));
            return Ok(());
        } else if eq(Some(name), "quit") {
            self.push_local(Bytes::from_static(replies::OK));
            self.close_after_pending();
            false
        } else {
            self.command(req, tail.is_some())
        };
        if let Some(tail) = tail {
            self.req_tail = Some((tail, forward));
        }
        Ok(())
    }

    /// AUTH or HELLO after login: may switch the user (a password check).
    async fn login_command(&mut self, req: Request, tail: Option<Tail>) {
        let forward = if eq(req.arg(0), "auth") {
            self.reauth_auth(&req).await;
            false
        } else {
            self.hello(&req).await
        };
        if let Some(tail) = tail {
            self.req_tail = Some((tail, forward));
        }
    }

    /// Checks policy and forwards an ordinary command. Returns whether it was forwarded.
    fn command(&mut self, req: Request, has_tail: bool) -> bool {
        let name = req.arg(0).unwrap_or(b"");
        // A client mostly repeats a few commands: the last one found is tried
        // before the table's binary search.
        let spec = match self.last_command {
            Some(c) if c.name.as_bytes().eq_ignore_ascii_case(name) => Some(c),
            _ => super::commands::lookup(name),
        };
        if spec.is_some() {
            self.last_command = spec;
        }
        let sub = if spec.is_some_and(|s| s.has_subcommands()) {
            req.arg(1)
        } else {
            None
        };
        let verdict = self
            .identity
            .user()
            .redis_policy
            .check_spec(spec, name, sub);
        let unsupported = match spec.map(|s| s.name) {
            // These break the one-reply-per-request model the proxy relies on.
            Some("monitor") => Some("MONITOR"),
            Some("sync") | Some("psync") => Some("SYNC"),
            Some("client") if sub.is_some_and(|s| s.eq_ignore_ascii_case(b"reply")) => {
                Some("CLIENT REPLY")
            }
            _ => None,
        };
        if let Some(cmd) = unsupported.filter(|_| verdict == Verdict::Allow) {
            self.deny(name, "unsupported", Bytes::from(replies::unsupported(cmd)));
            return false;
        }
        if let Some(spec) = spec.filter(|_| self.mux && verdict == Verdict::Allow) {
            if spec.name == "reset" && req.argc() == 1 && !has_tail {
                // The shared connection holds nothing of this session's to reset.
                self.allowed += 1;
                self.push_local(Bytes::from_static(b"+RESET\r\n"));
                return false;
            }
            if !multiplexable(spec) {
                let reply = Bytes::from(replies::not_multiplexed(spec.name));
                self.deny(name, "not_multiplexed", reply);
                return false;
            }
        }
        if let Verdict::Deny(reason) = verdict {
            let args = (1..req.argc().min(super::request::MAX_CAPTURED)).filter_map(|i| req.arg(i));
            let reply = policy::deny_reply(reason, name, args);
            self.deny(name, reason.label(), Bytes::from(reply));
            return false;
        }
        self.allowed += 1;
        let cmd = spec.map_or("", |s| s.name);
        let argc = req.argc();
        match cmd {
            "multi" if !self.multi.active => {
                self.multi = Multi {
                    active: true,
                    dirty: false,
                };
            }
            "exec" if self.multi.active => {
                let dirty = self.multi.dirty;
                self.multi = Multi::default();
                if dirty {
                    // Redis discards a transaction in which a command was refused
                    // (multi.c). DISCARD takes the backend out of MULTI; the client
                    // gets the EXECABORT that Redis would have sent.
                    self.forward(
                        Request::from_args(&["DISCARD"]).into_raw(),
                        Slot::Replace(replies::EXECABORT),
                    );
                    // The client's EXEC was not forwarded: any tail it has is dropped.
                    return false;
                }
            }
            "discard" => self.multi = Multi::default(),
            _ => {}
        }
        let slot = match cmd {
            "hello" => Slot::Reply(Effect::None),
            "reset" if argc == 1 && !has_tail => {
                // RESET also logs the connection out (Redis 6.2+): log back in right behind it.
                // Only for a whole RESET: with arguments Redis refuses it (arity), and the
                // proxy's own bytes must never sit between a request's head and its tail.
                self.multi = Multi::default();
                self.forward(req.into_raw(), Slot::Reply(Effect::Reset));
                self.relogin();
                return true;
            }
            _ if !self.multi.active => match SubKind::of(name) {
                Some(kind) if argc > 1 => Slot::Subscribe {
                    kind,
                    remaining: Some(argc - 1),
                },
                Some(
                    kind @ (SubKind::Unsubscribe | SubKind::PUnsubscribe | SubKind::SUnsubscribe),
                ) => Slot::Subscribe {
                    kind,
                    remaining: None,
                },
                _ => Slot::Reply(Effect::None),
            },
            _ => Slot::Reply(Effect::None),
        };
        self.forward(req.into_raw(), slot);
        true
    }

    fn deny(&mut self, name: &[u8], reason: &'static str, reply: Bytes) {
        self.ctx.metrics.denied.inc();
        self.ctx.metrics.refused(reason);
        if self.ctx.guards.log_refusal(self.peer.ip(), reason) {
            info!(event = "command_refused", listener = %self.ctx.listener.name, peer = %self.peer,
                user = %escape(self.identity.name().as_bytes()), command = %escape(name), reason);
        }
        if self.multi.active {
            self.multi.dirty = true;
        }
        self.push_local(reply);
    }

    /// Sends the proxy's own AUTH to the backend; its reply is checked and dropped.
    fn relogin(&mut self) {
        let cmd = backend::login_command(&self.cred, &Login::Auth);
        self.forward(Bytes::copy_from_slice(&cmd), Slot::Internal);
    }

    /// Verifies a new login mid-session. On success, switches the backend login
    /// if the new user maps to another backend user. Returns false on failure
    /// (the WRONGPASS reply is already owed).
    async fn switch_user(&mut self, user: &[u8], password: &[u8]) -> Result<bool, SessionError> {
        let result = check_password(self.ctx, self.peer, user, password).await;
        self.ctx
            .audit_login(self.peer, user, result.as_ref().map_err(|f| *f));
        let id = match result {
            Ok(id) => id,
            Err(_) => {
                // As in Redis, a failed AUTH leaves the connection logged in as before.
                self.ctx.metrics.refused("wrongpass");
                self.push_local(Bytes::from_static(replies::WRONGPASS));
                self.auth_attempts += 1;
                if self.auth_attempts >= self.ctx.limits.max_auth_attempts {
                    self.close_after_pending();
                }
                return Ok(false);
            }
        };
        let cred = id
            .backend_credential(&self.ctx.listener.backend.credential)
            .clone();
        let same = cred.user == self.cred.user && cred.password.ct_eq(self.cred.password.expose());
        if !same && self.mux {
            // Stays logged in as before, as after a refused AUTH.
            self.deny(
                b"auth",
                "not_multiplexed",
                Bytes::from_static(replies::MUX_OTHER_USER),
            );
            return Ok(false);
        }
        if id.name() != self.identity.name() {
            if let Err(refusal) = self.admission.authenticated(&self.ctx.guards, &id) {
                // The new user has no session slot left: stay logged in as before.
                self.ctx.metrics.refused(refusal.label());
                self.push_local(Bytes::from_static(MAX_CLIENTS));
                return Ok(false);
            }
        }
        self.identity = id;
        if !same {
            self.cred = cred;
            self.relogin();
        }
        Ok(true)
    }

    async fn reauth_auth(&mut self, req: &Request) {
        match parse_auth(req) {
            Ok((user, password)) => {
                if let Ok(true) = self.switch_user(&user, &password).await {
                    self.push_local(Bytes::from_static(replies::OK));
                }
            }
            Err(reply) => self.push_local(Bytes::from_static(reply)),
        }
    }

    /// HELLO after login: AUTH is handled here, the rest is forwarded without it.
    async fn hello(&mut self, req: &Request) -> bool {
        let h = match parse_hello(req) {
            Ok(h) => h,
            Err(reply) => {
                self.push_local(Bytes::from(reply));
                return false;
            }
        };
        if self.mux {
            // Checked first, as Redis checks the version before AUTH.
            let refused = match (h.proto, &h.setname) {
                (Some(3), _) => Some(replies::MUX_NOPROTO),
                (_, Some(_)) => Some(replies::MUX_SETNAME),
                _ => None,
            };
            if let Some(reply) = refused {
                self.deny(b"hello", "not_multiplexed", Bytes::from_static(reply));
                return false;
            }
        }
        if let Some((user, password)) = &h.auth {
            if !matches!(self.switch_user(user, password).await, Ok(true)) {
                return false;
            }
        }
        let mut args: Vec<&[u8]> = vec![b"HELLO"];
        let proto;
        if let Some(p) = h.proto {
            proto = [b'0' + p];
            args.push(&proto);
        }
        if let Some(n) = &h.setname {
            args.push(b"SETNAME");
            args.push(n);
        }
        let raw = Request::from_args(&args).into_raw();
        let effect = h.proto.map_or(Effect::None, Effect::Proto);
        self.ctx.metrics.allowed.inc();
        self.forward(raw, Slot::Reply(effect));
        // Re-encoded, not the client's bytes (and whole: parse_hello refuses a streamed HELLO).
        false
    }

    /// Scans backend replies and routes them, stopping when the client side is full.
    fn process_backend(&mut self) -> Result<(), SessionError> {
        // Plain replies at the front of `backend_in`, not yet queued: a run of
        // them is queued at once. `scanned` counts from the end of the run.
        let mut run = 0;
        while self.to_client.len + run < OUT_CAP && run + self.scanned < self.backend_in.len() {
            // Between frames, a scalar reply to an ordinary request joins the run unscanned.
            if self.scanned == 0
                && !self.scanner.in_frame()
                && self.streaming_reply.is_none()
                && matches!(self.slots.front(), Some(Slot::Reply(Effect::None)))
            {
                if let Some(len) = peek_scalar(&self.backend_in[run..], crate::outbox::COPY_MAX) {
                    self.pass_reply(&mut run, len);
                    continue;
                }
            }
            let step = match self.scanner.scan(&self.backend_in[run + self.scanned..]) {
                Ok(step) => step,
                Err(e) => {
                    // The replies before the bad bytes are still the client's.
                    self.queue_replies(&mut run);
                    return Err(SessionError::Backend(BackendError::Protocol(e.to_string())));
                }
            };
            match step {
                Scan::Complete { len, info } => {
                    let end = self.scanned + len;
                    self.scanned = 0;
                    if self.streaming_reply.is_none()
                        && end <= crate::outbox::COPY_MAX
                        && self.plain_reply(&info)
                    {
                        self.pass_reply(&mut run, end);
                        continue;
                    }
                    self.queue_replies(&mut run);
                    let disposition = match self.streaming_reply.take() {
                        Some(d) => d,
                        None => self.classify(&info),
                    };
                    if disposition == Disposition::Swallow {
                        self.backend_in.advance(end);
                    } else if end <= crate::outbox::COPY_MAX {
                        // Copied: the read buffer stays unshared and is reused in place.
                        self.to_client.push_slice(&self.backend_in[..end]);
                        self.backend_in.advance(end);
                    } else {
                        self.to_client.push(self.backend_in.split_to(end).freeze());
                    }
                    if disposition == Disposition::Unsolicited {
                        self.drain_locals();
                    } else {
                        self.reply_done(&info)?;
                    }
                }
                Scan::Partial => {
                    self.queue_replies(&mut run);
                    self.scanned = self.backend_in.len();
                    if self.scanned >= REPLY_STREAM_AFTER {
                        let info = *self.scanner.partial_info();
                        let d = match self.streaming_reply {
                            Some(d) => d,
                            None => self.classify(&info),
                        };
                        self.streaming_reply = Some(d);
                        let chunk = self.backend_in.split().freeze();
                        self.scanned = 0;
                        if d != Disposition::Swallow {
                            self.to_client.push(chunk);
                        }
                    }
                }
            }
        }
        self.queue_replies(&mut run);
        Ok(())
    }

    /// Whether a complete reply is the head request's and needs nothing but
    /// passing on: what [`Relay::classify`] sends to the client as a reply,
    /// for a slot that [`Relay::reply_done`] only pops.
    fn plain_reply(&self, info: &FrameInfo) -> bool {
        matches!(self.slots.front(), Some(Slot::Reply(Effect::None)))
            && self.classify(info) == Disposition::Reply
    }

    /// The head request's reply, `len` bytes after the run, has nothing to
    /// track: it joins the run, and the replies the proxy owes after it follow.
    fn pass_reply(&mut self, run: &mut usize, len: usize) {
        pop_front_rewound(&mut self.slots);
        *run += len;
        if matches!(self.slots.front(), Some(Slot::Local(_) | Slot::Close)) {
            self.queue_replies(run);
            self.drain_locals();
        }
    }

    /// Queues the run of replies passed on in place (see `process_backend`).
    fn queue_replies(&mut self, run: &mut usize) {
        if *run > 0 {
            self.to_client.push_slice(&self.backend_in[..*run]);
            self.backend_in.advance(*run);
            *run = 0;
        }
    }

    /// Decides where a backend reply goes, from its first bytes.
    fn classify(&self, info: &FrameInfo) -> Disposition {
        let head = self.slots.front();
        if info.is_push() {
            // RESP3: pushes are out of band, except subscription confirmations owed to a SUBSCRIBE.
            return match (head, SubKind::of_reply(info)) {
                (Some(Slot::Subscribe { kind, .. }), Some(k)) if *kind == k => Disposition::Reply,
                _ => Disposition::Unsolicited,
            };
        }
        if self.proto == 2
            && self.subs.active()
            && (info.is_pubsub("message")
                || info.is_pubsub("pmessage")
                || info.is_pubsub("smessage"))
        {
            return Disposition::Unsolicited;
        }
        match head {
            Some(Slot::Replace(_) | Slot::Internal) => Disposition::Swallow,
            _ => Disposition::Reply,
        }
    }

    /// A reply for the head slot is complete: update state and release what follows.
    fn reply_done(&mut self, info: &FrameInfo) -> Result<(), SessionError> {
        let Some(head) = self.slots.front_mut() else {
            return Err(SessionError::Backend(BackendError::Protocol(
                "reply without a request".into(),
            )));
        };
        let done = match head {
            Slot::Reply(effect) => {
                match (*effect, info.is_error()) {
                    (Effect::Proto(p), false) => self.proto = p,
                    (Effect::Reset, false) => {
                        self.proto = 2;
                        self.subs = Subscriptions::default();
                    }
                    _ => {}
                }
                true
            }
            Slot::Subscribe { kind, remaining } => {
                let kind = *kind;
                if info.is_error() {
                    true
                } else {
                    // An argument-less unsubscribe is counted now that every earlier reply is in.
                    let owed = remaining.unwrap_or_else(|| self.subs.unsubscribe_all_count(kind));
                    if let Some(count) = info.children[2].integer() {
                        self.subs.apply(kind, count);
                    }
                    let left = owed.saturating_sub(1);
                    *remaining = Some(left);
                    left == 0
                }
            }
            Slot::Replace(reply) => {
                let reply = *reply;
                self.to_client.push(Bytes::from_static(reply));
                true
            }
            Slot::Internal => {
                if info.is_error() {
                    self.to_client
                        .push(Bytes::from_static(replies::BACKEND_UNAVAILABLE));
                    return Err(SessionError::Backend(BackendError::LoginRefused));
                }
                true
            }
            Slot::Local(_) | Slot::Close => {
                // drain_locals runs after every frame, so a reply never meets these.
                return Err(SessionError::Backend(BackendError::Protocol(
                    "reply without a request".into(),
                )));
            }
        };
        if done {
            pop_front_rewound(&mut self.slots);
        }
        self.drain_locals();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn hello_parsing() {
        let Ok(h) = parse_hello(&req(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"])) else {
            panic!("valid HELLO refused")
        };
        assert_eq!(h.proto, Some(3));
        assert_eq!(
            h.auth.as_ref().map(|(u, p)| (u.clone(), p.to_vec())),
            Some((b"u".to_vec(), b"p".to_vec()))
        );
        assert_eq!(h.setname, Some(b"n".to_vec()));
        assert_eq!(
            parse_hello(&req(&["HELLO", "4"])).err(),
            Some(replies::NOPROTO.to_vec())
        );
        assert_eq!(
            parse_hello(&req(&["HELLO", "x"])).err(),
            Some(replies::HELLO_BAD_VERSION.to_vec())
        );
        assert_eq!(
            parse_hello(&req(&["HELLO", "3", "AUTH", "u"])).err(),
            Some(b"-ERR Syntax error in HELLO option 'AUTH'\r\n".to_vec())
        );
    }

    #[test]
    fn preauth_only_auth_hello_quit() {
        assert!(
            matches!(preauth_action(&req(&["GET", "k"])), PreAuth::Reply(r) if r == replies::NOAUTH)
        );
        assert!(matches!(
            preauth_action(&req(&["auth", "pw"])),
            PreAuth::Authenticate { .. }
        ));
        assert!(
            matches!(preauth_action(&req(&["AUTH"])), PreAuth::Reply(r) if r == replies::AUTH_ARITY)
        );
        assert!(
            matches!(preauth_action(&req(&["HELLO", "3"])), PreAuth::Reply(r) if r == replies::NOAUTH_HELLO)
        );
        assert!(matches!(preauth_action(&req(&["QUIT"])), PreAuth::Quit));
    }

    #[test]
    fn http_detection() {
        assert!(is_http(&req(&["POST", "/"])));
        assert!(is_http(&req(&["Host:", "x"])));
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let Some(Decoded::Request(r)) =
            decode(&mut buf, &RequestLimits::UNAUTHENTICATED).expect("ok")
        else {
            panic!("expected a request")
        };
        assert!(is_http(&r));
        assert!(!is_http(&req(&["GET", "HTTP/1.1"])));
    }

    #[test]
    fn what_cannot_be_multiplexed() {
        let spec = |n: &str| super::super::commands::lookup(n.as_bytes()).expect(n);
        for ok in [
            "get", "set", "mget", "incr", "eval", "ping", "publish", "xadd", "del",
        ] {
            assert!(multiplexable(spec(ok)), "{ok}");
        }
        for no in [
            "multi",
            "exec",
            "watch",
            "blpop",
            "brpop",
            "bzpopmin",
            "xread",
            "select",
            "client",
            "subscribe",
            "psubscribe",
            "monitor",
            "wait",
            "readonly",
            "reset",
            "hello",
            "auth",
        ] {
            assert!(!multiplexable(spec(no)), "{no}");
        }
    }

    #[test]
    fn unsubscribe_all_counts() {
        let mut s = Subscriptions::default();
        s.apply(SubKind::Subscribe, 1);
        s.apply(SubKind::Subscribe, 2);
        s.apply(SubKind::PSubscribe, 3);
        assert_eq!((s.channels, s.patterns), (2, 1));
        assert_eq!(s.unsubscribe_all_count(SubKind::Unsubscribe), 2);
        assert_eq!(s.unsubscribe_all_count(SubKind::SUnsubscribe), 1);
    }
}
