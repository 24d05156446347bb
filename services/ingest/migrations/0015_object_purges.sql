-- Stored objects of deleted requests (DeleteRequest, the retention sweep), deleted by prefix
-- `{request_id}/`: once right away, and once more after final_at, when no processor call
-- begun before the deletion can still write an object.
CREATE TABLE object_purges (
    request_id        uuid PRIMARY KEY,
    available_at      timestamptz NOT NULL DEFAULT now(),
    final_at          timestamptz NOT NULL,
    lease_expires_at  timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT ''
);
CREATE INDEX object_purges_due ON object_purges (available_at);
-- Ended requests, oldest first: what the retention sweep deletes.
CREATE INDEX requests_ended ON requests (completed_at)
    WHERE state NOT IN ('QUEUED', 'PROCESSING');
