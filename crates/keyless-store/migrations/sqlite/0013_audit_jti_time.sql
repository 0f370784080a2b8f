-- When each token id was named (the event's time, Unix ms): after a restart
-- the STS reloads the on-behalf-of tokens spent recently (`token.consumed`
-- events, kept in memory on SQLite) without reading the whole log. Rows
-- written before this migration keep 0: those tokens were spent through
-- `sts_consumed_jtis`, which the STS reloads as well.
--
-- Rebuilt WITHOUT ROWID on one key (jti, kind, idx): the lookup by token id
-- and kind is a prefix of it, so every group commit updates one b-tree for
-- the token ids instead of a table and two indexes.
CREATE TABLE audit_jtis_new (
    jti TEXT NOT NULL,
    kind TEXT NOT NULL,
    idx BIGINT NOT NULL,
    at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (jti, kind, idx)
) WITHOUT ROWID;
INSERT INTO audit_jtis_new (jti, kind, idx) SELECT jti, kind, idx FROM audit_jtis;
DROP TABLE audit_jtis;
ALTER TABLE audit_jtis_new RENAME TO audit_jtis;
CREATE INDEX audit_jtis_by_time ON audit_jtis (kind, at);
