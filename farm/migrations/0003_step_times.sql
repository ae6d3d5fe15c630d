-- When each step's latest attempt started and finished: overhead figures for operators and bench.
ALTER TABLE steps ADD COLUMN started_at timestamptz, ADD COLUMN finished_at timestamptz;
