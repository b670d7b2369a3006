-- SQLite never uses the audit trail's index by time: a listing, with or
-- without a time window, runs in sequence order on the key, and retention
-- walks the trail by sequence too (EXPLAIN QUERY PLAN). Every event paid
-- for it all the same, one more B-tree for the sealer to write. PostgreSQL
-- keeps it. 0001_privacy.sql creates it IF NOT EXISTS for every service
-- sharing the file, and each service runs this after it, so the last word
-- is always this one.
DROP INDEX IF EXISTS audit_events_time;
