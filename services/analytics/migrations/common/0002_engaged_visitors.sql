-- Averages of time against active attackers. From this migration on,
-- `visit_ms` and `engaged_ms` of a new cell are sums with each visitor's
-- share capped and Laplace noise added once, when the cell is made, and
-- `engaged_visitors` counts the visitors that sent engagement for the cell.
-- Reports show an average of time only over k or more engaged visitors, so
-- the cells made before (0 here: their exact sums are never shown) keep
-- their counts and lose their averages.
ALTER TABLE analytics_daily ADD COLUMN engaged_visitors BIGINT NOT NULL DEFAULT 0;
