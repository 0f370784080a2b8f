-- Token ids named by audit events (their `jti` detail), written in the same
-- transaction as the entries. The STS answers a token exchange once its
-- decision is queued for the next group commit, and a resource server's
-- single-use consumption then requires the issuance to be durably here:
-- no on-behalf-of token is honoured unless its decision is in the log.
-- Derived data: `keyless audit verify` checks the entries, not this index.
CREATE TABLE audit_jtis (
    jti TEXT NOT NULL,
    kind TEXT NOT NULL,
    idx BIGINT NOT NULL,
    PRIMARY KEY (jti, idx)
);
CREATE INDEX audit_jtis_by_kind ON audit_jtis (jti, kind);
