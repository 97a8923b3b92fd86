//! `portcullis bench`, run as the built binary against a real redis-server,
//! directly and through the proxy in-process.

mod common;

use std::process::Command;

use common::*;

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.arg("bench");
    c
}

fn json(cmd: &mut Command) -> serde_json::Value {
    let out = run(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not one JSON object: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_proxy_compared_with_direct() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&ProxyConfig::new(redis.port)).await;
    let target = format!("localhost:{}", proxy.addr.port());
    let direct = format!("127.0.0.1:{}", redis.port);
    let ca = proxy.ca();
    let mut cmd = bench();
    cmd.args(["redis", "--target", &target, "--tls", "--ca"])
        .arg(&ca)
        .args(["--user", "alice", "--password-env", "BENCH_PW"])
        .args(["--clients", "4", "--pipeline", "4", "--duration", "1s"])
        .args(["--workload", "mixed", "--keyspace", "100"])
        .args([
            "--compare",
            &direct,
            "--compare-password-env",
            "BENCH_BACKEND_PW",
        ])
        .args(["--rounds", "2", "--json"])
        // The proxy runs in this process: the harness watches its CPU time.
        .args(["--cpu-pid", &std::process::id().to_string()])
        .env("BENCH_PW", "alice-pw")
        .env("BENCH_BACKEND_PW", BACKEND_PASSWORD);
    let j = tokio::task::spawn_blocking(move || json(&mut cmd))
        .await
        .expect("join");
    assert_eq!(j["protocol"], "redis");
    for (i, t) in [(0, &target), (1, &direct)] {
        let r = &j["results"][i];
        assert_eq!(&r["target"], t.as_str());
        assert!(r["completed"].as_u64().expect("completed") > 100, "{r}");
        assert_eq!(r["error_total"], 0, "{r}");
        let lat = &r["latency_us"];
        assert!(lat["p50"].as_u64() <= lat["p99"].as_u64(), "{lat}");
        assert!(lat["p99"].as_u64() <= lat["max"].as_u64(), "{lat}");
    }
    assert!(j["comparison"]["throughput_ratio"].as_f64().expect("ratio") > 0.0);
    // A's CPU, per request relayed; B (redis-server direct) was not watched.
    let cpu = &j["results"][0]["cpu_us_per_unit"];
    assert!(
        cpu["total"].as_f64().expect("cpu per request") > 0.0,
        "{cpu}"
    );
    assert!(cpu["user"].as_f64().expect("user") <= cpu["total"].as_f64().expect("total"));
    assert!(j["results"][1]["cpu_us_per_unit"].is_null());
    assert!(j["comparison"]["cpu_ratio"].is_null());
    // The SETs really went through: the keys exist in the backend.
    let mut c = redis.direct().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("key:*")
        .query_async(&mut c)
        .await
        .expect("keys");
    assert!(!keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_kind() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.users = user(
        "reader",
        "reader-pw",
        "[user.redis]\ncommands = \"+@read +ping\"\n",
    );
    let proxy = Proxy::start(&cfg).await;
    let target = format!("localhost:{}", proxy.addr.port());
    let ca = proxy.ca();
    let mut cmd = bench();
    cmd.args(["redis", "--target", &target, "--tls", "--ca"])
        .arg(&ca)
        .args(["--user", "reader", "--password-env", "BENCH_PW"])
        .args([
            "--clients",
            "2",
            "--duration",
            "500ms",
            "--workload",
            "mixed",
        ])
        .arg("--json")
        .env("BENCH_PW", "reader-pw");
    let j = tokio::task::spawn_blocking(move || json(&mut cmd))
        .await
        .expect("join");
    let r = &j["results"][0];
    let refused = r["errors"]["-NOPERM"]["count"].as_u64().expect("NOPERM");
    assert!(refused > 0, "{r}");
    assert_eq!(r["error_total"].as_u64(), Some(refused), "{r}");
}

#[test]
fn a_wrong_password_fails_the_run() {
    let redis = RedisServer::start();
    let out = bench()
        .args(["redis", "--target", &format!("127.0.0.1:{}", redis.port)])
        .args(["--user", "default", "--password-env", "BENCH_PW"])
        .args(["--clients", "1", "--duration", "200ms"])
        .env("BENCH_PW", "not-the-password")
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not-the-password"), "{err}");
}

fn idle_cmd(proxy: &Proxy, clients: &str, hold: &str) -> Command {
    let mut cmd = bench();
    cmd.args([
        "redis",
        "--target",
        &format!("localhost:{}", proxy.addr.port()),
    ])
    .arg("--tls")
    .arg("--ca")
    .arg(proxy.ca())
    .args(["--user", "alice", "--password-env", "BENCH_PW"])
    .args(["--idle", "--clients", clients, "--duration", hold, "--json"])
    .env("BENCH_PW", "alice-pw");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_their_memory_reported() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&ProxyConfig::new(redis.port)).await;
    let mut cmd = idle_cmd(&proxy, "30", "1500ms");
    // The proxy runs in this process: watch it.
    cmd.args(["--watch-pid", &std::process::id().to_string()]);
    let j = tokio::task::spawn_blocking(move || json(&mut cmd))
        .await
        .expect("join");
    assert_eq!(j["mode"], "idle", "{j}");
    assert_eq!(j["opened"], 30, "{j}");
    assert_eq!(j["alive_at_end"], 30, "{j}");
    assert_eq!(j["errors"], serde_json::json!({}), "{j}");
    assert!(j["held_seconds"].as_f64().expect("held") >= 1.5, "{j}");
    let before = j["rss_before_kib"].as_u64().expect("rss before");
    let after = j["rss_after_kib"].as_u64().expect("rss after");
    assert!(before > 0 && after > 0, "{j}");
    assert!(j["rss_per_connection_kib"].as_f64().is_some(), "{j}");
    // Every connection logged in at the proxy.
    assert!(
        proxy.metrics().contains(
            r#"portcullis_logins_total{listener="redis",result="success",user="alice"} 30"#
        ),
        "{}",
        proxy.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_the_target_fail_the_run() {
    let redis = RedisServer::start();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.limits = "idle_timeout = \"500ms\"".into();
    let proxy = Proxy::start(&cfg).await;
    let mut cmd = idle_cmd(&proxy, "5", "2s");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("spawn"))
        .await
        .expect("join");
    assert!(!out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["opened"], 5, "{j}");
    assert_eq!(j["alive_at_end"], 0, "{j}");
    let failed: u64 = j["errors"]
        .as_object()
        .expect("errors")
        .iter()
        .filter(|(k, _)| k.starts_with("ping_"))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failed, 5, "{j}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stood idle"));
}
