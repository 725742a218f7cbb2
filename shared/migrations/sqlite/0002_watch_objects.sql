-- Watch mode's listing state: per watched location, what the last confirmed publish said about each
-- object. A poll compares a fresh listing with these rows; a row is written only after the job for
-- it was confirmed by the broker, so a crash re-publishes rather than forgets.
-- Timestamps are microseconds since the Unix epoch (UTC), as in the documents table.
CREATE TABLE IF NOT EXISTS watch_objects (
    -- The collection the location is watched into: one folder watched into two collections has
    -- two independent states.
    collection    TEXT    NOT NULL,
    -- The location's root URI as opened (`file:///abs/dir`, `s3://bucket/prefix`).
    location      TEXT    NOT NULL,
    -- The object's URI, also its document id.
    uri           TEXT    NOT NULL,
    e_tag         TEXT,
    size          INTEGER NOT NULL,
    last_modified INTEGER NOT NULL,
    -- When a listing last saw the object (refreshed coarsely, see the watch state module).
    last_seen     INTEGER NOT NULL,
    -- Also serves loading one location's rows.
    PRIMARY KEY (collection, location, uri)
);
