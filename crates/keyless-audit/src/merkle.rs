//! The RFC 6962 / RFC 9162 Merkle tree over the log's leaf hashes, and the
//! generation of inclusion and consistency proofs.
//!
//! Hashes: leaf `SHA-256(0x00 ‖ entry)`, node `SHA-256(0x01 ‖ left ‖ right)`,
//! the empty tree `SHA-256("")`; a range of n > 1 leaves splits at the largest
//! power of two below n (RFC 9162 §2.1.1).
//!
//! [`MerkleTree`] keeps every leaf hash (32 bytes per entry) and, from height
//! [`CACHE_FROM_HEIGHT`] up, the hash of every complete, aligned subtree
//! (2/16 of a leaf's cost again), so any subtree hash is at most 15 hash
//! computations away and a proof at a million entries costs a few dozen
//! hashes. Heights below the cache are recomputed on demand: that trades a
//! few microseconds per proof for half the memory (about 36 MB per million
//! entries instead of 64). It also keeps the right edge ("frontier") for
//! O(1) amortized appends and the root in O(log n).
//!
//! Verification lives in [`crate::proof`], written from the RFC's
//! verification algorithms and not from this code, so that a bug here is
//! not mirrored there.

use aws_lc_rs::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Subtree hashes are cached for heights at or above this one.
pub const CACHE_FROM_HEIGHT: u32 = 4;

/// `SHA-256(0x00 ‖ data)`: the leaf hash of one entry.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish().as_ref())
}

/// `SHA-256(0x01 ‖ left ‖ right)`: an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One-shot over a stack buffer: the streaming context costs more than
    // the two SHA-256 blocks themselves, and this runs ~log n times per entry.
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    to_hash(aws_lc_rs::digest::digest(&SHA256, &buf).as_ref())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    to_hash(aws_lc_rs::digest::digest(&SHA256, b"").as_ref())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    for (d, s) in h.iter_mut().zip(bytes) {
        *d = *s;
    }
    h
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Errors of proof generation: the request names leaves the tree lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {requested} exceeds the log size {size}")]
    SizeOutOfRange { requested: u64, size: u64 },
    #[error("consistency from size {from} to smaller size {to} is undefined")]
    Shrinking { from: u64, to: u64 },
}

/// An append-only Merkle tree with cached subtree hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
    /// `cache[h - CACHE_FROM_HEIGHT][j]` = hash of leaves `[j·2^h, (j+1)·2^h)`.
    cache: Vec<Vec<Hash>>,
    /// Roots of the complete subtrees along the right edge, largest first.
    frontier: Frontier,
}

// === impl MerkleTree ===

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from leaf hashes.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        usize::try_from(index).ok().and_then(|i| self.leaves.get(i))
    }

    /// The right edge of the current tree, to stage appends without touching it.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
        self.frontier.push(leaf);
        let n = self.leaves.len() as u64;
        let mut h = CACHE_FROM_HEIGHT;
        while h < 64 && n.is_multiple_of(1u64 << h) {
            let j = n / (1u64 << h) - 1;
            let hash = if h == CACHE_FROM_HEIGHT {
                self.compute_below_cache(h, j)
            } else {
                let child = h - 1;
                match (self.cached(child, 2 * j), self.cached(child, 2 * j + 1)) {
                    (Some(l), Some(r)) => node_hash(&l, &r),
                    // Unreachable by construction (children are cached before
                    // their parent); recompute rather than panic.
                    _ => self.compute_below_cache(h, j),
                }
            };
            let level = (h - CACHE_FROM_HEIGHT) as usize;
            if self.cache.len() <= level {
                self.cache.resize_with(level + 1, Vec::new);
            }
            if let Some(v) = self.cache.get_mut(level) {
                v.push(hash);
            }
            h += 1;
        }
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The root of the tree made of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        if size == self.size() {
            return Ok(self.root());
        }
        Ok(self.range_hash(0, size))
    }

    /// The RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of
    /// the first `size` leaves, deepest sibling first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(size)?;
        if index >= size {
            return Err(TreeError::IndexOutOfRange { index, size });
        }
        // PATH(m, D[lo:hi]) walked top-down; siblings are collected from the
        // root and reversed so the deepest comes first, as the RFC orders them.
        let mut path = Vec::new();
        let (mut lo, mut hi, m) = (0u64, size, index);
        while hi - lo > 1 {
            let k = split_point(hi - lo);
            if m < lo + k {
                path.push(self.range_hash(lo + k, hi));
                hi = lo + k;
            } else {
                path.push(self.range_hash(lo, lo + k));
                lo += k;
            }
        }
        path.reverse();
        Ok(path)
    }

    /// The RFC 9162 §2.1.4.1 consistency proof between the trees of the
    /// first `from` and the first `to` leaves. Empty when `from` is 0 or
    /// equals `to` (every tree extends the empty tree and itself).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, TreeError> {
        self.check_size(to)?;
        if from > to {
            return Err(TreeError::Shrinking { from, to });
        }
        if from == 0 || from == to {
            return Ok(Vec::new());
        }
        // SUBPROOF(m, D[lo:hi], b), top-down, reversed at the end.
        let mut proof = Vec::new();
        let (mut lo, mut hi, mut m, mut b) = (0u64, to, from, true);
        loop {
            let n = hi - lo;
            if m == n {
                if !b {
                    proof.push(self.range_hash(lo, hi));
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                proof.push(self.range_hash(lo + k, hi));
                hi = lo + k;
            } else {
                proof.push(self.range_hash(lo, lo + k));
                lo += k;
                m -= k;
                b = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// MTH(D[lo:hi]) for 0 ≤ lo < hi ≤ size.
    fn range_hash(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n == 1 {
            return self.leaf(lo).copied().unwrap_or_default();
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return self.node(n.trailing_zeros(), lo / n);
        }
        let k = split_point(n);
        node_hash(&self.range_hash(lo, lo + k), &self.range_hash(lo + k, hi))
    }

    /// The complete subtree of height `h` at position `j`.
    fn node(&self, h: u32, j: u64) -> Hash {
        if h == 0 {
            return self.leaf(j).copied().unwrap_or_default();
        }
        match self.cached(h, j) {
            Some(hash) => hash,
            None => self.compute_below_cache(h, j),
        }
    }

    fn cached(&self, h: u32, j: u64) -> Option<Hash> {
        if h < CACHE_FROM_HEIGHT {
            return None;
        }
        let level = self.cache.get((h - CACHE_FROM_HEIGHT) as usize)?;
        level.get(usize::try_from(j).ok()?).copied()
    }

    fn compute_below_cache(&self, h: u32, j: u64) -> Hash {
        if h == 0 {
            return self.leaf(j).copied().unwrap_or_default();
        }
        let l = self.node(h - 1, 2 * j);
        let r = self.node(h - 1, 2 * j + 1);
        node_hash(&l, &r)
    }

    fn check_size(&self, size: u64) -> Result<(), TreeError> {
        if size > self.size() {
            return Err(TreeError::SizeOutOfRange {
                requested: size,
                size: self.size(),
            });
        }
        Ok(())
    }
}

/// The right edge of a tree: the roots of its complete subtrees, one per set
/// bit of the size, largest first. Enough to append and to get the root,
/// which is how the writer stages a batch before committing it.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

// === impl Frontier ===

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (0u32, leaf);
        while let Some(&(h, left)) = self.nodes.last() {
            if h != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    /// The root: the right-edge subtrees folded from the smallest up.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// MTH straight from the RFC definition, for comparison.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn roots_match_the_rfc_definition_at_every_size() {
        let all = leaves(300);
        let mut t = MerkleTree::new();
        assert_eq!(t.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            t.push(*l);
            assert_eq!(t.root(), mth(&all[..=i]), "size {}", i + 1);
        }
        for s in 0..=300u64 {
            assert_eq!(
                t.root_at(s).unwrap(),
                mth(&all[..s as usize]),
                "root_at {s}"
            );
        }
    }

    #[test]
    fn rfc6962_empty_tree_hash() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let t = MerkleTree::from_leaves(leaves(5));
        assert!(t.inclusion_proof(5, 5).is_err());
        assert!(t.inclusion_proof(0, 6).is_err());
        assert!(t.consistency_proof(4, 3).is_err());
        assert!(t.consistency_proof(1, 6).is_err());
        assert!(t.consistency_proof(0, 5).unwrap().is_empty());
        assert!(t.consistency_proof(5, 5).unwrap().is_empty());
    }
}
