-- Audit tables (keyless-audit). Append-only: rows are inserted, never updated
-- or deleted by Keyless; `keyless audit verify` detects anyone who does.

-- One row per event, at its log index (0-based, contiguous).
--   leaf_hash: SHA-256(0x00 || event), the RFC 6962 leaf hash
--   root:      Merkle root of the tree of size idx+1 (chains each entry to
--              every entry before it)
--   event:     the event as canonical JSON (the bytes that are hashed)
CREATE TABLE audit_entries (
    idx INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL,
    root BLOB NOT NULL,
    event TEXT NOT NULL
);

-- One signed tree head per committed batch of entries (group commit): the
-- signature of the checkpoint note body for (tree_size, root), not published.
CREATE TABLE audit_seals (
    tree_size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    key_name TEXT NOT NULL,
    signature BLOB NOT NULL
);

-- Every C2SP checkpoint ever issued, in order (seq 1, 2, ...).
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    tree_size BIGINT NOT NULL,
    root BLOB NOT NULL,
    key_name TEXT NOT NULL,
    note TEXT NOT NULL,
    issued_at BIGINT NOT NULL
);

-- Public keys of every checkpoint key ever used, so old checkpoints verify
-- after rotation. The highest seq is the key in force.
CREATE TABLE audit_keys (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
