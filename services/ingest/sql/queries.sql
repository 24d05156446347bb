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

-- name: lock_claims
-- Claims one at a time across the fleet (until the transaction ends), so the per-tenant
-- and per-host caps see every claim made before.
SELECT pg_advisory_xact_lock(hashtextextended('imgpipe-claim', 0));

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
-- Claims up to $2 queued images for dispatcher $1 with a lease of $3 seconds, sharing the
-- fleet fairly: tenants (request owners) take turns first, a tenant of weight w taking w
-- images a turn, the least recently served first; then a tenant's active requests take
-- turns, least recently served first (never served before all), so neither a tenant with
-- many requests nor a large request starves the others, even when one slot frees at a
-- time. Limits, fleet-wide: a tenant's images PROCESSING at most its max_in_flight, a source
-- host's at most $9, and nothing of a host backing off. $4, $5, $6: configured tenants, their
-- weights and caps; $7, $8: weight and cap of any other owner (cap 0: none; $9 0: none).
-- A claim is no event of its own (GetStatus shows the image PROCESSING; watchers hear of
-- it when it ends): only a request that starts appends one. Each claimed image comes with
-- what is remembered of its source (source_cache), if anything.
WITH active AS (
    SELECT id, owner, rank, last_claimed_at, created_at FROM (
        SELECT id, owner, last_claimed_at, created_at,
               row_number() OVER (ORDER BY last_claimed_at NULLS FIRST, created_at) AS rank,
               row_number() OVER (PARTITION BY owner
                                  ORDER BY last_claimed_at NULLS FIRST, created_at) AS place
        FROM requests
        WHERE state IN ('QUEUED', 'PROCESSING')
    ) r
    WHERE place <= 32
    ORDER BY rank
    LIMIT 256
), tenants AS (
    -- The tenant served least recently (by its most recent claim) comes first.
    SELECT a.owner, coalesce(max(t.weight), $7) AS weight, coalesce(max(t.cap), $8) AS cap,
           row_number() OVER (ORDER BY max(a.last_claimed_at) NULLS FIRST,
                                       min(a.created_at)) AS tenant_rank
    FROM active a
    LEFT JOIN unnest($4::text[], $5::int[], $6::int[]) AS t(owner, weight, cap)
        ON t.owner = a.owner
    GROUP BY a.owner
), tenant_busy AS (
    SELECT r.owner, count(*) AS n
    FROM images i JOIN requests r ON r.id = i.request_id
    WHERE i.state = 'PROCESSING' AND r.owner IN (SELECT owner FROM tenants WHERE cap > 0)
    GROUP BY r.owner
), blocked AS (
    -- Hosts none of whose images can be claimed now (backing off, or at their cap),
    -- found once: a test per queued image would cost a count for every row scanned.
    SELECT coalesce(array_agg(host), '{}') AS hosts FROM (
        SELECT host FROM host_backoffs WHERE until > now()
        UNION
        SELECT host FROM images
        WHERE $9 > 0 AND state = 'PROCESSING' AND host IS NOT NULL
        GROUP BY host HAVING count(*) >= $9
    ) h
), candidates AS (
    SELECT c.id, c.request_id, c.product_position, c.idx, c.host, a.rank, a.owner
    FROM active a
    CROSS JOIN blocked b
    CROSS JOIN LATERAL (
        SELECT i.id, i.request_id, i.product_position, i.idx, i.host
        FROM images i
        WHERE i.request_id = a.id AND i.state = 'QUEUED' AND i.available_at <= now()
          AND NOT coalesce(i.host = ANY (b.hosts), false)
        ORDER BY i.product_position, i.idx
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) c
), host_busy AS (
    SELECT host, count(*) AS n FROM images
    WHERE $9 > 0 AND state = 'PROCESSING' AND host IN (SELECT host FROM candidates)
    GROUP BY host
), turns AS (
    -- turn: the image's place in its request; tenant_turn: in its tenant, requests
    -- taking turns.
    SELECT t.id, t.owner, t.host,
           row_number() OVER (PARTITION BY t.owner ORDER BY t.turn, t.rank) AS tenant_turn
    FROM (
        SELECT id, owner, host, rank,
               row_number() OVER (PARTITION BY request_id
                                  ORDER BY product_position, idx) AS turn
        FROM candidates
    ) t
), within_tenant_caps AS (
    SELECT x.id, x.host, x.tenant_turn, tn.tenant_rank,
           ceil(x.tenant_turn::numeric / tn.weight) AS round
    FROM turns x
    JOIN tenants tn ON tn.owner = x.owner
    LEFT JOIN tenant_busy tb ON tb.owner = x.owner
    WHERE tn.cap = 0 OR x.tenant_turn + coalesce(tb.n, 0) <= tn.cap
), picked AS (
    SELECT id FROM (
        SELECT w.id, w.host, w.round, w.tenant_rank, w.tenant_turn,
               row_number() OVER (PARTITION BY w.host
                                  ORDER BY w.round, w.tenant_rank, w.tenant_turn) AS host_turn
        FROM within_tenant_caps w
    ) ranked
    LEFT JOIN host_busy hb ON hb.host = ranked.host
    WHERE $9 = 0 OR ranked.host_turn + coalesce(hb.n, 0) <= $9
    ORDER BY ranked.round, ranked.tenant_rank, ranked.tenant_turn
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
    RETURNING r.id, l.starts, r.last_sequence, r.state, r.quality, r.owner,
              r.succeeded_count, r.failed_count, r.cancelled_count
), appended AS (
    INSERT INTO events (request_id, sequence, request_state, succeeded_count, failed_count,
                        cancelled_count)
    SELECT id, last_sequence, state, succeeded_count, failed_count, cancelled_count
    FROM bumped WHERE starts
)
SELECT cl.id, cl.request_id, cl.serial_number, cl.idx, cl.input_url, cl.attempts, b.quality,
       c.etag, c.last_modified, c.content_sha256, c.output_key, c.input_bytes,
       c.output_bytes, c.width, c.height
FROM claimed cl JOIN bumped b ON b.id = cl.request_id
-- What is remembered of each image's source, owner and quality (for a conditional fetch):
-- one key lookup each (the key is unique; LIMIT keeps it a lookup).
LEFT JOIN LATERAL (
    SELECT * FROM source_cache c
    WHERE c.owner = b.owner AND c.input_url = cl.input_url AND c.quality = b.quality
    LIMIT 1
) c ON true
ORDER BY cl.request_id, cl.product_position, cl.idx;

-- name: finish_attempts
-- Records many attempts' outcomes in one statement: row k is attempt $2[k] of image
-- $1[k] held by owner $3[k], applied only if that lease is still current (the fence, row
-- by row: stale rows are skipped, current ones apply). $4[k]: SUCCEEDED, FAILED, or
-- QUEUED (retry after $9[k] seconds; $10[k] true when the attempt never ran and does not
-- count). Each applied outcome appends one event; each request's counters and sequence
-- move once for the batch, its events numbered in image order with running progress.
-- The events trigger notifies once per request for the whole batch; a request whose last
-- image is done gets its result CSV queued in the outbox. An applied outcome with a source
-- hash $11[k] (validators $12[k], $13[k], size $14[k] x $15[k]) is remembered in
-- source_cache for the next fetch of that source. Returns the (image, attempt, owner)
-- applied.
WITH outcome AS (
    SELECT *
    FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bigint[], $8::bigint[], $9::float8[], $10::boolean[], $11::bytea[],
                $12::text[], $13::text[], $14::int[], $15::int[])
        AS o(id, attempt, owner, state, output_url, error, input_bytes, output_bytes,
             retry_after, refund, content_sha256, etag, last_modified, width, height)
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
              i.idx, i.state, i.output_url, i.error, i.input_url
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
), remembered AS (
    -- One row per source (a URL can be in a request twice), in key order.
    INSERT INTO source_cache (owner, input_url, quality, etag, last_modified, content_sha256,
                              output_key, input_bytes, output_bytes, width, height)
    SELECT DISTINCT ON (r.owner, img.input_url, r.quality)
           r.owner, img.input_url, r.quality, o.etag, o.last_modified, o.content_sha256,
           o.output_url, o.input_bytes, o.output_bytes, o.width, o.height
    FROM img
    JOIN outcome o ON o.id = img.id
    JOIN requests r ON r.id = img.request_id
    WHERE o.content_sha256 IS NOT NULL
    ORDER BY r.owner, img.input_url, r.quality, img.id DESC
    ON CONFLICT (owner, input_url, quality) DO UPDATE
    SET etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,
        content_sha256 = EXCLUDED.content_sha256, output_key = EXCLUDED.output_key,
        input_bytes = EXCLUDED.input_bytes, output_bytes = EXCLUDED.output_bytes,
        width = EXCLUDED.width, height = EXCLUDED.height, updated_at = now()
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
       result_csv_url, created_at, completed_at, webhook_url, owner
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

-- name: delete_request
-- Deletes request $1 of owner $2 with everything that references it (its objects were
-- purged just before), and queues a final purge $3 seconds from now. Images are locked
-- before the request, in id order (the lock order); watchers are woken to find it gone.
WITH locked AS (
    SELECT i.id FROM images i
    WHERE i.request_id = $1
      AND EXISTS (SELECT 1 FROM requests r WHERE r.id = $1 AND r.owner = $2)
    ORDER BY i.id
    FOR UPDATE
), gone AS (
    DELETE FROM requests r
    WHERE r.id = $1 AND r.owner = $2 AND (SELECT count(*) FROM locked) >= 0
    RETURNING r.id
), purge AS (
    INSERT INTO object_purges (request_id, available_at, final_at)
    SELECT id, now() + make_interval(secs => $3), now() + make_interval(secs => $3)
    FROM gone
    ON CONFLICT (request_id) DO UPDATE SET final_at = EXCLUDED.final_at
    RETURNING request_id
), notified AS (
    SELECT pg_notify('imgpipe_events', request_id::text) FROM purge
)
SELECT count(*) FROM gone WHERE (SELECT count(*) FROM notified) >= 0;

-- name: delete_expired_requests
-- The retention sweep: deletes up to $2 requests that ended more than $1 seconds ago (and
-- whose outbox work is done), queuing purges of their objects with a final pass $3 seconds
-- from now. SKIP LOCKED: replicas sweeping at once take different requests.
WITH doomed AS (
    SELECT r.id FROM requests r
    WHERE r.state NOT IN ('QUEUED', 'PROCESSING')
      AND r.completed_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.request_id = r.id AND o.done_at IS NULL)
    ORDER BY r.completed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM requests r USING doomed d WHERE r.id = d.id RETURNING r.id
), purge AS (
    INSERT INTO object_purges (request_id, final_at)
    SELECT id, now() + make_interval(secs => $3) FROM gone
    ON CONFLICT (request_id) DO NOTHING
)
SELECT count(*) FROM gone;

-- name: claim_purge
-- Takes one due purge for $1 seconds; a crash lets the lease run out.
UPDATE object_purges p
SET attempts = p.attempts + 1, lease_expires_at = now() + make_interval(secs => $1)
WHERE p.request_id = (
    SELECT request_id FROM object_purges
    WHERE available_at <= now() AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY available_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING p.request_id;

-- name: purge_done
-- One pass over request $1's objects is done: the final one removes the row, an earlier one
-- waits for final_at.
WITH finished AS (
    DELETE FROM object_purges WHERE request_id = $1 AND final_at <= now() RETURNING request_id
)
UPDATE object_purges
SET available_at = final_at, lease_expires_at = NULL, last_error = ''
WHERE request_id = $1 AND NOT EXISTS (SELECT 1 FROM finished);

-- name: purge_failed
UPDATE object_purges
SET available_at = now() + make_interval(secs => $2), lease_expires_at = NULL, last_error = $3
WHERE request_id = $1;

-- name: take_submit_token
-- Takes a token from principal $1's bucket (refilled at $2 a second, up to $3), unless it
-- has less than one: one statement, so replicas calling at once count each call once.
INSERT INTO submit_buckets AS b (principal, tokens, updated_at)
VALUES ($1, $3::float8 - 1, now())
ON CONFLICT (principal) DO UPDATE
SET (tokens, denials, updated_at) = (
    SELECT CASE WHEN r.level >= 1 THEN r.level - 1 ELSE r.level END,
           CASE WHEN r.level >= 1 THEN 0 ELSE b.denials + 1 END,
           now()
    FROM (SELECT least($3::float8,
                       b.tokens + extract(epoch FROM now() - b.updated_at)::float8 * $2)
                 AS level) r
)
RETURNING tokens, denials > 0 AS denied;

-- name: webhook_secrets
-- Principal $1's secrets that still sign, newest (the current one) first.
SELECT secret, created_at, expires_at FROM webhook_secrets
WHERE principal = $1 AND (expires_at IS NULL OR expires_at > now())
ORDER BY created_at DESC;

-- name: add_webhook_secret
-- A new current secret $2 for principal $1, unless one was made at the same moment.
INSERT INTO webhook_secrets (principal, secret) VALUES ($1, $2)
ON CONFLICT (principal) WHERE expires_at IS NULL DO NOTHING;

-- name: retire_webhook_secret
-- The current secret of principal $1 keeps signing for $2 more seconds.
UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2)
WHERE principal = $1 AND expires_at IS NULL;

-- name: lock_submits
-- Serialises the Submits of principal $1 (until the transaction ends), so its quota holds.
SELECT pg_advisory_xact_lock(hashtextextended('imgpipe-submit:' || $1, 0));

-- name: queued_images
-- Images of principal $1 not finished yet.
SELECT coalesce(sum(image_count - succeeded_count - failed_count - cancelled_count), 0)::bigint
FROM requests
WHERE owner = $1 AND state IN ('QUEUED', 'PROCESSING');

-- name: forget_old_sources
-- The retention sweep: up to $2 remembered sources not used for $1 seconds.
DELETE FROM source_cache
WHERE ctid IN (SELECT ctid FROM source_cache
               WHERE updated_at < now() - make_interval(secs => $1)
               LIMIT $2);

-- name: throttle_host
-- The host of image $1 asked to be called less: none of its images is claimed for $2 s.
INSERT INTO host_backoffs (host, until)
SELECT host, now() + make_interval(secs => $2) FROM images WHERE id = $1
ON CONFLICT (host) DO UPDATE SET until = greatest(host_backoffs.until, EXCLUDED.until);

-- name: forget_host_backoffs
DELETE FROM host_backoffs WHERE until < now();
