-- The random seed a job's scene runs with (manim's config.seed); 0 unless the request chose one.
ALTER TABLE jobs ADD COLUMN seed bigint NOT NULL DEFAULT 0;
