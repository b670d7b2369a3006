-- Surveys (the surveys part fills this in).
CREATE TABLE feedback_placeholder_b (id TEXT PRIMARY KEY);
