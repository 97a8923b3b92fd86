//! Reuse of logged-in Redis backend connections: a real redis-server, the
//! proxy in-process, raw RESP clients over TLS.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Users that may run CLIENT ID / CLIENT INFO (the default policy hides them).
fn config(backend_port: u16, pool: &str) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(backend_port);
    cfg.users = user("alice", "alice-pw", "[user.redis]\ncommands = \"+@all\"\n");
    cfg.backend_extra = pool.to_string();
    cfg
}

fn pool_events(p: &Proxy, event: &str) -> u64 {
    let needle =
        format!("portcullis_backend_pool_events_total{{backend=\"redis\",event=\"{event}\"}} ");
    p.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("counter"))
}

async fn wait_pool_event(p: &Proxy, event: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_events(p, event) < n {
        assert!(
            Instant::now() < deadline,
            "no {event} event: {}",
            p.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logged_in(p: &Proxy) -> Raw {
    let mut raw = p.raw().await;
    raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    raw
}

async fn client_id(raw: &mut Raw) -> String {
    raw.cmd(&["CLIENT", "ID"]).await;
    raw.reply().await
}

async fn quit(mut raw: Raw) {
    raw.cmd(&["QUIT"]).await;
    assert_eq!(raw.reply().await, "+OK\r\n");
    assert!(raw.closed_within(Duration::from_secs(5)).await.is_some());
}

/// Whether the backend still has a connection with this `CLIENT ID` reply.
async fn backend_has(redis: &RedisServer, id: &str) -> bool {
    let id = id.trim().trim_start_matches(':');
    let list = redis.client_list().await;
    list.lines().any(|l| l.starts_with(&format!("id={id} ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_connection_is_reset_and_reused() {
    let redis = RedisServer::start();
    let mut cfg = config(redis.port, "");
    // Two worker threads, connections dealt round robin: the second client
    // runs on the other thread and takes a connection opened on the first,
    // which is moved to its own thread's poller.
    cfg.users += "\n[runtime]\nworker_threads = 2\n";
    let p = Proxy::start(&cfg).await;
    let mut a = logged_in(&p).await;
    let id = client_id(&mut a).await;
    for cmd in [
        &["SELECT", "3"][..],
        &["CLIENT", "SETNAME", "previous-client"],
        &["WATCH", "watched"],
        &["CLIENT", "TRACKING", "on"],
    ] {
        a.cmd(cmd).await;
        assert_eq!(a.reply().await, "+OK\r\n", "{cmd:?}");
    }
    quit(a).await;
    wait_pool_event(&p, "kept", 1).await;

    let mut b = logged_in(&p).await;
    assert_eq!(
        client_id(&mut b).await,
        id,
        "the idle connection was not reused"
    );
    b.cmd(&["CLIENT", "INFO"]).await;
    let info = b.reply().await;
    for want in [" db=0 ", " name= ", " flags=N ", " multi=-1 ", " resp=2"] {
        assert!(info.contains(want), "{want:?} not in {info}");
    }
    b.cmd(&["SET", "pooled", "yes"]).await;
    assert_eq!(b.reply().await, "+OK\r\n");
    let mut direct = redis.direct().await;
    let v: String = redis::cmd("GET")
        .arg("pooled")
        .query_async(&mut direct)
        .await
        .expect("get");
    assert_eq!(v, "yes", "the reused connection is on database 0");
    assert_eq!(pool_events(&p, "reused"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_on_a_reused_connection_and_back_to_resp2() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, "")).await;
    let mut a = logged_in(&p).await;
    let id = client_id(&mut a).await;
    quit(a).await;
    wait_pool_event(&p, "kept", 1).await;

    let mut b = p.raw().await;
    b.cmd(&["HELLO", "3", "AUTH", "alice", "alice-pw"]).await;
    let hello = b.reply().await;
    assert!(
        hello.starts_with('%') && hello.contains("proto\r\n:3"),
        "{hello}"
    );
    assert_eq!(client_id(&mut b).await, id);
    b.cmd(&["HSET", "h", "f", "1"]).await;
    b.reply().await;
    b.cmd(&["HGETALL", "h"]).await;
    assert!(b.reply().await.starts_with("%1"), "RESP3 map");
    quit(b).await;
    wait_pool_event(&p, "kept", 2).await;

    let mut c = logged_in(&p).await;
    assert_eq!(client_id(&mut c).await, id);
    c.cmd(&["HGETALL", "h"]).await;
    assert!(c.reply().await.starts_with("*2"), "RESP2 array after RESET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_dirty_are_closed_not_reused() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, "")).await;
    let mut dirty = Vec::new();
    // Inside MULTI.
    let mut a = logged_in(&p).await;
    dirty.push(client_id(&mut a).await);
    a.cmd(&["MULTI"]).await;
    assert_eq!(a.reply().await, "+OK\r\n");
    drop(a);
    wait_pool_event(&p, "discarded", 1).await;
    // Subscribed.
    let mut b = logged_in(&p).await;
    dirty.push(client_id(&mut b).await);
    b.cmd(&["SUBSCRIBE", "news"]).await;
    b.reply().await;
    drop(b);
    wait_pool_event(&p, "discarded", 2).await;
    // Blocked in BLPOP: its reply never came.
    let mut c = logged_in(&p).await;
    dirty.push(client_id(&mut c).await);
    c.cmd(&["BLPOP", "nothing", "30"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    wait_pool_event(&p, "discarded", 3).await;
    // Half a request.
    let mut d = logged_in(&p).await;
    dirty.push(client_id(&mut d).await);
    d.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n").await;
    d.send(&[b'x'; 70_000]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(d);
    wait_pool_event(&p, "discarded", 4).await;

    let mut e = logged_in(&p).await;
    let id = client_id(&mut e).await;
    assert!(!dirty.contains(&id), "a dirty connection was reused");
    assert_eq!(pool_events(&p, "reused"), 0);
    for old in &dirty {
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend_has(&redis, old).await {
            assert!(
                Instant::now() < deadline,
                "backend connection {old} still open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_not_handed_out() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, "")).await;
    let mut a = logged_in(&p).await;
    let id = client_id(&mut a).await;
    quit(a).await;
    wait_pool_event(&p, "kept", 1).await;
    let mut direct = redis.direct().await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id.trim().trim_start_matches(':'))
        .query_async(&mut direct)
        .await
        .expect("kill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = logged_in(&p).await;
    assert_ne!(client_id(&mut b).await, id);
    b.cmd(&["PING"]).await;
    assert_eq!(b.reply().await, "+PONG\r\n");
    assert_eq!(pool_events(&p, "dead"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_off_and_idle_expiry() {
    let redis = RedisServer::start();
    let p = Proxy::start(&config(redis.port, "[backend.pool]\nsize = 0\n")).await;
    let mut a = logged_in(&p).await;
    let first = client_id(&mut a).await;
    quit(a).await;
    let mut b = logged_in(&p).await;
    assert_ne!(client_id(&mut b).await, first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_has(&redis, &first).await {
        assert!(Instant::now() < deadline, "connection kept with reuse off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let p = Proxy::start(&config(
        redis.port,
        "[backend.pool]\nidle_timeout = \"300ms\"\n",
    ))
    .await;
    let mut a = logged_in(&p).await;
    let id = client_id(&mut a).await;
    quit(a).await;
    wait_pool_event(&p, "kept", 1).await;
    wait_pool_event(&p, "expired", 1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_has(&redis, &id).await {
        assert!(Instant::now() < deadline, "expired connection still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
