-- Raw website events on SQLite: one table (see ../common for the rest).

CREATE TABLE analytics_events (
    site_id       TEXT    NOT NULL,
    day           INTEGER NOT NULL,
    time          BIGINT  NOT NULL,
    event_id      TEXT,
    kind          INTEGER NOT NULL,  -- 1 page view, 2 engagement
    path          TEXT    NOT NULL,
    referrer_host TEXT    NOT NULL,
    browser       TEXT    NOT NULL,
    browser_major TEXT    NOT NULL,
    os            TEXT    NOT NULL,
    device        TEXT    NOT NULL,
    network       TEXT    NOT NULL,
    visitor       TEXT,              -- NULL: counted in aggregate only
    engaged_ms    BIGINT  NOT NULL,
    consent       INTEGER NOT NULL
);
CREATE UNIQUE INDEX analytics_events_dedup ON analytics_events (site_id, day, event_id);
CREATE INDEX analytics_events_day ON analytics_events (site_id, day, visitor, time);
