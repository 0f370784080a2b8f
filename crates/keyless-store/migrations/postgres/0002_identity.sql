-- Identity tables (keyless-identity).
-- Timestamps are Unix milliseconds. Key material is never stored here: the
-- key_* columns name keys held by the key manager.

-- Registration entries. selectors is a JSON array of "kind:key:value"
-- strings; parent_id is '' when absent.
-- admin is 0 or 1: sqlx Any cannot decode SQLite BOOLEAN columns.
CREATE TABLE identity_entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    x509_ttl_secs BIGINT NOT NULL,
    jwt_ttl_secs BIGINT NOT NULL,
    hint TEXT NOT NULL,
    admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- X.509 CA generations: a self-signed root and the intermediate it signed.
-- state: prepared (in the bundle, not yet signing), active (signs SVIDs),
-- retired (in the bundle until not_after, when every SVID it signed is expired).
CREATE TABLE identity_x509_cas (
    generation BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    root_der BYTEA NOT NULL,
    intermediate_der BYTEA NOT NULL,
    root_key TEXT NOT NULL,
    intermediate_key TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT NOT NULL
);

-- JWT-SVID signing keys (ES256); public_key is the uncompressed SEC1 point.
CREATE TABLE identity_jwt_keys (
    generation BIGINT PRIMARY KEY,
    kid TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    state TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT NOT NULL
);

-- The federation bundle's spiffe_sequence: one row, bumped on every change
-- of the trusted roots or JWT keys.
CREATE TABLE identity_bundle (
    id BIGINT PRIMARY KEY,
    sequence BIGINT NOT NULL
);
INSERT INTO identity_bundle (id, sequence) VALUES (1, 0);
