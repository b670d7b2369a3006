-- Intake limits: how many code mails a mailbox was sent, and how many wrong
-- codes were tried for it, across all its requests. A mailbox is a keyed
-- blind index of the requester's address (never the address), kept one
-- day: the retention sweep deletes rows older than that.
CREATE TABLE dsr_mailbox_events (
    mailbox_key TEXT   NOT NULL,
    kind        TEXT   NOT NULL, -- 'code' (a code mailed) or 'wrong_code'
    time        BIGINT NOT NULL
);
CREATE INDEX dsr_mailbox_events_key ON dsr_mailbox_events (mailbox_key, kind, time);
CREATE INDEX dsr_mailbox_events_time ON dsr_mailbox_events (time);

-- The mailbox of each live code, so the open, unverified requests of one
-- address can be counted. NULL for codes written before this release.
ALTER TABLE dsr_codes ADD COLUMN mailbox_key TEXT;
CREATE INDEX dsr_codes_mailbox ON dsr_codes (mailbox_key);

-- The company's part of a request done, while customers still decide
-- about theirs: from then on its export can be downloaded.
ALTER TABLE dsr_runs ADD COLUMN company_done_time BIGINT;

-- The customer's name as the requester is told it (its display name when
-- the request was routed); NULL for items routed before this release.
ALTER TABLE dsr_inbox ADD COLUMN tenant_name TEXT;

-- Reminders of an item the customer has not instructed, and its
-- escalation to the privacy team once overdue.
ALTER TABLE dsr_inbox ADD COLUMN reminders BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dsr_inbox ADD COLUMN next_reminder_time BIGINT;
ALTER TABLE dsr_inbox ADD COLUMN escalate_time BIGINT;
