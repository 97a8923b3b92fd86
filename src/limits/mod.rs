//! Abuse-control policy: rate limits, connection caps, failed-login backoff
//! and log sampling.
//!
//! Everything here is pure policy. It opens no socket, knows neither Redis nor
//! PostgreSQL, and takes the time as an argument (or from governor's clock),
//! so the session code asks a question and gets back a permit or a decision
//! enum, and the tests can drive time by hand:
//!
//! - [`rate`]: token buckets on governor, keyed (per IP) and unkeyed (per
//!   connection); `Err(wait)` says how long until a token.
//! - [`conns`]: caps on concurrent connections; a [`conns::ConnPermit`] holds a
//!   slot and gives it back on drop.
//! - [`backoff`]: failed-login delays and bans per IP and per IP + user name,
//!   answered as an [`backoff::AuthVerdict`].
//! - [`sample`]: at most one log line per client and reason per interval, so a
//!   flood of refusals cannot become a flood of log lines.
//!
//! Every table keyed by something a client chooses (its address, a user name)
//! has a bound on its size and a sweep, so a client rotating through keys
//! costs memory only for as long as its state matters.

use std::net::{IpAddr, Ipv6Addr};

use serde::Deserialize;

pub mod backoff;
pub mod conns;
pub mod rate;
pub mod sample;

/// What a session does with a request over its rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop reading from the client until a token is available. The default:
    /// a well-behaved client that bursts is slowed down, not broken, and TCP
    /// back-pressure carries the delay to it.
    #[default]
    Delay,
    /// Answer the request with an error and go on reading.
    Reject,
}

/// The address that stands for one client in per-client tables.
///
/// IPv4-mapped IPv6 addresses become IPv4, so one client is one key whichever
/// socket family accepted it. Other IPv6 addresses are cut to their /64: that is
/// the block one subscriber is normally given (RFC 6177), so without this one
/// host could rotate through 2^64 addresses to reset its counters and fill
/// every table.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_key_folds_mapped_v4_and_v6_subnets() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
        assert_eq!(client_key(v4), v4);

        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(client_key(a), client_key(other));
    }

    #[test]
    fn action_parses_lowercase_and_defaults_to_delay() {
        #[derive(Deserialize)]
        struct T {
            a: Action,
        }
        let t: T = toml::from_str(r#"a = "reject""#).unwrap();
        assert_eq!(t.a, Action::Reject);
        assert_eq!(Action::default(), Action::Delay);
    }
}
