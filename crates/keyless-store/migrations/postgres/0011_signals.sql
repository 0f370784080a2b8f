-- Shared Signals and the risk ladder (keyless-signals).
--
-- Transmitter streams (SSF 1.0 §8.1.1). `config` is the stream
-- configuration as last written (JSON, without status); `owner` the client
-- that created it (only it may read or change the stream).
CREATE TABLE ssf_streams (
    stream_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Subjects added to (included = 1) or removed from (included = 0) a
-- stream; `subject` is the canonical JSON of the subject identifier.
CREATE TABLE ssf_stream_subjects (
    stream_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    included INTEGER NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (stream_id, subject)
);

-- Outgoing SETs, one row per stream and SET, delivered in `seq` order per
-- stream. Pending while `delivered_at` = 0: a push was not accepted yet
-- (`attempts`, `next_attempt_at` drive the exponential backoff), or a poll
-- receiver has not acknowledged it. `set_err` holds a receiver's setErrs entry.
CREATE TABLE ssf_outbox (
    seq BIGSERIAL PRIMARY KEY,
    stream_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    event_type TEXT NOT NULL,
    set_jwt TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    delivered_at BIGINT NOT NULL,
    set_err TEXT,
    UNIQUE (stream_id, jti)
);
CREATE INDEX ssf_outbox_pending ON ssf_outbox (stream_id, delivered_at, seq);

-- SETs this receiver accepted: `jti` is single use per issuer.
CREATE TABLE ssf_received (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    event_type TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (iss, jti)
);

-- Transmitters this receiver listens to (`keyless signals subscribe URL`).
CREATE TABLE ssf_subscriptions (
    issuer TEXT PRIMARY KEY,
    metadata TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    delivery TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Risk ladder state per session: the decayed anomaly score as of
-- `updated_at`, and the highest level reached (0 = none, 1..5 = W1..W5).
CREATE TABLE risk_sessions (
    session_id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    level INTEGER NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What each user normally does, learned from their own history: per
-- `kind` (amount:<currency>, destination, tool, ...) and `key`, how
-- often and, for amounts, the running sum and largest value.
CREATE TABLE risk_baselines (
    user_sub TEXT NOT NULL,
    kind TEXT NOT NULL,
    item TEXT NOT NULL,
    count BIGINT NOT NULL,
    total DOUBLE PRECISION NOT NULL,
    largest DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_sub, kind, item)
);

-- Subjects the ladder restricted (W4: no new tokens) and the human review
-- items it opened; `resolved_at` = 0 while open.
CREATE TABLE risk_reviews (
    id TEXT PRIMARY KEY,
    user_sub TEXT NOT NULL,
    session_id TEXT NOT NULL,
    level INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT NOT NULL
);
CREATE INDEX risk_reviews_open ON risk_reviews (user_sub, resolved_at);
