-- Published versions of the privacy policy, and tenants' monitoring grants.

-- Append-only: rows are inserted, never updated or deleted. `seq` numbers
-- the versions in the order they take effect (1, 2, ...); its uniqueness
-- serialises concurrent publishes, so two versions can never both claim
-- to come after the same newest one. Only the text's hash is kept.
CREATE TABLE identity_policy_versions (
    version        TEXT   PRIMARY KEY,
    seq            BIGINT NOT NULL,
    effective_time BIGINT NOT NULL,
    text_sha256    TEXT   NOT NULL,
    url            TEXT   NOT NULL,
    publish_time   BIGINT NOT NULL,
    CONSTRAINT identity_policy_versions_seq_unique UNIQUE (seq)
);
CREATE INDEX identity_policy_versions_effective ON identity_policy_versions (effective_time);

-- A tenant's permission to monitor its authorized users' use of the
-- Platform, in the service kit's shape: who granted it (a user's name) is
-- sealed in `data` and found by its keyed index `user_key`; expiry and
-- revocation are columns, for the check every usage batch makes.
CREATE TABLE identity_monitoring_grants (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL REFERENCES identity_tenants (id),
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    -- Retention is counted from here (the tenant's rule for authorized
    -- users, if it sets one).
    expire_time BIGINT,
    revoke_time BIGINT,
    user_key    TEXT
);
CREATE INDEX identity_monitoring_grants_tenant ON identity_monitoring_grants (tenant_id, id);
CREATE INDEX identity_monitoring_grants_user_key ON identity_monitoring_grants (user_key);
CREATE INDEX identity_monitoring_grants_subject ON identity_monitoring_grants (subject_id);
CREATE INDEX identity_monitoring_grants_update_time ON identity_monitoring_grants (tenant_id, update_time);
