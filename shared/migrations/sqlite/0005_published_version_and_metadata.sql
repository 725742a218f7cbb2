-- The version whose points searchers see (published_version ≤ current_version: a crash between the
-- commit and the publication leaves it behind, and the next run or `sluice verify` catches up), and
-- the job metadata the points carry, so a metadata change of unchanged content reaches them and
-- `sluice reindex` keeps it. Points written before this migration were never staged: published.
ALTER TABLE documents ADD COLUMN published_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE documents ADD COLUMN metadata TEXT;
UPDATE documents SET published_version = current_version WHERE published_version = 0;
