//! A bounded memo of ECDSA signatures already verified, so that a token
//! presented again (a user access token or a JWT-SVID reused for every tool
//! call for minutes) costs a SHA-256 instead of a P-256 verification.
//!
//! What is memoized is only the signature check: "these exact token bytes
//! verify under this exact public key". Everything else (header profile,
//! key lookup in the *current* key set, expiry, audience, subject) is
//! checked again on every use by the caller, so a rotated-out key, an
//! expired token or a wrong audience is refused exactly as without the
//! memo. The key is SHA-256 over the whole compact token (header, payload
//! and signature) and the value is SHA-256 of the public key that verified
//! it; a hit requires both to match.
//!
//! Memory is bounded: two generations of at most `capacity` entries each;
//! when the current one fills up it becomes the previous one and the old
//! previous one is dropped (a cheap approximation of LRU).

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest::{SHA256, digest};

type Hash = [u8; 32];

fn sha256(data: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// Verified signatures, shared by every verifier of one process.
#[derive(Debug)]
pub struct SignatureMemo {
    capacity: usize,
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<Hash, Hash>,
    previous: HashMap<Hash, Hash>,
}

/// A token's memo key, computed once per verification.
#[derive(Debug, Clone, Copy)]
pub struct TokenDigest(Hash);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(sha256(token.as_bytes()))
    }
}

// === impl SignatureMemo ===

impl SignatureMemo {
    /// A memo holding up to about `2 × capacity` verified signatures.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Generations::default()),
        }
    }

    /// Whether `token` was verified before under `public_key`.
    pub fn contains(&self, token: TokenDigest, public_key: &[u8]) -> bool {
        let key = sha256(public_key);
        let Ok(g) = self.inner.lock() else {
            return false;
        };
        g.current.get(&token.0).or_else(|| g.previous.get(&token.0)) == Some(&key)
    }

    /// Records that `token`'s signature verified under `public_key`.
    pub fn insert(&self, token: TokenDigest, public_key: &[u8]) {
        let key = sha256(public_key);
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        if g.current.len() >= self.capacity {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(token.0, key);
    }

    /// Forgets everything (e.g. when a key is removed from a key set).
    pub fn clear(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.current.clear();
            g.previous.clear();
        }
    }

    /// Entries held (both generations), for tests and metrics.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.current.len() + g.previous.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for SignatureMemo {
    fn default() -> Self {
        Self::new(8192)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_same_token_and_the_same_key() {
        let memo = SignatureMemo::new(4);
        let t = TokenDigest::of("a.b.c");
        assert!(!memo.contains(t, b"key1"));
        memo.insert(t, b"key1");
        assert!(memo.contains(t, b"key1"));
        assert!(!memo.contains(t, b"key2"));
        assert!(!memo.contains(TokenDigest::of("a.b.d"), b"key1"));
        memo.clear();
        assert!(!memo.contains(t, b"key1"));
    }

    #[test]
    fn memory_stays_bounded() {
        let memo = SignatureMemo::new(8);
        for i in 0..1000 {
            memo.insert(TokenDigest::of(&format!("t{i}")), b"k");
        }
        assert!(memo.len() <= 16, "held {}", memo.len());
        // The most recent entries are still there.
        assert!(memo.contains(TokenDigest::of("t999"), b"k"));
        assert!(!memo.contains(TokenDigest::of("t0"), b"k"));
    }
}
