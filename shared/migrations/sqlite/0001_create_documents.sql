-- One row per document and collection: what is indexed (current_version), what was last handed out
-- (next_version), and who may write it now (lease_token / lease_until).
-- Timestamps are microseconds since the Unix epoch (UTC) so `lease_until > now` is an integer
-- comparison; text timestamps with variable fractional digits would not sort correctly.
CREATE TABLE IF NOT EXISTS documents (
    collection      TEXT    NOT NULL,
    doc_id          TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    tenant          TEXT,
    content_hash    TEXT,
    fingerprint     TEXT,
    current_version INTEGER NOT NULL DEFAULT 0,
    next_version    INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL
        CHECK (status IN ('processing', 'indexed', 'failed', 'deleted')),
    chunk_count     INTEGER NOT NULL DEFAULT 0,
    tokens          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    lease_token     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    indexed_at      INTEGER,
    PRIMARY KEY (collection, doc_id),
    CHECK (current_version <= next_version)
);

-- `sluice status`: counts by status and the latest failures.
CREATE INDEX IF NOT EXISTS documents_status_updated ON documents (status, updated_at);
-- Prefix listing of a collection's sources (deletion sweeps).
CREATE INDEX IF NOT EXISTS documents_collection_source ON documents (collection, source);
