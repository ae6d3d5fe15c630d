-- A user over their concurrency limit gets a queued job anyway: it is held (its plan step not
-- yet published) until one of their running jobs ends. held_limit is the limit it waits under.
ALTER TABLE jobs ADD COLUMN held_limit integer;
CREATE INDEX jobs_held ON jobs (user_id, created_at, id) WHERE held_limit IS NOT NULL;
