-- keyless-secrets: dynamic PostgreSQL credentials.
-- Timestamps are Unix milliseconds, durations milliseconds. List columns hold
-- JSON arrays of strings.

-- A managed PostgreSQL server. connection_url never contains a password: the
-- managing role's password is rotated by Keyless at configuration time and
-- kept only here, sealed (AES-256-GCM under the key manager's KEK kek_name,
-- the connection name as associated data), so no human knows it.
CREATE TABLE secrets_db_connections (
    name TEXT PRIMARY KEY,
    connection_url TEXT NOT NULL,
    username TEXT NOT NULL,
    kek_name TEXT NOT NULL,
    sealed_password BYTEA NOT NULL,
    allowed_roles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_at BIGINT NOT NULL
);

-- A role issuing credentials on connection db_name. Statements are templates
-- with {{name}}, {{password}} and {{expiration}} (Vault's syntax), validated
-- when written.
CREATE TABLE secrets_db_roles (
    name TEXT PRIMARY KEY,
    db_name TEXT NOT NULL,
    creation_statements TEXT NOT NULL,
    revocation_statements TEXT NOT NULL,
    renew_statements TEXT NOT NULL,
    default_ttl_ms BIGINT NOT NULL,
    max_ttl_ms BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
