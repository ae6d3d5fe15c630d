-- Fair dispatch: every job has an owner (the tenant fair share is computed over), and the
-- dispatcher (farm.dispatch, run by `farm scheduler`) publishes pending plan and chunk steps
-- whose published_at is NULL. A notify on every step status change wakes it at once.

ALTER TABLE jobs ADD COLUMN owner text;
UPDATE jobs SET owner = user_id WHERE owner IS NULL;

-- The owner notion in one place: the job's user (all their keys share one fair share). To
-- share by something else (an organisation, a plan), replace this function; nothing else
-- changes.
CREATE FUNCTION farm_job_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.owner IS NULL THEN
        NEW.owner := NEW.user_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_owner BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION farm_job_owner();
ALTER TABLE jobs ALTER COLUMN owner SET NOT NULL;

-- Steps waiting for the dispatcher, and the in-flight ones it counts against each owner's cap.
CREATE INDEX steps_undispatched ON steps (job_id) WHERE status = 'pending' AND published_at IS NULL;
CREATE INDEX steps_active ON steps (job_id) WHERE status IN ('pending', 'running');
CREATE INDEX jobs_active_owner ON jobs (owner, created_at) WHERE status IN ('queued', 'running');

CREATE FUNCTION farm_dispatch_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('farm_dispatch', '');
    RETURN NULL;
END $$;
CREATE TRIGGER steps_dispatch_notify AFTER INSERT OR UPDATE OF status ON steps
    FOR EACH STATEMENT EXECUTE FUNCTION farm_dispatch_notify();
