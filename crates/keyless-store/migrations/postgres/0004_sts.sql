-- Security token service tables (keyless-sts).
-- Timestamps are Unix milliseconds unless the column name says otherwise.
-- Key material is never stored here: key_name names a key held by the key
-- manager.

-- The STS's own access-token signing keys (ES256). kid is the RFC 7638
-- thumbprint; public_key the uncompressed SEC1 point. state: active (signs),
-- retired (still published in the JWKS so tokens it signed verify until they
-- expire).
CREATE TABLE sts_signing_keys (
    generation BIGINT PRIMARY KEY,
    kid TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A user's durable consent for an agent (SPIFFE ID) to act for them with the
-- listed RAR types and scopes (JSON arrays of strings). revoked_at is 0 while
-- the consent is live (sqlx Any decodes NULL poorly across backends).
CREATE TABLE sts_consents (
    id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    agent TEXT NOT NULL,
    rar_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX sts_consents_user_agent ON sts_consents (user_sub, agent);

-- Single-use token ids. The primary key is the atomicity: of two processes
-- consuming the same jti (even on different replicas sharing PostgreSQL),
-- exactly one insert succeeds. Rows can be purged once expires_at (Unix
-- seconds, the token's exp) has passed, since the token is dead by then.
CREATE TABLE sts_consumed_jtis (
    jti TEXT PRIMARY KEY,
    consumed_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sts_consumed_jtis_expires ON sts_consumed_jtis (expires_at);
