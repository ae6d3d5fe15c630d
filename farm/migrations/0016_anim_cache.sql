-- The shared animation cache: one rendered play's movie per (owner scope, key), in S3 under
-- anim-cache/<scope>/<key>.mp4. Rows are the index: lookups, hit times, eviction by age/size.
CREATE TABLE anim_cache (
    scope        text NOT NULL,
    key          text NOT NULL,
    object_key   text NOT NULL,
    bytes        bigint NOT NULL,
    frames       integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX anim_cache_last_used ON anim_cache (last_used_at);
-- Per job, each play's cache key and frames (what the stitch assembles), from its plan.
ALTER TABLE jobs ADD COLUMN plays jsonb;
