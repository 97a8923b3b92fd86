//! Session errors: who is at fault, and one bounded label per cause.
//!
//! Protocol layers map these to the client's reply (a Redis `-ERR`, a
//! PostgreSQL ErrorResponse); metrics and logs use [`SessionError::label`].
//! No variant carries a secret, and client-supplied text is never stored here.

use thiserror::Error;

/// Who caused a session to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (downstream).
    Client,
    /// The backend (upstream).
    Backend,
    /// The proxy itself.
    Internal,
}

/// Why the backend could not be used.
#[derive(Debug, Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// Connect plus login took longer than `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The TLS handshake with the backend failed.
    #[error("tls handshake failed: {0}")]
    Tls(std::io::Error),
    /// The backend refused the proxy's own credentials.
    #[error("backend refused the proxy's credentials")]
    LoginRefused,
    /// The backend sent something the proxy cannot parse.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// Reading or writing the backend failed.
    #[error("backend i/o: {0}")]
    Io(std::io::Error),
    /// The backend closed the connection.
    #[error("backend closed the connection")]
    Closed,
}

impl BackendError {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Connect(_) => "connect",
            BackendError::Timeout => "timeout",
            BackendError::Tls(_) => "tls",
            BackendError::LoginRefused => "login_refused",
            BackendError::Protocol(_) => "protocol",
            BackendError::Io(_) => "io",
            BackendError::Closed => "closed",
        }
    }
}

/// Why a session ended abnormally.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Client I/O failed.
    #[error("client i/o: {0}")]
    ClientIo(std::io::Error),
    /// The client broke the protocol.
    #[error("client protocol error: {0}")]
    ClientProtocol(String),
    /// The client's TLS handshake failed.
    #[error("client tls handshake failed: {0}")]
    ClientTls(std::io::Error),
    /// The client did not authenticate in time.
    #[error("login timed out")]
    LoginTimeout,
    /// The client sent an HTTP request (a cross-protocol attack).
    #[error("http request on a redis port")]
    Http,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A cap or timeout of the abuse controls ended the session (the label says which).
    #[error("refused: {0}")]
    Limit(&'static str),
    /// The proxy is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl SessionError {
    /// Who is at fault.
    pub fn side(&self) -> Side {
        match self {
            SessionError::ClientIo(_)
            | SessionError::ClientProtocol(_)
            | SessionError::ClientTls(_)
            | SessionError::LoginTimeout
            | SessionError::Http
            | SessionError::Limit(_) => Side::Client,
            SessionError::Backend(_) => Side::Backend,
            SessionError::Shutdown => Side::Internal,
        }
    }

    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SessionError::ClientIo(_) => "client_io",
            SessionError::ClientProtocol(_) => "protocol_error",
            SessionError::ClientTls(_) => "tls_handshake",
            SessionError::LoginTimeout => "login_timeout",
            SessionError::Http => "http_request",
            SessionError::Backend(b) => b.label(),
            SessionError::Limit(reason) => reason,
            SessionError::Shutdown => "shutdown",
        }
    }
}
