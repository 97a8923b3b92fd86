//! The PostgreSQL harness on its own: real clients straight to the test
//! cluster, no proxy, so the gateway tests can trust what they build on.

mod common;

use std::time::Duration;

use common::pg::*;
use tokio_postgres::config::ChannelBinding;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_tls_as_the_backend_role() {
    let pg = cluster();
    let c = pg
        .direct_client(PG_BACKEND_USER, PG_BACKEND_PASSWORD, PG_APP_DB)
        .await;
    let one: i32 = c.query_one("SELECT 1", &[]).await.expect("select").get(0);
    assert_eq!(one, 1);
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the session is not over TLS");
    c.batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (7)")
        .await
        .expect("temp table");
    let x: i32 = c.query_one("SELECT x FROM t", &[]).await.expect("t").get(0);
    assert_eq!(x, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_channel_binding_works_directly() {
    // tokio-postgres-rustls computes tls-server-end-point from the ECDSA server
    // certificate, so SCRAM-SHA-256-PLUS is what a client will try by default.
    let pg = cluster();
    let mut config = pg_config(
        "127.0.0.1",
        pg.port,
        PG_BACKEND_USER,
        PG_BACKEND_PASSWORD,
        PG_APP_DB,
    );
    config.channel_binding(ChannelBinding::Require);
    let c = connect(&config, &pg.ca_cert)
        .await
        .expect("SCRAM-SHA-256-PLUS");
    c.simple_query("SELECT 1").await.expect("select");
}

#[test]
fn psql_over_tls_with_pgpassword() {
    let pg = cluster();
    let out = common::run(
        std::process::Command::new(pg.bin("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} sslmode=require user={PG_BACKEND_USER} dbname={PG_APP_DB}",
                pg.port
            ))
            .args(["-X", "-w", "-A", "-t", "-c"])
            .arg("SELECT current_user, current_database(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .env("PGPASSWORD", PG_BACKEND_PASSWORD),
    );
    assert_eq!(out.trim(), "portcullis_backend|appdb|t");
    let out = common::run(
        pg.psql_tls(PG_BACKEND_USER, PG_BACKEND_PASSWORD, PG_APP_DB)
            .args(["-c", "SELECT 40 + 2"]),
    );
    assert_eq!(out.trim(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused() {
    let pg = cluster();
    let err = pg
        .try_direct_client(PG_BACKEND_USER, "not-the-password", PG_APP_DB)
        .await
        .map(|_| ())
        .expect_err("login with a wrong password succeeded");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");

    let out = pg
        .psql_tls(PG_BACKEND_USER, "not-the-password", PG_APP_DB)
        .args(["-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_disconnections_are_logged() {
    let pg = cluster();
    let mut config = pg_config(
        "127.0.0.1",
        pg.port,
        PG_BACKEND_USER,
        PG_BACKEND_PASSWORD,
        PG_APP_DB,
    );
    config.application_name("harness-log-check");
    let c = connect(&config, &pg.ca_cert).await.expect("connect");
    c.simple_query("SELECT 1").await.expect("select");
    assert!(pg.log_contains(
        "connection authorized: user=portcullis_backend database=appdb \
         application_name=harness-log-check SSL enabled"
    ));
    drop(c);
    assert!(
        pg.wait_for_log("disconnection: session time:", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted_per_user() {
    // The only test that logs in as `reporting`, so its count is ours alone.
    let pg = cluster();
    assert_eq!(pg.backend_sessions(PG_REPORTING_USER), 0);
    let a = pg
        .direct_client(PG_REPORTING_USER, PG_REPORTING_PASSWORD, PG_APP_DB)
        .await;
    let b = pg
        .direct_client(PG_REPORTING_USER, PG_REPORTING_PASSWORD, PG_APP_DB)
        .await;
    assert_eq!(pg.backend_sessions(PG_REPORTING_USER), 2);
    drop((a, b));
    assert!(
        pg.wait_backend_sessions(PG_REPORTING_USER, 0, Duration::from_secs(5))
            .await
    );
    // reporting may use appdb but does not own it.
    assert_eq!(
        pg.psql(&format!(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{PG_APP_DB}'"
        )),
        PG_BACKEND_USER
    );
}

#[test]
fn the_superuser_logs_in_over_tls_with_its_password() {
    let pg = cluster();
    let out = common::run(
        pg.psql_tls(PG_SUPERUSER, PG_SUPERUSER_PASSWORD, "postgres")
            .args([
                "-c",
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            ]),
    );
    assert_eq!(out.trim(), "t");
    assert_eq!(pg.psql("SELECT 1"), "1");
}
