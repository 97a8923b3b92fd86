//! End-to-end tests of the abuse controls against real backends: connection
//! rates and caps, command and byte rates (delay and reject), login backoff and
//! bans, the PROXY protocol and the idle timeout.
//!
//! Rate checks run for a few seconds and allow 10%: a token bucket holds its
//! rate over any window longer than its burst.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain (loopback sidecar) Redis proxy with extra `[limits]` lines and listener lines.
async fn redis_proxy(redis: &RedisServer, limits: &str, users_extra: &str) -> Proxy {
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.tls = false;
    cfg.limits = limits.to_string();
    cfg.users.push_str(users_extra);
    Proxy::start(&cfg).await
}

async fn login(addr: SocketAddr, user: &str, pw: &str) -> Raw {
    let mut raw = Raw::plain(addr).await;
    raw.cmd(&["AUTH", user, pw]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    raw
}

fn within(value: f64, expected: f64, tolerance: f64) -> bool {
    (value - expected).abs() <= expected * tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_hold_their_rate() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(&redis, "new_connections_per_second_per_ip = 20", "").await;
    let started = Instant::now();
    let mut admitted = 0u32;
    let mut refused = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        let mut raw = Raw::plain(proxy.addr).await;
        raw.cmd(&["PING"]).await;
        match raw.reply().await.as_str() {
            "-NOAUTH Authentication required.\r\n" => admitted += 1,
            "-ERR max number of clients reached\r\n" => refused += 1,
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 3 s at 20/s plus a burst of 2.
    assert!(
        within(f64::from(admitted), 62.0, 0.1),
        "admitted {admitted}, refused {refused}"
    );
    assert!(refused > 100, "refused {refused}");
    assert!(proxy.metrics().contains(r#"reason="connection_rate""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_mode_loses_nothing_and_keeps_order() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(&redis, "commands_per_second_per_user = 5000", "").await;
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    let n = 10_000;
    let started = Instant::now();
    let mut pipeline = Vec::new();
    for _ in 0..n {
        pipeline.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
    }
    raw.send(&pipeline).await;
    let replies = raw.replies(n).await;
    let elapsed = started.elapsed().as_secs_f64();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &format!(":{}\r\n", i + 1), "reply {i} out of order");
    }
    raw.cmd(&["GET", "counter"]).await;
    assert_eq!(
        raw.reply().await,
        format!("${}\r\n{n}\r\n", n.to_string().len())
    );
    // 10 000 commands at 5 000/s after a burst of 500 (and AUTH's token).
    assert!(within(elapsed, 1.9, 0.1), "took {elapsed:.2} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_answers_in_order() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(
        &redis,
        "commands_per_second_per_ip = 100\nrate_limit_action = \"reject\"",
        "",
    )
    .await;
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    let mut pipeline = Vec::new();
    for _ in 0..300 {
        pipeline.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n");
    }
    raw.send(&pipeline).await;
    let replies = raw.replies(300).await;
    let mut expected = 0;
    let mut rejected = 0;
    for r in &replies {
        if r == "-ERR rate limit exceeded\r\n" {
            rejected += 1;
        } else {
            expected += 1;
            assert_eq!(
                r,
                &format!(":{expected}\r\n"),
                "an accepted INCR out of order"
            );
        }
    }
    assert!(rejected > 250, "rejected {rejected}");
    // The rejected ones never ran.
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.cmd(&["GET", "c"]).await;
    assert_eq!(
        raw.reply().await,
        format!("${}\r\n{expected}\r\n", expected.to_string().len())
    );
    assert!(proxy.metrics().contains(r#"reason="rate_limited""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_per_ip_and_bytes_per_connection_hold_their_rate() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(&redis, "commands_per_second_per_ip = 500", "").await;
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    let started = Instant::now();
    let mut pipeline = Vec::new();
    for _ in 0..1500 {
        pipeline.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    }
    raw.send(&pipeline).await;
    raw.replies(1500).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        within(elapsed, 2.9, 0.1),
        "1500 commands at 500/s took {elapsed:.2} s"
    );

    let proxy = redis_proxy(&redis, "bytes_per_second_per_connection = 100000", "").await;
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    let value = "v".repeat(300_000);
    let started = Instant::now();
    raw.cmd(&["SET", "big", &value]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    let elapsed = started.elapsed().as_secs_f64();
    // 300 kB at 100 kB/s, less the 10 kB burst.
    assert!(
        within(elapsed, 2.9, 0.1),
        "300 kB at 100 kB/s took {elapsed:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_ip_per_user_and_unauthenticated() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(
        &redis,
        "max_connections_per_ip = 4\nmax_unauthenticated_per_ip = 2",
        "",
    )
    .await;
    // Two unauthenticated connections fill the unauthenticated pool for this IP.
    let idle1 = Raw::plain(proxy.addr).await;
    let mut idle2 = Raw::plain(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = Raw::plain(proxy.addr).await;
    third.cmd(&["PING"]).await;
    assert_eq!(
        third.reply().await,
        "-ERR max number of clients reached\r\n"
    );
    // Logging in frees a place.
    idle2.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(idle2.reply().await, "+OK\r\n");
    let _a = login(proxy.addr, "alice", "alice-pw").await;
    let _b = login(proxy.addr, "bob", "bob-pw").await;
    // Four open from this IP now (idle1, idle2, a, b): the fifth is refused.
    let mut fifth = Raw::plain(proxy.addr).await;
    fifth.cmd(&["PING"]).await;
    assert_eq!(
        fifth.reply().await,
        "-ERR max number of clients reached\r\n"
    );
    drop(idle1);
    let m = proxy.metrics();
    assert!(m.contains(r#"reason="max_unauthenticated_per_ip""#), "{m}");
    assert!(m.contains(r#"reason="max_connections_per_ip""#), "{m}");

    // Sessions per user.
    let proxy = redis_proxy(
        &redis,
        "",
        &user(
            "capped",
            "capped-pw",
            "[user.limits]\nmax_connections = 2\n",
        ),
    )
    .await;
    let c1 = login(proxy.addr, "capped", "capped-pw").await;
    let _c2 = login(proxy.addr, "capped", "capped-pw").await;
    let mut c3 = Raw::plain(proxy.addr).await;
    c3.cmd(&["AUTH", "capped", "capped-pw"]).await;
    assert_eq!(c3.reply().await, "-ERR max number of clients reached\r\n");
    drop(c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _c4 = login(proxy.addr, "capped", "capped-pw").await;
}

/// A PROXY v1 header for a TCP4 client.
fn proxy_v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {port} 6379\r\n").into_bytes()
}

/// A PROXY v2 header for a TCP4 client.
fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&6379u16.to_be_bytes());
    h
}

async fn proxied(addr: SocketAddr, header: &[u8], rest: &[u8]) -> Raw {
    let mut raw = Raw::plain(addr).await;
    let mut first = header.to_vec();
    first.extend_from_slice(rest);
    raw.send(&first).await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_backoff_and_bans_follow_the_real_client_address() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.tls = false;
    cfg.limits = "shutdown_grace = \"1s\"\n[limits.login_backoff]\nfree_failures = 2\nbase_delay = \"100ms\"\nban_after = 4\nwindow = \"1m\"\nban_for = \"2s\"".into();
    let text = cfg.text(&Certs::new()).replace(
        "[listener.tls]",
        "[listener.proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]\n[listener.tls]",
    );
    let config =
        portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config");
    let running = portcullis::start(config, portcullis::Shutdown::new())
        .await
        .expect("start");
    let addr = running.listeners["redis"];

    let auth = |pw: &str| {
        let mut v = format!(
            "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n${}\r\n{pw}\r\n",
            pw.len()
        )
        .into_bytes();
        v.shrink_to_fit();
        v
    };
    // Client 10.0.0.1 fails four times: the third and fourth wait, then it is banned.
    let mut a = proxied(addr, &proxy_v1("10.0.0.1", 40000), &auth("wrong")).await;
    assert_eq!(a.reply().await, WRONGPASS);
    for _ in 0..3 {
        a.send(&auth("wrong")).await;
        let t = Instant::now();
        assert_eq!(a.reply().await, WRONGPASS);
        let _ = t;
    }
    // Banned: even the right password gets the ordinary failure.
    let mut a2 = proxied(addr, &proxy_v2([10, 0, 0, 1], 40001), &auth("alice-pw")).await;
    assert_eq!(a2.reply().await, WRONGPASS);
    // Another client address is not affected.
    let mut b = proxied(addr, &proxy_v1("10.0.0.2", 40002), &auth("alice-pw")).await;
    assert_eq!(b.reply().await, "+OK\r\n");
    // The ban ends.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut a3 = proxied(addr, &proxy_v1("10.0.0.1", 40003), &auth("alice-pw")).await;
    assert_eq!(a3.reply().await, "+OK\r\n");
    let m = String::from_utf8(running.metrics.render()).expect("utf8");
    assert!(m.contains(r#"reason="login_banned""#), "{m}");
    assert!(m.contains(r#"reason="login_backoff""#), "{m}");
    running.shutdown().await;
}

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_trusted_and_untrusted_peers() {
    let redis = RedisServer::start();
    let base = |trusted: &str| {
        let mut cfg = ProxyConfig::new(redis.port);
        cfg.tls = false;
        cfg.limits = "shutdown_grace = \"1s\"".into();
        cfg.text(&Certs::new()).replace(
            "[listener.tls]",
            &format!("[listener.proxy_protocol]\ntrusted = [{trusted}]\n[listener.tls]"),
        )
    };
    let start = |text: String| async move {
        let config =
            portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config");
        portcullis::start(config, portcullis::Shutdown::new())
            .await
            .expect("start")
    };
    let auth = b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$8\r\nalice-pw\r\n";

    // Trusted: v1 and v2 headers, with the command in the same segment.
    let running = start(base("\"127.0.0.1/32\"")).await;
    let addr = running.listeners["redis"];
    let mut r = proxied(addr, &proxy_v1("192.0.2.7", 5555), auth).await;
    assert_eq!(r.reply().await, "+OK\r\n");
    let mut r = proxied(addr, &proxy_v2([192, 0, 2, 8], 5556), auth).await;
    assert_eq!(r.reply().await, "+OK\r\n");
    // From a trusted peer the header is required; malformed ones are refused.
    for bad in [
        &auth[..],
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
        b"PROXY TCP9 x\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    ] {
        let mut r = proxied(addr, bad, b"").await;
        assert!(
            r.closed_within(Duration::from_secs(6)).await.is_some(),
            "{bad:?}"
        );
    }
    let m = String::from_utf8(running.metrics.render()).expect("utf8");
    assert!(
        m.contains(r#"reason="proxy_header_invalid""#)
            || m.contains(r#"reason="proxy_header_missing""#),
        "{m}"
    );
    running.shutdown().await;

    // Untrusted (an empty list trusts no one): a header is refused, a plain client is served.
    let running = start(base("")).await;
    let addr = running.listeners["redis"];
    let mut r = proxied(addr, &proxy_v1("192.0.2.7", 5555), auth).await;
    assert_eq!(r.closed_within(Duration::from_secs(5)).await, Some(vec![]));
    let mut r = proxied(addr, &proxy_v2([192, 0, 2, 8], 5556), auth).await;
    assert_eq!(r.closed_within(Duration::from_secs(5)).await, Some(vec![]));
    let mut r = proxied(addr, b"", auth).await;
    assert_eq!(r.reply().await, "+OK\r\n");
    let m = String::from_utf8(running.metrics.render()).expect("utf8");
    assert!(m.contains(r#"reason="proxy_header_untrusted""#), "{m}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_when_configured() {
    let redis = RedisServer::start();
    let proxy = redis_proxy(&redis, "idle_timeout = \"1s\"", "").await;
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    // Activity keeps it open.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.cmd(&["PING"]).await;
        assert_eq!(raw.reply().await, "+PONG\r\n");
    }
    let t = Instant::now();
    assert!(raw.closed_within(Duration::from_secs(3)).await.is_some());
    assert!(t.elapsed() >= Duration::from_millis(900));
    // A blocked command is not idleness.
    let mut raw = login(proxy.addr, "alice", "alice-pw").await;
    raw.cmd(&["BLPOP", "nothing", "2"]).await;
    assert_eq!(raw.reply().await, "*-1\r\n");
}

mod pg {
    use super::*;
    use common::pg::*;
    use tokio_postgres::error::SqlState;

    async fn pg_proxy(limits: &str) -> (portcullis::Running, SocketAddr) {
        let pg = cluster();
        let c = &pg.certs;
        let text = format!(
            "[admin]\nenabled = false\n[limits]\nshutdown_grace = \"1s\"\n{limits}\n\
             [[backend]]\nname = \"pg\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:{port}\"\nuser = \"{PG_BACKEND_USER}\"\npassword = \"{PG_BACKEND_PASSWORD}\"\n\
             [[listener]]\nname = \"pg\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nbackend = \"pg\"\n\
             [listener.tls]\nmode = \"required\"\ncert = {cert:?}\nkey = {key:?}\n\
             [[user]]\nname = \"app\"\npassword = \"{v}\"\n",
            port = pg.port,
            cert = c.server_cert,
            key = c.server_key,
            v = verifier("app-password"),
        );
        let config =
            portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config");
        let running = portcullis::start(config, portcullis::Shutdown::new())
            .await
            .expect("start");
        let addr = running.listeners["pg"];
        (running, addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reject_mode_keeps_the_client_in_sync() {
        let (running, addr) =
            pg_proxy("commands_per_second_per_user = 5\nrate_limit_action = \"reject\"").await;
        let c = tls_client(
            "localhost",
            addr.port(),
            "app",
            "app-password",
            PG_APP_DB,
            &cluster().ca_cert,
        )
        .await;
        let mut ok = 0;
        let mut limited = 0;
        for i in 0..30 {
            // Alternate the simple and the extended protocol.
            let r = if i % 2 == 0 {
                c.simple_query("SELECT 1").await.map(|_| ())
            } else {
                c.query("SELECT $1::int", &[&i]).await.map(|_| ())
            };
            match r {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert_eq!(
                        e.code(),
                        Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED),
                        "{e}"
                    );
                    limited += 1;
                }
            }
        }
        assert!(limited > 10 && ok > 0, "ok {ok}, limited {limited}");
        // Still in sync: a transaction works end to end.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .expect("in sync after refusals");
        running.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_mode_holds_the_rate() {
        let (running, addr) = pg_proxy("commands_per_second_per_user = 20").await;
        let c = tls_client(
            "localhost",
            addr.port(),
            "app",
            "app-password",
            PG_APP_DB,
            &cluster().ca_cert,
        )
        .await;
        let started = Instant::now();
        for _ in 0..62 {
            c.simple_query("SELECT 1")
                .await
                .expect("delayed, not refused");
        }
        let elapsed = started.elapsed().as_secs_f64();
        // 62 queries at 20/s after a burst of 2.
        assert!(within(elapsed, 3.0, 0.1), "took {elapsed:.2} s");
        running.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ssl_request_after_a_proxy_header_is_kept() {
        let pg = cluster();
        let c = &pg.certs;
        let text = format!(
            "[admin]\nenabled = false\n[limits]\nshutdown_grace = \"1s\"\n\
             [[backend]]\nname = \"pg\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:{port}\"\nuser = \"{PG_BACKEND_USER}\"\npassword = \"{PG_BACKEND_PASSWORD}\"\n\
             [[listener]]\nname = \"pg\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nbackend = \"pg\"\n\
             [listener.proxy_protocol]\ntrusted = [\"127.0.0.0/8\"]\n\
             [listener.tls]\nmode = \"required\"\ncert = {cert:?}\nkey = {key:?}\n",
            port = pg.port,
            cert = c.server_cert,
            key = c.server_key,
        );
        let config =
            portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config");
        let running = portcullis::start(config, portcullis::Shutdown::new())
            .await
            .expect("start");
        let addr = running.listeners["pg"];
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut first = proxy_v1("198.51.100.1", 1234);
        first.extend_from_slice(&[0, 0, 0, 8, 4, 210, 22, 47]);
        tcp.write_all(&first).await.expect("write");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"S");
        running.shutdown().await;
    }
}
