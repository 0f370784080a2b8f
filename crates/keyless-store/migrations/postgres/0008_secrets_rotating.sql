-- keyless-secrets: X509-SVID (cert) auth roles and the rotating-credentials
-- engine. Timestamps are Unix milliseconds. config columns hold the role or
-- credential as JSON (no secret in either).

-- A cert auth role (Vault's `auth/cert/certs/NAME`): which SPIFFE IDs
-- (`allowed_uri_sans`, exact or glob) may log in over mTLS, and what the
-- token gets.
CREATE TABLE secrets_cert_roles (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A rotating credential: the hook (argv, no shell) that applies a new secret
-- at the upstream, the lease TTL and the hook timeout. The secret itself is
-- never stored: each read generates one, hands it to the hook and to the
-- reader, and forgets it. generation counts successful rotations, so a
-- lease's revocation rotates only when its value is still the live one.
CREATE TABLE secrets_rotating (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    generation BIGINT NOT NULL,
    rotated_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
