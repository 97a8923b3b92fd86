//! End-to-end tests of the Redis gateway: a real redis-server behind the proxy,
//! real clients (raw RESP over TLS, redis-rs, redis-cli) in front of it.

mod common;

use std::time::{Duration, Instant};

use common::*;

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// Sessions on the proxy's own worker threads (the default) and on one
/// work-stealing runtime both serve clients and refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_schedulers_serve_sessions() {
    let redis = RedisServer::start();
    for runtime in [
        "",
        "[runtime]\nscheduler = \"work_stealing\"\nworker_threads = 2",
    ] {
        let mut cfg = ProxyConfig::new(redis.port);
        cfg.limits = format!("max_connections_per_ip = 7\n{runtime}");
        let proxy = Proxy::start(&cfg).await;
        let mut held = Vec::new();
        for round in 0..3 {
            for (user, pw) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
                let mut c = proxy.redis_rs(user, pw).await;
                let key = format!("k{round}{user}");
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(user)
                    .query_async(&mut c)
                    .await
                    .expect("set");
                let got: String = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .expect("get");
                assert_eq!(got, user, "{runtime}");
                held.push(c);
            }
        }
        // The seventh connection from this IP fits; the eighth is refused
        // before TLS, and closed without a reset even though it sent bytes.
        let seventh = proxy.raw().await;
        let mut eighth = Raw::plain(proxy.addr).await;
        eighth.send(b"PING\r\n").await;
        let closed = eighth.closed_within(Duration::from_secs(5)).await;
        assert_eq!(closed.as_deref(), Some(&b""[..]), "{runtime}");
        let m = proxy.metrics();
        assert!(
            m.contains(r#"reason="max_connections_per_ip"} 1"#),
            "{runtime}: {m}"
        );
        assert!(
            m.contains(
                r#"portcullis_logins_total{listener="redis",result="success",user="alice"} 3"#
            ),
            "{runtime}: {m}"
        );
        drop((held, seventh));
        proxy.shutdown().await;
    }
}

async fn setup() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&ProxyConfig::new(redis.port)).await;
    (redis, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_over_tls_works_normally() {
    let (_redis, proxy) = setup().await;
    let mut c = proxy.redis_rs("alice", "alice-pw").await;
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut c)
        .await
        .expect("set");
    let v: String = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut c)
        .await
        .expect("get");
    assert_eq!(v, "hello");
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(5)
        .query_async(&mut c)
        .await
        .expect("incr");
    assert_eq!(n, 5);
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_logins_total{listener="redis",result="success",user="alice"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_the_backend_before_authentication() {
    let (redis, proxy) = setup().await;
    let before = redis
        .info_field("stats", "total_connections_received")
        .await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["GET", "k"]).await;
    raw.cmd(&["SET", "k", "v"]).await;
    raw.send(b"PING\r\n").await;
    raw.cmd(&["HELLO", "3"]).await;
    raw.cmd(&["AUTH", "alice", "wrong"]).await;
    raw.cmd(&["AUTH", "nobody", "alice-pw"]).await;
    let r = raw.replies(6).await;
    assert_eq!(r[0], NOAUTH);
    assert_eq!(r[1], NOAUTH);
    assert_eq!(r[2], NOAUTH);
    assert!(
        r[3].starts_with("-NOAUTH HELLO must be called with the client already authenticated"),
        "{}",
        r[3]
    );
    assert_eq!(r[4], WRONGPASS);
    assert_eq!(
        r[5], WRONGPASS,
        "an unknown user gets the same reply as a wrong password"
    );
    // The INFO connection itself is the only new one: the proxy opened none.
    let after = redis
        .info_field("stats", "total_connections_received")
        .await;
    assert_eq!(
        after,
        before + 1,
        "the backend saw a connection from an unauthenticated client"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_logins_total{listener="redis",result="failure",user="unknown"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_refusals_total{listener="redis",reason="noauth"} 4"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_forms_and_quit() {
    let (_redis, proxy) = setup().await;
    // AUTH <password> is the `default` user, which is not configured here.
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice-pw"]).await;
    assert_eq!(raw.reply().await, WRONGPASS);
    raw.cmd(&["AUTH"]).await;
    assert_eq!(
        raw.reply().await,
        "-ERR wrong number of arguments for 'auth' command\r\n"
    );
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["PING"]).await;
    raw.cmd(&["QUIT"]).await;
    assert_eq!(
        raw.replies(3).await,
        vec!["+OK\r\n", "+PONG\r\n", "+OK\r\n"]
    );
    assert_eq!(
        raw.closed_within(Duration::from_secs(5)).await,
        Some(vec![])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_costs_about_the_same_time_as_a_wrong_password() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    // Backoff would dominate the timings; this measures the password check alone.
    cfg.limits = "max_auth_attempts = 20\n[limits.login_backoff]\nenabled = false".into();
    let proxy = Proxy::start(&cfg).await;
    let mut raw = proxy.raw().await;
    async fn time(raw: &mut Raw, user: &str) -> Duration {
        let t = Instant::now();
        for _ in 0..5 {
            raw.cmd(&["AUTH", user, "not-the-password"]).await;
            assert_eq!(raw.reply().await, WRONGPASS);
        }
        t.elapsed()
    }
    let known = time(&mut raw, "alice").await;
    let unknown = time(&mut raw, "mallory").await;
    // Both run the same PBKDF2; a missing user must not answer in a fraction of the time.
    assert!(
        unknown * 3 > known,
        "unknown {unknown:?} vs known {known:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_limits_close_with_a_protocol_error() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    let eleven: Vec<&str> = std::iter::repeat_n("x", 11).collect();
    raw.cmd(&eleven).await;
    let got = raw
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(
        got,
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );

    let mut raw = proxy.raw().await;
    raw.send(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n").await;
    let got = raw
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(got, b"-ERR Protocol error: unauthenticated bulk length\r\n");

    // 64 KiB of an inline request with no end.
    let mut raw = proxy.raw().await;
    raw.send(&vec![b'a'; 70 * 1024]).await;
    let got = raw
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        got.starts_with(b"-ERR Protocol error:"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_deadline_is_absolute() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.limits = "login_timeout = \"1s\"".into();
    let proxy = Proxy::start(&cfg).await;

    // Silent client.
    let mut raw = proxy.raw().await;
    let t = Instant::now();
    assert!(raw.closed_within(Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() < Duration::from_secs(3));

    // A client that keeps sending (never completing a login) is closed on time too.
    let mut raw = proxy.raw().await;
    let t = Instant::now();
    for _ in 0..4 {
        raw.cmd(&["PING"]).await;
        assert_eq!(raw.reply().await, NOAUTH);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    raw.cmd(&["PING"]).await;
    assert!(
        raw.closed_within(Duration::from_secs(3)).await.is_some(),
        "a chatty client outlived the deadline"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "closed after {:?}",
        t.elapsed()
    );
    let metrics = proxy.metrics();
    assert!(metrics.contains(r#"reason="login_timeout""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_closed_without_a_reply() {
    let (_redis, proxy) = setup().await;
    for req in [
        &b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"Host: evil\r\n",
    ] {
        let mut raw = proxy.raw().await;
        raw.send(req).await;
        assert_eq!(
            raw.closed_within(Duration::from_secs(5)).await,
            Some(vec![]),
            "{req:?}"
        );
    }
}

/// Denied commands inside a pipeline get their NOPERM exactly where Redis would put it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_denied_commands_keeps_order() {
    let (redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    let mut pipeline = Vec::new();
    let cmds: &[&[&str]] = &[
        &["AUTH", "alice", "alice-pw"],
        &["SET", "a", "1"],
        &["CONFIG", "GET", "requirepass"],
        &["GET", "a"],
        &["FLUSHALL"],
        &["INCR", "a"],
        &["ACL", "LIST"],
        &["DEBUG", "SLEEP", "0"],
        &["EVAL", "return 1", "0"],
        &["PING"],
    ];
    for c in cmds {
        pipeline.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
        for a in *c {
            pipeline.extend_from_slice(format!("${}\r\n{}\r\n", a.len(), a).as_bytes());
        }
    }
    // Inline forms and odd spellings are denied too.
    pipeline.extend_from_slice(b"config get *\r\n\"CoNfIg\" 'get' dir\r\nGET a\r\n");
    raw.send(&pipeline).await;
    let r = raw.replies(13).await;
    assert_eq!(
        r,
        vec![
            "+OK\r\n",
            "+OK\r\n",
            "-NOPERM this user has no permissions to run the 'config|get' command\r\n",
            "$1\r\n1\r\n",
            "-NOPERM this user has no permissions to run the 'flushall' command\r\n",
            ":2\r\n",
            "-NOPERM this user has no permissions to run the 'acl|list' command\r\n",
            "-NOPERM this user has no permissions to run the 'debug' command\r\n",
            "-NOPERM this user has no permissions to run the 'eval' command\r\n",
            "+PONG\r\n",
            "-NOPERM this user has no permissions to run the 'config|get' command\r\n",
            "-NOPERM this user has no permissions to run the 'config|get' command\r\n",
            "$1\r\n2\r\n",
        ]
    );
    // The backend never saw them.
    let mut direct = redis.direct().await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut direct)
        .await
        .expect("info");
    for cmd in [
        "cmdstat_flushall",
        "cmdstat_config|get",
        "cmdstat_acl|list",
        "cmdstat_debug",
        "cmdstat_eval",
    ] {
        assert!(!stats.contains(cmd), "{cmd} reached the backend: {stats}");
    }
    assert!(proxy
        .metrics()
        .contains(r#"portcullis_commands_total{listener="redis",verdict="denied"} 7"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_command_inside_multi_aborts_exec() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["MULTI"]).await;
    raw.cmd(&["SET", "t", "1"]).await;
    raw.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    raw.cmd(&["EXEC"]).await;
    raw.cmd(&["EXISTS", "t"]).await;
    raw.cmd(&["MULTI"]).await;
    raw.cmd(&["SET", "t", "2"]).await;
    raw.cmd(&["EXEC"]).await;
    raw.cmd(&["MULTI"]).await;
    raw.cmd(&["AUTH", "bob", "bob-pw"]).await;
    raw.cmd(&["EXEC"]).await;
    let r = raw.replies(12).await;
    assert_eq!(
        r,
        vec![
            "+OK\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "-NOPERM this user has no permissions to run the 'config|set' command\r\n",
            "-EXECABORT Transaction discarded because of previous errors.\r\n",
            ":0\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "*1\r\n+OK\r\n",
            "+OK\r\n",
            "-ERR Command not allowed inside a transaction\r\n",
            "-EXECABORT Transaction discarded because of previous errors.\r\n",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resp2_with_redis_rs_and_raw() {
    let (_redis, proxy) = setup().await;
    let client = proxy.client("alice", "alice-pw");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("news").await.expect("subscribe");
    let mut publisher = proxy.redis_rs("bob", "bob-pw").await;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hi")
        .query_async(&mut publisher)
        .await
        .expect("pub");
    assert_eq!(receivers, 1);
    let mut stream = pubsub.on_message();
    let msg = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut stream))
        .await
        .expect("message");
    assert_eq!(msg.get_payload::<String>().expect("payload"), "hi");

    // Raw: confirmations, a denied command and messages interleave correctly.
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["SUBSCRIBE", "a", "b"]).await;
    raw.cmd(&["PSUBSCRIBE", "p*"]).await;
    let r = raw.replies(4).await;
    assert_eq!(r[1], "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    assert_eq!(r[3], "*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n");
    let _: i64 = redis::cmd("PUBLISH")
        .arg("b")
        .arg("m1")
        .query_async(&mut publisher)
        .await
        .expect("pub");
    assert_eq!(
        raw.reply().await,
        "*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nm1\r\n"
    );
    raw.cmd(&["MONITOR"]).await;
    raw.cmd(&["UNSUBSCRIBE"]).await;
    raw.cmd(&["PING"]).await;
    let r = raw.replies(4).await;
    assert!(r[0].starts_with("-NOPERM"), "{}", r[0]);
    assert!(r[1].starts_with("*3\r\n$11\r\nunsubscribe\r\n"), "{}", r[1]);
    assert!(
        r[2].starts_with("*3\r\n$11\r\nunsubscribe\r\n") && r[2].ends_with(":1\r\n"),
        "{}",
        r[2]
    );
    assert_eq!(r[3], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    let _: i64 = redis::cmd("PUBLISH")
        .arg("pq")
        .arg("m2")
        .query_async(&mut publisher)
        .await
        .expect("pub");
    assert_eq!(
        raw.reply().await,
        "*4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$2\r\npq\r\n$2\r\nm2\r\n"
    );
    raw.cmd(&["PUNSUBSCRIBE"]).await;
    raw.cmd(&["SET", "after", "1"]).await;
    let r = raw.replies(2).await;
    assert!(r[0].ends_with(":0\r\n"), "{}", r[0]);
    assert_eq!(r[1], "+OK\r\n");
}

async fn futures_next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    use futures_util::StreamExt;
    s.next().await.expect("stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_hello_auth_push_messages_and_tracking() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw", "SETNAME", "raw3"])
        .await;
    let hello = raw.reply().await;
    assert!(
        hello.starts_with('%'),
        "HELLO 3 returns a RESP3 map: {hello}"
    );
    assert!(hello.contains("proto\r\n:3"), "{hello}");
    assert!(!hello.contains(BACKEND_PASSWORD));
    raw.cmd(&["CLIENT", "GETNAME"]).await;
    assert_eq!(raw.reply().await, "$4\r\nraw3\r\n");

    // CLIENT TRACKING: invalidation pushes arrive out of band.
    raw.cmd(&["CLIENT", "TRACKING", "on"]).await;
    raw.cmd(&["GET", "tracked"]).await;
    assert_eq!(raw.replies(2).await, vec!["+OK\r\n", "_\r\n"]);
    let mut other = proxy.redis_rs("bob", "bob-pw").await;
    let _: () = redis::cmd("SET")
        .arg("tracked")
        .arg("x")
        .query_async(&mut other)
        .await
        .expect("set");
    let push = raw.reply().await;
    assert!(push.starts_with(">2\r\n$10\r\ninvalidate\r\n"), "{push}");

    // Pub/sub in RESP3: confirmations are pushes, and a denied command still lands in order.
    raw.cmd(&["SUBSCRIBE", "c3"]).await;
    raw.cmd(&["KEYS", "*"]).await;
    raw.cmd(&["PING"]).await;
    let r = raw.replies(3).await;
    assert_eq!(r[0], ">3\r\n$9\r\nsubscribe\r\n$2\r\nc3\r\n:1\r\n");
    assert!(r[1].starts_with("-NOPERM"), "{}", r[1]);
    assert_eq!(r[2], "+PONG\r\n");
    let _: i64 = redis::cmd("PUBLISH")
        .arg("c3")
        .arg("m")
        .query_async(&mut other)
        .await
        .expect("pub");
    assert_eq!(
        raw.reply().await,
        ">3\r\n$7\r\nmessage\r\n$2\r\nc3\r\n$1\r\nm\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_errors_match_redis() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["HELLO", "4", "AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["HELLO", "three"]).await;
    raw.cmd(&["HELLO", "3", "AUTH", "alice", "nope"]).await;
    raw.cmd(&["HELLO", "2", "BOGUS"]).await;
    let r = raw.replies(4).await;
    assert_eq!(r[0], "-NOPROTO unsupported protocol version\r\n");
    assert_eq!(
        r[1],
        "-ERR Protocol version is not an integer or out of range\r\n"
    );
    assert_eq!(r[2], WRONGPASS);
    assert_eq!(r[3], "-ERR Syntax error in HELLO option 'BOGUS'\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_work() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    raw.cmd(&["BLPOP", "queue", "5"]).await;
    raw.cmd(&["FLUSHDB"]).await; // denied, owed after BLPOP's reply
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = proxy.redis_rs("bob", "bob-pw").await;
    let _: i64 = redis::cmd("RPUSH")
        .arg("queue")
        .arg("job")
        .query_async(&mut other)
        .await
        .expect("push");
    let r = raw.replies(2).await;
    assert_eq!(r[0], "*2\r\n$5\r\nqueue\r\n$3\r\njob\r\n");
    assert!(r[1].starts_with("-NOPERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_pass_unchanged() {
    let (_redis, proxy) = setup().await;
    let mut c = proxy.redis_rs("alice", "alice-pw").await;
    let value: Vec<u8> = (0..100 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .query_async(&mut c)
        .await
        .expect("set 100 MB");
    let back: Vec<u8> = redis::cmd("GET")
        .arg("big")
        .query_async(&mut c)
        .await
        .expect("get 100 MB");
    assert!(back == value, "100 MB value changed on the way");
    let len: i64 = redis::cmd("STRLEN")
        .arg("big")
        .query_async(&mut c)
        .await
        .expect("strlen");
    assert_eq!(len, 100 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_identifies_a_user_only_when_required() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.client_cert = "required";
    cfg.users
        .push_str("[[user]]\nname = \"svc\"\nclient_cert_names = [\"app-client\"]\n");
    let proxy = Proxy::start(&cfg).await;
    let p = &proxy.certs.paths;
    let mut raw = common::Raw::tls(
        proxy.addr,
        &p.ca_cert,
        Some((&p.client_cert, &p.client_key)),
    )
    .await;
    raw.cmd(&["SET", "k", "by-cert"]).await;
    raw.cmd(&["GET", "k"]).await;
    assert_eq!(raw.replies(2).await, vec!["+OK\r\n", "$7\r\nby-cert\r\n"]);

    // Without a certificate the handshake itself fails.
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            portcullis::tls::load_certs(&p.ca_cert)
                .expect("ca")
                .remove(0),
        )
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let res = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await;
    if let Ok(mut s) = res {
        // TLS 1.3 reports the refusal on the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"PING\r\n").await;
        let mut buf = [0u8; 64];
        assert!(
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0),
            "served without a client certificate"
        );
    }

    // With an optional certificate, the certificate alone is not an identity.
    let redis2 = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis2.port);
    cfg.client_cert = "optional";
    cfg.users
        .push_str("[[user]]\nname = \"svc\"\nclient_cert_names = [\"app-client\"]\n");
    let proxy = Proxy::start(&cfg).await;
    let p = &proxy.certs.paths;
    let mut raw = common::Raw::tls(
        proxy.addr,
        &p.ca_cert,
        Some((&p.client_cert, &p.client_key)),
    )
    .await;
    raw.cmd(&["GET", "k"]).await;
    assert_eq!(raw.reply().await, NOAUTH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_unavailable_reveals_nothing() {
    // Nothing listens on the backend port.
    let cfg = ProxyConfig::new(free_port());
    let proxy = Proxy::start(&cfg).await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    let got = raw
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(got, b"-ERR backend unavailable\r\n");

    // The backend refuses the proxy's credentials.
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.backend_password = "Wrong-Backend-Secret-0123456789-abcdef".into();
    let proxy = Proxy::start(&cfg).await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    let got = raw
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(got, b"-ERR backend unavailable\r\n");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"portcullis_backend_errors_total{backend="redis",reason="login_refused"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("Wrong-Backend-Secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_map_to_backend_acl_users_and_auth_switches_them() {
    let redis = RedisServer::start();
    let reader_pw = "Reader-Secret-0123456789-abcdefghijkl";
    redis
        .acl_setuser("reader", reader_pw, &["~*", "+@read", "+@connection"])
        .await;
    let mut cfg = ProxyConfig::new(redis.port);
    // CLIENT INFO names the backend user; the default policy hides it, these users may see it.
    let ops = "[user.redis]\ncommands = \"+@all -@dangerous +client|info\"\n";
    cfg.users.push_str(&user(
        "carol",
        "carol-pw",
        &format!("backend_user = \"reader\"\nbackend_password = {reader_pw:?}\n{ops}"),
    ));
    cfg.users.push_str(&user("dave", "dave-pw", ops));
    let proxy = Proxy::start(&cfg).await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "carol", "carol-pw"]).await;
    raw.cmd(&["CLIENT", "INFO"]).await;
    raw.cmd(&["SET", "x", "1"]).await;
    let r = raw.replies(3).await;
    assert!(r[1].contains(" user=reader "), "{}", r[1]);
    assert!(
        r[2].starts_with("-NOPERM"),
        "the backend ACL applies: {}",
        r[2]
    );
    // Re-authenticating as dave switches the backend login to the default user.
    raw.cmd(&["AUTH", "dave", "dave-pw"]).await;
    raw.cmd(&["SET", "x", "1"]).await;
    raw.cmd(&["CLIENT", "INFO"]).await;
    let r = raw.replies(3).await;
    assert_eq!(r[0], "+OK\r\n");
    assert_eq!(r[1], "+OK\r\n");
    assert!(r[2].contains(" user=default "), "{}", r[2]);
    // A failed AUTH keeps the session as it was.
    raw.cmd(&["AUTH", "carol", "wrong"]).await;
    raw.cmd(&["GET", "x"]).await;
    assert_eq!(raw.replies(2).await, vec![WRONGPASS, "$1\r\n1\r\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_the_backend_logged_in() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw"]).await;
    let _ = raw.reply().await;
    raw.cmd(&["RESET"]).await;
    raw.cmd(&["SET", "r", "1"]).await;
    raw.cmd(&["GET", "r"]).await;
    assert_eq!(
        raw.replies(3).await,
        vec!["+RESET\r\n", "+OK\r\n", "$1\r\n1\r\n"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_over_tls() {
    let (_redis, proxy) = setup().await;
    let port = proxy.addr.port().to_string();
    let ca = proxy.ca();
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.args(["--tls", "--cacert"])
            .arg(&ca)
            .args(["-h", "localhost", "-p", &port]);
        cmd.args(["--user", "alice", "--pass", "alice-pw", "--no-auth-warning"])
            .args(args);
        run(&mut cmd)
    };
    assert_eq!(cli(&["SET", "cli", "works"]).trim(), "OK");
    assert_eq!(cli(&["GET", "cli"]).trim(), "works");
    assert!(cli(&["CONFIG", "GET", "requirepass"]).contains("NOPERM"));
    assert_eq!(cli(&["-3", "HSET", "h", "f", "v"]).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stops_the_proxy_reading_the_backend() {
    let (redis, proxy) = setup().await;
    let mut c = proxy.redis_rs("alice", "alice-pw").await;
    let _: () = redis::cmd("SET")
        .arg("v")
        .arg(vec![b'x'; 1 << 20])
        .query_async(&mut c)
        .await
        .expect("set");
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    // 200 MB of replies requested, none read.
    let mut pipeline = Vec::new();
    for _ in 0..200 {
        pipeline.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n");
    }
    raw.send(&pipeline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The backend holds the replies the proxy would not take: its output buffer for our connection grows.
    let mut direct = redis.direct().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut direct)
        .await
        .expect("client list");
    let max_omem = list
        .lines()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("omem="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0);
    assert!(
        max_omem > 10 << 20,
        "backend output buffer {max_omem}: the proxy kept reading"
    );
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_and_admin_endpoints() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.tls = false;
    let proxy = Proxy::start(&cfg).await;
    let mut raw = common::Raw::plain(proxy.addr).await;
    raw.cmd(&["AUTH", "bob", "bob-pw"]).await;
    raw.cmd(&["PING"]).await;
    assert_eq!(raw.replies(2).await, vec!["+OK\r\n", "+PONG\r\n"]);

    let get = |path: &'static str| {
        let admin = proxy.admin;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("portcullis_connections_accepted_total{listener=\"redis\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_backend_connect_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(!metrics.contains(BACKEND_PASSWORD));
    drop(redis);
    assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_sessions_finish() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.limits = "shutdown_grace = \"1s\"".into();
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.addr;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    let t = Instant::now();
    let stop = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still served during the grace period, while new connections are refused.
    raw.cmd(&["PING"]).await;
    assert_eq!(raw.reply().await, "+PONG\r\n");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert!(raw.closed_within(Duration::from_secs(5)).await.is_some());
    stop.await.expect("shutdown");
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_over_tls_with_verification() {
    let certs = std::sync::Arc::new(Certs::new());
    let redis = RedisServer::start_tls(&certs);
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.backend_extra = format!(
        "[backend.tls]\nmode = \"verify-full\"\nca = {:?}\nserver_name = \"localhost\"\n",
        certs.paths.ca_cert
    );
    let proxy = Proxy::start_with_certs(&cfg, certs.clone()).await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["SET", "t", "over-tls"]).await;
    raw.cmd(&["GET", "t"]).await;
    assert_eq!(
        raw.replies(3).await,
        vec!["+OK\r\n", "+OK\r\n", "$8\r\nover-tls\r\n"]
    );

    // A backend certificate for another name fails verify-full: the client learns nothing more.
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.backend_extra = format!(
        "[backend.tls]\nmode = \"verify-full\"\nca = {:?}\nserver_name = \"redis.example\"\n",
        certs.paths.ca_cert
    );
    let proxy = Proxy::start_with_certs(&cfg, certs.clone()).await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(
        raw.closed_within(Duration::from_secs(5))
            .await
            .expect("closed"),
        b"-ERR backend unavailable\r\n"
    );
    assert!(proxy
        .metrics()
        .contains(r#"portcullis_backend_errors_total{backend="redis",reason="tls"} 1"#));
}

/// Special commands (answered or rewritten by the proxy) with a streamed argument:
/// the tail must never reach Redis as commands of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_arguments_of_special_commands_go_nowhere() {
    let (_redis, proxy) = setup().await;
    for (name, dirty_multi) in [
        ("EXEC", true),
        ("RESET", false),
        ("AUTH", false),
        ("HELLO", false),
        ("QUIT", false),
    ] {
        let mut raw = proxy.raw().await;
        raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
        let mut expect = 1;
        if dirty_multi {
            raw.cmd(&["MULTI"]).await;
            raw.cmd(&["CONFIG", "GET", "requirepass"]).await;
            expect += 2;
        }
        // Past the streaming threshold; QUIT's more than the socket buffers
        // hold, so that it is still being sent when the proxy would close.
        let len = if name == "QUIT" { 16 << 20 } else { 70000 };
        let mut evil = format!("*2\r\n${}\r\n{name}\r\n${len}\r\n", name.len()).into_bytes();
        let inner = b"CONFIG GET requirepass\r\n";
        evil.extend(std::iter::repeat_n(b'\n', len - inner.len()));
        evil.extend_from_slice(inner);
        evil.extend_from_slice(b"\r\nPING\r\n");
        raw.send(&evil).await;
        let mut got = raw.replies(expect).await;
        if name != "QUIT" {
            got.extend(raw.replies(2).await);
        }
        let all = got.concat();
        assert!(!all.contains(BACKEND_PASSWORD), "{name}: {all}");
        assert!(!all.contains("requirepass"), "{name}: {all}");
    }
}

/// A reply the proxy writes itself waits for a pub/sub message that is being relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_never_cut_into_a_streamed_message() {
    let (_redis, proxy) = setup().await;
    let mut sub = proxy.raw().await;
    sub.cmd(&["AUTH", "alice", "alice-pw"]).await;
    sub.cmd(&["SUBSCRIBE", "big"]).await;
    assert_eq!(sub.replies(2).await[0], "+OK\r\n");
    let mut publisher = proxy.redis_rs("bob", "bob-pw").await;
    let payload = "p".repeat(5 << 20);
    let _: i64 = redis::cmd("PUBLISH")
        .arg("big")
        .arg(&payload)
        .query_async(&mut publisher)
        .await
        .expect("publish");
    // The message has started to arrive: the proxy is in the middle of relaying it.
    sub.read_some().await;
    sub.cmd(&["CONFIG", "GET", "x"]).await;
    let r = sub.replies(2).await;
    assert_eq!(r[0].len(), payload.len() + 38, "the message arrived whole");
    assert!(r[0].ends_with("ppp\r\n"));
    assert!(
        r[1].starts_with("-NOPERM"),
        "{}",
        &r[1][..r[1].len().min(80)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_inside_multi_and_auth_while_subscribed_are_refused() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    raw.cmd(&["MULTI"]).await;
    raw.cmd(&["SUBSCRIBE", "a", "b"]).await;
    raw.cmd(&["EXEC"]).await;
    raw.cmd(&["SUBSCRIBE", "c"]).await;
    raw.cmd(&["AUTH", "bob", "bob-pw"]).await;
    raw.cmd(&["PING"]).await;
    let r = raw.replies(7).await;
    assert_eq!(r[2], "-ERR Command not allowed inside a transaction\r\n");
    assert_eq!(
        r[3],
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(r[4], "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n");
    assert!(r[5].starts_with("-ERR Can't execute 'auth'"), "{}", r[5]);
    assert_eq!(r[6], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_names_are_refused_at_the_proxy() {
    let (_redis, proxy) = setup().await;
    let mut raw = proxy.raw().await;
    raw.cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw", "SETNAME", "a b"])
        .await;
    assert_eq!(
        raw.reply().await,
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert!(!proxy.metrics().contains("login_refused"));
}
