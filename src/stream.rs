//! The two kinds of byte stream a session holds: to the client (TLS server
//! side or plain TCP) and to the backend (TLS client side or plain TCP).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

macro_rules! either_stream {
    ($name:ident, $tls:ty, $doc:literal) => {
        #[doc = $doc]
        #[allow(clippy::large_enum_variant)]
        pub enum $name {
            /// Plain TCP.
            Plain(TcpStream),
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
    tokio_rustls::server::TlsStream<TcpStream>,
    "A client connection."
);
either_stream!(
    BackendStream,
    tokio_rustls::client::TlsStream<TcpStream>,
    "A backend connection."
);

impl ClientStream {
    /// Whether the client is on TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}
