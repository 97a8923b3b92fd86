//! The abuse controls' costs, through the calls the sessions make.
//! `Admission::command` runs once per Redis command and per PostgreSQL
//! Query/Execute (per-IP keyed bucket, then the user's shared bucket);
//! `Admission::admit` and its drop run once per accepted connection (new
//! connections per IP, connections per IP, unauthenticated caps), and
//! `authenticated` once per login (the user's session cap); `login_verdict`
//! runs before every password check.
//!
//! Run with `cargo bench --bench limits`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::auth::scram::ScramVerifier;
use portcullis::auth::Identity;
use portcullis::config::Config;
use portcullis::guards::{Admission, Guards};
use portcullis::limits::backoff::AuthVerdict;
use portcullis::limits::conns::ConnectionCaps;
use portcullis::limits::Action;

const LISTENER: &str = "redis";
const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

/// Distinct clients in the many-keys cases: a busy proxy's worth of live
/// connections, enough that the keyed tables no longer sit in L1/L2.
const CLIENTS: u32 = 10_000;

/// A rate no benchmark loop can exhaust, so every check takes the `Ok` path.
const UNREACHABLE_RATE: u32 = 1_000_000_000;

/// One plain Redis listener and one user, with `limits` in `[limits]`. No
/// backend is contacted: only the guards are built from it.
fn config(limits: &str) -> Config {
    let verifier = match ScramVerifier::generate(PASSWORD.as_bytes()) {
        Ok(v) => v.to_pg_string(),
        Err(e) => panic!("cannot make a verifier: {e}"),
    };
    let text = format!(
        "[admin]\nenabled = false\n\n[limits]\n{limits}\n\n\
         [[backend]]\nname = \"redis\"\nprotocol = \"redis\"\naddress = \"127.0.0.1:6379\"\n\
         password = \"Bench-Only-Backend-Password-0123456789\"\n\n\
         [[listener]]\nname = \"{LISTENER}\"\nprotocol = \"redis\"\nlisten = \"127.0.0.1:0\"\n\
         backend = \"redis\"\n[listener.tls]\nmode = \"disabled\"\n\n\
         [[user]]\nname = \"{USER}\"\npassword = \"{verifier}\"\n"
    );
    match Config::parse(&text, Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

/// Every rate and cap on, none reachable by the benchmark.
fn all_limits() -> String {
    format!(
        "max_connections_per_ip = 1000000\n\
         new_connections_per_second_per_ip = {UNREACHABLE_RATE}\n\
         commands_per_second_per_ip = {UNREACHABLE_RATE}\n\
         commands_per_second_per_user = {UNREACHABLE_RATE}\n\
         max_unauthenticated = 1000000\n\
         max_unauthenticated_per_ip = 1000000"
    )
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i))
}

/// The proxy's guards and a logged-in identity for `config`.
fn setup(config: &Config) -> (Guards, Identity) {
    let guards = Guards::new(config);
    let users = &config.users;
    let who = match users.authenticate_password(USER.as_bytes(), PASSWORD.as_bytes(), LISTENER) {
        Ok(who) => who,
        Err(e) => panic!("cannot log in: {e:?}"),
    };
    (guards, who)
}

/// A logged-in session's permits, as the session holds them.
fn session(guards: &Guards, who: &Identity, ip: IpAddr) -> Admission {
    let Some(listener) = guards.listener(LISTENER) else {
        panic!("no guard for listener {LISTENER}");
    };
    let mut a = match Admission::admit(guards, listener, ip) {
        Ok(a) => a,
        Err(e) => panic!("not admitted: {e:?}"),
    };
    if let Err(e) = a.authenticated(guards, who) {
        panic!("no session slot: {e:?}");
    }
    a
}

fn command(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits_command");

    let (guards, who) = setup(&config(&all_limits()));
    let mut hot = session(&guards, &who, client(0));
    assert_eq!(hot.command(Action::Delay, || 0), Ok(()));
    g.bench_function("one_ip_hot", |b| {
        b.iter(|| black_box(&mut hot).command(Action::Delay, || 0))
    });
    // A pipeline of 16 already read: the first check pays for all 16.
    g.bench_function("one_ip_hot_pipeline_16_per_command", |b| {
        let mut left = 0u32;
        b.iter(|| {
            let upcoming = if left == 0 { 15 } else { 0 };
            left = if left == 0 { 15 } else { left - 1 };
            black_box(&mut hot).command(Action::Delay, || upcoming)
        })
    });

    // Many clients of one user: each check hits a different key of the
    // per-IP table, and all of them the user's shared bucket.
    let mut sessions: Vec<Admission> = (1..=CLIENTS)
        .map(|i| session(&guards, &who, client(i)))
        .collect();
    assert!(sessions
        .iter_mut()
        .all(|s| s.command(Action::Delay, || 0).is_ok()));
    g.bench_function("10k_ips_round_robin", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % sessions.len();
            sessions[i].command(Action::Delay, || 0)
        })
    });
    drop(sessions);

    // The default config: no command rate configured.
    let (plain_guards, plain_who) = setup(&config(""));
    let mut plain = session(&plain_guards, &plain_who, client(0));
    g.bench_function("no_rates_configured", |b| {
        b.iter(|| black_box(&mut plain).command(Action::Delay, || 0))
    });

    // A client over its rate: the refusal computes how long to wait.
    let (slow_guards, slow_who) = setup(&config("commands_per_second_per_ip = 1"));
    let mut slow = session(&slow_guards, &slow_who, client(0));
    let _ = slow.command(Action::Reject, || 0);
    assert!(slow.command(Action::Reject, || 0).is_err());
    g.bench_function("over_rate_refused", |b| {
        b.iter(|| black_box(&mut slow).command(Action::Reject, || 0))
    });
    g.finish();
}

fn connections(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits_connection");
    let (guards, who) = setup(&config(&all_limits()));
    let Some(listener) = guards.listener(LISTENER) else {
        panic!("no guard for listener {LISTENER}");
    };

    // Accept: new-connection rate, per-IP cap and unauthenticated caps; drop releases.
    g.bench_function("admit_release", |b| {
        b.iter(|| Admission::admit(&guards, listener.clone(), black_box(client(0))).is_ok())
    });
    // Accept, log in (leave the unauthenticated pool, take a user slot), close.
    g.bench_function("admit_login_release", |b| {
        b.iter(|| {
            let mut a = Admission::admit(&guards, listener.clone(), black_box(client(0)));
            if let Ok(a) = a.as_mut() {
                black_box(a.authenticated(&guards, &who).is_ok());
            }
        })
    });
    // The same with 10k other clients connected: the per-IP tables are large.
    let live: Vec<Admission> = (1..=CLIENTS)
        .map(|i| session(&guards, &who, client(i)))
        .collect();
    g.bench_function("admit_release_10k_live", |b| {
        b.iter(|| Admission::admit(&guards, listener.clone(), black_box(client(0))).is_ok())
    });
    drop(live);

    // One cap alone, hot key and 10k live keys.
    let caps: Arc<ConnectionCaps<IpAddr>> = Arc::new(ConnectionCaps::new(None, Some(64)));
    g.bench_function("conn_cap_acquire_release", |b| {
        b.iter(|| caps.try_acquire(black_box(client(0))).is_ok())
    });
    let held: Vec<_> = (1..=CLIENTS)
        .filter_map(|i| caps.try_acquire(client(i)).ok())
        .collect();
    assert_eq!(held.len(), CLIENTS as usize);
    g.bench_function("conn_cap_acquire_release_10k_live", |b| {
        b.iter(|| caps.try_acquire(black_box(client(0))).is_ok())
    });
    drop(held);
    g.finish();
}

fn login_backoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits_login_backoff");
    // The default policy's counts (3 free failures, ban at the fifth) with
    // hour-long delays and bans, so no verdict changes during the run.
    let (guards, _) = setup(&config(
        "[limits.login_backoff]\nfree_failures = 3\nbase_delay = \"1h\"\nmax_delay = \"1h\"\n\
         ban_after = 5\nwindow = \"1h\"\nban_for = \"1h\"",
    ));
    let user = USER.as_bytes();
    let fail = |ip: IpAddr, times: u32| {
        for _ in 0..times {
            guards.record_login(ip, user, false);
        }
    };

    g.bench_function("allow_empty_table", |b| {
        b.iter(|| guards.login_verdict(black_box(client(0)), black_box(user)))
    });

    // Under a spray: 10k addresses with a failure each.
    for i in 1..=CLIENTS {
        fail(client(i), 1);
    }
    let (delayed, banned) = (client(CLIENTS + 1), client(CLIENTS + 2));
    fail(delayed, 4);
    fail(banned, 5);
    assert_eq!(guards.login_verdict(client(0), user), AuthVerdict::Allow);
    assert!(matches!(
        guards.login_verdict(delayed, user),
        AuthVerdict::Delay(_)
    ));
    assert!(matches!(
        guards.login_verdict(banned, user),
        AuthVerdict::Banned { .. }
    ));
    for (name, ip) in [
        ("allow_10k_tracked", client(0)),
        ("delay_10k_tracked", delayed),
        ("banned_10k_tracked", banned),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| guards.login_verdict(black_box(ip), black_box(user)))
        });
    }
    g.finish();
}

criterion_group!(benches, command, connections, login_backoff);
criterion_main!(benches);
