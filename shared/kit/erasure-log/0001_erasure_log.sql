-- The erasure log: a record of every erasure, kept apart from the databases
-- it erases (its own SQLite file, or a PostgreSQL database of its own), so
-- that restoring a service's database from a backup does not roll it back.
-- Append-only. It holds no personal value: service names, opaque resource
-- names, random data-key ids, keyed blind indexes, times.

-- What this log is: a random id made when it was created, so a service
-- database can tell a different (new, replaced) log from the one it last
-- applied.
CREATE TABLE IF NOT EXISTS erasure_log_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Per service, the last sequence number given. Every append updates this
-- row first, which serialises a service's appends on both backends: the
-- order of sequence numbers is the order of commits.
CREATE TABLE IF NOT EXISTS erasure_log_head (
    service TEXT   PRIMARY KEY,
    seq     BIGINT NOT NULL
);

-- One row per erasure. `kind` says what `body` (JSON) holds: "erased" (a
-- service erased a subject's records), "completed" (dsr: an erasure request
-- reached its end). `digest` makes a retry of the same erasure one entry.
CREATE TABLE IF NOT EXISTS erasure_log (
    service TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    time    BIGINT NOT NULL,
    kind    TEXT   NOT NULL,
    request TEXT   NOT NULL,
    digest  TEXT   NOT NULL,
    body    TEXT   NOT NULL,
    PRIMARY KEY (service, seq),
    UNIQUE (service, digest)
);
