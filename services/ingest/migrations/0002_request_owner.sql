-- Requests belong to the token that created them ('' when tokens are not configured);
-- idempotency keys are scoped to that owner.
ALTER TABLE requests ADD COLUMN owner text NOT NULL DEFAULT '';
DROP INDEX requests_idempotency_key;
CREATE UNIQUE INDEX requests_owner_idempotency_key ON requests (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
