-- Surveys. Runs on SQLite and PostgreSQL alike (sqlx's Any driver): ids
-- and documents as TEXT, times as BIGINT microseconds since the epoch.
--
-- Who was invited and what was answered are kept apart. An invitation is
-- a kit record (the person sealed); its link (token hash, segment values
-- until the answer, the response once given) lives only while the survey
-- is open. A response carries a random id, the survey and segment values:
-- no person, no time, no order.

-- The surveys themselves: nothing personal. `body` is the survey's
-- protobuf (title, description, questions, k), hex-encoded.
CREATE TABLE feedback_surveys (
    id             TEXT   PRIMARY KEY,
    state          BIGINT NOT NULL,
    body           TEXT   NOT NULL,
    create_time    BIGINT NOT NULL,
    update_time    BIGINT NOT NULL,
    open_time      BIGINT,
    -- The responses are deleted 30 days after this.
    close_time     BIGINT,
    -- 1 once the responses are deleted: results come from the aggregates.
    responses_gone BIGINT NOT NULL
);
CREATE INDEX feedback_surveys_state ON feedback_surveys (state, id);
CREATE INDEX feedback_surveys_close_time ON feedback_surveys (close_time);

-- Invitations, in the service kit's shape (see shared/kit/src/store.rs):
-- the respondent's email or user sealed in `data`.
CREATE TABLE feedback_survey_invitations (
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
    -- Keyed index of the respondent's authorized-user name.
    user_key    TEXT
);
CREATE INDEX feedback_survey_invitations_parent ON feedback_survey_invitations (parent_id, id);
CREATE INDEX feedback_survey_invitations_email_key ON feedback_survey_invitations (email_key);
CREATE INDEX feedback_survey_invitations_user_key ON feedback_survey_invitations (user_key);
CREATE INDEX feedback_survey_invitations_subject ON feedback_survey_invitations (subject_id);

-- The link of an invitation to its response, only while the survey is
-- open (for reminders and erasure); deleted, all of a survey's at once,
-- when it closes. No times: nothing here orders the responses.
CREATE TABLE feedback_survey_links (
    invitation_id TEXT PRIMARY KEY,
    survey_id     TEXT NOT NULL,
    -- SHA-256 of the single-use token; the token itself is never stored.
    token_hash    TEXT NOT NULL UNIQUE,
    -- The respondent's segment values (JSON pairs), until they answer.
    segments      TEXT NOT NULL,
    -- Their response, once given.
    response_id   TEXT
);
CREATE INDEX feedback_survey_links_survey ON feedback_survey_links (survey_id);

-- Responses: a random id (not time-ordered), the survey, segment values
-- (JSON pairs). Deleted 30 days after the survey closes.
CREATE TABLE feedback_survey_responses (
    id        TEXT PRIMARY KEY,
    survey_id TEXT NOT NULL,
    segments  TEXT NOT NULL
);
CREATE INDEX feedback_survey_responses_survey ON feedback_survey_responses (survey_id, id);

-- The answers of each response: a score, the options chosen (a JSON
-- list), or free text (redacted of sensitive data before it is stored).
CREATE TABLE feedback_survey_answers (
    response_id TEXT   NOT NULL,
    survey_id   TEXT   NOT NULL,
    question    TEXT   NOT NULL,
    score       BIGINT,
    choices     TEXT,
    text        TEXT,
    PRIMARY KEY (response_id, question)
);
CREATE INDEX feedback_survey_answers_survey ON feedback_survey_answers (survey_id);

-- The sets of respondents served by GetSurveyResults (sorted response ids),
-- for the differencing guard; deleted with the responses.
CREATE TABLE feedback_survey_served (
    survey_id    TEXT NOT NULL,
    members_hash TEXT NOT NULL,
    members      TEXT NOT NULL,
    PRIMARY KEY (survey_id, members_hash)
);

-- Aggregates made when a survey closes, kept after its responses: the
-- total (segment_by '') and each breakdown that passed the guard, as
-- hex-encoded custodian.feedback.v1.SurveyResults, suppression applied.
CREATE TABLE feedback_survey_aggregates (
    survey_id  TEXT NOT NULL,
    segment_by TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (survey_id, segment_by)
);
