-- The whole scene's sounds and captions, as its plan recorded them (the stitch mixes/merges
-- them; chunks render video only): {"cues": key|null, "sounds": [[key, time, gain]...]}.
ALTER TABLE jobs ADD COLUMN plan_media jsonb;
