-- Each step's log object (written by the attempt that owns the step), the frames its plan
-- promised (a chunk that renders more fails), and the job's billed time (the time its owning
-- attempts ran, which leaves out queue waits and attempts the farm lost).
ALTER TABLE steps ADD COLUMN log_key text, ADD COLUMN planned_frames integer;
ALTER TABLE jobs ADD COLUMN billed_ms integer;
