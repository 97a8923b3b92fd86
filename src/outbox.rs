//! A queue of bytes bound for one socket. Small chunks (requests, replies) are
//! copied together into one contiguous buffer, so a run of pipelined replies
//! leaves in one `write` (and, on TLS, in one record instead of one per reply);
//! large chunks are queued as they are (zero-copy `Bytes`) and written with
//! vectored writes. Sessions either drive it from their own poll loop
//! ([`Outbox::poll_drain`]) or await [`Outbox::write_to`] from a `select!`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Chunks up to this size are copied into the contiguous buffer: copying a few
/// hundred bytes costs less than queueing (and later freeing) a shared `Bytes`,
/// and it keeps the read buffer they came from unshared, so it is reused in place.
pub const COPY_MAX: usize = 2048;

/// A buffer this large is released once everything in it is written, so a
/// burst does not pin its high-water mark on an idle connection.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Slices per vectored write (Linux's `UIO_MAXIOV` is 1024; a few dozen cover
/// `OUT_CAP` bytes of large chunks).
const MAX_SLICES: usize = 32;

/// A queue of bytes to write, in order.
#[derive(Default)]
pub struct Outbox {
    /// Large chunks, queued whole, before `tail`.
    chunks: VecDeque<Bytes>,
    /// Small chunks copied together; always after every chunk in `chunks`.
    tail: BytesMut,
    /// Bytes queued.
    pub len: usize,
    /// Bytes were written since the last flush (TLS may still hold them).
    unflushed: bool,
}

impl Outbox {
    /// Queues a chunk (copied when small, shared when large).
    pub fn push(&mut self, b: Bytes) {
        if b.len() <= COPY_MAX {
            self.push_slice(&b);
            return;
        }
        self.len += b.len();
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
        self.chunks.push_back(b);
    }

    /// Queues a copy of `b`.
    pub fn push_slice(&mut self, b: &[u8]) {
        self.len += b.len();
        self.tail.extend_from_slice(b);
    }

    /// Whether there is something to write or flush.
    pub fn wants_write(&self) -> bool {
        self.len > 0 || self.unflushed
    }

    /// Writes as much as the socket takes without waiting, then flushes once
    /// everything is written. Returns the bytes written; when something is left
    /// (bytes or a flush), `cx` is woken once the socket can take more.
    pub fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> io::Result<usize> {
        let mut total = 0;
        while self.len > 0 {
            match self.poll_write_some(cx, w) {
                Poll::Ready(Ok(n)) => total += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(total),
            }
        }
        if self.unflushed {
            match Pin::new(w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(total)
    }

    /// One write (cancel-safe), or a flush once everything is written.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<usize> {
        if self.len == 0 {
            poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await?;
            self.unflushed = false;
            return Ok(0);
        }
        poll_fn(|cx| self.poll_write_some(cx, w)).await
    }

    /// Releases the contiguous buffer's memory when it is empty and large.
    pub fn shrink(&mut self) {
        if self.tail.is_empty() && self.tail.capacity() > SHRINK_ABOVE {
            self.tail = BytesMut::new();
        }
    }

    /// One write of what is queued: a plain write when only the contiguous
    /// buffer holds bytes (the common case), a vectored write otherwise.
    fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<usize>> {
        let n = if self.chunks.is_empty() {
            std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.tail))?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut k = 0;
            for c in self.chunks.iter().take(MAX_SLICES - 1) {
                slices[k] = IoSlice::new(c);
                k += 1;
            }
            if k == self.chunks.len() && !self.tail.is_empty() {
                slices[k] = IoSlice::new(&self.tail);
                k += 1;
            }
            std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k]))?
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.consume(n);
        Poll::Ready(Ok(n))
    }

    fn consume(&mut self, n: usize) {
        self.len -= n;
        self.unflushed = true;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                // The rest was from the contiguous buffer.
                self.tail.advance(left);
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        if self.len == 0 {
            // The next chunk is copied where this one was (see `relay::rewind`).
            crate::relay::rewind(&mut self.tail);
            self.shrink();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn keeps_order_across_small_and_large_chunks() {
        for max in [1, 7, 100, 5000, usize::MAX] {
            let mut o = Outbox::default();
            let mut expect = Vec::new();
            let big = vec![b'x'; COPY_MAX + 1];
            for i in 0..20u8 {
                let small = vec![i; usize::from(i) + 1];
                o.push(Bytes::from(small.clone()));
                expect.extend_from_slice(&small);
                if i % 3 == 0 {
                    o.push(Bytes::from(big.clone()));
                    expect.extend_from_slice(&big);
                }
                o.push_slice(b"+OK\r\n");
                expect.extend_from_slice(b"+OK\r\n");
            }
            assert_eq!(o.len, expect.len());
            let mut w = Trickle {
                out: Vec::new(),
                max,
            };
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let n = o.poll_drain(&mut cx, &mut w).expect("write");
            assert_eq!(n, expect.len());
            assert!(!o.wants_write());
            assert_eq!(w.out, expect, "max {max}");
        }
    }
}
