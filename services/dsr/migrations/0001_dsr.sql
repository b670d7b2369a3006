-- Data-subject requests. The request itself is a kit record (see
-- shared/kit/src/store.rs): the requester's details, corrections and words
-- sealed under their key, found again by email. Everything else here holds
-- no personal value: ids, states, times, service and tenant names, and
-- export parts sealed under the request's key. Times are microseconds since
-- the Unix epoch.

CREATE TABLE dsr_requests (
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
    jurisdiction BIGINT NOT NULL,
    state       BIGINT NOT NULL,
    due_time    BIGINT,
    complete_time BIGINT
);
CREATE INDEX dsr_requests_state ON dsr_requests (state, due_time);
CREATE INDEX dsr_requests_email_key ON dsr_requests (email_key);
CREATE INDEX dsr_requests_phone_key ON dsr_requests (phone_key);
CREATE INDEX dsr_requests_subject ON dsr_requests (subject_id);
CREATE INDEX dsr_requests_complete_time ON dsr_requests (complete_time);
CREATE INDEX dsr_requests_update_time ON dsr_requests (update_time);

-- The one live verification code of a request: only its keyed hash.
CREATE TABLE dsr_codes (
    request_id  TEXT   PRIMARY KEY,
    code_key    TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    sends       BIGINT NOT NULL,
    send_time   BIGINT NOT NULL,
    expire_time BIGINT NOT NULL
);

-- How far a request's orchestration is: which phase, the trace it is part
-- of, until when its export may be downloaded.
CREATE TABLE dsr_runs (
    request_id  TEXT   PRIMARY KEY,
    phase       TEXT   NOT NULL,
    traceparent TEXT,
    export_expire_time BIGINT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX dsr_runs_phase ON dsr_runs (phase);

-- Every step of every request, recorded before it runs (claimed with a
-- lease) and after (done or failed, with its result). One row per step:
-- the unique key makes planning idempotent, the lease keeps two replicas
-- from running one step at once.
CREATE TABLE dsr_steps (
    id          TEXT   PRIMARY KEY,
    request_id  TEXT   NOT NULL,
    phase       TEXT   NOT NULL,
    service     TEXT   NOT NULL,
    scope       TEXT   NOT NULL,
    state       TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    next_time   BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    result      TEXT,
    error       TEXT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    UNIQUE (request_id, phase, service, scope)
);
CREATE INDEX dsr_steps_due ON dsr_steps (state, next_time);
CREATE INDEX dsr_steps_request ON dsr_steps (request_id);

-- What happened to a request, for its history. No personal values.
CREATE TABLE dsr_events (
    id          TEXT   PRIMARY KEY,
    request_id  TEXT   NOT NULL,
    time        BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    description TEXT   NOT NULL
);
CREATE INDEX dsr_events_request ON dsr_events (request_id, id);

-- Requests routed to the customer that controls some of the data: the
-- references of its records (names, no values) and its decision.
CREATE TABLE dsr_inbox (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    records     TEXT   NOT NULL,
    state       BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    due_time    BIGINT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    UNIQUE (request_id, tenant_id)
);
CREATE INDEX dsr_inbox_tenant ON dsr_inbox (tenant_id, id);

-- An access request's export, one part per step, sealed under the
-- request's subject key: erasing the request shreds it; deleted when the
-- download expires.
CREATE TABLE dsr_export_parts (
    request_id  TEXT   NOT NULL,
    step_id     TEXT   NOT NULL,
    records     BIGINT NOT NULL,
    sealed      TEXT   NOT NULL,
    PRIMARY KEY (request_id, step_id)
);
