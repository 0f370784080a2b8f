-- When each token id was named (the event's time, Unix ms): after a restart
-- the STS reloads the on-behalf-of tokens spent recently (`token.consumed`
-- events, kept in memory on SQLite) without reading the whole log. Rows
-- written before this migration keep 0: those tokens were spent through
-- `sts_consumed_jtis`, which the STS reloads as well.
ALTER TABLE audit_jtis ADD COLUMN at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX audit_jtis_by_time ON audit_jtis (kind, at);
