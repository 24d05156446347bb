-- Webhook deliveries are outbox rows: one delivery id for every attempt, a state callers
-- can see, and a start time that bounds the retry period.
ALTER TABLE outbox
    ADD COLUMN delivery_id uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN state text NOT NULL DEFAULT 'PENDING'
        CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
