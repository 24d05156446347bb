"""What operators see: Prometheus families on /metrics whose values move with a batch, and
JSON log lines that carry the request id."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devstack.image_server import ImageServer
from devstack.stack import Stack
from support.batch import FAULT_ENV, serve_batch, submit, wait_terminal
from support.csv_files import batch_csv

INGEST_FAMILIES = {
    "grpc_server_handled",
    "grpc_server_handling_seconds",
    "imgpipe_ingest_attempts",
    "imgpipe_ingest_image_outcomes",
    "imgpipe_ingest_in_flight",
    "imgpipe_ingest_queue_depth",
    "imgpipe_ingest_lease_expiries",
    "imgpipe_ingest_fenced_results",
    "imgpipe_ingest_watchers",
}
PROCESSOR_FAMILIES = {
    "grpc_server_handled",
    "imgpipe_processor_images",
    "imgpipe_processor_in_flight",
    "imgpipe_processor_input_bytes",
    "imgpipe_processor_output_bytes",
    "imgpipe_processor_compress_seconds",
}


def scrape(base_url: str) -> dict[str, float]:
    """Every sample as 'name{labels}' -> value."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def families(samples: dict[str, float]) -> set[str]:
    names = {key.split("{", 1)[0] for key in samples}
    return {n.removesuffix("_total").removesuffix("_count").removesuffix("_sum") for n in names}


def test_metrics_move_with_a_batch_and_logs_carry_the_request_id(
    database_url: str, image_server: ImageServer, tmp_path: Path
) -> None:
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    env = {**FAULT_ENV, "IMGPIPE_LOG_LEVEL": "INFO"}
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", extra_env=env
    ) as stack:
        processor_http = stack.services["processor-1"].http_url
        before = scrape(stack.ingest_http), scrape(processor_http)
        request_id = submit(stack.ingest_target, batch_csv(serve_batch(image_server, 6, 0)))
        wait_terminal(stack.ingest_target, request_id)
        ingest_after, processor_after = scrape(stack.ingest_http), scrape(processor_http)
    assert families(ingest_after) >= INGEST_FAMILIES
    assert families(processor_after) >= PROCESSOR_FAMILIES
    assert (
        ingest_after["imgpipe_ingest_attempts_total{}"]
        - before[0].get("imgpipe_ingest_attempts_total{}", 0)
        == 6
    )
    assert ingest_after["imgpipe_ingest_image_outcomes_total{outcome=succeeded}"] == 6
    submit_ok = (
        "grpc_server_handled_total"
        "{grpc_code=OK,grpc_method=Submit,grpc_service=imgpipe.v1.IngestService}"
    )
    assert ingest_after[submit_ok] == before[0].get(submit_ok, 0) + 1
    assert processor_after["imgpipe_processor_images_total{outcome=succeeded}"] == 6
    assert processor_after["imgpipe_processor_output_bytes_total{}"] > 0

    lines = [
        json.loads(line)
        for line in (tmp_path / "logs" / "ingest.log").read_text().splitlines()
        if line.startswith("{")
    ]
    rpc_lines = [line for line in lines if line.get("msg") == "rpc"]
    assert any(
        line.get("request_id") == request_id and line.get("code") == "OK" for line in rpc_lines
    )
    assert any(
        line.get("request_id") == request_id for line in lines if "result CSV" in line["msg"]
    )
