-- Where each `sluice reindex` run got to, so an interrupted run resumes after its last confirmed
-- batch instead of publishing everything again. One row per set of arguments (`run_key`): a rerun
-- with the same arguments finds it; `--restart` or a new run after completion replaces it.
CREATE TABLE IF NOT EXISTS reindex_cursors (
    -- The run's arguments in canonical form (`--since` as typed, so `24h` matches itself).
    run_key          TEXT        PRIMARY KEY,
    -- Changes on every new start, so a run that was taken over cannot move the cursor any more.
    run_id           TEXT        NOT NULL,
    -- The filter as resolved when the run started (`since` as an instant), reused on resume.
    collection       TEXT,
    tenant           TEXT,
    source_prefix    TEXT,
    since            TIMESTAMPTZ,
    force            BOOLEAN     NOT NULL,
    -- Last document whose index job the broker confirmed (keyset position, NULL = none yet).
    after_collection TEXT,
    after_doc_id     TEXT,
    published        BIGINT      NOT NULL DEFAULT 0,
    started_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    -- Set when every matching document was published; such a cursor is never resumed.
    completed_at     TIMESTAMPTZ,
    CHECK ((after_collection IS NULL) = (after_doc_id IS NULL))
);
