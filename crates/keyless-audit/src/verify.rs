//! Offline verification of a stored log, inclusion proofs from the store,
//! and export: what `keyless audit verify|proof|export` run, with or
//! without a running fabric.
//!
//! # How verification names the first bad index
//!
//! The threat is someone who can write the database but holds no key.
//! Evidence is checked from the cheapest and most precise to the signed:
//!
//! 1. Every row, in index order: the index is the next one (a gap is a
//!    **removed** entry at that index); the stored JSON parses and is in
//!    canonical form; its recomputed leaf hash equals the stored one; the
//!    stored running root (`root`, the tree root after this entry) equals
//!    the recomputed one. The first row failing any check is the answer;
//!    it is called **reordered** when its content belongs at another index
//!    (its hash is stored there), **modified** otherwise.
//! 2. Someone who recomputed hashes and roots consistently is caught by the
//!    signed tree heads: every checkpoint, and the seal of every committed
//!    batch (the checkpoint-note signature of the tree after that batch).
//!    Walking them by size, the first one that no longer matches the
//!    recomputed tree, and whose signature verifies, proves that something
//!    changed below its size; the last matching, validly signed one proves
//!    everything below *its* size is original. The first bad index is the
//!    latter's size (**rewritten**), unless step 1 found a bad row between
//!    the two, or the entries simply stop before the failing size (then the
//!    first missing index, **removed**). Since every batch is sealed,
//!    this is exact to the batch; an append that is not part of a burst is
//!    a batch of its own, so it is exact to the entry.
//! 3. The entries after the last valid seal are unsealed: every commit
//!    writes its seal in the same transaction, so that is tampering too
//!    (entries appended by hand, or truncated and re-appended).
//! 4. Checkpoints themselves: each note must parse, name this log, carry a
//!    valid signature by a recorded key, agree with its row, follow the
//!    previous one in sequence and size, and be consistent with it (an RFC
//!    9162 consistency proof from the recomputed tree, checked with the
//!    independent verifier); a failure names the checkpoint's `seq`.
//!
//! Seal signatures are checked only where a seal is used as evidence (and
//! for the last one), so a healthy log costs one signature check per
//! checkpoint, not one per batch.

use std::collections::HashMap;
use std::io::Write;

use keyless_store::{Dialect, KeyManager, Store, StoreError};

use crate::db;
use crate::error::{AuditError, TamperKind, VerifyError};
use crate::event::Event;
use crate::log::{InclusionProof, LogEntry, json_line, latest_checkpoint};
use crate::merkle::{Frontier, Hash, MerkleTree, leaf_hash};

/// Rows handed to the verification thread at a time.
const VERIFY_CHUNK: usize = 4096;
/// Entries searched for the original content of a reordered entry.
const MAX_REORDER_SEARCH: u64 = 2_000_000;
use crate::note::{Checkpoint, ParsedCheckpoint, note_body, verify_signature};
use crate::proof::{ProofError, verify_consistency, verify_inclusion};

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub size: u64,
    /// The recomputed root over all of them.
    pub root: Hash,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Batch seals found.
    pub seals: u64,
    /// The latest checkpoint, if any.
    pub latest_checkpoint: Option<Checkpoint>,
}

/// Verifies the whole stored log, trusting the checkpoint public keys
/// recorded in the store. Tampering is reported as
/// [`AuditError::Tampered`].
pub async fn verify(store: &Store) -> Result<VerifyReport, AuditError> {
    verify_inner(store, None).await
}

/// Like [`verify`], and also checks every recorded checkpoint public key
/// that the key manager still holds against the key manager, so that a key
/// swapped in the database is caught.
pub async fn verify_with_keys(
    store: &Store,
    keys: &dyn KeyManager,
) -> Result<VerifyReport, AuditError> {
    verify_inner(store, Some(keys)).await
}

fn tamper(
    kind: TamperKind,
    index: Option<u64>,
    checkpoint: Option<u64>,
    reason: String,
) -> AuditError {
    AuditError::Tampered(VerifyError {
        kind,
        first_bad_index: index,
        checkpoint,
        reason,
    })
}

/// The per-row pass (step 1).
#[derive(Default)]
struct Scan {
    tree: MerkleTree,
    stored_leaves: Vec<Hash>,
    /// First bad row: (index, kind, reason).
    first_bad: Option<(u64, TamperKind, String)>,
    /// The running root stored in the first bad row.
    first_bad_root: Option<Vec<u8>>,
    /// A gap stops the scan: what follows has no defined place in the tree.
    stopped: bool,
}

impl Scan {
    fn row(&mut self, row: db::EntryRow) {
        if self.stopped {
            return;
        }
        let i = self.tree.size();
        if row.index != i {
            self.bad(i, TamperKind::Removed, format!("entry {i} was removed"));
            self.stopped = true;
            return;
        }
        let leaf = leaf_hash(row.event.as_bytes());
        self.tree.push(leaf);
        let stored: Hash = row.leaf_hash.clone().try_into().unwrap_or([0u8; 32]);
        self.stored_leaves.push(stored);
        if self.first_bad.is_some() {
            return;
        }
        let canonical = Event::from_json(&row.event)
            .ok()
            .and_then(|e| e.canonical_json().ok());
        self.first_bad_root = Some(row.root.clone());
        if canonical.as_deref() != Some(row.event.as_str()) {
            self.bad(
                i,
                TamperKind::Modified,
                format!("entry {i} was modified: it is not a canonical event"),
            );
        } else if stored != leaf {
            self.bad(
                i,
                TamperKind::Modified,
                format!("entry {i} was modified: its content does not match its leaf hash"),
            );
        } else if row.root.as_slice() != self.tree.root() {
            self.bad(
                i,
                TamperKind::Modified,
                format!("entry {i} does not chain to the entries before it"),
            );
        } else {
            self.first_bad_root = None;
        }
    }

    fn bad(&mut self, i: u64, kind: TamperKind, reason: String) {
        if self.first_bad.is_none() {
            self.first_bad = Some((i, kind, reason));
        }
    }

    /// Refines a content mismatch at `i` into "reordered" when the content
    /// found there was logged at another index, or what was logged there
    /// now sits elsewhere, or the row's running root is the signed root of
    /// another position (a whole row moved).
    fn classify(&self, i: u64, signed_roots: &HashMap<Hash, u64>) -> Option<String> {
        if let Some(size) = self
            .first_bad_root
            .as_deref()
            .and_then(|r| <&Hash>::try_from(r).ok())
            .and_then(|r| signed_roots.get(r))
            .filter(|s| **s != i + 1 && **s > 0)
        {
            return Some(format!(
                "entry {i} was reordered: this row was logged at index {}",
                size - 1
            ));
        }
        let here = self.tree.leaf(i)?;
        let stored_here = self.stored_leaves.get(usize::try_from(i).ok()?)?;
        let by_stored: HashMap<&Hash, u64> = self
            .stored_leaves
            .iter()
            .enumerate()
            .map(|(k, h)| (h, k as u64))
            .collect();
        if let Some(j) = by_stored.get(here).filter(|j| **j != i) {
            return Some(format!(
                "entry {i} was reordered: it holds the content logged at index {j}"
            ));
        }
        let size = self.tree.size();
        if let Some(j) = (0..size).find(|j| *j != i && self.tree.leaf(*j) == Some(stored_here)) {
            return Some(format!(
                "entry {i} was reordered: its content now sits at index {j}"
            ));
        }
        // Content and leaf hash moved together, running root left behind:
        // find the leaf that, appended to the intact prefix, gives that root.
        let stored_root = self.first_bad_root.as_deref()?;
        let mut prefix = Frontier::default();
        for k in 0..i {
            prefix.push(*self.tree.leaf(k)?);
        }
        let j = (0..size.min(MAX_REORDER_SEARCH)).find(|j| {
            *j != i
                && self.tree.leaf(*j).is_some_and(|leaf| {
                    let mut f = prefix.clone();
                    f.push(*leaf);
                    f.root().as_slice() == stored_root
                })
        })?;
        Some(format!(
            "entry {i} was reordered: its content now sits at index {j}"
        ))
    }
}

/// A signed tree head: a checkpoint or a seal.
struct Head {
    size: u64,
    root: Hash,
    what: String,
    /// `Some(seq)` for checkpoints.
    checkpoint: Option<u64>,
    /// Known validity of the signature (checkpoints are checked upfront).
    valid: Option<bool>,
    /// For seals: (key name, signature) to check lazily.
    seal: Option<(String, Vec<u8>)>,
}

async fn verify_inner(
    store: &Store,
    km: Option<&dyn KeyManager>,
) -> Result<VerifyReport, AuditError> {
    // One snapshot for every table, so appends running beside us cannot
    // look like tampering (a seal for an entry we did not read, say).
    let mut tx = store.reader().begin().await?;
    if store.dialect() == Dialect::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
    }
    let keys = db::keys(&mut *tx).await?;
    let checkpoint_rows = db::checkpoints(&mut *tx).await?;
    let seal_rows = db::seals(&mut *tx).await?;
    // Rows arrive one by one from the database driver; the hashing and
    // re-canonicalization run on a blocking thread beside it, in chunks.
    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Vec<db::EntryRow>>(4);
    let worker = tokio::task::spawn_blocking(move || {
        let mut scan = Scan::default();
        while let Some(chunk) = rx.blocking_recv() {
            for row in chunk {
                scan.row(row);
            }
        }
        scan
    });
    let streamed = db::for_each_chunk(&mut *tx, 0, VERIFY_CHUNK, |chunk| {
        let chunks = chunks.clone();
        async move { chunks.send(chunk).await.map_err(|_| AuditError::Closed) }
    })
    .await;
    drop(chunks);
    let scan = worker
        .await
        .map_err(|e| AuditError::Internal(format!("verification worker stopped: {e}")))?;
    streamed?;
    tx.rollback().await?;
    let origin = store.get_meta("audit.origin").await?;

    // Keys against the key manager.
    if let Some(km) = km {
        for k in &keys {
            match km.load(&k.name).await {
                Ok(signer) if signer.public_key() != k.public_key => {
                    return Err(tamper(
                        TamperKind::Key,
                        None,
                        None,
                        format!(
                            "the recorded public key of `{}` is not the key manager's",
                            k.name
                        ),
                    ));
                }
                // This crate never deletes checkpoint keys: a recorded key
                // the key manager never held was slipped into the table.
                Err(StoreError::KeyNotFound(_)) => {
                    return Err(tamper(
                        TamperKind::Key,
                        None,
                        None,
                        format!(
                            "checkpoint key `{}` is recorded but the key manager does not hold it",
                            k.name
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let key_of = |name: &str| {
        keys.iter()
            .find(|k| k.name == name)
            .map(|k| k.public_key.as_slice())
    };

    // Checkpoints (step 4, the parts that need no tree).
    let mut checkpoint_error: Option<AuditError> = None;
    let mut heads = Vec::new();
    let mut checkpoints = Vec::new();
    for (pos, row) in checkpoint_rows.into_iter().enumerate() {
        let seq = row.seq;
        match check_checkpoint(
            &row,
            pos as u64 + 1,
            origin.as_deref(),
            &key_of,
            checkpoints.last(),
        ) {
            Ok(cp) => {
                heads.push(Head {
                    size: cp.size,
                    root: cp.root,
                    what: format!("checkpoint {seq} (size {})", cp.size),
                    checkpoint: Some(seq),
                    valid: Some(true),
                    seal: None,
                });
                checkpoints.push(cp);
            }
            Err(reason) => {
                // A gap in the sequence names the missing checkpoint.
                let named = (pos as u64 + 1).min(seq);
                checkpoint_error.get_or_insert_with(|| {
                    tamper(TamperKind::Checkpoint, None, Some(named), reason)
                });
            }
        }
    }
    let seal_count = seal_rows.len() as u64;
    for s in seal_rows {
        let root: Hash = s.root.try_into().unwrap_or([0u8; 32]);
        heads.push(Head {
            size: s.size,
            root,
            what: format!("the seal of size {}", s.size),
            checkpoint: None,
            valid: None,
            seal: Some((s.key_name, s.signature)),
        });
    }
    heads.sort_by_key(|h| h.size);

    // Step 2 and 3: walk the signed heads by size.
    let n = scan.tree.size();
    let origin_str = origin.clone().unwrap_or_default();
    let check_sig = |h: &mut Head| -> bool {
        if let Some(v) = h.valid {
            return v;
        }
        let ok = h.seal.as_ref().is_some_and(|(name, sig)| {
            key_of(name).is_some_and(|pk| {
                verify_signature(pk, &note_body(&origin_str, h.size, &h.root), sig)
            })
        });
        h.valid = Some(ok);
        ok
    };
    let matches = |h: &Head| h.size <= n && scan.tree.root_at(h.size).ok() == Some(h.root);
    let mut bad_seal: Option<String> = None;
    let mut forged_head: Option<AuditError> = None;
    // The largest validly signed head that matches the recomputed tree: all
    // entries below its size are original, whatever other heads say.
    let mut vouched = 0u64;
    for k in (0..heads.len()).rev() {
        if let Some(h) = heads.get_mut(k)
            && matches(h)
        {
            if check_sig(h) {
                vouched = h.size;
                break;
            }
            bad_seal.get_or_insert_with(|| format!("{} has an invalid signature", h.what));
        }
    }
    let mut matching: Vec<usize> = Vec::new();
    let mut failing: Option<usize> = None;
    for k in 0..heads.len() {
        let Some(h) = heads.get_mut(k) else { break };
        if matches(h) {
            matching.push(k);
            continue;
        }
        if !check_sig(h) {
            bad_seal.get_or_insert_with(|| format!("{} has an invalid signature", h.what));
            continue;
        }
        if h.size <= vouched {
            // Contradicted by a larger matching head: this head is the
            // forgery, not the entries.
            let reason = format!("{} was altered or replaced: it contradicts the log", h.what);
            forged_head.get_or_insert_with(|| match h.checkpoint {
                Some(seq) => tamper(TamperKind::Checkpoint, None, Some(seq), reason),
                None => tamper(TamperKind::Seal, None, None, reason),
            });
            continue;
        }
        failing = Some(k);
        break;
    }
    // The last validly signed head that matches, at or below the failure.
    let mut trusted_size = 0u64;
    while let Some(k) = matching.pop() {
        if let Some(h) = heads.get_mut(k) {
            if check_sig(h) {
                trusted_size = h.size;
                break;
            }
            bad_seal.get_or_insert_with(|| format!("{} has an invalid signature", h.what));
        }
    }

    let data_bad = scan.first_bad.clone();
    let signed_bad: Option<(u64, TamperKind, String)> = match failing.and_then(|k| heads.get(k)) {
        Some(h) => {
            let m = trusted_size;
            match &data_bad {
                Some((d, _, _)) if *d >= m && *d < h.size => None,
                _ if h.size > n && scan.first_bad.is_none() => Some((
                    n,
                    TamperKind::Removed,
                    format!(
                        "entries from index {n} were removed: {} covers them",
                        h.what
                    ),
                )),
                _ => Some((
                    m,
                    TamperKind::Rewritten,
                    format!(
                        "entries from index {m} were rewritten: {} no longer matches the log",
                        h.what
                    ),
                )),
            }
        }
        None if trusted_size < n => Some((
            trusted_size,
            TamperKind::Rewritten,
            format!(
                "entries from index {trusted_size} are not covered by any valid seal: they were added or rewritten outside the log"
            ),
        )),
        None => None,
    };
    let first = match (data_bad, signed_bad) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    if let Some((i, mut kind, mut reason)) = first {
        if kind == TamperKind::Modified
            && let Some(r) = scan.classify(i, &heads.iter().map(|h| (h.root, h.size)).collect())
        {
            kind = TamperKind::Reordered;
            reason = r;
        }
        return Err(tamper(kind, Some(i), None, reason));
    }
    if let Some(e) = checkpoint_error.or(forged_head) {
        return Err(e);
    }
    if let Some(reason) = bad_seal {
        return Err(tamper(TamperKind::Seal, None, None, reason));
    }

    // Step 4: consecutive checkpoints are consistent (they all match the
    // recomputed tree by now; the proof makes the property explicit).
    for pair in checkpoints.windows(2) {
        if let [a, b] = pair {
            let proof = scan.tree.consistency_proof(a.size, b.size)?;
            if let Err(e) = verify_consistency(a.size, b.size, &a.root, &b.root, &proof) {
                return Err(tamper(
                    TamperKind::Checkpoint,
                    None,
                    Some(b.seq),
                    format!(
                        "checkpoint {} is not consistent with checkpoint {}: {e}",
                        b.seq, a.seq
                    ),
                ));
            }
        }
    }
    Ok(VerifyReport {
        size: n,
        root: scan.tree.root(),
        checkpoints: checkpoints.len() as u64,
        seals: seal_count,
        latest_checkpoint: checkpoints.pop(),
    })
}

/// Checks one checkpoint row on its own and against its predecessor.
fn check_checkpoint<'k>(
    row: &db::CheckpointRow,
    expected_seq: u64,
    origin: Option<&str>,
    key_of: &impl Fn(&str) -> Option<&'k [u8]>,
    prev: Option<&Checkpoint>,
) -> Result<Checkpoint, String> {
    let seq = row.seq;
    if seq != expected_seq {
        return Err(format!("checkpoint {expected_seq} was removed"));
    }
    let parsed = ParsedCheckpoint::parse(&row.note)
        .map_err(|e| format!("checkpoint {seq} was altered: {e}"))?;
    if Some(parsed.origin.as_str()) != origin {
        return Err(format!(
            "checkpoint {seq} was replaced: it is for log `{}`",
            parsed.origin
        ));
    }
    let pk = key_of(&row.key_name).ok_or_else(|| {
        format!(
            "checkpoint {seq} was replaced: key `{}` is not a recorded checkpoint key",
            row.key_name
        )
    })?;
    parsed
        .verify(&row.key_name, pk)
        .map_err(|e| format!("checkpoint {seq} was altered or replaced: {e}"))?;
    if row.size != parsed.size || row.root.as_slice() != parsed.root {
        return Err(format!(
            "checkpoint {seq} was altered: its row does not match its signed note"
        ));
    }
    if let Some(p) = prev
        && parsed.size < p.size
    {
        return Err(format!(
            "checkpoint {seq} is smaller than checkpoint {}",
            p.seq
        ));
    }
    Ok(Checkpoint {
        seq,
        origin: parsed.origin,
        size: parsed.size,
        root: parsed.root,
        key_name: row.key_name.clone(),
        note: row.note.clone(),
        issued_at: row.issued_at,
    })
}

/// The origin recorded for the log in `store`, if it was ever opened.
pub async fn stored_origin(store: &Store) -> Result<Option<String>, AuditError> {
    Ok(store.get_meta("audit.origin").await?)
}

/// The inclusion proof of entry `index` in the tree of `size` entries
/// (default: the latest checkpoint's size), computed from the stored leaf
/// hashes without a running log.
pub async fn inclusion_proof(
    store: &Store,
    index: u64,
    size: Option<u64>,
) -> Result<InclusionProof, AuditError> {
    let size = match size {
        Some(s) => s,
        None => {
            latest_checkpoint(store)
                .await?
                .ok_or(AuditError::NoCheckpoint)?
                .size
        }
    };
    let tree = MerkleTree::from_leaves(db::load_leaf_hashes(store.reader()).await?);
    Ok(InclusionProof {
        index,
        size,
        hashes: tree.inclusion_proof(index, size)?,
        leaf_hash: tree
            .leaf(index)
            .copied()
            .ok_or(AuditError::NoSuchEntry(index))?,
        root: tree.root_at(size)?,
    })
}

/// An entry with its inclusion proof in the latest checkpoint, whose
/// signature has been verified.
#[derive(Debug, Clone)]
pub struct EntryProof {
    pub entry: LogEntry,
    pub proof: InclusionProof,
    pub checkpoint: Checkpoint,
}

impl EntryProof {
    /// Checks that the entry's content hashes to the proven leaf and that
    /// the proof leads to the signed root of the checkpoint.
    pub fn check(&self) -> Result<(), ProofError> {
        if leaf_hash(self.entry.json.as_bytes()) != self.proof.leaf_hash {
            return Err(ProofError::RootMismatch);
        }
        verify_inclusion(
            &self.proof.leaf_hash,
            self.proof.index,
            self.checkpoint.size,
            &self.proof.hashes,
            &self.checkpoint.root,
        )
    }
}

/// What `keyless audit proof N` prints and checks: entry `index`, its proof
/// and the latest checkpoint (signature verified with the recorded key).
pub async fn prove_entry(store: &Store, index: u64) -> Result<EntryProof, AuditError> {
    let row = db::latest_checkpoint_row(store.reader())
        .await?
        .ok_or(AuditError::NoCheckpoint)?;
    let (checkpoint, parsed) = db::checkpoint_from_row(row)?;
    let keys = db::keys(store.reader()).await?;
    let key = keys
        .iter()
        .find(|k| k.name == checkpoint.key_name)
        .ok_or_else(|| {
            AuditError::Inconsistent(format!("unknown checkpoint key `{}`", checkpoint.key_name))
        })?;
    parsed
        .verify(&key.name, &key.public_key)
        .map_err(|e| AuditError::Inconsistent(format!("checkpoint {}: {e}", checkpoint.seq)))?;
    if index >= checkpoint.size {
        return Err(AuditError::InvalidRange(format!(
            "entry `{index}` is not covered by the latest checkpoint (size {}) yet",
            checkpoint.size
        )));
    }
    let entry = crate::log::read_log_entries(store, index, index + 1)
        .await?
        .into_iter()
        .next()
        .ok_or(AuditError::NoSuchEntry(index))?;
    let proof = inclusion_proof(store, index, Some(checkpoint.size)).await?;
    Ok(EntryProof {
        entry,
        proof,
        checkpoint,
    })
}

/// Writes entries from index `since` on as JSON Lines, one
/// [`LogEntry::to_json_line`] per line, for a SIEM. Returns the count.
pub async fn export<W: Write>(store: &Store, since: u64, mut out: W) -> Result<u64, AuditError> {
    const PAGE: u64 = 1000;
    let mut next = since;
    let mut count = 0u64;
    loop {
        let rows = db::read_entries(store.reader(), next, next.saturating_add(PAGE)).await?;
        let Some(last) = rows.last().map(|r| r.index) else {
            break;
        };
        for row in rows {
            let line = json_line(
                row.index,
                &db::to_hash(row.leaf_hash, "leaf hash")?,
                &row.event,
            );
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            count += 1;
        }
        next = last + 1;
    }
    out.flush()?;
    Ok(count)
}
