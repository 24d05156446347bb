-- The host of every image's source (lower case, without user info or port), so the
-- dispatcher can bound concurrent fetches per host across the fleet and hold back a host
-- that asked to be called less.
ALTER TABLE images ADD COLUMN host text GENERATED ALWAYS AS (
    lower(regexp_replace(regexp_replace(
        substring(input_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'),
        '^.*@', ''), ':[0-9]*$', ''))
) STORED;
CREATE INDEX images_processing_host ON images (host) WHERE state = 'PROCESSING';

-- Hosts that answered 429 or 503: none of their images is claimed before `until`.
CREATE TABLE host_backoffs (
    host   text PRIMARY KEY,
    until  timestamptz NOT NULL
);
