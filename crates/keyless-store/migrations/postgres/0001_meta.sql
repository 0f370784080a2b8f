-- Small facts about this deployment (trust domain, schema owner...).
CREATE TABLE keyless_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
