//! Secret bytes: redacted in `Debug`, wiped on drop, compared in constant time.
//!
//! Passwords, held backend credentials and mock-authentication keys live in a
//! [`Secret`]. There is deliberately no `Display`, no `PartialEq` and no
//! `Deref`: reading the bytes takes [`Secret::expose`], so every place that
//! touches a secret can be found with `grep expose`.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes that must never be printed and are zeroized when dropped.
#[derive(Clone)]
pub struct Secret {
    bytes: Vec<u8>,
}

impl Secret {
    /// Takes ownership of `bytes`; no copy is left behind by this call.
    ///
    /// Copies the caller made earlier (a `String` read from a file, say) are the
    /// caller's to wipe.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
        }
    }

    /// The secret bytes. Named so that every read of a secret is greppable.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// Compares with `other` in time independent of the contents.
    ///
    /// The length is not hidden: a length mismatch returns `false` at once, which
    /// reveals only the length (see [`ct_eq`]).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        ct_eq(&self.bytes, other)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // `Vec::zeroize` wipes the whole allocation, spare capacity included.
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for Secret {}

/// Constant-time equality of two byte strings (via `subtle`).
///
/// Time depends only on the lengths, never on where the first difference is,
/// so a remote peer cannot guess a secret byte by byte from response times.
/// Unequal lengths return `false` immediately; lengths of our secrets (keys,
/// proofs, tokens) are public or fixed.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(format!("{:#?}", Some(s)), "Some(\n    Secret(..),\n)");
    }

    #[test]
    fn expose_and_clone() {
        let s = Secret::new(b"abc".to_vec());
        let t = s.clone();
        drop(s);
        assert_eq!(t.expose(), b"abc");
    }

    #[test]
    fn constant_time_compare() {
        let s = Secret::new("hunter2");
        assert!(s.ct_eq(b"hunter2"));
        assert!(!s.ct_eq(b"hunter3"));
        assert!(!s.ct_eq(b"hunter"));
        assert!(!s.ct_eq(b""));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"a", b"ab"));
    }
}
