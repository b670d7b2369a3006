-- Identity & contacts: tenants, the three kinds of person records held here,
-- idempotency keys and legal holds. Times are microseconds since the Unix
-- epoch (BIGINT works the same on SQLite and PostgreSQL through sqlx's Any
-- driver).
--
-- A person record keeps its personal fields in one document, `data`, sealed
-- with AES-256-GCM under its subject's data key (`subject_id` names the key
-- in the privacy kernel's `subject_keys`). It is found by keyed blind
-- indexes of its normalised email and phone (`email_key`, `phone_key`),
-- never by plaintext: nothing personal is readable in this database without
-- the master key.

CREATE TABLE tenants (
    id           TEXT   PRIMARY KEY,
    display_name TEXT   NOT NULL,
    -- The tenant's own retention rules: JSON [{"category": 2, "seconds": 86400}].
    retention    TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);

-- Authorized users of a tenant. An email is unique within a tenant.
CREATE TABLE users (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT   NOT NULL,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT users_email_unique UNIQUE (tenant_id, email_key)
);
CREATE INDEX users_email_key ON users (email_key);
CREATE INDEX users_phone_key ON users (phone_key);
CREATE INDEX users_subject ON users (subject_id);
CREATE INDEX users_update_time ON users (tenant_id, update_time);

-- Other individuals' business contact information, held for a tenant.
CREATE TABLE contacts (
    tenant_id   TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
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
CREATE INDEX contacts_subject ON contacts (subject_id);
CREATE INDEX contacts_update_time ON contacts (tenant_id, update_time);

-- Evaluation sign-ups, held by the company itself: tenant_id is always ''.
CREATE TABLE evaluation_signups (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
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
CREATE INDEX evaluation_signups_subject ON evaluation_signups (subject_id);
CREATE INDEX evaluation_signups_update_time ON evaluation_signups (tenant_id, update_time);

-- Create requests already served, by idempotency key (AIP-155). A retry with
-- the same key returns `resource`; `request_hash` tells a retry from a
-- different request that reuses the key. Kept one day.
CREATE TABLE idempotency_keys (
    scope        TEXT   NOT NULL,
    request_id   TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    resource     TEXT   NOT NULL,
    create_time  BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX idempotency_keys_resource ON idempotency_keys (resource);
CREATE INDEX idempotency_keys_time ON idempotency_keys (create_time);

-- Legal holds pause retention for a tenant or a subject (by blind index).
CREATE TABLE legal_holds (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT,
    email_index TEXT,
    phone_index TEXT,
    reason      TEXT   NOT NULL,
    create_time BIGINT NOT NULL
);
