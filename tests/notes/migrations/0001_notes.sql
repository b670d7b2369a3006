-- The test service's notes: a kit record (see shared/kit/src/store.rs),
-- held by the company itself (tenant_id is always '').
CREATE TABLE notes_notes (
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
CREATE INDEX notes_notes_email_key ON notes_notes (email_key);
CREATE INDEX notes_notes_phone_key ON notes_notes (phone_key);
CREATE INDEX notes_notes_subject ON notes_notes (subject_id);
CREATE INDEX notes_notes_update_time ON notes_notes (tenant_id, update_time);
