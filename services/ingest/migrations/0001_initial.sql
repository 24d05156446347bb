-- imgpipe ingest schema, version 1.

CREATE TABLE requests (
    id               uuid PRIMARY KEY,
    state            text NOT NULL DEFAULT 'QUEUED' CHECK (state IN
                         ('QUEUED', 'PROCESSING', 'COMPLETED', 'PARTIALLY_COMPLETED',
                          'FAILED', 'CANCELLED')),
    idempotency_key  text,
    csv_sha256       bytea NOT NULL,
    webhook_url      text NOT NULL DEFAULT '',
    quality          integer NOT NULL,
    product_count    integer NOT NULL,
    image_count      integer NOT NULL,
    succeeded_count  integer NOT NULL DEFAULT 0,
    failed_count     integer NOT NULL DEFAULT 0,
    cancelled_count  integer NOT NULL DEFAULT 0,
    -- The sequence of the newest event; bumped in the same statement that appends it.
    last_sequence    bigint NOT NULL DEFAULT 0,
    result_csv_url   text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE UNIQUE INDEX requests_idempotency_key ON requests (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX requests_active ON requests (created_at)
    WHERE state IN ('QUEUED', 'PROCESSING');

CREATE TABLE products (
    request_id     uuid NOT NULL REFERENCES requests ON DELETE CASCADE,
    position       integer NOT NULL,
    serial_number  integer NOT NULL,
    product_name   text NOT NULL,
    PRIMARY KEY (request_id, position),
    UNIQUE (request_id, serial_number)
);

CREATE TABLE images (
    id                bigserial PRIMARY KEY,
    request_id        uuid NOT NULL REFERENCES requests ON DELETE CASCADE,
    product_position  integer NOT NULL,
    serial_number     integer NOT NULL,
    idx               integer NOT NULL,
    input_url         text NOT NULL,
    state             text NOT NULL DEFAULT 'QUEUED' CHECK (state IN
                          ('QUEUED', 'PROCESSING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    -- Claims so far; with lease_owner it fences results of stale attempts.
    attempts          integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    available_at      timestamptz NOT NULL DEFAULT now(),
    output_url        text NOT NULL DEFAULT '',
    error             text NOT NULL DEFAULT '',
    input_bytes       bigint NOT NULL DEFAULT 0,
    output_bytes      bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, serial_number, idx)
);
CREATE INDEX images_queued ON images (request_id, product_position, idx)
    WHERE state = 'QUEUED';
CREATE INDEX images_leased ON images (lease_expires_at)
    WHERE state = 'PROCESSING';

-- Every change of a request or an image, numbered per request with no gaps.
CREATE TABLE events (
    request_id       uuid NOT NULL REFERENCES requests ON DELETE CASCADE,
    sequence         bigint NOT NULL,
    request_state    text NOT NULL,
    succeeded_count  integer NOT NULL,
    failed_count     integer NOT NULL,
    cancelled_count  integer NOT NULL,
    serial_number    integer,
    idx              integer,
    image_state      text,
    output_url       text NOT NULL DEFAULT '',
    error            text NOT NULL DEFAULT '',
    result_csv_url   text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, sequence)
);

-- Work that must survive a crash once a request is done: the result CSV, the webhook.
CREATE TABLE outbox (
    id                bigserial PRIMARY KEY,
    request_id        uuid NOT NULL REFERENCES requests ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('result_csv', 'webhook')),
    attempts          integer NOT NULL DEFAULT 0,
    available_at      timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz,
    last_error        text NOT NULL DEFAULT '',
    done_at           timestamptz,
    UNIQUE (request_id, kind)
);
CREATE INDEX outbox_pending ON outbox (available_at) WHERE done_at IS NULL;
