//! Shared (multiplexed) Redis backend connections (`[[backend]] multiplex =
//! true`): a real redis-server, the proxy in-process, redis-rs and raw RESP
//! clients over TLS.

mod common;

use std::time::Duration;

use common::*;

/// Users that may run anything Redis has (so that what is refused is refused
/// for the shared connection's sake, not by the default policy).
fn config(backend_port: u16, threads: usize) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(backend_port);
    let all = "[user.redis]\ncommands = \"+@all\"\n";
    cfg.users = user("alice", "alice-pw", all)
        + &user("bob", "bob-pw", all)
        + &format!("\n[runtime]\nworker_threads = {threads}\n");
    cfg.backend_extra = "multiplex = true\n".into();
    cfg
}

async fn logged_in(p: &Proxy) -> Raw {
    let mut raw = p.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    raw
}

/// The backend's client connections other than the asking one.
async fn backend_connections(redis: &RedisServer) -> usize {
    let list = redis.client_list().await;
    list.lines()
        .filter(|l| !l.contains(" cmd=client|list "))
        .count()
}

fn refusals(p: &Proxy, reason: &str) -> u64 {
    let needle = format!("portcullis_refusals_total{{listener=\"redis\",reason=\"{reason}\"}} ");
    p.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("counter"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_connection_per_thread_and_each_gets_its_own_replies() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 2)).await;
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(p.redis_rs("alice", "alice-pw").await);
    }
    // Pipelines of different lengths from every client at once, each reading
    // back its own values, in order.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                let n = 1 + (i + round) % 17;
                let mut pipe = redis::pipe();
                for k in 0..n {
                    pipe.set(format!("k:{i}:{k}"), format!("v:{i}:{round}:{k}"))
                        .ignore();
                }
                for k in 0..n {
                    pipe.get(format!("k:{i}:{k}"));
                }
                pipe.incr(format!("count:{i}"), 1);
                let got: Vec<redis::Value> = pipe.query_async(&mut c).await.expect("pipeline");
                let want: Vec<String> = (0..n).map(|k| format!("v:{i}:{round}:{k}")).collect();
                let values: Vec<String> = got[..n]
                    .iter()
                    .map(|v| redis::from_redis_value(v).expect("string"))
                    .collect();
                assert_eq!(values, want, "client {i}, round {round}");
                let count: i64 = redis::from_redis_value(&got[n]).expect("count");
                assert_eq!(count, round as i64 + 1, "client {i}");
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    // 24 clients, two worker threads: at most one backend connection each.
    let n = backend_connections(&redis).await;
    assert!(
        (1..=2).contains(&n),
        "{n} backend connections for 24 clients"
    );
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_needs_a_connection_of_its_own_is_refused_and_the_session_goes_on() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut a = logged_in(&p).await;
    let refused: &[&[&str]] = &[
        &["MULTI"],
        &["WATCH", "k"],
        &["BLPOP", "list", "1"],
        &["XREAD", "BLOCK", "100", "STREAMS", "s", "$"],
        &["SUBSCRIBE", "news"],
        &["SELECT", "1"],
        &["CLIENT", "SETNAME", "mine"],
        &["WAIT", "0", "0"],
        &["READONLY"],
    ];
    for cmd in refused {
        a.cmd(cmd).await;
        let reply = a.reply().await;
        assert!(
            reply.starts_with("-ERR '") && reply.contains("backend connection is shared"),
            "{cmd:?}: {reply}"
        );
    }
    a.cmd(&["HELLO", "3"]).await;
    assert!(a.reply().await.starts_with("-NOPROTO"));
    a.cmd(&["HELLO", "2", "SETNAME", "x"]).await;
    assert!(a.reply().await.starts_with("-ERR client names"));
    // HELLO 2 answers as Redis does; RESET is answered by the proxy.
    a.cmd(&["HELLO", "2"]).await;
    assert!(a.reply().await.starts_with("*14\r\n$6\r\nserver\r\n"));
    a.cmd(&["RESET"]).await;
    assert_eq!(a.reply().await, "+RESET\r\n");
    // Still logged in, still on database 0, and the connection is as it was for everyone.
    a.cmd(&["SET", "k", "v"]).await;
    a.cmd(&["GET", "k"]).await;
    assert_eq!(a.replies(2).await, ["+OK\r\n", "$1\r\nv\r\n"]);
    let mut direct = redis.direct().await;
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut direct)
        .await
        .expect("get");
    assert_eq!(v, "v");
    assert_eq!(refusals(&p, "not_multiplexed"), refused.len() as u64 + 2);
    // A client that opens with HELLO 3 is told to use RESP2, and the connection closes.
    let mut b = p.raw().await;
    b.cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw"]).await;
    let said = b
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        said.starts_with(b"-NOPROTO"),
        "{}",
        String::from_utf8_lossy(&said)
    );
    // HELLO 2 with AUTH gets Redis's own answer.
    let mut c = p.raw().await;
    c.cmd(&["HELLO", "2", "AUTH", "bob", "bob-pw"]).await;
    assert!(c.reply().await.starts_with("*14\r\n$6\r\nserver\r\n"));
    c.cmd(&["PING"]).await;
    assert_eq!(c.reply().await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_to_a_user_with_another_backend_login_is_refused() {
    let redis = RedisServer::start();
    let reader_pw = "Reader-Secret-0123456789-abcdefghijkl";
    redis
        .acl_setuser("reader", reader_pw, &["~*", "+@all"])
        .await;
    let mut cfg = config(redis.port, 1);
    cfg.users.push_str(&user(
        "carol",
        "carol-pw",
        &format!(
            "backend_user = \"reader\"\nbackend_password = {reader_pw:?}\n\
             [user.redis]\ncommands = \"+@all\"\n"
        ),
    ));
    let p = Proxy::start(&cfg).await;
    let mut a = logged_in(&p).await;
    // Bob logs in to the backend as alice does: allowed.
    a.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert_eq!(a.reply().await, "+OK\r\n");
    a.cmd(&["AUTH", "carol", "carol-pw"]).await;
    let reply = a.reply().await;
    assert!(reply.contains("cannot switch"), "{reply}");
    a.cmd(&["PING"]).await;
    assert_eq!(a.reply().await, "+PONG\r\n");
    // Carol logging in from the start gets a shared connection of her backend user.
    let mut c = p.raw().await;
    c.cmd(&["AUTH", "carol", "carol-pw"]).await;
    c.cmd(&["ACL", "WHOAMI"]).await;
    assert_eq!(c.replies(2).await, ["+OK\r\n", "$6\r\nreader\r\n"]);
    a.cmd(&["ACL", "WHOAMI"]).await;
    assert_eq!(a.reply().await, "$7\r\ndefault\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_and_replies_share_the_connection_whole() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut big = p.redis_rs("alice", "alice-pw").await;
    let mut small = p.redis_rs("bob", "bob-pw").await;
    // A value near the 1 MiB limit goes through whole while another client pings.
    let value: String = (0..1000 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let expected = value.clone();
    let pinger = tokio::spawn(async move {
        for i in 0..200 {
            let r: String = redis::cmd("ECHO")
                .arg(i)
                .query_async(&mut small)
                .await
                .expect("echo");
            assert_eq!(r, i.to_string());
        }
    });
    for _ in 0..3 {
        let _: () = redis::cmd("SET")
            .arg("big")
            .arg(&value)
            .query_async(&mut big)
            .await
            .expect("set");
        let got: String = redis::cmd("GET")
            .arg("big")
            .query_async(&mut big)
            .await
            .expect("get");
        assert!(got == expected, "the big value came back changed");
    }
    pinger.await.expect("pinger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_early_do_not_disturb_the_others() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut stays = p.redis_rs("bob", "bob-pw").await;

    // Leaves with a thousand replies owed: they are dropped, not given to anyone else.
    let mut a = logged_in(&p).await;
    let mut pipeline = Vec::new();
    for _ in 0..1000 {
        pipeline.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
    }
    a.send(&pipeline).await;
    drop(a);
    for i in 0..50 {
        let r: String = redis::cmd("ECHO")
            .arg(i)
            .query_async(&mut stays)
            .await
            .expect("echo");
        assert_eq!(r, i.to_string());
    }

    // Leaves in the middle of a request: only whole requests join the shared
    // stream, so nothing of it reached Redis and the connection goes on.
    let mut b = logged_in(&p).await;
    b.send(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$200000\r\n")
        .await;
    b.send(&vec![b'x'; 100_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(b);
    for i in 0..50 {
        let r: String = redis::cmd("ECHO")
            .arg(i)
            .query_async(&mut stays)
            .await
            .expect("echo after a client left mid-request");
        assert_eq!(r, i.to_string());
    }
    assert_eq!(
        backend_connections(&redis).await,
        1,
        "still the one connection"
    );
    let mut direct = redis.direct().await;
    let half: Option<String> = redis::cmd("GET")
        .arg("half")
        .query_async(&mut direct)
        .await
        .expect("get");
    assert_eq!(half, None, "the half-sent request never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_limit_is_refused_in_resp() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut stays = p.redis_rs("bob", "bob-pw").await;
    let mut a = logged_in(&p).await;
    a.send(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$2000000\r\n")
        .await;
    a.send(&vec![b'x'; 1_100_000]).await;
    let said = a
        .closed_within(Duration::from_secs(10))
        .await
        .expect("closed");
    let said = String::from_utf8_lossy(&said);
    assert!(
        said.starts_with("-ERR Protocol error: a request through a shared backend connection is limited to 1048576 bytes"),
        "{said}"
    );
    assert_eq!(refusals(&p, "request_too_large"), 1);
    let r: String = redis::cmd("PING")
        .query_async(&mut stays)
        .await
        .expect("ping");
    assert_eq!(r, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_replies_is_dropped_and_the_others_go_on() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut other = p.redis_rs("bob", "bob-pw").await;
    let mut hog = logged_in(&p).await;
    let value = "v".repeat(900 * 1024);
    hog.cmd(&["SET", "big", &value]).await;
    assert_eq!(hog.reply().await, "+OK\r\n");
    // 200 replies of 900 KiB, none read: far more than the proxy and the
    // sockets hold, so the shared connection would stop for everyone.
    let mut pipeline = Vec::new();
    for _ in 0..200 {
        pipeline.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    }
    hog.send(&pipeline).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The others wait at most about a second, then go on without the hog.
    let started = std::time::Instant::now();
    for i in 0..50 {
        let r: String = tokio::time::timeout(
            Duration::from_secs(10),
            redis::cmd("ECHO").arg(i).query_async(&mut other),
        )
        .await
        .expect("the other client was held up")
        .expect("echo");
        assert_eq!(r, i.to_string());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // When the hog reads at last, it gets what was held for it, then the connection ends.
    assert!(hog.closed_within(Duration::from_secs(20)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_connection_ends_its_sessions_and_the_next_reconnects() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, 1)).await;
    let mut a = logged_in(&p).await;
    a.cmd(&["PING"]).await;
    assert_eq!(a.reply().await, "+PONG\r\n");
    let mut direct = redis.direct().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut direct)
        .await
        .expect("client kill");
    assert_eq!(killed, 1, "one shared connection");
    assert!(a.closed_within(Duration::from_secs(5)).await.is_some());
    let mut b = logged_in(&p).await;
    b.cmd(&["PING"]).await;
    assert_eq!(b.reply().await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_is_answered_in_resp() {
    let port = free_port();
    let p = Proxy::start(&config(port, 1)).await;
    let mut a = p.raw().await;
    a.cmd(&["AUTH", "alice", "alice-pw"]).await;
    let said = a
        .closed_within(Duration::from_secs(10))
        .await
        .expect("closed");
    assert_eq!(said, b"-ERR backend unavailable\r\n");
}

#[test]
fn multiplex_is_for_redis_backends_only() {
    let text = "[[backend]]\nname = \"pg\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:5432\"\n\
                user = \"u\"\npassword = \"Backend-Secret-0123456789-abcdefXYZ\"\nmultiplex = true\n";
    let err = portcullis::config::Config::parse(text, std::path::Path::new("."))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("multiplex"), "{err}");
}
