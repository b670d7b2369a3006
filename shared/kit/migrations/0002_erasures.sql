-- How far a service's database reflects the erasure log (which lives apart,
-- see shared/kit/erasure-log). Restoring this database from a backup restores
-- these rows too, which is exactly what makes the erasures recorded since
-- then apply again when the service starts.

-- Every entry up to `seq` of the log `log_id` is reflected here.
CREATE TABLE IF NOT EXISTS kit_erasure_watermark (
    service TEXT   PRIMARY KEY,
    log_id  TEXT   NOT NULL,
    seq     BIGINT NOT NULL
);

-- Entries above the watermark already reflected (erased while serving),
-- folded into the watermark at the next start.
CREATE TABLE IF NOT EXISTS kit_erasures_applied (
    service TEXT   NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (service, seq)
);
