-- Web analytics, the same on SQLite and PostgreSQL (the raw events table,
-- partitioned on PostgreSQL, has migrations of its own per backend). Times
-- are microseconds since the Unix epoch; `day` is days since the epoch (UTC). No raw IP address is ever stored:
-- `network` is the truncated address, `visitor` a keyed hash whose key (the
-- day's salt) is destroyed within 48 hours.

CREATE TABLE analytics_sites (
    id                TEXT    PRIMARY KEY,
    domain            TEXT    NOT NULL UNIQUE,
    allowed_origins   TEXT    NOT NULL,  -- JSON array
    kept_query_params TEXT    NOT NULL,  -- JSON array
    ipv4_bytes_kept   INTEGER NOT NULL,
    ipv6_bits_kept    INTEGER NOT NULL,
    raw_retention     BIGINT  NOT NULL,  -- seconds
    request_id        TEXT    UNIQUE,
    create_time       BIGINT  NOT NULL,
    update_time       BIGINT  NOT NULL
);

CREATE TABLE analytics_usage (
    tenant_id TEXT    NOT NULL,
    user_key  TEXT    NOT NULL,  -- keyed blind index of the user's name
    day       INTEGER NOT NULL,
    time      BIGINT  NOT NULL,
    event_id  TEXT,
    action    TEXT    NOT NULL,
    path      TEXT    NOT NULL
);
CREATE UNIQUE INDEX analytics_usage_dedup ON analytics_usage (tenant_id, day, event_id);
CREATE INDEX analytics_usage_user ON analytics_usage (user_key, time);
CREATE INDEX analytics_usage_time ON analytics_usage (time);

CREATE TABLE analytics_salts (
    day         INTEGER PRIMARY KEY,
    salt        TEXT    NOT NULL,
    create_time BIGINT  NOT NULL
);

CREATE TABLE analytics_drops (
    site_id TEXT    NOT NULL,  -- '' for events of unknown sites
    day     INTEGER NOT NULL,
    reason  INTEGER NOT NULL,
    count   BIGINT  NOT NULL,
    PRIMARY KEY (site_id, day, reason)
);

-- k-anonymous daily cells, made once a day has ended; kept after the raw
-- events expire. dimension 0 is the day's total.
CREATE TABLE analytics_daily (
    site_id     TEXT    NOT NULL,
    day         INTEGER NOT NULL,
    dimension   INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    pageviews   BIGINT  NOT NULL,
    visitors    BIGINT  NOT NULL,
    visits      BIGINT  NOT NULL,
    bounces     BIGINT  NOT NULL,
    visit_ms    BIGINT  NOT NULL,
    engaged_ms  BIGINT  NOT NULL,
    engagements BIGINT  NOT NULL,
    PRIMARY KEY (site_id, day, dimension, key)
);

-- Which days are rolled up, and whether the day was too small to keep.
CREATE TABLE analytics_rollups (
    site_id     TEXT    NOT NULL,
    day         INTEGER NOT NULL,
    k           INTEGER NOT NULL,
    suppressed  INTEGER NOT NULL,
    rolled_time BIGINT  NOT NULL,
    PRIMARY KEY (site_id, day)
);

-- Visitors' cookie consents, in the service kit's shape.
CREATE TABLE analytics_consents (
    id             TEXT   PRIMARY KEY,
    tenant_id      TEXT   NOT NULL,
    parent_id      TEXT   NOT NULL,
    subject_id     TEXT   NOT NULL,
    data           TEXT   NOT NULL,
    attrs          TEXT   NOT NULL,
    email_key      TEXT,
    phone_key      TEXT,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL,
    site           TEXT   NOT NULL,
    decision       BIGINT NOT NULL,
    policy_version TEXT   NOT NULL
);
CREATE INDEX analytics_consents_site ON analytics_consents (site, policy_version, decision);
CREATE INDEX analytics_consents_subject ON analytics_consents (subject_id);
CREATE INDEX analytics_consents_update_time ON analytics_consents (update_time);
