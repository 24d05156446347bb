-- Per owner, source URL and quality: what the last successful fetch answered (validators,
-- the SHA-256 of the bytes) and the output made from them, so a resubmitted source is
-- fetched conditionally and, when unchanged, its output copied instead of encoded again.
-- Rows not used for the retention period are deleted by the sweep.
CREATE TABLE source_cache (
    owner           text NOT NULL,
    input_url       text NOT NULL,
    quality         integer NOT NULL,
    etag            text NOT NULL DEFAULT '',
    last_modified   text NOT NULL DEFAULT '',
    content_sha256  bytea NOT NULL,
    output_key      text NOT NULL,
    input_bytes     bigint NOT NULL,
    output_bytes    bigint NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, input_url, quality)
);
CREATE INDEX source_cache_updated ON source_cache (updated_at);
