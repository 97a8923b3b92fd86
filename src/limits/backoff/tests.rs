//! Tests of the backoff policy, the guard's two keys and its bounded tables.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// Default policy, but a ban far away, so the delays can be watched.
fn no_ban() -> BackoffPolicy {
    BackoffPolicy {
        ban_after: 100,
        ..BackoffPolicy::default()
    }
}

fn fail(g: &AuthGuard, ip: IpAddr, user: &str, now: Instant, times: u32) {
    for _ in 0..times {
        g.record_failure(ip, user, now);
    }
}

#[test]
fn free_failures_then_doubling_delays_up_to_max() {
    let g = AuthGuard::new(no_ban());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    assert_eq!(g.check(a, "alice", t0), AuthVerdict::Allow);
    fail(&g, a, "alice", t0, 3);
    assert_eq!(g.check(a, "alice", t0), AuthVerdict::Allow);
    let mut seen = Vec::new();
    for _ in 0..7 {
        g.record_failure(a, "alice", t0);
        seen.push(g.check(a, "alice", t0));
    }
    let ms = |n| AuthVerdict::Delay(n * MS);
    assert_eq!(
        seen,
        [
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(3200),
            ms(5000),
            ms(5000)
        ]
    );
}

#[test]
fn delay_runs_from_the_last_failure() {
    let g = AuthGuard::new(no_ban());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    fail(&g, a, "alice", t0, 5); // 400 ms
    assert_eq!(
        g.check(a, "alice", t0 + 150 * MS),
        AuthVerdict::Delay(250 * MS)
    );
    assert_eq!(g.check(a, "alice", t0 + 400 * MS), AuthVerdict::Allow);
}

#[test]
fn delay_math_does_not_overflow() {
    let p = BackoffPolicy {
        max_delay: Duration::MAX,
        ..BackoffPolicy::default()
    };
    assert_eq!(p.delay_after(0), Duration::ZERO);
    assert_eq!(p.delay_after(3), Duration::ZERO);
    assert_eq!(p.delay_after(4), 200 * MS);
    assert_eq!(p.delay_after(u32::MAX), Duration::MAX);
    let p = BackoffPolicy {
        free_failures: u32::MAX,
        ..BackoffPolicy::default()
    };
    assert_eq!(p.delay_after(u32::MAX), Duration::ZERO);
}

#[test]
fn ban_after_failures_within_window_then_expiry() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    fail(&g, a, "alice", t0, 4);
    assert_eq!(g.check(a, "alice", t0), AuthVerdict::Delay(200 * MS));
    g.record_failure(a, "alice", t0 + 10 * SEC);
    assert_eq!(
        g.check(a, "alice", t0 + 10 * SEC),
        AuthVerdict::Banned {
            remaining: 300 * SEC
        }
    );
    // Failures during the ban do not extend it.
    fail(&g, a, "alice", t0 + 100 * SEC, 10);
    assert_eq!(
        g.check(a, "alice", t0 + 110 * SEC),
        AuthVerdict::Banned {
            remaining: 200 * SEC
        }
    );
    // The ban ends, and the count starts over.
    let after = t0 + 310 * SEC;
    assert_eq!(g.check(a, "alice", after), AuthVerdict::Allow);
    g.record_failure(a, "alice", after);
    assert_eq!(g.check(a, "alice", after), AuthVerdict::Allow);
}

#[test]
fn failures_outside_the_window_restart_the_count() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    fail(&g, a, "alice", t0, 4);
    // 61 s later the run is forgotten: four more failures do not ban.
    let t1 = t0 + 61 * SEC;
    assert_eq!(g.check(a, "alice", t1), AuthVerdict::Allow);
    fail(&g, a, "alice", t1, 4);
    assert_eq!(g.check(a, "alice", t1), AuthVerdict::Delay(200 * MS));
    // Within the new window the fifth bans.
    g.record_failure(a, "alice", t1 + 59 * SEC);
    assert!(matches!(
        g.check(a, "alice", t1 + 59 * SEC),
        AuthVerdict::Banned { .. }
    ));
}

#[test]
fn a_ban_on_one_ip_does_not_lock_the_user_out_elsewhere() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (attacker, user_ip, t0) = (ip("198.51.100.9"), ip("192.0.2.1"), Instant::now());
    fail(&g, attacker, "alice", t0, 5);
    assert!(matches!(
        g.check(attacker, "alice", t0),
        AuthVerdict::Banned { .. }
    ));
    assert!(matches!(
        g.check(attacker, "bob", t0),
        AuthVerdict::Banned { .. }
    ));
    assert_eq!(g.check(user_ip, "alice", t0), AuthVerdict::Allow);
}

#[test]
fn ipv6_clients_are_keyed_by_their_64() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let t0 = Instant::now();
    for i in 0..5 {
        g.record_failure(ip(&format!("2001:db8:0:1::{i:x}")), &format!("u{i}"), t0);
    }
    assert!(matches!(
        g.check(ip("2001:db8:0:1:ffff::1"), "x", t0),
        AuthVerdict::Banned { .. }
    ));
    assert_eq!(g.check(ip("2001:db8:0:2::1"), "x", t0), AuthVerdict::Allow);
}

#[test]
fn spraying_accounts_bans_the_ip_without_any_user_reaching_it() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        g.record_failure(a, user, t0);
    }
    // Every user key holds one failure; the IP holds five.
    assert_eq!(g.len(), 6);
    assert!(matches!(
        g.check(a, "anyone", t0),
        AuthVerdict::Banned { .. }
    ));
}

#[test]
fn success_clears_the_user_but_not_the_ip() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    fail(&g, a, "alice", t0, 4);
    g.record_success(a, "alice", t0);
    assert_eq!(g.len(), 1, "only the IP state is left");
    // The IP still owes its delay, and one more failure from it, for any
    // user, bans it.
    assert_eq!(g.check(a, "alice", t0), AuthVerdict::Delay(200 * MS));
    g.record_failure(a, "mallory", t0 + SEC);
    assert!(matches!(
        g.check(a, "alice", t0 + SEC),
        AuthVerdict::Banned { .. }
    ));
}

#[test]
fn the_stricter_key_wins() {
    let g = AuthGuard::new(no_ban());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    // IP window opens at t0 with bob; alice's own run starts later.
    fail(&g, a, "bob", t0, 1);
    fail(&g, a, "alice", t0 + 59 * SEC, 2);
    // At t0 + 61 s the IP's window (from t0) has passed and restarts at 1,
    // while alice's (from t0 + 59 s) goes on: 2 + 3 = 5 failures, 400 ms.
    fail(&g, a, "alice", t0 + 61 * SEC, 3);
    assert_eq!(
        g.check(a, "alice", t0 + 61 * SEC),
        AuthVerdict::Delay(400 * MS)
    );
    assert_eq!(g.check(a, "bob", t0 + 61 * SEC), AuthVerdict::Allow);
    // And the verdict combination itself.
    use AuthVerdict::*;
    let ban = |s| Banned { remaining: s * SEC };
    assert_eq!(Delay(SEC).stricter(Delay(2 * SEC)), Delay(2 * SEC));
    assert_eq!(Delay(SEC).stricter(ban(1)), ban(1));
    assert_eq!(ban(3).stricter(ban(1)), ban(3));
    assert_eq!(Allow.stricter(Delay(MS)), Delay(MS));
    assert_eq!(Allow.stricter(Allow), Allow);
}

#[test]
fn long_names_cost_no_more_than_short_ones() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let (a, t0) = (ip("192.0.2.1"), Instant::now());
    let long = "x".repeat(1 << 20);
    fail(&g, a, &long, t0, 4);
    assert_eq!(g.check(a, &long, t0), AuthVerdict::Delay(200 * MS));
    assert_eq!(g.check(ip("192.0.2.2"), &long, t0), AuthVerdict::Allow);
    // The name is a fixed-size key, distinct from a prefix of itself.
    g.record_success(a, &long[..64], t0);
    assert_eq!(g.len(), 2);
    // And an entry is small whatever the name (48 bytes on Linux).
    assert!(std::mem::size_of::<(u64, Failures)>() <= 48);
}

#[test]
fn cleanup_empties_expired_state() {
    let g = AuthGuard::new(BackoffPolicy::default());
    let t0 = Instant::now();
    fail(&g, ip("192.0.2.1"), "a", t0, 2);
    fail(&g, ip("192.0.2.2"), "b", t0, 5); // banned until t0 + 300 s
    assert_eq!(g.len(), 4);
    g.cleanup(t0 + 30 * SEC);
    assert_eq!(g.len(), 4, "all still within window or ban");
    g.cleanup(t0 + 61 * SEC);
    assert_eq!(g.len(), 2, "the banned pair stays");
    assert!(matches!(
        g.check(ip("192.0.2.2"), "b", t0 + 61 * SEC),
        AuthVerdict::Banned { .. }
    ));
    g.cleanup(t0 + 300 * SEC);
    assert!(g.is_empty());
}

#[test]
fn a_full_table_sheds_the_oldest_and_keeps_bans() {
    let g = AuthGuard::with_max_tracked(BackoffPolicy::default(), 100);
    let t0 = Instant::now();
    let banned = ip("198.51.100.1");
    fail(&g, banned, "x", t0, 5);
    // 150 more clients, one failure each, one second apart: the window
    // (60 s) keeps them all live, so room must come from shedding.
    for i in 0..150u32 {
        let client = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        g.record_failure(client, "x", t0 + i * SEC / 4);
    }
    let now = t0 + 150 * SEC / 4;
    let per_table = g.len() / 2;
    assert!(
        (90..=100).contains(&per_table),
        "{per_table} entries per table"
    );
    // The ban survived; the oldest clients went, the newest stayed.
    assert!(matches!(
        g.check(banned, "x", now),
        AuthVerdict::Banned { .. }
    ));
    let state_of = |i: u32| {
        let client = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        lock(&g.by_ip).map.contains_key(&g.keys(client, "x").0)
    };
    assert!(!state_of(0));
    assert!(state_of(149));
    assert!((0..150).filter(|&i| state_of(i)).count() >= 80);
}

#[test]
fn full_table_prefers_expired_state() {
    let g = AuthGuard::with_max_tracked(BackoffPolicy::default(), 10);
    let t0 = Instant::now();
    for i in 0..10u8 {
        g.record_failure(IpAddr::from([10, 0, 0, i]), "x", t0);
    }
    // All ten expire at t0 + 60 s; a new key then finds room without
    // shedding anything live.
    let later = t0 + 61 * SEC;
    g.record_failure(ip("192.0.2.1"), "x", later);
    assert_eq!(g.len(), 2);
}

#[test]
fn survives_a_poisoned_lock() {
    let g = std::sync::Arc::new(AuthGuard::new(BackoffPolicy::default()));
    let t0 = Instant::now();
    let g2 = std::sync::Arc::clone(&g);
    let _ = std::thread::spawn(move || {
        let _held = g2.by_ip.lock().unwrap();
        panic!("poison the lock");
    })
    .join();
    fail(&g, ip("192.0.2.1"), "a", t0, 5);
    assert!(matches!(
        g.check(ip("192.0.2.1"), "a", t0),
        AuthVerdict::Banned { .. }
    ));
}
