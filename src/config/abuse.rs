//! The abuse-control part of the config: rate limits, connection caps, login
//! backoff and the PROXY protocol. Global values live in `[limits]`; a listener
//! may override the per-IP and per-connection ones in `[listener.limits]`, and a
//! user its own in `[user.limits]`.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, RawLimits};
use crate::limits::backoff::BackoffPolicy;
use crate::limits::rate::RateSpec;
use crate::limits::Action;

/// Turns "N per second" into a bucket: the burst is a tenth of a second's worth
/// (at least 1), so a limit holds within a few percent over any second.
fn rate(n: Option<u32>, key: &str) -> Result<Option<RateSpec>, ConfigError> {
    match n {
        None => Ok(None),
        Some(0) => Err(invalid(
            key,
            "must be at least 1 (omit the key for no limit)",
        )),
        Some(n) => Ok(RateSpec::new(n, (n / 10).max(1))),
    }
}

fn positive_opt(d: Option<Duration>, key: &str) -> Result<Option<Duration>, ConfigError> {
    match d {
        Some(d) if d.is_zero() => Err(invalid(
            key,
            "must be greater than zero (omit the key to disable)",
        )),
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_free_failures")]
    free_failures: u32,
    #[serde(default = "default_base_delay", with = "humantime_serde")]
    base_delay: Duration,
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    max_delay: Duration,
    #[serde(default = "default_ban_after")]
    ban_after: u32,
    #[serde(default = "default_window", with = "humantime_serde")]
    window: Duration,
    #[serde(default = "default_ban_for", with = "humantime_serde")]
    ban_for: Duration,
}

fn yes() -> bool {
    true
}
fn default_free_failures() -> u32 {
    3
}
fn default_base_delay() -> Duration {
    Duration::from_millis(200)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_ban_after() -> u32 {
    5
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_ban_for() -> Duration {
    Duration::from_secs(300)
}

impl Default for RawBackoff {
    fn default() -> Self {
        RawBackoff {
            enabled: true,
            free_failures: default_free_failures(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
            ban_after: default_ban_after(),
            window: default_window(),
            ban_for: default_ban_for(),
        }
    }
}

impl RawBackoff {
    pub(super) fn validate(&self) -> Result<Option<BackoffPolicy>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.ban_after == 0 {
            return Err(invalid(
                "limits.login_backoff.ban_after",
                "must be at least 1",
            ));
        }
        if self.window.is_zero() {
            return Err(invalid(
                "limits.login_backoff.window",
                "must be greater than zero",
            ));
        }
        Ok(Some(BackoffPolicy {
            free_failures: self.free_failures,
            base_delay: self.base_delay,
            max_delay: self.max_delay.max(self.base_delay),
            ban_after: self.ban_after,
            window: self.window,
            ban_for: self.ban_for,
        }))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerLimits {
    max_connections_per_ip: Option<u32>,
    new_connections_per_second_per_ip: Option<u32>,
    commands_per_second_per_ip: Option<u32>,
    bytes_per_second_per_connection: Option<u32>,
    rate_limit_action: Option<Action>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserLimits {
    max_connections: Option<u32>,
    commands_per_second: Option<u32>,
    rate_limit_action: Option<Action>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyProtocol {
    #[serde(default)]
    trusted: Vec<String>,
}

/// Abuse controls of one listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Connections open at once from one client IP.
    pub max_connections_per_ip: Option<u32>,
    /// New connections per second from one client IP.
    pub new_connections_per_ip: Option<RateSpec>,
    /// Commands (Redis) or Query/Execute messages (PostgreSQL) per second from one client IP.
    pub commands_per_ip: Option<RateSpec>,
    /// Bytes per second read from one connection.
    pub bytes_per_connection: Option<RateSpec>,
    /// What a command over its rate gets.
    pub action: Action,
    /// Authenticated sessions idle this long are closed.
    pub idle_timeout: Option<Duration>,
    /// Peers allowed (and then required) to send a PROXY protocol header; `None`: not enabled.
    pub proxy_protocol: Option<Vec<ipnet::IpNet>>,
}

/// Abuse controls of one user.
#[derive(Debug, Clone, Default)]
pub struct UserLimits {
    /// Sessions open at once as this user.
    pub max_connections: Option<u32>,
    /// Commands per second as this user, across its sessions.
    pub commands_per_second: Option<RateSpec>,
    /// What a command over the user's rate gets.
    pub action: Action,
}

/// The global values, from which listener and user limits are derived.
pub(super) struct GlobalAbuse {
    listener: ListenerLimits,
    user: UserLimits,
}

impl GlobalAbuse {
    pub(super) fn from_raw(raw: &RawLimits) -> Result<GlobalAbuse, ConfigError> {
        let action = raw.rate_limit_action;
        Ok(GlobalAbuse {
            listener: ListenerLimits {
                max_connections_per_ip: raw.max_connections_per_ip,
                new_connections_per_ip: rate(
                    raw.new_connections_per_second_per_ip,
                    "limits.new_connections_per_second_per_ip",
                )?,
                commands_per_ip: rate(
                    raw.commands_per_second_per_ip,
                    "limits.commands_per_second_per_ip",
                )?,
                bytes_per_connection: rate(
                    raw.bytes_per_second_per_connection,
                    "limits.bytes_per_second_per_connection",
                )?,
                action,
                idle_timeout: positive_opt(raw.idle_timeout, "limits.idle_timeout")?,
                proxy_protocol: None,
            },
            user: UserLimits {
                max_connections: None,
                commands_per_second: rate(
                    raw.commands_per_second_per_user,
                    "limits.commands_per_second_per_user",
                )?,
                action,
            },
        })
    }

    pub(super) fn listener(
        &self,
        raw: &RawListenerLimits,
        proxy: Option<&RawProxyProtocol>,
        key: &str,
    ) -> Result<ListenerLimits, ConfigError> {
        let g = &self.listener;
        let k = |name: &str| format!("{key}.limits.{name}");
        let proxy_protocol = match proxy {
            None => None,
            Some(p) => Some(
                p.trusted
                    .iter()
                    .map(|s| {
                        s.parse::<ipnet::IpNet>()
                            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| {
                                invalid(
                                    format!("{key}.proxy_protocol.trusted"),
                                    format!("not a CIDR: {s:?}"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(ListenerLimits {
            max_connections_per_ip: raw.max_connections_per_ip.or(g.max_connections_per_ip),
            new_connections_per_ip: match raw.new_connections_per_second_per_ip {
                Some(n) => rate(Some(n), &k("new_connections_per_second_per_ip"))?,
                None => g.new_connections_per_ip,
            },
            commands_per_ip: match raw.commands_per_second_per_ip {
                Some(n) => rate(Some(n), &k("commands_per_second_per_ip"))?,
                None => g.commands_per_ip,
            },
            bytes_per_connection: match raw.bytes_per_second_per_connection {
                Some(n) => rate(Some(n), &k("bytes_per_second_per_connection"))?,
                None => g.bytes_per_connection,
            },
            action: raw.rate_limit_action.unwrap_or(g.action),
            idle_timeout: match raw.idle_timeout {
                Some(d) => positive_opt(Some(d), &k("idle_timeout"))?,
                None => g.idle_timeout,
            },
            proxy_protocol,
        })
    }

    pub(super) fn user(&self, raw: &RawUserLimits, key: &str) -> Result<UserLimits, ConfigError> {
        Ok(UserLimits {
            max_connections: raw.max_connections,
            commands_per_second: match raw.commands_per_second {
                Some(n) => rate(Some(n), &format!("{key}.limits.commands_per_second"))?,
                None => self.user.commands_per_second,
            },
            action: raw.rate_limit_action.unwrap_or(self.user.action),
        })
    }
}
