-- keyless-secrets: tokens, roles, policies, KV v2, leases, wrapping.

-- Secrets core (tokens, roles, ACL policies, leases, wrapping).

-- ACL policies, Vault style (path rules with capabilities); body as written.
CREATE TABLE secrets_policies (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- JWT auth roles; config is the role's JSON (bound audiences, subject, claims, TTLs...).
CREATE TABLE secrets_jwt_roles (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Service tokens: only the SHA-256 of the token is stored (hex); the accessor
-- names the token without being able to use it. policies/meta are JSON.
CREATE TABLE secrets_tokens (
    token_hash TEXT PRIMARY KEY,
    accessor TEXT NOT NULL UNIQUE,
    policies TEXT NOT NULL,
    meta TEXT NOT NULL,
    identity TEXT NOT NULL,
    role TEXT NOT NULL,
    ttl_ms BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    num_uses BIGINT NOT NULL
);
CREATE INDEX secrets_tokens_expires ON secrets_tokens (expires_at);
CREATE INDEX secrets_tokens_identity ON secrets_tokens (identity);

-- JWT ids consumed by single-use logins, kept until the JWT itself expires.
CREATE TABLE secrets_used_jti (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Leases of dynamic secrets. internal is what revocation needs (JSON, never
-- returned to clients). revoking = 1 once revocation was asked for or the
-- lease expired; failed revocations keep the row and are retried at
-- next_attempt_at with backoff until they succeed.
CREATE TABLE secrets_leases (
    lease_id TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    internal TEXT NOT NULL,
    identity TEXT NOT NULL,
    token_accessor TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    ttl_ms BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    renewable BIGINT NOT NULL,
    revoking BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    -- Until when one revoker (a request, revoke-prefix, the expiry worker,
    -- a replica) holds the lease: two revokers of one credential would
    -- race in the engine. 0 = free; a dead holder's claim simply expires.
    claimed_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX secrets_leases_expires ON secrets_leases (expires_at);
CREATE INDEX secrets_leases_identity ON secrets_leases (identity);
CREATE INDEX secrets_leases_accessor ON secrets_leases (token_accessor);

-- Response-wrapping tokens (single use): the wrapped response is sealed by
-- the key manager, bound to the token hash as associated data.
CREATE TABLE secrets_wrapping (
    token_hash TEXT PRIMARY KEY,
    accessor TEXT NOT NULL UNIQUE,
    creation_path TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    sealed BYTEA NOT NULL
);
CREATE INDEX secrets_wrapping_expires ON secrets_wrapping (expires_at);

-- KV v2 (keyless-secrets kv.rs). One row per secret path with its data key
-- (DEK, AES-256) wrapped by the key-encryption key `kek_name` held by the
-- key manager, and one row per version with the value sealed under the DEK
-- (associated data: path and version). No plaintext secret is ever stored.
-- `max_versions` 0 means the default (10); `delete_version_after_ms` 0
-- means never; `custom_metadata` is JSON (not secret, like Vault's).
CREATE TABLE kv_metadata (
    path TEXT PRIMARY KEY,
    current_version BIGINT NOT NULL,
    oldest_version BIGINT NOT NULL,
    max_versions BIGINT NOT NULL,
    cas_required BIGINT NOT NULL,
    delete_version_after_ms BIGINT NOT NULL,
    custom_metadata TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    kek_name TEXT NOT NULL,
    wrapped_dek BYTEA NOT NULL
);
CREATE INDEX kv_metadata_kek ON kv_metadata (kek_name);
-- `deletion_time` 0 = live; in the past = soft-deleted; in the future =
-- scheduled by delete_version_after. A destroyed version has no ciphertext.
CREATE TABLE kv_versions (
    path TEXT NOT NULL REFERENCES kv_metadata (path) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    deletion_time BIGINT NOT NULL,
    destroyed BIGINT NOT NULL,
    ciphertext BYTEA,
    PRIMARY KEY (path, version)
);
