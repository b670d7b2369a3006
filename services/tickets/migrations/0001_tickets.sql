-- Support tickets and inquiries, in the service kit's shape (see
-- shared/kit/src/store.rs): the personal units of each record (subject,
-- requester, message bodies) sealed together in `data` under the
-- requester's data key, the rest in `attrs`, and the declared columns
-- beside them for queries. Times are microseconds since the Unix epoch.

CREATE TABLE tickets_tickets (
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
    channel     BIGINT NOT NULL,
    kind        BIGINT NOT NULL,
    category    TEXT   NOT NULL,
    priority    BIGINT NOT NULL,
    assignee    TEXT   NOT NULL,
    state       BIGINT NOT NULL,
    sla_first_response_due  BIGINT,
    sla_first_response_time BIGINT,
    sla_resolution_due      BIGINT,
    sla_paused              BIGINT NOT NULL,
    sla_pause_time          BIGINT,
    solve_time  BIGINT,
    -- Retention is counted from here: 24 months by default.
    close_time  BIGINT,
    -- Keyed index of the requester's authorized-user name.
    user_key    TEXT
);
CREATE INDEX tickets_tickets_tenant ON tickets_tickets (tenant_id, id);
CREATE INDEX tickets_tickets_state ON tickets_tickets (state, id);
CREATE INDEX tickets_tickets_category ON tickets_tickets (category, id);
CREATE INDEX tickets_tickets_create_time ON tickets_tickets (create_time);
CREATE INDEX tickets_tickets_email_key ON tickets_tickets (email_key);
CREATE INDEX tickets_tickets_phone_key ON tickets_tickets (phone_key);
CREATE INDEX tickets_tickets_user_key ON tickets_tickets (user_key);
CREATE INDEX tickets_tickets_subject ON tickets_tickets (subject_id);
CREATE INDEX tickets_tickets_close_time ON tickets_tickets (close_time);

-- The thread of each ticket. A message is sealed under its ticket's
-- subject, so erasing the requester takes the whole thread.
CREATE TABLE tickets_messages (
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
    -- Keyed index of the mail's Message-ID, for threading replies.
    thread_key  TEXT   NOT NULL
);
CREATE INDEX tickets_messages_parent ON tickets_messages (parent_id, id);
CREATE INDEX tickets_messages_thread ON tickets_messages (thread_key);
CREATE INDEX tickets_messages_subject ON tickets_messages (subject_id);
