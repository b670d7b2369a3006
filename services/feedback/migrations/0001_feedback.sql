-- Feedback and testimonials (the testimonials part fills this in).
CREATE TABLE feedback_placeholder_a (id TEXT PRIMARY KEY);
