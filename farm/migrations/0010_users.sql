-- Users (accounts) own API keys, jobs and credits, as on Kodisc: a user may hold several keys
-- that see the same jobs and spend the same balance. Every existing key becomes its own user.

CREATE TABLE users (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    -- Credits granted afresh every calendar month (UTC); unspent ones do not carry over.
    free_allowance   numeric(12, 2) NOT NULL DEFAULT 0 CHECK (free_allowance >= 0),
    -- Unfinished jobs that render at once; more wait queued (NULL: the farm's default).
    max_active_jobs  integer CHECK (max_active_jobs > 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- key_<16 hex> owns usr_<the same 16 hex>: deterministic, so re-running is harmless.
INSERT INTO users (id, name, created_at)
SELECT 'usr_' || substr(id, 5), name, created_at FROM api_keys;

ALTER TABLE api_keys ADD COLUMN user_id text REFERENCES users(id);
UPDATE api_keys SET user_id = 'usr_' || substr(id, 5);
ALTER TABLE api_keys ALTER COLUMN user_id SET NOT NULL;
CREATE INDEX api_keys_user ON api_keys (user_id);

-- The job's owner: scopes reads (another user's job is 404) and the result cache.
ALTER TABLE jobs ADD COLUMN user_id text REFERENCES users(id);
UPDATE jobs j SET user_id = k.user_id FROM api_keys k WHERE k.id = j.key_id;
ALTER TABLE jobs ALTER COLUMN user_id SET NOT NULL;
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC, id DESC);

-- Credits belong to the user; key_id stays to tell which key spent them.
-- pool: 'paid' (granted, never expires) or 'free' (this month's allowance; period = month start).
ALTER TABLE credit_ledger
    ADD COLUMN user_id text REFERENCES users(id),
    ADD COLUMN pool text NOT NULL DEFAULT 'paid' CHECK (pool IN ('paid', 'free')),
    ADD COLUMN period date;
UPDATE credit_ledger l SET user_id = k.user_id FROM api_keys k WHERE k.id = l.key_id;
ALTER TABLE credit_ledger ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN key_id DROP NOT NULL;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_free_period
    CHECK ((pool = 'free') = (period IS NOT NULL));
CREATE INDEX credit_ledger_user ON credit_ledger (user_id, pool, period);
-- A job is reserved, settled and refunded at most once per pool.
DROP INDEX credit_ledger_once;
CREATE UNIQUE INDEX credit_ledger_once ON credit_ledger (job_id, kind, pool) WHERE job_id IS NOT NULL;
