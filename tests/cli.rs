//! The command line, run as the built binary.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis::auth::scram::ScramVerifier;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "run",
        "check-config",
        "hash-password",
        "gen-certs",
        "probe",
        "bench",
        "bench redis",
        "bench postgres",
    ] {
        let out = bin()
            .args(sub.split(' '))
            .arg("--help")
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub}"
        );
    }
}

#[test]
fn hash_password_prints_a_postgres_scram_verifier() {
    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("utf8");
    let line = line.trim();
    assert!(line.starts_with("SCRAM-SHA-256$4096:"), "{line}");
    let v = ScramVerifier::parse(line).expect("parses");
    assert!(v.verify_password(b"correct horse"));
    assert!(!v.verify_password(b"correct horse\n"));
}

#[test]
fn gen_certs_writes_private_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["gen-certs", "--out"])
        .arg(dir.path())
        .output()
        .expect("spawn");
    assert!(out.status.success());
    for f in ["ca.crt", "server.crt", "client.crt"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    for f in ["ca.key", "server.key", "client.key"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
}

#[test]
fn check_config_summarises_or_names_the_bad_key() {
    let certs = common::Certs::new();
    let cfg = common::ProxyConfig::new(6379);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, cfg.text(&certs)).expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("is valid") && stdout.contains("listener redis"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        cfg.text(&certs).replace(common::BACKEND_PASSWORD, "weak"),
    )
    .expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("backend[redis].password: too weak"),
        "{stderr}"
    );
    assert!(!stderr.contains("weak\""));

    let env = dir.path().join("env.toml");
    std::fs::write(
        &env,
        cfg.text(&certs).replace(
            &format!("{:?}", common::BACKEND_PASSWORD),
            "\"${NO_SUCH_VAR_XYZ}\"",
        ),
    )
    .expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&env)
        .env_remove("NO_SUCH_VAR_XYZ")
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_VAR_XYZ is not set"));
}

#[test]
fn shipped_config_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/config.toml")).expect("config.toml");
    portcullis::tls::generate_dev_certs(&dir.path().join("certs"), "app", &[]).expect("certs");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("REDIS_PASSWORD", common::BACKEND_PASSWORD)
        .env("APP_PASSWORD", "app-password")
        .env("PG_PASSWORD", common::BACKEND_PASSWORD)
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary serves, logs JSON when asked, and exits cleanly on SIGTERM.
#[test]
fn binary_runs_and_stops_on_sigterm() {
    let redis = common::RedisServer::start();
    let certs = common::Certs::new();
    let mut cfg = common::ProxyConfig::new(redis.port);
    cfg.tls = false;
    let port = common::free_port();
    let text = cfg.text(&certs).replace(
        "listen = \"127.0.0.1:0\"\nbackend",
        &format!("listen = \"127.0.0.1:{port}\"\nbackend"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let child = bin()
        .args(["run", "--json-logs", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    common::wait_for_port(port);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let mut raw = common::Raw::plain(format!("127.0.0.1:{port}").parse().expect("addr")).await;
        raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
        raw.cmd(&["AUTH", "alice", "xyzzy\r\nplugh"]).await;
        raw.cmd(&["PING"]).await;
        assert_eq!(raw.replies(3).await[2], "+PONG\r\n");
    });
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY-free signal delivery through the kill command.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "exit status {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"event\":\"login\""))
        .collect();
    assert_eq!(audit.len(), 2, "{logs}");
    assert!(
        audit[0].contains("\"result\":\"success\"") && audit[0].contains("\"user\":\"alice\""),
        "{}",
        audit[0]
    );
    assert!(audit[1].contains("\"result\":\"failure\""), "{}", audit[1]);
    assert!(
        !logs.contains("alice-pw")
            && !logs.contains("xyzzy")
            && !logs.contains(common::BACKEND_PASSWORD)
    );
    assert!(logs.contains("\"event\":\"stopped\""), "{logs}");
}

/// Out of file descriptors, the accept loop backs off and keeps serving once they come back.
#[test]
fn accept_loop_survives_emfile() {
    let redis = common::RedisServer::start();
    let certs = common::Certs::new();
    let mut cfg = common::ProxyConfig::new(redis.port);
    cfg.tls = false;
    let port = common::free_port();
    let admin = common::free_port();
    let text = cfg
        .text(&certs)
        .replace(
            "listen = \"127.0.0.1:0\"\nbackend",
            &format!("listen = \"127.0.0.1:{port}\"\nbackend"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""),
        );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    common::wait_for_port(port);
    // Far more connections than descriptors.
    let hogs: Vec<std::net::TcpStream> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(hogs);
    std::thread::sleep(Duration::from_millis(1500));
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let mut raw = common::Raw::plain(format!("127.0.0.1:{port}").parse().expect("addr")).await;
        raw.cmd(&["AUTH", "alice", "alice-pw"]).await;
        raw.cmd(&["PING"]).await;
        assert_eq!(raw.replies(2).await, vec!["+OK\r\n", "+PONG\r\n"]);
    });
    let metrics = http_get(admin, "/metrics");
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_accept_errors_total{listener=\"redis\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(errors > 0.0, "no accept errors counted: {metrics}");
    let _ = child.kill();
    let _ = child.wait();
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}
