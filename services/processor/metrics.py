"""The processor's Prometheus metrics (the default registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IMAGES = Counter(
    "imgpipe_processor_images",
    "Images (of ProcessImage and ProcessImages calls) by outcome: succeeded, reused, or the "
    "error that ended them.",
    ["outcome"],
)
IN_FLIGHT = Gauge("imgpipe_processor_in_flight", "Images being handled now.")
IMAGE_SECONDS = Histogram(
    "imgpipe_processor_image_seconds",
    "Time to handle one image (fetch, compress, store), whatever call carried it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INPUT_BYTES = Counter("imgpipe_processor_input_bytes", "Bytes of source images fetched.")
OUTPUT_BYTES = Counter("imgpipe_processor_output_bytes", "Bytes of JPEG stored.")
FETCH_SECONDS = Histogram(
    "imgpipe_processor_fetch_seconds",
    "Time to fetch a source image.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMPRESS_SECONDS = Histogram(
    "imgpipe_processor_compress_seconds",
    "Time to decode and encode an image, in a codec worker.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CODEC_RESTARTS = Counter(
    "imgpipe_processor_codec_restarts",
    "Codec workers replaced, by reason: cancelled (the call ended first), cpu_budget, died.",
    ["reason"],
)
