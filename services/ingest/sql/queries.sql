-- Every query ingest runs, by name (loaded once by postgres.py). $n are asyncpg placeholders.
-- NOTIFY comes from triggers on events and outbox (migrations/0025_notify_triggers.sql).
-- Lock order everywhere: images before requests, so concurrent statements cannot deadlock.

-- name: insert_request
INSERT INTO requests (id, idempotency_key, csv_sha256, webhook_url, quality,
                      product_count, image_count, owner, last_sequence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: insert_created_event
INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                    cancelled_count)
VALUES ($1, 1, 'QUEUED', 0, 0, 0);

-- name: notify_work
SELECT pg_notify('imgpipe_work', '');

-- name: request_by_idempotency_key
SELECT id, csv_sha256, webhook_url, quality, product_count, image_count
FROM requests WHERE owner = $1 AND idempotency_key = $2;

-- name: request_status
-- $2: the caller's principal, or NULL for ingest's own reads.
SELECT r.id, r.state, r.quality, r.product_count, r.image_count, r.succeeded_count,
       r.failed_count, r.cancelled_count, r.last_sequence, r.result_csv_url, r.created_at,
       r.updated_at, r.completed_at, r.webhook_url,
       w.state AS webhook_state, w.delivery_id AS webhook_delivery_id,
       w.attempts AS webhook_attempts, w.last_error AS webhook_last_error,
       w.available_at AS webhook_next_attempt_at, w.done_at AS webhook_done_at,
       CASE WHEN c.state = 'FAILED' THEN c.last_error ELSE '' END AS result_csv_error
FROM requests r
LEFT JOIN outbox w ON w.request_id = r.id AND w.kind = 'webhook'
LEFT JOIN outbox c ON c.request_id = r.id AND c.kind = 'result_csv'
WHERE r.id = $1 AND ($2::text IS NULL OR r.owner = $2);

-- name: request_images_page
-- At most $4 images of request $1 in input order, from product position $2, index $3 on.
-- output_url holds the output's object key.
SELECT i.product_position, p.serial_number, p.product_name, i.idx, i.input_url,
       i.output_url, i.state, i.error, i.input_bytes, i.output_bytes, i.attempts
FROM images i
JOIN products p ON p.request_id = i.request_id AND p.position = i.product_position
WHERE i.request_id = $1 AND (i.product_position, i.idx) >= ($2, $3)
ORDER BY i.product_position, i.idx
LIMIT $4;

-- name: events_after
SELECT sequence, request_state, succeeded_count, failed_count, cancelled_count,
       serial_number, idx, image_state, output_url, error, result_csv_url
FROM events
WHERE request_id = $1 AND sequence > $2
ORDER BY sequence
LIMIT $3;

-- name: claim_images
-- Claims up to $2 queued images for owner $1 with a lease of $3 seconds, taking them
-- round-robin across active requests, least recently served first (never served before
-- all), so a large request cannot starve a small one even when one slot frees at a time.
-- A claim is no event of its own (GetStatus shows the image PROCESSING; watchers hear of
-- it when it ends): only a request that starts appends one.
WITH active AS (
    SELECT id, row_number() OVER (ORDER BY last_claimed_at NULLS FIRST, created_at) AS rank
    FROM requests
    WHERE state IN ('QUEUED', 'PROCESSING')
    ORDER BY last_claimed_at NULLS FIRST, created_at
    LIMIT 256
), candidates AS (
    SELECT c.id, c.request_id, c.product_position, c.idx, a.rank
    FROM active a
    CROSS JOIN LATERAL (
        SELECT i.id, i.request_id, i.product_position, i.idx
        FROM images i
        WHERE i.request_id = a.id AND i.state = 'QUEUED' AND i.available_at <= now()
        ORDER BY i.product_position, i.idx
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) c
), picked AS (
    SELECT id FROM (
        SELECT id, rank,
               row_number() OVER (PARTITION BY request_id
                                  ORDER BY product_position, idx) AS turn
        FROM candidates
    ) ranked
    ORDER BY turn, rank
    LIMIT $2
), claimed AS (
    UPDATE images i
    SET state = 'PROCESSING', attempts = i.attempts + 1, lease_owner = $1,
        lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
    FROM picked p
    WHERE i.id = p.id
    RETURNING i.id, i.request_id, i.product_position, i.serial_number, i.idx,
              i.input_url, i.attempts
), locked AS (
    -- Requests locked in id order, so concurrent batches cannot deadlock on them.
    SELECT r.id, r.state = 'QUEUED' AS starts
    FROM requests r
    WHERE r.id IN (SELECT request_id FROM claimed)
    ORDER BY r.id
    FOR UPDATE
), bumped AS (
    UPDATE requests r
    SET state = CASE WHEN l.starts THEN 'PROCESSING' ELSE r.state END,
        last_sequence = r.last_sequence + l.starts::int,
        last_claimed_at = clock_timestamp(), updated_at = now()
    FROM locked l
    WHERE r.id = l.id
    RETURNING r.id, l.starts, r.last_sequence, r.state, r.quality,
              r.succeeded_count, r.failed_count, r.cancelled_count
), appended AS (
    INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                        cancelled_count)
    SELECT id, last_sequence, state, succeeded_count, failed_count, cancelled_count
    FROM bumped WHERE starts
)
SELECT cl.id, cl.request_id, cl.serial_number, cl.idx, cl.input_url, cl.attempts, b.quality
FROM claimed cl JOIN bumped b ON b.id = cl.request_id
ORDER BY cl.request_id, cl.product_position, cl.idx;

-- name: finish_attempts
-- Records many attempts' outcomes in one statement: row k is attempt $2[k] of image
-- $1[k] held by owner $3[k], applied only if that lease is still current (the fence, row
-- by row: stale rows are skipped, current ones apply). $4[k]: SUCCEEDED, FAILED, or
-- QUEUED (retry after $9[k] seconds; $10[k] true when the attempt never ran and does not
-- count). Each applied outcome appends one event; each request's counters and sequence
-- move once for the batch, its events numbered in image order with running progress.
-- The events trigger notifies once per request for the whole batch; a request whose last
-- image is done gets its result CSV queued in the outbox. Returns the (image, attempt,
-- owner) applied.
WITH outcome AS (
    SELECT *
    FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bigint[], $8::bigint[], $9::float8[], $10::boolean[])
        AS o(id, attempt, owner, state, output_url, error, input_bytes, output_bytes,
             retry_after, refund)
), fenced AS (
    -- Images locked in id order (the lock order of every statement that holds several).
    SELECT i.id
    FROM images i JOIN outcome o ON o.id = i.id
    WHERE i.attempts = o.attempt AND i.lease_owner = o.owner AND i.state = 'PROCESSING'
    ORDER BY i.id
    FOR UPDATE OF i
), img AS (
    UPDATE images i
    SET state = o.state, output_url = o.output_url, error = o.error,
        input_bytes = o.input_bytes, output_bytes = o.output_bytes,
        available_at = now() + make_interval(secs => o.retry_after),
        attempts = i.attempts - o.refund::int,
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    FROM fenced f JOIN outcome o ON o.id = f.id
    WHERE i.id = f.id AND i.attempts = o.attempt AND i.lease_owner = o.owner
      AND i.state = 'PROCESSING'
    RETURNING i.id, o.attempt, o.owner, i.request_id, i.product_position, i.serial_number,
              i.idx, i.state, i.output_url, i.error
), counts AS (
    SELECT request_id, count(*)::int AS n,
           count(*) FILTER (WHERE state = 'SUCCEEDED')::int AS succeeded,
           count(*) FILTER (WHERE state = 'FAILED')::int AS failed
    FROM img
    GROUP BY request_id
), locked AS (
    SELECT r.id FROM requests r
    WHERE r.id IN (SELECT request_id FROM counts)
    ORDER BY r.id
    FOR UPDATE
), req AS (
    UPDATE requests r
    SET succeeded_count = r.succeeded_count + c.succeeded,
        failed_count = r.failed_count + c.failed,
        last_sequence = r.last_sequence + c.n,
        updated_at = now()
    FROM locked l JOIN counts c ON c.request_id = l.id
    WHERE r.id = l.id
    RETURNING r.id, r.state, r.last_sequence - c.n AS base,
              r.succeeded_count - c.succeeded AS succeeded_before,
              r.failed_count - c.failed AS failed_before, r.succeeded_count, r.failed_count,
              r.cancelled_count, r.image_count
), appended AS (
    INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                        cancelled_count, serial_number, idx, image_state, output_url, error)
    SELECT req.id, req.base + row_number() OVER w, req.state,
           req.succeeded_before + count(*) FILTER (WHERE img.state = 'SUCCEEDED') OVER w,
           req.failed_before + count(*) FILTER (WHERE img.state = 'FAILED') OVER w,
           req.cancelled_count, img.serial_number, img.idx, img.state, img.output_url,
           img.error
    FROM img JOIN req ON req.id = img.request_id
    WINDOW w AS (PARTITION BY img.request_id ORDER BY img.product_position, img.idx
                 ROWS UNBOUNDED PRECEDING)
), queued AS (
    INSERT INTO outbox (request_id, kind)
    SELECT id, 'result_csv' FROM req
    WHERE succeeded_count + failed_count + cancelled_count = image_count
    ON CONFLICT (request_id, kind) DO NOTHING
)
SELECT id, attempt, owner FROM img;

-- name: expired_leases
SELECT id, attempts, lease_owner FROM images
WHERE state = 'PROCESSING' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1;

-- name: queue_stats
-- Sampled for the metrics: images queued; seconds since the oldest active request that
-- still has queued images was submitted (0 when none); webhook deliveries not yet done.
SELECT
    (SELECT count(*) FROM images WHERE state = 'QUEUED') AS queued,
    (SELECT coalesce(extract(epoch FROM now() - min(r.created_at)), 0)
     FROM requests r
     WHERE r.state IN ('QUEUED', 'PROCESSING')
       AND EXISTS (SELECT 1 FROM images i WHERE i.request_id = r.id AND i.state = 'QUEUED')
    )::float8 AS oldest_queued_seconds,
    (SELECT count(*) FROM outbox WHERE done_at IS NULL AND kind = 'webhook') AS webhook_backlog;

-- name: cancel_request
WITH locked AS (
    -- In id order, as finish_attempts locks images: the two cannot deadlock.
    SELECT i.id FROM images i
    WHERE i.request_id = $1 AND i.state IN ('QUEUED', 'PROCESSING')
      AND EXISTS (SELECT 1 FROM requests r
                  WHERE r.id = $1 AND r.owner = $2 AND r.state IN ('QUEUED', 'PROCESSING'))
    ORDER BY i.id
    FOR UPDATE OF i
), cancelled AS (
    UPDATE images i
    SET state = 'CANCELLED', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    FROM locked l
    WHERE i.id = l.id AND i.state IN ('QUEUED', 'PROCESSING')
    RETURNING i.id
), req AS (
    UPDATE requests r
    SET state = 'CANCELLED',
        cancelled_count = r.cancelled_count + (SELECT count(*) FROM cancelled),
        last_sequence = r.last_sequence + 1,
        completed_at = now(), updated_at = now()
    WHERE r.id = $1 AND r.owner = $2 AND r.state IN ('QUEUED', 'PROCESSING')
    RETURNING r.id, r.state, r.last_sequence, r.image_count, r.succeeded_count,
              r.failed_count, r.cancelled_count
), appended AS (
    INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                        cancelled_count)
    SELECT id, last_sequence, state, succeeded_count, failed_count, cancelled_count FROM req
), queued AS (
    INSERT INTO outbox (request_id, kind)
    SELECT id, 'result_csv' FROM req
    ON CONFLICT (request_id, kind) DO NOTHING
)
SELECT id, state, image_count, succeeded_count, failed_count, cancelled_count FROM req;

-- name: claim_outbox
-- Takes one due outbox item of kind $1 for $2 seconds; a crash lets the lease run out.
UPDATE outbox o
SET attempts = o.attempts + 1, lease_expires_at = now() + make_interval(secs => $2)
WHERE o.id = (
    SELECT id FROM outbox
    WHERE kind = $1 AND done_at IS NULL AND available_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY available_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING o.id, o.request_id, o.attempts, o.delivery_id, o.created_at, o.last_error;

-- name: end_outbox
-- A webhook delivery ended: $2 is DELIVERED or FAILED.
UPDATE outbox
SET state = $2, last_error = $3, done_at = now(), lease_expires_at = NULL
WHERE id = $1;

-- name: webhook_payload
SELECT id, state, image_count, succeeded_count, failed_count, cancelled_count,
       result_csv_url, created_at, completed_at, webhook_url
FROM requests WHERE id = $1;

-- name: release_outbox
-- The item was claimed but not tried (its endpoint is busy): back, the attempt not counted.
UPDATE outbox
SET attempts = attempts - 1, available_at = now() + make_interval(secs => $2),
    lease_expires_at = NULL
WHERE id = $1;

-- name: retry_outbox
UPDATE outbox
SET available_at = now() + make_interval(secs => $2), lease_expires_at = NULL,
    last_error = $3
WHERE id = $1;

-- name: finish_request
-- The result CSV is stored at key $3 (outbox state $4 DELIVERED), or could not be ($3 '',
-- $4 FAILED, $5 the last error): make the request terminal (unless it already is, e.g.
-- cancelled) in one event; queue the webhook when there is one.
WITH done AS (
    UPDATE outbox SET done_at = now(), lease_expires_at = NULL, state = $4, last_error = $5
    WHERE id = $2 AND done_at IS NULL
    RETURNING request_id
), req AS (
    UPDATE requests r
    SET result_csv_url = $3,
        state = CASE
            WHEN r.state NOT IN ('QUEUED', 'PROCESSING') THEN r.state
            WHEN r.failed_count = 0 AND r.cancelled_count = 0 THEN 'COMPLETED'
            WHEN r.succeeded_count = 0 THEN 'FAILED'
            ELSE 'PARTIALLY_COMPLETED' END,
        last_sequence = r.last_sequence + (r.state IN ('QUEUED', 'PROCESSING'))::int,
        completed_at = coalesce(r.completed_at, now()),
        updated_at = now()
    FROM done
    WHERE r.id = $1 AND done.request_id = r.id
    RETURNING r.id, r.state, r.last_sequence, r.succeeded_count, r.failed_count,
              r.cancelled_count, r.webhook_url,
              r.last_sequence > (SELECT max(sequence) FROM events e WHERE e.request_id = r.id)
                  AS transitioned
), appended AS (
    INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                        cancelled_count, result_csv_url)
    SELECT id, last_sequence, state, succeeded_count, failed_count, cancelled_count, $3
    FROM req WHERE transitioned
), webhook AS (
    INSERT INTO outbox (request_id, kind)
    SELECT id, 'webhook' FROM req WHERE webhook_url <> ''
    ON CONFLICT (request_id, kind) DO NOTHING
)
SELECT state FROM req;
