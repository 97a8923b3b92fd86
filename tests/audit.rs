//! `portcullis audit` against deliberately insecure and properly secured
//! backends, with the proxy's own listeners running, and a scan limited to
//! loopback ports this test opened.

mod common;

use std::process::Command;

use common::pg::*;
use common::*;

fn audit(config: &std::path::Path, extra: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "--json", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run audit");
    let checks = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (out.status.success(), checks)
}

fn outcome<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["outcome"].as_str())
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

/// Config text with one Redis listener (on `port`), its backend, and a PostgreSQL backend.
fn config(
    certs: &Certs,
    redis_port: u16,
    listen: u16,
    pg_listen: u16,
    pg_user: &str,
    pg_password: &str,
) -> String {
    let p = &certs.paths;
    format!(
        "allow_weak_secrets = true\n[admin]\nenabled = false\n\
         [[backend]]\nname = \"redis\"\nprotocol = \"redis\"\naddress = \"127.0.0.1:{redis_port}\"\npassword = \"{BACKEND_PASSWORD}\"\n\
         [[backend]]\nname = \"pg\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:{pg}\"\nuser = \"{pg_user}\"\npassword = \"{pg_password}\"\n\
         [[listener]]\nname = \"redis\"\nprotocol = \"redis\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"redis\"\n\
         [listener.tls]\nmode = \"required\"\ncert = {cert:?}\nkey = {key:?}\n\
         [[listener]]\nname = \"pg\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:{pg_listen}\"\nbackend = \"pg\"\n\
         [listener.tls]\nmode = \"required\"\ncert = {cert:?}\nkey = {key:?}\n\
         {users}",
        pg = cluster().port,
        cert = p.server_cert,
        key = p.server_key,
        users = user("alice", "alice-pw", ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_secure_deployment_and_fails_an_insecure_one() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("tempdir");

    // Secure: requirepass + protected mode; PostgreSQL with scram-sha-256.
    let secure = RedisServer::start_with(&[
        "--protected-mode",
        "yes",
        "--rename-command",
        "FLUSHALL",
        "",
        "--rename-command",
        "FLUSHDB",
        "",
        "--rename-command",
        "DEBUG",
        "",
        "--rename-command",
        "SHUTDOWN",
        "",
        "--rename-command",
        "MODULE",
        "",
    ]);
    let listen = free_port();
    let pg_listen = free_port();
    let path = dir.path().join("secure.toml");
    std::fs::write(
        &path,
        config(
            &certs,
            secure.port,
            listen,
            pg_listen,
            PG_BACKEND_USER,
            PG_BACKEND_PASSWORD,
        ),
    )
    .expect("write");
    let running = portcullis::start(
        portcullis::config::Config::load(&path).expect("config"),
        portcullis::Shutdown::new(),
    )
    .await
    .expect("start");
    let p = path.clone();
    let (ok, checks) = tokio::task::spawn_blocking(move || audit(&p, &[]))
        .await
        .expect("join");
    assert!(ok, "{checks:#?}");
    for name in [
        "backend[redis] no_credentials_refused",
        "backend[redis] wrong_password_refused",
        "backend[redis] credentials_work",
        "backend[redis] protected_mode",
        "backend[redis] default_user_protected",
        "backend[redis] dangerous_commands_renamed",
        "backend[pg] no_credentials_refused",
        "backend[pg] wrong_password_refused",
        "backend[pg] credentials_work",
        "listener[redis] plaintext_refused",
        "listener[redis] wrong_password_refused",
        "listener[redis] tls10_refused",
        "listener[redis] certificate_valid_30_days",
        "listener[pg] plaintext_refused",
        "listener[pg] wrong_password_refused",
        "listener[pg] tls10_refused",
    ] {
        assert_eq!(outcome(&checks, name), "pass", "{name}: {checks:#?}");
    }
    let text = checks.iter().map(|c| c.to_string()).collect::<String>();
    assert!(!text.contains(BACKEND_PASSWORD) && !text.contains(PG_BACKEND_PASSWORD));

    // Insecure: no password, protected mode off; PostgreSQL trusting a role from loopback.
    let insecure = RedisServer::start_insecure();
    let hba = cluster().dir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(
        &hba,
        format!("host all {PG_REPORTING_USER} 127.0.0.1/32 trust\n{old}"),
    )
    .expect("hba");
    cluster().psql("SELECT pg_reload_conf()");
    let path = dir.path().join("insecure.toml");
    std::fs::write(
        &path,
        config(
            &certs,
            insecure.port,
            listen,
            pg_listen,
            PG_REPORTING_USER,
            "whatever-it-is",
        ),
    )
    .expect("write");
    let p = path.clone();
    let scan_ports = format!("{},{},{}", insecure.port, secure.port, listen);
    let (ok, checks) = tokio::task::spawn_blocking(move || {
        audit(&p, &["--scan", "127.0.0.1", "--ports", &scan_ports])
    })
    .await
    .expect("join");
    std::fs::write(&hba, old).expect("hba");
    cluster().psql("SELECT pg_reload_conf()");
    assert!(!ok, "an insecure deployment passed: {checks:#?}");
    assert_eq!(
        outcome(&checks, "backend[redis] no_credentials_refused"),
        "fail"
    );
    assert_eq!(
        outcome(&checks, "backend[pg] no_credentials_refused"),
        "fail"
    );
    assert_eq!(
        outcome(&checks, "backend[pg] wrong_password_refused"),
        "fail"
    );
    // The scan lists the ports and flags both Redis servers answering directly.
    assert_eq!(
        outcome(
            &checks,
            &format!("scan[127.0.0.1:{}] unprotected_redis", insecure.port)
        ),
        "fail"
    );
    assert_eq!(
        outcome(
            &checks,
            &format!("scan[127.0.0.1:{}] unprotected_redis", secure.port)
        ),
        "fail"
    );
    assert!(!checks
        .iter()
        .any(|c| c["name"] == format!("scan[127.0.0.1:{listen}] unprotected_redis")));
    running.shutdown_handle().trigger();
}

#[test]
fn port_lists() {
    assert_eq!(
        portcullis::audit::parse_ports("5432, 6379-6381,5432").expect("ok"),
        vec![5432, 6379, 6380, 6381]
    );
    assert!(portcullis::audit::parse_ports("10-1").is_err());
    assert!(portcullis::audit::parse_ports("0").is_err());
}
