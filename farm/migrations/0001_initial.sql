-- API keys, jobs, their steps (plan, chunks, stitch), the credit ledger and webhook deliveries.

CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    prefix          text NOT NULL,                 -- safe to log and show
    key_hash        bytea NOT NULL UNIQUE,         -- sha256 of the whole key
    webhook_url     text,
    webhook_secret  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

CREATE TABLE jobs (
    id              text PRIMARY KEY,
    key_id          text NOT NULL REFERENCES api_keys(id),
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    code            text NOT NULL,
    class_name      text NOT NULL,
    quality         text NOT NULL,
    aspect_ratio    text NOT NULL,
    fps             integer NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    metadata        jsonb,
    webhook_url     text,
    cache_key       text NOT NULL,
    renderer        text,
    error           text,
    error_kind      text,          -- scene_error | timeout | platform_error | canceled | insufficient_credits
    credits_reserved numeric(12, 2) NOT NULL DEFAULT 0,
    credits_cost    numeric(12, 2),
    video_key       text,
    thumbnail_key   text,
    captions_key    text,
    log_key         text,
    chunks_total    integer,
    chunks_done     integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    duration_ms     integer
);
CREATE INDEX jobs_key_created ON jobs (key_id, created_at DESC, id DESC);
CREATE INDEX jobs_cache_key ON jobs (cache_key) WHERE status = 'completed';
CREATE INDEX jobs_queued ON jobs (quality, created_at) WHERE status IN ('queued', 'running');

-- A unit of work a Celery task performs. The task message only carries (job_id, kind, idx);
-- this row says whether it still needs doing and which attempt owns it.
CREATE TABLE steps (
    job_id          text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('plan', 'chunk', 'stitch')),
    idx             integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempt         integer NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    published_at    timestamptz,
    first_animation integer,
    last_animation  integer,        -- exclusive
    seconds         double precision,
    output_key      text,
    captions_key    text,
    frames          integer,
    error           text,
    PRIMARY KEY (job_id, kind, idx)
);
CREATE INDEX steps_leases ON steps (lease_until) WHERE status = 'running';
CREATE INDEX steps_pending ON steps (published_at) WHERE status = 'pending';

CREATE TABLE credit_ledger (
    id              bigserial PRIMARY KEY,
    key_id          text NOT NULL REFERENCES api_keys(id),
    job_id          text REFERENCES jobs(id) ON DELETE SET NULL,
    kind            text NOT NULL CHECK (kind IN ('grant', 'reserve', 'settle', 'refund')),
    amount          numeric(12, 2) NOT NULL,   -- signed: grants and refunds add, reserves take
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_key ON credit_ledger (key_id);
-- A job is reserved, settled and refunded at most once each.
CREATE UNIQUE INDEX credit_ledger_once ON credit_ledger (job_id, kind) WHERE job_id IS NOT NULL;

CREATE TABLE idempotency_keys (
    key_id          text NOT NULL REFERENCES api_keys(id),
    idempotency_key text NOT NULL,
    body_hash       text NOT NULL,
    job_id          text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idempotency_key)
);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    job_id          text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    event           text NOT NULL,
    url             text NOT NULL,
    attempt         integer NOT NULL,
    status_code     integer NOT NULL,      -- 0 when it never connected
    duration_ms     integer NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, event, attempt)
);
