//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, and `POST /reload`.
//!
//! It binds to 127.0.0.1 by default and serves HTTP/1.1 with hyper; requests
//! have no body and replies are small.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::Reloader;

/// How long `/readyz` waits for each backend's TCP connect.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin endpoint serves.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The metrics registry.
    pub metrics: Metrics,
    /// Config reloads (`POST /reload`) and the backends `/readyz` checks.
    pub reloader: Arc<Reloader>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(sock: TcpListener, state: AdminState, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            r = sock.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    state: AdminState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, text, "ok\n"),
        (&Method::GET, "/readyz") => {
            let mut body = String::new();
            let mut ready = true;
            for b in state.reloader.backends().iter() {
                let up = matches!(
                    tokio::time::timeout(
                        READY_CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(b.address.as_str())
                    )
                    .await,
                    Ok(Ok(_))
                );
                ready &= up;
                body.push_str(&format!("{} {}\n", b.name, if up { "up" } else { "down" }));
            }
            reply(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                text,
                body,
            )
        }
        (&Method::POST, "/reload") => {
            let reloader = state.reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(())) => reply(StatusCode::OK, text, "reloaded\n"),
                // The reason names a key or a file, never a secret (ConfigError's contract).
                Ok(Err(e)) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    text,
                    format!("reload refused: {e}\n"),
                ),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, "reload failed\n"),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n"),
    })
}
