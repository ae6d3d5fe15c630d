-- A plan that renders while it plans skips the plays its owner's cache holds: it needs, per
-- scope and variant (size, fps, renderer, seed, environment: farm.anim_cache.variant), the
-- manim hashes of the movies held. Rows indexed before this migration have none (never
-- skipped by a plan; still found by key).
ALTER TABLE anim_cache ADD COLUMN variant text;
ALTER TABLE anim_cache ADD COLUMN play_hash text;
CREATE INDEX anim_cache_variant ON anim_cache (scope, variant, last_used_at DESC)
    WHERE variant IS NOT NULL;
