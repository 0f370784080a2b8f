-- MCP gateway (keyless-gateway).
--
-- Pinned tool definitions: `pinned_hash` is the SHA-256 of name, description
-- and input schema an operator (or first sight of the upstream) approved;
-- `seen_hash` what the upstream offers now. A tool is callable only while
-- `status` is 'approved' and the two agree; a new, changed or vanished tool
-- is 'blocked' with its `reason` until `keyless tools approve NAME`.
CREATE TABLE gateway_tools (
    name TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    pinned_hash TEXT,
    seen_hash TEXT,
    definition TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    first_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    approved_at BIGINT
);

-- Human approvals of tool calls. Bound to the user, the session, the tool
-- and the SHA-256 of the canonical arguments; single use ('used' once a call
-- spent it); 'pending' past `expires_at` counts as denied.
CREATE TABLE gateway_approvals (
    id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    user_email TEXT,
    session_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    tool TEXT NOT NULL,
    tier INTEGER NOT NULL,
    args_sha256 TEXT NOT NULL,
    summary TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    decided_at BIGINT,
    used_at BIGINT
);
CREATE INDEX gateway_approvals_by_user ON gateway_approvals (user_sub, status);

-- Tier-2 approvals cover a session's writes for a while (30 minutes).
CREATE TABLE gateway_session_grants (
    session_id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
