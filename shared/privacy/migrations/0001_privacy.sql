-- The privacy kernel's tables, in each service's database: the audit trail,
-- its hash-chain head, and the per-subject data keys. Every row names its
-- service, and statements use IF NOT EXISTS, because services may share one
-- database (each runs these migrations under its own migrations table).

-- One row per access to personal data. Holds no personal value: callers,
-- purposes, opaque resource names and subject references, field names.
CREATE TABLE IF NOT EXISTS audit_events (
    service      TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    time         BIGINT NOT NULL,
    caller       TEXT   NOT NULL,
    on_behalf_of TEXT   NOT NULL,
    purpose      TEXT   NOT NULL,
    action       BIGINT NOT NULL,
    method       TEXT   NOT NULL,
    resource     TEXT   NOT NULL,
    subject_ref  TEXT   NOT NULL,
    fields       TEXT   NOT NULL,
    outcome      BIGINT NOT NULL,
    detail       TEXT   NOT NULL,
    hash         TEXT   NOT NULL,
    PRIMARY KEY (service, seq)
);
CREATE INDEX IF NOT EXISTS audit_events_resource ON audit_events (service, resource, seq);
CREATE INDEX IF NOT EXISTS audit_events_subject ON audit_events (service, subject_ref, seq);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (service, time);

-- The head of each service's chain: the last sequence number and hash, and
-- the anchor (the last event removed by retention), where verification starts.
-- Appenders update this row first, which serialises them on both backends.
CREATE TABLE IF NOT EXISTS audit_chain (
    service     TEXT   PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    anchor_seq  BIGINT NOT NULL,
    anchor_hash TEXT   NOT NULL
);

-- One data key per data subject, wrapped by a master key. Destroying the row
-- makes every copy of the subject's encrypted fields unreadable, backups
-- included (crypto-shredding). `email_index` is a keyed blind index, so the
-- same person gets the same key across records.
CREATE TABLE IF NOT EXISTS subject_keys (
    service       TEXT   NOT NULL,
    id            TEXT   NOT NULL,
    email_index   TEXT,
    wrapped_key   TEXT   NOT NULL,
    master_key_id TEXT   NOT NULL,
    create_time   BIGINT NOT NULL,
    PRIMARY KEY (service, id),
    UNIQUE (service, email_index)
);
CREATE INDEX IF NOT EXISTS subject_keys_master_key ON subject_keys (service, master_key_id);
