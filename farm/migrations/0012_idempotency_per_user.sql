-- Idempotency keys belong to the user, like jobs and credits (Kodisc scopes everything per
-- user): a retry through another key of the same user replays the same job, and another user's
-- identical Idempotency-Key is independent. key_id stays: the key that first used it.
ALTER TABLE idempotency_keys ADD COLUMN user_id text REFERENCES users(id);
UPDATE idempotency_keys i SET user_id = k.user_id FROM api_keys k WHERE k.id = i.key_id;
-- Keys of one user that used the same Idempotency-Key before this: the newest use wins.
DELETE FROM idempotency_keys i USING idempotency_keys newer
 WHERE newer.user_id = i.user_id AND newer.idempotency_key = i.idempotency_key
   AND (newer.created_at, newer.key_id) > (i.created_at, i.key_id);
ALTER TABLE idempotency_keys ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (user_id, idempotency_key);
