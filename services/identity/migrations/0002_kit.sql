-- Identity moves onto the service kit (shared/kit): person records take the
-- kit's shape (the personal units sealed together in `data`, the other
-- fields in `attrs`, declared columns beside them), every table carries the
-- service's name so services can share one database, and idempotency keys
-- move to the kit's shared table (kit_idempotency).
--
-- The sealed format of person records changes with the shape (protobuf of
-- the declared personal units instead of JSON), and no release ever stored
-- records in the old one: the old tables are dropped, not converted, and
-- the data keys that sealed them go with them.

DROP TABLE users;
DROP TABLE contacts;
DROP TABLE evaluation_signups;
DROP TABLE idempotency_keys;
DELETE FROM subject_keys WHERE service = 'identity';

ALTER TABLE tenants RENAME TO identity_tenants;
ALTER TABLE legal_holds RENAME TO identity_legal_holds;

-- Authorized users of a tenant. An email is unique within a tenant.
CREATE TABLE identity_users (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL REFERENCES identity_tenants (id) ON DELETE CASCADE,
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    CONSTRAINT identity_users_email_unique UNIQUE (tenant_id, email_key)
);
CREATE INDEX identity_users_tenant ON identity_users (tenant_id, id);
CREATE INDEX identity_users_email_key ON identity_users (email_key);
CREATE INDEX identity_users_phone_key ON identity_users (phone_key);
CREATE INDEX identity_users_subject ON identity_users (subject_id);
CREATE INDEX identity_users_update_time ON identity_users (tenant_id, update_time);

-- Other individuals' business contact information, held for a tenant.
CREATE TABLE identity_contacts (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL REFERENCES identity_tenants (id) ON DELETE CASCADE,
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX identity_contacts_tenant ON identity_contacts (tenant_id, id);
CREATE INDEX identity_contacts_email_key ON identity_contacts (email_key);
CREATE INDEX identity_contacts_phone_key ON identity_contacts (phone_key);
CREATE INDEX identity_contacts_subject ON identity_contacts (subject_id);
CREATE INDEX identity_contacts_update_time ON identity_contacts (tenant_id, update_time);

-- Evaluation sign-ups, held by the company itself: tenant_id is always ''.
CREATE TABLE identity_evaluation_signups (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX identity_evaluation_signups_email_key ON identity_evaluation_signups (email_key);
CREATE INDEX identity_evaluation_signups_phone_key ON identity_evaluation_signups (phone_key);
CREATE INDEX identity_evaluation_signups_subject ON identity_evaluation_signups (subject_id);
CREATE INDEX identity_evaluation_signups_update_time ON identity_evaluation_signups (tenant_id, update_time);
