-- Prefix listing of sources (deletion sweeps) by `source` alone. The index it replaces was led by
-- `collection`, and where the table had no statistics (autovacuum off, or not yet run) the
-- planner rated it as good as the primary key for finding one document, and used it: every
-- commit then read every row of the collection, so a fleet's cost per document grew with the
-- table. Without `collection` in front, only the primary key can find a document's row.
DROP INDEX IF EXISTS documents_collection_source;
CREATE INDEX IF NOT EXISTS documents_source ON documents (source);
