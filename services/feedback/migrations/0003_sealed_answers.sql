-- Free-text answers sealed at rest (AES-256-GCM), as every other personal
-- text of the suite is.
--
-- The key is the survey's, not the respondent's: a response is unlinked
-- from its respondent when the survey closes, and a key per respondent
-- would be that link again. Each survey gets a data key of its own in the
-- vault (a subject of `subject_keys` with no email), made with its first
-- free-text answer and destroyed with its responses (30 days after close,
-- or when the survey is deleted): every copy of the text, backups
-- included, is unreadable from then on. Before close, a respondent's
-- erasure still deletes their answers, found through the link.

-- The vault subject whose data key seals this survey's free text; NULL
-- until its first free-text answer, and again once its responses are gone.
ALTER TABLE feedback_surveys ADD COLUMN text_key TEXT;

-- The answer's text, sealed under its survey's key with
-- "feedback_survey_answers/{survey_id}/{response_id}/{question}" as
-- associated data. The `text` column of 0002 is no longer written: text
-- an older version left there in plaintext is sealed into this column and
-- cleared when the service starts (and at each sweep, for what replicas
-- not yet upgraded write meanwhile).
ALTER TABLE feedback_survey_answers ADD COLUMN sealed_text TEXT;
-- Finds what is left in plaintext without reading every answer.
CREATE INDEX feedback_survey_answers_plaintext ON feedback_survey_answers (survey_id)
    WHERE text IS NOT NULL;
