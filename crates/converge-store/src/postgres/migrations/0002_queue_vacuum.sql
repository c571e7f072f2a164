-- Migration 2: `deliveries` is a queue table: every delivery inserts, updates and deletes a row,
-- so it churns through dead row versions far faster than the default autovacuum thresholds
-- (20% of the table) expect. Vacuum it after 1% and let each run do more work, so the lease
-- and ack statements do not wade through dead index entries (design doc, open question 6).
ALTER TABLE deliveries SET (
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_cost_limit = 2000,
  autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE sub_cursors SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);
ALTER TABLE topic_heads SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);
