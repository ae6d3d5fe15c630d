-- The scheduler's webhook pump scans recently ended jobs.
CREATE INDEX jobs_completed_at ON jobs (completed_at) WHERE completed_at IS NOT NULL;
