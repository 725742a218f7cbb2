-- The fleet-wide embedding budget: one token bucket per provider account, shared by every
-- worker on this database (shared/src/embed/limiter/fleet.rs). Levels are as of `refilled_at`
-- (the database clock); the refill since then is computed on every look, so an idle bucket is
-- never written.
CREATE TABLE IF NOT EXISTS embed_budgets (
    key         TEXT             PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    requests    DOUBLE PRECISION NOT NULL,
    refilled_at TIMESTAMPTZ      NOT NULL
);
