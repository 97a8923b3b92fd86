//! The two kinds of byte stream a session holds: to the client (TLS server
//! side or plain TCP) and to the backend (TLS client side or plain TCP).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An enum of two byte streams that is a byte stream itself, delegating each
/// call to the variant it holds (the client and backend streams here, and a
/// Redis session's backend in `redis::mux`).
macro_rules! either_stream {
    (
        $(#[$meta:meta])* $name:ident,
        $(#[$a_meta:meta])* $a:ident($a_ty:ty),
        $(#[$b_meta:meta])* $b:ident($b_ty:ty) $(,)?
    ) => {
        $(#[$meta])*
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            $(#[$a_meta])*
            $a($a_ty),
            $(#[$b_meta])*
            $b($b_ty),
        }

        impl tokio::io::AsyncRead for $name {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => std::pin::Pin::new(s).poll_read(cx, buf),
                    $name::$b(s) => std::pin::Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl tokio::io::AsyncWrite for $name {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $name::$a(s) => std::pin::Pin::new(s).poll_write(cx, buf),
                    $name::$b(s) => std::pin::Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $name::$a(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::$b(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::$a(s) => s.is_write_vectored(),
                    $name::$b(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => std::pin::Pin::new(s).poll_flush(cx),
                    $name::$b(s) => std::pin::Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $name::$a(s) => std::pin::Pin::new(s).poll_shutdown(cx),
                    $name::$b(s) => std::pin::Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}
pub(crate) use either_stream;

either_stream!(
    /// A client connection.
    ClientStream,
    /// Plain TCP.
    Plain(ClientTcp),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<ClientTcp>>),
);
either_stream!(
    /// A backend connection.
    BackendStream,
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
);

/// A client's TCP connection. Bytes the proxy read before the session started
/// (those after a PROXY protocol header, in the same segment) are replayed first,
/// so a ClientHello or an SSLRequest that rode along is not lost.
pub struct ClientTcp {
    tcp: TcpStream,
    prefix: BytesMut,
}

impl ClientTcp {
    /// Wraps `tcp`, replaying `prefix` before anything read from the socket.
    pub fn new(tcp: TcpStream, prefix: BytesMut) -> ClientTcp {
        ClientTcp { tcp, prefix }
    }

    /// The first byte the client sent, without consuming it; `None` at EOF.
    pub async fn peek_first(&mut self) -> io::Result<Option<u8>> {
        if let Some(&b) = self.prefix.first() {
            return Ok(Some(b));
        }
        let mut b = [0u8; 1];
        Ok((self.tcp.peek(&mut b).await? > 0).then_some(b[0]))
    }

    /// The socket itself.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

/// Most bytes [`discard_arrived`] reads before giving up.
const DISCARD_LIMIT: usize = 64 * 1024;

/// Sends `bytes` at once with one non-blocking `send` on the socket itself,
/// for a refusal's last words: tokio's `try_write` answers "would block" until
/// its poller has seen the socket, and a refused connection is not kept that long.
pub fn send_now(tcp: &TcpStream, bytes: &[u8]) {
    // MSG_NOSIGNAL: a peer that has gone must not raise SIGPIPE in a host
    // process that did not ignore it.
    let _ = socket2::SockRef::from(tcp).send_with_flags(bytes, libc::MSG_NOSIGNAL);
}

/// Reads and drops what the peer has already sent, without waiting, before a
/// close. Closing a socket with unread input sends a reset instead of a FIN,
/// and a reset can destroy the reply just written (a refusal's reason) before
/// the client reads it.
pub fn discard_arrived(tcp: &TcpStream) {
    use std::io::Read;
    let sock = socket2::SockRef::from(tcp);
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < DISCARD_LIMIT {
        match (&*sock).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

impl AsyncRead for ClientTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl BackendStream {
    /// Moves the socket to the calling worker thread's poller, so that its
    /// events wake this thread directly instead of by a cross-thread wakeup
    /// (a pooled connection opened on another shard, [`crate::shards`]).
    ///
    /// The descriptor is duplicated and the copy registered here; dropping the
    /// old handle removes it from the other poller and closes only that
    /// descriptor, so the connection itself and the TLS state stay as they were.
    pub fn rehome(&mut self) -> io::Result<()> {
        // Registering outside a runtime would panic.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let tcp = match self {
            BackendStream::Plain(tcp) => tcp,
            BackendStream::Tls(s) => s.get_mut().0,
        };
        let dup = std::net::TcpStream::from(std::os::fd::AsFd::as_fd(&*tcp).try_clone_to_owned()?);
        drop(std::mem::replace(tcp, TcpStream::from_std(dup)?));
        Ok(())
    }
}

impl ClientStream {
    /// Whether the client is on TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// An echo server (over TLS when `tls` is given) on a runtime of its own.
    fn echo_server(
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            runtime().block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let (tcp, _) = listener.accept().await.expect("accept");
                let mut s: Box<dyn Stream> = match tls {
                    Some(c) => Box::new(
                        tokio_rustls::TlsAcceptor::from(c)
                            .accept(tcp)
                            .await
                            .expect("handshake"),
                    ),
                    None => Box::new(tcp),
                };
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = s.flush().await;
                }
            })
        });
        (addr, server)
    }

    trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

    async fn ping(s: &mut BackendStream, word: &[u8]) -> Vec<u8> {
        s.write_all(word).await.expect("write");
        s.flush().await.expect("flush");
        let mut got = vec![0u8; word.len()];
        s.read_exact(&mut got).await.expect("read");
        got
    }

    /// Opens a connection on one runtime, drops that runtime (and its poller),
    /// then uses the connection on another: only a rehomed socket still works.
    fn rehomed_connection_outlives_the_poller_that_opened_it(tls: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = crate::tls::generate_dev_certs(dir.path(), "client", &[]).expect("certs");
        let server_tls = tls.then(|| {
            crate::tls::server_config(
                &certs.server_cert,
                &certs.server_key,
                None,
                crate::tls::ClientCertMode::None,
                &[],
            )
            .expect("server config")
        });
        let (addr, server) = echo_server(server_tls);

        let first = runtime();
        let mut stream = first.block_on(async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut s = if tls {
                let config = crate::tls::client_config(Some(&certs.ca_cert), true).expect("config");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .expect("handshake");
                BackendStream::Tls(Box::new(s))
            } else {
                BackendStream::Plain(tcp)
            };
            assert_eq!(ping(&mut s, b"first").await, b"first");
            s
        });
        drop(first);

        runtime().block_on(async {
            stream.rehome().expect("rehome");
            assert_eq!(ping(&mut stream, b"second").await, b"second");
            stream.shutdown().await.expect("shutdown");
        });
        drop(stream);
        server.join().expect("server");
    }

    #[test]
    fn rehoming_outside_a_runtime_is_an_error_not_a_panic() {
        let (addr, server) = echo_server(None);
        let rt = runtime();
        let mut stream =
            BackendStream::Plain(rt.block_on(TcpStream::connect(addr)).expect("connect"));
        assert!(stream.rehome().is_err());
        rt.block_on(async {
            assert_eq!(ping(&mut stream, b"still here").await, b"still here");
            stream.shutdown().await.expect("shutdown");
        });
        drop(stream);
        server.join().expect("server");
    }

    #[test]
    fn a_plain_connection_moves_to_the_calling_poller() {
        rehomed_connection_outlives_the_poller_that_opened_it(false);
    }

    #[test]
    fn a_tls_connection_moves_to_the_calling_poller_with_its_session() {
        rehomed_connection_outlives_the_poller_that_opened_it(true);
    }
}
