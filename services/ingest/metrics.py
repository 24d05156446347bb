"""Ingest's Prometheus metrics (the default registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ATTEMPTS = Counter("imgpipe_ingest_attempts", "Processor calls made (one per claimed image).")
OUTCOMES = Counter(
    "imgpipe_ingest_image_outcomes",
    "Ends of attempts: succeeded, failed (for good), retried, busy (processor full).",
    ["outcome"],
)
CLAIMS = Counter(
    "imgpipe_ingest_claims",
    "Claim statements made, by whether they found images (some) or not (none).",
    ["found"],
)
IN_FLIGHT = Gauge(
    "imgpipe_ingest_in_flight", "Images in processor calls from this replica (several a call)."
)
CALL_LIMIT = Gauge(
    "imgpipe_ingest_call_limit",
    "Images this replica has in processor calls at once now (IMGPIPE_MAX_IN_FLIGHT at most; "
    "lower while processors answer that they are full).",
)
QUEUE_DEPTH = Gauge("imgpipe_ingest_queue_depth", "Images queued (all replicas), sampled.")
OLDEST_QUEUED_SECONDS = Gauge(
    "imgpipe_ingest_oldest_queued_seconds",
    "Age of the oldest active request that still has queued images (0 when none), sampled.",
)
WEBHOOK_BACKLOG = Gauge(
    "imgpipe_ingest_webhook_backlog", "Webhook deliveries not yet done (all replicas), sampled."
)
LEASE_EXPIRIES = Counter(
    "imgpipe_ingest_lease_expiries", "Leases that expired and were returned by the sweeper."
)
FENCED_RESULTS = Counter(
    "imgpipe_ingest_fenced_results",
    "Results dropped because their lease was no longer current (stale or cancelled).",
)
WATCHERS = Gauge("imgpipe_ingest_watchers", "WatchStatus and SSE streams open on this replica.")
REQUESTS_SUBMITTED = Counter("imgpipe_ingest_requests_submitted", "Requests accepted by Submit.")
SOURCES_REUSED = Counter(
    "imgpipe_ingest_sources_reused",
    "Images whose unchanged source's earlier output was copied instead of encoded again.",
)
HOST_THROTTLES = Counter(
    "imgpipe_ingest_host_throttles",
    "Attempts a source host answered 429 or 503 to (delayed, not counted as attempts).",
)
# Labelled by tenant: the configured tenants' names (a bounded set), "tok_..." for
# IMGPIPE_AUTH_TOKENS, "" when tokens are off.
TENANT_IMAGES_SUBMITTED = Counter(
    "imgpipe_ingest_tenant_images_submitted", "Images accepted by Submit, per tenant.", ["tenant"]
)
TENANT_SUBMITS_REFUSED = Counter(
    "imgpipe_ingest_tenant_submits_refused",
    "Submits refused for a tenant's rate limit or queued-images quota.",
    ["tenant", "reason"],
)
