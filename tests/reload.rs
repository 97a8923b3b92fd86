//! Hot reload: `POST /reload` (and SIGHUP for the binary) while clients work.
//! No session is dropped; new handshakes get the new certificate; removed
//! users are refused; changed limits and rotated backend credentials apply to
//! what starts afterwards; an invalid config keeps the old one running.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(admin: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// The DER of the certificate a new TLS handshake is served.
async fn served_certificate(addr: std::net::SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in portcullis::tls::load_certs(ca).expect("ca") {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_while_clients_work() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Two certificate sets signed by one CA: copy the second's server pair over the first on reload.
    let certs = Certs::new();
    let cfg = ProxyConfig::new(redis.port);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, cfg.text(&certs)).expect("write config");
    let config = portcullis::config::Config::load(&path).expect("config");
    let running = portcullis::start_from(config, Some(path.clone()), portcullis::Shutdown::new())
        .await
        .expect("start");
    let addr = running.listeners["redis"];
    let admin = running.admin.expect("admin");
    let ca = certs.paths.ca_cert.clone();

    // A working session, and a subscriber, both opened before the reload.
    let mut alice = Raw::tls(addr, &ca, None).await;
    alice.cmd(&["AUTH", "alice", "alice-pw"]).await;
    alice.cmd(&["SET", "k", "before"]).await;
    assert_eq!(alice.replies(2).await, vec!["+OK\r\n", "+OK\r\n"]);
    let mut bob = Raw::tls(addr, &ca, None).await;
    bob.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert_eq!(bob.reply().await, "+OK\r\n");
    let cert_before = served_certificate(addr, &ca).await;

    // The new config: bob removed, carol added with a rate limit in reject mode,
    // a new server certificate (same CA names), a rotated backend password.
    let new_password = "Rotated-Backend-Secret-0123456789-XYZ";
    let mut direct = redis.direct().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(new_password)
        .query_async(&mut direct)
        .await
        .expect("rotate");
    let fresh = portcullis::tls::generate_dev_certs(&dir.path().join("new"), "app-client", &[])
        .expect("certs");
    let mut next = ProxyConfig::new(redis.port);
    next.backend_password = new_password.into();
    next.users = user("alice", "alice-pw", "")
        + &user(
            "carol",
            "carol-pw",
            "[user.limits]\ncommands_per_second = 1\nrate_limit_action = \"reject\"\n",
        );
    let text = next
        .text(&certs)
        .replace(
            &format!("{:?}", certs.paths.server_cert),
            &format!("{:?}", fresh.server_cert),
        )
        .replace(
            &format!("{:?}", certs.paths.server_key),
            &format!("{:?}", fresh.server_key),
        )
        .replace(
            &format!("{:?}", certs.paths.ca_cert),
            &format!("{:?}", fresh.ca_cert),
        );
    std::fs::write(&path, text).expect("write config");
    let r = http(admin, "POST", "/reload").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // Live sessions keep running (on the backend login they already have).
    alice.cmd(&["GET", "k"]).await;
    assert_eq!(alice.reply().await, "$6\r\nbefore\r\n");
    bob.cmd(&["PING"]).await;
    assert_eq!(bob.reply().await, "+PONG\r\n");
    // New handshakes get the new certificate (from the new CA).
    let cert_after = served_certificate(addr, &fresh.ca_cert).await;
    assert_ne!(cert_before, cert_after);
    // A removed user cannot log in any more.
    let mut b2 = Raw::tls(addr, &fresh.ca_cert, None).await;
    b2.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert!(b2.reply().await.starts_with("-WRONGPASS"));
    // New logins use the rotated backend password, and the new user's limit applies.
    let mut carol = Raw::tls(addr, &fresh.ca_cert, None).await;
    carol.cmd(&["AUTH", "carol", "carol-pw"]).await;
    for _ in 0..5 {
        carol.cmd(&["GET", "k"]).await;
    }
    let r = carol.replies(6).await;
    assert_eq!(r[0], "+OK\r\n");
    assert!(
        r[1..].iter().any(|x| x == "-ERR rate limit exceeded\r\n"),
        "{r:?}"
    );
    assert!(r[1..].iter().any(|x| x == "$6\r\nbefore\r\n"), "{r:?}");

    // An invalid config is refused and the running one stays.
    std::fs::write(&path, "this is = not [valid").expect("write config");
    let r = http(admin, "POST", "/reload").await;
    assert!(r.starts_with("HTTP/1.1 422"), "{r}");
    assert!(!r.contains(new_password));
    let mut c2 = Raw::tls(addr, &fresh.ca_cert, None).await;
    c2.cmd(&["AUTH", "carol", "carol-pw"]).await;
    assert_eq!(c2.reply().await, "+OK\r\n");
    running.shutdown_handle().trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_need_a_restart() {
    let redis = RedisServer::start();
    let certs = Certs::new();
    let cfg = ProxyConfig::new(redis.port);
    let config = portcullis::config::Config::parse(&cfg.text(&certs), std::path::Path::new("."))
        .expect("config");
    let running = portcullis::start(config, portcullis::Shutdown::new())
        .await
        .expect("start");
    let moved = cfg.text(&certs).replace(
        "name = \"redis\"\nprotocol = \"redis\"\nlisten",
        "name = \"other\"\nprotocol = \"redis\"\nlisten",
    );
    let config =
        portcullis::config::Config::parse(&moved, std::path::Path::new(".")).expect("config");
    let e = running.reload_with(config).expect_err("refused");
    assert!(e.to_string().contains("restart"), "{e}");
    running.shutdown_handle().trigger();
}

/// SIGHUP reloads the binary's config file.
#[test]
fn sighup_reloads_the_binary() {
    let redis = RedisServer::start();
    let certs = Certs::new();
    let mut cfg = ProxyConfig::new(redis.port);
    cfg.tls = false;
    let port = free_port();
    let with_port = |c: &ProxyConfig| {
        c.text(&certs)
            .replace(
                "listen = \"127.0.0.1:0\"\nbackend",
                &format!("listen = \"127.0.0.1:{port}\"\nbackend"),
            )
            .replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                "[admin]\nenabled = false",
            )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, with_port(&cfg)).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_port(port);
    cfg.users.push_str(&user("dave", "dave-pw", ""));
    std::fs::write(&path, with_port(&cfg)).expect("write");
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let mut raw = Raw::plain(format!("127.0.0.1:{port}").parse().expect("addr")).await;
        raw.cmd(&["AUTH", "dave", "dave-pw"]).await;
        assert_eq!(raw.reply().await, "+OK\r\n");
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// With `removed_user_sessions = "close"`, a reload that removes a user closes its live sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_users_sessions_close_when_configured() {
    let redis = RedisServer::start();
    let certs = Certs::new();
    let cfg = ProxyConfig::new(redis.port);
    let text = format!(
        "[reload]\nremoved_user_sessions = \"close\"\n{}",
        cfg.text(&certs)
    );
    let config =
        portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config");
    let running = portcullis::start(config, portcullis::Shutdown::new())
        .await
        .expect("start");
    let addr = running.listeners["redis"];
    let ca = certs.paths.ca_cert.clone();
    let mut alice = Raw::tls(addr, &ca, None).await;
    alice.cmd(&["AUTH", "alice", "alice-pw"]).await;
    let mut bob = Raw::tls(addr, &ca, None).await;
    bob.cmd(&["AUTH", "bob", "bob-pw"]).await;
    assert_eq!(alice.reply().await, "+OK\r\n");
    assert_eq!(bob.reply().await, "+OK\r\n");
    let mut next = ProxyConfig::new(redis.port);
    next.users = user("alice", "alice-pw", "");
    let text = format!(
        "[reload]\nremoved_user_sessions = \"close\"\n{}",
        next.text(&certs)
    );
    running
        .reload_with(
            portcullis::config::Config::parse(&text, std::path::Path::new(".")).expect("config"),
        )
        .expect("reload");
    assert!(
        bob.closed_within(Duration::from_secs(5)).await.is_some(),
        "bob's session survived"
    );
    alice.cmd(&["PING"]).await;
    assert_eq!(alice.reply().await, "+PONG\r\n");
    running.shutdown_handle().trigger();
}
