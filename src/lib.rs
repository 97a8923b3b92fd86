//! portcullis: an authenticating TLS proxy for Redis and PostgreSQL.
//!
//! Map of the crate (dependencies point down this list, never up):
//!
//! - [`server`]: listeners, accept loop, connection permits, graceful shutdown;
//!   [`start`] runs a proxy from a [`config::Config`] (tests start it in-process).
//! - [`redis`]: the Redis gateway: `request` (client frames) and `reply`
//!   (backend reply boundaries) codecs, `commands` + `policy` (ACL rules),
//!   `backend` (connect and log in), `session` (login phase, then the relay
//!   that keeps replies in request order).
//! - [`postgres`]: the PostgreSQL gateway: `codec` (startup packets, tagged
//!   messages, a streaming framer), `messages` (one builder per message),
//!   `session` (TLS negotiation, SCRAM at the proxy, then the relay),
//!   `backend` (connect and log in), `cancel` (proxy keys → backend keys).
//! - [`outbox`]: the write queue both relays use; [`relay`]: what else their
//!   poll loops share (shutdown and reload waits, timers, reads); [`pool`]:
//!   idle logged-in backend sessions kept for reuse (bounds and expiry only, no I/O);
//!   [`shards`]: the worker threads of one event loop each that sessions run on.
//! - [`limits`]: pure abuse-control policy (token buckets, connection caps,
//!   login backoff, log sampling); [`guards`]: their runtime instances and the
//!   [`guards::Admission`] permits a session holds; [`proxy_protocol`]: PROXY v1/v2.
//! - [`auth`]: users, secrets, SCRAM verifiers; [`auth::Identity`] is the
//!   only proof of authentication and only `auth` builds it. No I/O.
//! - [`config`]: TOML → validated types (secrets resolved, TLS loaded, rules compiled).
//! - [`tls`]: rustls configs, development certificates, client-certificate names.
//! - [`metrics`] and [`admin`]: Prometheus metrics and `/metrics /healthz /readyz`.
//! - [`audit`]: `portcullis audit`, the security checks as one command.
//! - [`error`]: session errors that say which side failed; [`logging`]: setup and escaping.
//! - [`stream`]: plain-or-TLS stream types.
//! - [`bench`]: `portcullis bench`, the load generator (a client of the
//!   gateways, not a part of them; nothing above depends on it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod config;
pub mod error;
pub mod guards;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod pool;
pub mod postgres;
pub mod proxy_protocol;
pub mod redis;
pub mod relay;
pub mod server;
pub mod shards;
pub mod stream;
pub mod tls;

pub use server::{start, start_from, Running, Shutdown};
