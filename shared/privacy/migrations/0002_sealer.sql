-- Audit events of changes, written in the change's own transaction (so an
-- event still commits with its change or not at all) and waiting for the
-- sealer, which alone gives events their sequence numbers and hashes, in the
-- order their changes committed. Changes so never wait on the chain head.
-- `id` is a UUIDv7: within one sealing batch, events keep the order they
-- were made in. Rows left here by a crash are sealed when the service
-- starts again.
CREATE TABLE IF NOT EXISTS audit_pending (
    service      TEXT   NOT NULL,
    id           TEXT   NOT NULL,
    time         BIGINT NOT NULL,
    caller       TEXT   NOT NULL,
    on_behalf_of TEXT   NOT NULL,
    purpose      TEXT   NOT NULL,
    action       BIGINT NOT NULL,
    method       TEXT   NOT NULL,
    resource     TEXT   NOT NULL,
    subject_ref  TEXT   NOT NULL,
    fields       TEXT   NOT NULL,
    outcome      BIGINT NOT NULL,
    detail       TEXT   NOT NULL,
    PRIMARY KEY (service, id)
);
