-- Identity & contacts: tenants, and the three kinds of person records held
-- here. Times are microseconds since the Unix epoch (BIGINT works the same on
-- SQLite and PostgreSQL through sqlx's Any driver).
--
-- A person record keeps its personal fields in one document column, `data`,
-- and the values it is looked up by in key columns (`email_key`, `phone_key`).
-- That split is deliberate: the personal document is what gets encrypted at
-- rest, and the key columns become keyed blind indexes, without the queries
-- changing shape.

CREATE TABLE tenants (
    id           TEXT   PRIMARY KEY,
    display_name TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

-- Authorized users of a tenant. An email is unique within a tenant.
CREATE TABLE users (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT   NOT NULL,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT users_email_unique UNIQUE (tenant_id, email_key)
);
CREATE INDEX users_phone_key ON users (phone_key);
CREATE INDEX users_email_key ON users (email_key);

-- Other individuals' business contact information, held for a tenant.
CREATE TABLE contacts (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX contacts_email_key ON contacts (email_key);
CREATE INDEX contacts_phone_key ON contacts (phone_key);

-- Evaluation sign-ups, held by the company itself: tenant_id is always ''.
CREATE TABLE evaluation_signups (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT   NOT NULL,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX evaluation_signups_email_key ON evaluation_signups (email_key);
CREATE INDEX evaluation_signups_phone_key ON evaluation_signups (phone_key);

-- Create requests already served, by idempotency key (AIP-155). A retry with
-- the same key returns `resource`; `request_hash` tells a retry from a
-- different request that reuses the key.
CREATE TABLE idempotency_keys (
    scope        TEXT   NOT NULL,
    request_id   TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    resource     TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX idempotency_keys_resource ON idempotency_keys (resource);
