//! Every metric handle in one struct, on a registry of our own (no globals, so
//! two proxies can run in one test process). Labels are bounded: listener and
//! backend names come from the config, users only when configured (other names
//! share the `unknown` bucket), reasons are fixed strings from the code.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The label used for login names that are not configured users.
pub const UNKNOWN_USER: &str = "unknown";

/// All metrics of one proxy.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted, by listener.
    pub connections_accepted: IntCounterVec,
    /// Connections open now, by listener.
    pub connections_active: IntGaugeVec,
    /// Connections refused, by listener and reason.
    pub connections_refused: IntCounterVec,
    /// TLS handshakes that failed, by listener and reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Login attempts, by listener, user and result.
    pub logins: IntCounterVec,
    /// Commands (Redis) or queries (PostgreSQL), by listener and verdict.
    pub commands: IntCounterVec,
    /// Requests the proxy answered with a refusal, by listener and reason.
    pub refusals: IntCounterVec,
    /// Bytes read from clients, by listener.
    pub bytes_in: IntCounterVec,
    /// Bytes written to clients, by listener.
    pub bytes_out: IntCounterVec,
    /// Backend connect and login latency, by backend.
    pub backend_connect_seconds: HistogramVec,
    /// Backend connect or login failures, by backend and reason.
    pub backend_errors: IntCounterVec,
    /// Session length, by listener.
    pub session_seconds: HistogramVec,
    /// Accept errors (EMFILE …), by listener.
    pub accept_errors: IntCounterVec,
    /// Idle logged-in backend sessions kept for reuse, by backend.
    pub pool_idle: IntGaugeVec,
    /// What happened to backend sessions at the pool, by backend and event.
    pub pool_events: IntCounterVec,
    /// Shared (multiplexed) backend connections logged in, by backend.
    pub shared_connections: IntGaugeVec,
    /// 1 while the process runs; carries the version label.
    pub build_info: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let gauge = IntGaugeVec::new(
            Opts::new(
                "portcullis_connections_active",
                "Client connections open now.",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        r.register(Box::new(gauge.clone()))
            .expect("metric registered once");
        let hist = |name: &str, help: &str, label: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
                .expect("static metric definition");
            r.register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let build_info = IntGauge::with_opts(
            Opts::new("portcullis_build_info", "Build information.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric definition");
        r.register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info.set(1);
        let pool_idle = IntGaugeVec::new(
            Opts::new(
                "portcullis_backend_pool_idle",
                "Idle logged-in backend sessions kept for reuse.",
            ),
            &["backend"],
        )
        .expect("static metric definition");
        r.register(Box::new(pool_idle.clone()))
            .expect("metric registered once");
        let shared_connections = IntGaugeVec::new(
            Opts::new(
                "portcullis_backend_shared_connections",
                "Shared backend connections logged in (Redis backends with multiplex = true).",
            ),
            &["backend"],
        )
        .expect("static metric definition");
        r.register(Box::new(shared_connections.clone()))
            .expect("metric registered once");
        Metrics {
            connections_accepted: counter(
                &r,
                "portcullis_connections_accepted_total",
                "Client connections accepted.",
                &["listener"],
            ),
            connections_active: gauge,
            connections_refused: counter(
                &r,
                "portcullis_connections_refused_total",
                "Client connections refused or closed by the proxy.",
                &["listener", "reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                "portcullis_tls_handshake_failures_total",
                "Failed client TLS handshakes.",
                &["listener", "reason"],
            ),
            logins: counter(
                &r,
                "portcullis_logins_total",
                "Login attempts.",
                &["listener", "user", "result"],
            ),
            commands: counter(
                &r,
                "portcullis_commands_total",
                "Client commands by policy verdict.",
                &["listener", "verdict"],
            ),
            refusals: counter(
                &r,
                "portcullis_refusals_total",
                "Requests the proxy refused itself, by reason.",
                &["listener", "reason"],
            ),
            bytes_in: counter(
                &r,
                "portcullis_client_received_bytes_total",
                "Bytes read from clients.",
                &["listener"],
            ),
            bytes_out: counter(
                &r,
                "portcullis_client_sent_bytes_total",
                "Bytes written to clients.",
                &["listener"],
            ),
            backend_connect_seconds: hist(
                "portcullis_backend_connect_duration_seconds",
                "Backend connect and login time.",
                "backend",
                prometheus::exponential_buckets(0.0005, 2.0, 14).expect("static buckets"),
            ),
            backend_errors: counter(
                &r,
                "portcullis_backend_errors_total",
                "Backend connect or login failures.",
                &["backend", "reason"],
            ),
            session_seconds: hist(
                "portcullis_session_duration_seconds",
                "Client session length.",
                "listener",
                prometheus::exponential_buckets(0.01, 4.0, 12).expect("static buckets"),
            ),
            accept_errors: counter(
                &r,
                "portcullis_accept_errors_total",
                "Errors from accept() (EMFILE, ECONNABORTED …).",
                &["listener"],
            ),
            pool_idle,
            shared_connections,
            pool_events: counter(
                &r,
                "portcullis_backend_pool_events_total",
                "Backend sessions at the pool: reused, new (none idle), kept, discarded \
                 (left dirty), reset_failed, dead (closed while idle), expired, evicted, full.",
                &["backend", "event"],
            ),
            build_info,
            registry: r,
        }
    }

    /// Counts a pool event for `backend`.
    pub fn pool_event(&self, backend: &str, event: &'static str) {
        self.pool_events.with_label_values(&[backend, event]).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Handles for one listener, resolved once so the hot path does no label lookups.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            allowed: self.commands.with_label_values(&[listener, "allowed"]),
            denied: self.commands.with_label_values(&[listener, "denied"]),
            bytes_in: self.bytes_in.with_label_values(&[listener]),
            bytes_out: self.bytes_out.with_label_values(&[listener]),
            active: self.connections_active.with_label_values(&[listener]),
            name: listener.to_string(),
            metrics: self.clone(),
        }
    }
}

/// Pre-resolved handles for one listener.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Commands allowed by policy.
    pub allowed: IntCounter,
    /// Commands denied by policy.
    pub denied: IntCounter,
    /// Bytes from clients.
    pub bytes_in: IntCounter,
    /// Bytes to clients.
    pub bytes_out: IntCounter,
    /// Open connections.
    pub active: IntGauge,
    name: String,
    metrics: Metrics,
}

impl ListenerMetrics {
    /// Counts a refusal by reason.
    pub fn refused(&self, reason: &'static str) {
        self.metrics
            .refusals
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    /// Counts a connection closed or refused by the proxy.
    pub fn connection_refused(&self, reason: &'static str) {
        self.metrics
            .connections_refused
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    /// Counts a login attempt; `user` must already be a configured name or [`UNKNOWN_USER`].
    pub fn login(&self, user: &str, result: &'static str) {
        self.metrics
            .logins
            .with_label_values(&[&self.name, user, result])
            .inc();
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self, reason: &'static str) {
        self.metrics
            .tls_handshake_failures
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    /// The registry-wide handles.
    pub fn all(&self) -> &Metrics {
        &self.metrics
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.name
    }
}
