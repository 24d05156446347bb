-- Each principal's webhook signing secrets: one current (expires_at NULL), and the ones it
-- replaced, which keep signing until they expire (the rotation overlap).
CREATE TABLE webhook_secrets (
    id          bigserial PRIMARY KEY,
    principal   text NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz
);
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (principal)
    WHERE expires_at IS NULL;

-- The Submit rate limit, one token bucket per principal, shared by every ingest replica.
-- denials counts refusals since the last call let through.
CREATE TABLE submit_buckets (
    principal   text PRIMARY KEY,
    tokens      double precision NOT NULL,
    denials     integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL
);
