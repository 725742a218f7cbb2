-- One row per document and collection: what is indexed (current_version), what was last handed out
-- (next_version), and who may write it now (lease_token / lease_until).
CREATE TABLE IF NOT EXISTS documents (
    collection      TEXT        NOT NULL,
    doc_id          TEXT        NOT NULL,
    -- Byte-wise collation so prefix listing matches byte prefixes and can use the index below.
    source          TEXT        COLLATE "C" NOT NULL,
    tenant          TEXT,
    content_hash    TEXT,
    fingerprint     TEXT,
    current_version BIGINT      NOT NULL DEFAULT 0,
    next_version    BIGINT      NOT NULL DEFAULT 0,
    status          TEXT        NOT NULL
        CHECK (status IN ('processing', 'indexed', 'failed', 'deleted')),
    chunk_count     BIGINT      NOT NULL DEFAULT 0,
    tokens          BIGINT      NOT NULL DEFAULT 0,
    attempts        BIGINT      NOT NULL DEFAULT 0,
    last_error      TEXT,
    lease_token     TEXT,
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    indexed_at      TIMESTAMPTZ,
    PRIMARY KEY (collection, doc_id),
    CHECK (current_version <= next_version)
);

-- `sluice status`: counts by status and the latest failures.
CREATE INDEX IF NOT EXISTS documents_status_updated ON documents (status, updated_at);
-- Prefix listing of a collection's sources (deletion sweeps).
CREATE INDEX IF NOT EXISTS documents_collection_source ON documents (collection, source);
