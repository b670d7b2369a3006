-- The service kit's tables, in each service's database. Every row names its
-- service, and statements use IF NOT EXISTS, because services may share one
-- database (each runs these migrations under its own migrations table).

-- Create requests already served, by idempotency key (AIP-155). A retry with
-- the same key returns `resource`; `request_hash` tells a retry from a
-- different request that reuses the key. Kept one day.
CREATE TABLE IF NOT EXISTS kit_idempotency (
    service      TEXT   NOT NULL,
    scope        TEXT   NOT NULL,
    request_id   TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    resource     TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    PRIMARY KEY (service, scope, request_id)
);
CREATE INDEX IF NOT EXISTS kit_idempotency_resource ON kit_idempotency (service, resource);
CREATE INDEX IF NOT EXISTS kit_idempotency_time ON kit_idempotency (service, create_time);
