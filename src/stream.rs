//! The two kinds of byte stream a session holds: to the client (TLS server
//! side or plain TCP) and to the backend (TLS client side or plain TCP).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

macro_rules! either_stream {
    ($name:ident, $plain:ty, $tls:ty, $doc:literal) => {
        #[doc = $doc]
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            /// Plain TCP.
            Plain($plain),
            /// TLS over TCP.
            Tls(Box<$tls>),
        }

        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::Plain(s) => s.is_write_vectored(),
                    $name::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

either_stream!(
    ClientStream,
    ClientTcp,
    tokio_rustls::server::TlsStream<ClientTcp>,
    "A client connection."
);
either_stream!(
    BackendStream,
    TcpStream,
    tokio_rustls::client::TlsStream<TcpStream>,
    "A backend connection."
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

impl ClientStream {
    /// Whether the client is on TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}
