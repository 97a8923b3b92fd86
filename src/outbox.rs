//! A queue of byte chunks bound for one socket, written with vectored writes.
//! Sessions push whole buffered runs (zero-copy `Bytes`) and poll `write_to`
//! from their `select!` loop.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A queue of byte chunks to write, written with vectored writes.
#[derive(Default)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Bytes queued.
    pub len: usize,
    /// Bytes were written since the last flush (TLS may still hold them).
    unflushed: bool,
}

impl Outbox {
    /// Queues a chunk.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    /// Whether there is something to write or flush.
    pub fn wants_write(&self) -> bool {
        self.len > 0 || self.unflushed
    }

    /// One vectored write (cancel-safe), or a flush once everything is written.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<usize> {
        if self.len == 0 {
            w.flush().await?;
            self.unflushed = false;
            return Ok(0);
        }
        let mut slices = [IoSlice::new(&[]); 32];
        let mut k = 0;
        for c in self.chunks.iter().take(slices.len()) {
            slices[k] = IoSlice::new(c);
            k += 1;
        }
        let n = w.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.len -= n;
        self.unflushed = true;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(left);
                left = 0;
            }
        }
        Ok(n)
    }
}
