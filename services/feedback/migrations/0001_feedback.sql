-- Feedback and its publication-consent history, in the service kit's shape
-- (see shared/kit/src/store.rs): the personal units of each record (the
-- author, the text) sealed together in `data` under the author's data key,
-- the rest in `attrs`, and the declared columns beside them for queries.
-- Times are microseconds since the Unix epoch.

CREATE TABLE feedback_feedback (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    rating      BIGINT NOT NULL,
    source      TEXT   NOT NULL,
    -- Testimonials are the rows whose consent is given (1).
    publication_state BIGINT NOT NULL,
    -- Keyed index of the author's authorized-user name.
    user_key    TEXT
);
CREATE INDEX feedback_feedback_tenant ON feedback_feedback (tenant_id, id);
CREATE INDEX feedback_feedback_publication ON feedback_feedback (publication_state, id);
CREATE INDEX feedback_feedback_email_key ON feedback_feedback (email_key);
CREATE INDEX feedback_feedback_phone_key ON feedback_feedback (phone_key);
CREATE INDEX feedback_feedback_user_key ON feedback_feedback (user_key);
CREATE INDEX feedback_feedback_subject ON feedback_feedback (subject_id);
CREATE INDEX feedback_feedback_update_time ON feedback_feedback (update_time);

-- Every give, withdrawal and voiding of a feedback's publication consent,
-- sealed under its feedback's subject: erasing the author takes them.
CREATE TABLE feedback_consent_events (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    parent_id   TEXT   NOT NULL,
    subject_id  TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    attrs       TEXT   NOT NULL,
    email_key   TEXT,
    phone_key   TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    kind        BIGINT NOT NULL,
    policy_version TEXT NOT NULL
);
CREATE INDEX feedback_consent_events_parent ON feedback_consent_events (parent_id, id);
CREATE INDEX feedback_consent_events_subject ON feedback_consent_events (subject_id);
