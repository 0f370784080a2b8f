-- Sign-in tables of the security token service (keyless-sts): users,
-- sessions, authorization codes, refresh-token families and the access
-- tokens issued to them. Timestamps are Unix milliseconds; "0" means "not
-- set" (sqlx Any decodes NULL poorly across backends); booleans are 0/1.
-- Secrets (session cookies, codes, refresh tokens) are stored as SHA-256
-- hashes only: a database dump signs nobody in.

-- id is the user's stable subject (`sub`); email is unique and lowercased.
-- password_hash is an Argon2id PHC string. failed_attempts/locked_until
-- persist the lockout of password guessing across restarts and replicas.
CREATE TABLE sts_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled BIGINT NOT NULL,
    failed_attempts BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);

-- A browser session. sid goes into tokens (OIDC `sid`); the cookie carries a
-- different secret (cookie_hash) so that holding a token never lets anyone
-- forge the session cookie. auth_time is in Unix seconds (OIDC).
CREATE TABLE sts_sessions (
    sid TEXT PRIMARY KEY,
    cookie_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    auth_time BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX sts_sessions_user ON sts_sessions (user_id);

-- Single-use authorization codes (60 s). used_at is set atomically on first
-- redemption; family names the refresh family a redemption started, so that
-- a replayed code can revoke what it issued.
CREATE TABLE sts_auth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    nonce TEXT NOT NULL,
    scope TEXT NOT NULL,
    authorization_details TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL,
    family TEXT NOT NULL
);

-- A refresh-token family: one sign-in of one client. Revoking it revokes
-- every refresh token and access token it issued.
CREATE TABLE sts_token_families (
    family TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX sts_token_families_sid ON sts_token_families (sid);

-- Refresh tokens; used_at is set when rotated. Presenting a rotated token
-- again is reuse: the family is revoked.
CREATE TABLE sts_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL
);
CREATE INDEX sts_refresh_tokens_family ON sts_refresh_tokens (family);

-- Access tokens by jti: those issued to a family (so revoking the family
-- revokes them) and any token revoked one by one (RFC 7009). expires_at is
-- Unix seconds (the token's exp): rows can be purged after it.
CREATE TABLE sts_access_tokens (
    jti TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX sts_access_tokens_family ON sts_access_tokens (family);
