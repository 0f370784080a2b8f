//! Checkpoints as C2SP signed notes (c2sp.org/tlog-checkpoint, c2sp.org/signed-note).
//!
//! A checkpoint is the note body
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <base64 root hash>\n
//! ```
//!
//! followed by a blank line and one signature line per signer,
//! `— <key name> <base64(key id ‖ signature)>\n` (U+2014 em dash). Keys are
//! Ed25519 (signature type 0x01); the 4-byte key id is the start of
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)` and the signature
//! covers the body bytes exactly, final newline included.
//!
//! The same body, signed the same way, is what a batch "seal" signs (see
//! the crate docs): a seal is a checkpoint that is stored compactly and not
//! published.

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyless_store::Signer;

use crate::merkle::Hash;

/// C2SP signature type of Ed25519 keys.
const ED25519_SIG_TYPE: u8 = 0x01;
const EM_DASH: &str = "\u{2014}";

/// Why a note is not a valid checkpoint, or its signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("no signature by key `{0}` on the checkpoint")]
    NoSignature(String),
    #[error("the signature by key `{0}` does not verify")]
    BadSignature(String),
}

/// A checkpoint: a signed statement of the log's size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Position in the sequence of checkpoints issued (1, 2, …).
    pub seq: u64,
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The key that signed it.
    pub key_name: String,
    /// The exact signed note.
    pub note: String,
    /// Unix milliseconds.
    pub issued_at: i64,
}

/// The body lines of a checkpoint note.
pub fn note_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// The C2SP key id of an Ed25519 key.
pub fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519_SIG_TYPE]);
    ctx.update(public_key);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    for (dst, src) in id.iter_mut().zip(d.as_ref()) {
        *dst = *src;
    }
    id
}

/// Signs `body` and returns the whole note.
pub fn sign_note(signer: &dyn Signer, body: &str) -> Result<String, keyless_store::StoreError> {
    let sig = signer.sign(body.as_bytes())?;
    let mut blob = key_id(signer.name(), signer.public_key()).to_vec();
    blob.extend_from_slice(&sig);
    Ok(format!(
        "{body}\n{EM_DASH} {} {}\n",
        signer.name(),
        B64.encode(blob)
    ))
}

/// Checks a raw Ed25519 signature over `body`.
pub fn verify_signature(public_key: &[u8], body: &str, signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(body.as_bytes(), signature)
        .is_ok()
}

/// A checkpoint note split into its parts (signatures not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The signed text.
    pub body: String,
    /// (key name, key id, signature) per signature line.
    pub signatures: Vec<(String, [u8; 4], Vec<u8>)>,
}

// === impl ParsedCheckpoint ===

impl ParsedCheckpoint {
    /// Parses a checkpoint note.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        let malformed = NoteError::Malformed;
        if note.contains('\r') {
            return Err(malformed("carriage return"));
        }
        let (body_lines, sig_block) = note
            .split_once("\n\n")
            .ok_or(malformed("no blank line before the signatures"))?;
        let body = format!("{body_lines}\n");
        let mut lines = body_lines.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(malformed("empty origin"))?;
        let size_text = lines.next().ok_or(malformed("no tree size"))?;
        let canonical_size = size_text.bytes().all(|b| b.is_ascii_digit())
            && !size_text.is_empty()
            && (size_text == "0" || !size_text.starts_with('0'));
        if !canonical_size {
            return Err(malformed("tree size is not a canonical decimal"));
        }
        let size: u64 = size_text
            .parse()
            .map_err(|_| malformed("tree size too large"))?;
        let root_bytes = B64
            .decode(lines.next().ok_or(malformed("no root hash"))?)
            .map_err(|_| malformed("root hash is not base64"))?;
        let root: Hash = root_bytes
            .try_into()
            .map_err(|_| malformed("root hash is not 32 bytes"))?;
        // Extension lines may follow; they are signed but not interpreted.
        let sig_text = sig_block
            .strip_suffix('\n')
            .ok_or(malformed("signature block does not end with a newline"))?;
        let mut signatures = Vec::new();
        for line in sig_text.split('\n') {
            let rest = line
                .strip_prefix(EM_DASH)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or(malformed("signature line does not start with an em dash"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or(malformed("signature line has no key name"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| malformed("signature is not base64"))?;
            let (id, sig) = blob
                .split_first_chunk::<4>()
                .ok_or(malformed("signature too short"))?;
            signatures.push((name.to_owned(), *id, sig.to_vec()));
        }
        if signatures.is_empty() {
            return Err(malformed("no signature"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            body,
            signatures,
        })
    }

    /// Checks the signature of key `name` with `public_key`.
    pub fn verify(&self, name: &str, public_key: &[u8]) -> Result<(), NoteError> {
        let id = key_id(name, public_key);
        let (_, _, sig) = self
            .signatures
            .iter()
            .find(|(n, i, _)| n == name && *i == id)
            .ok_or_else(|| NoteError::NoSignature(name.to_owned()))?;
        if verify_signature(public_key, &self.body, sig) {
            Ok(())
        } else {
            Err(NoteError::BadSignature(name.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyless_store::{FileKeyManager, KeyAlgorithm, KeyManager};

    #[tokio::test]
    async fn signed_note_round_trips_and_rejects_edits() {
        let tmp = tempfile::tempdir().unwrap();
        let km = FileKeyManager::open(&tmp.path().join("k")).unwrap();
        let signer = km
            .generate("audit-checkpoint-1", KeyAlgorithm::Ed25519)
            .await
            .unwrap();
        let root = [7u8; 32];
        let body = note_body("example.org/keyless-audit", 42, &root);
        let note = sign_note(signer.as_ref(), &body).unwrap();
        assert!(note.starts_with("example.org/keyless-audit\n42\nBwcH"));
        assert!(note.contains("\n\n\u{2014} audit-checkpoint-1 "));
        let parsed = ParsedCheckpoint::parse(&note).unwrap();
        assert_eq!((parsed.size, parsed.root), (42, root));
        parsed
            .verify("audit-checkpoint-1", signer.public_key())
            .unwrap();
        let forged = note.replace("\n42\n", "\n43\n");
        let forged = ParsedCheckpoint::parse(&forged).unwrap();
        assert_eq!(
            forged.verify("audit-checkpoint-1", signer.public_key()),
            Err(NoteError::BadSignature("audit-checkpoint-1".into()))
        );
        assert!(ParsedCheckpoint::parse("o\n042\nAA==\n\n\u{2014} k AAAA\n").is_err());
    }
}
