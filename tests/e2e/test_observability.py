"""What operators see: Prometheus families on /metrics whose values move with a batch, every
series the Grafana dashboard and the alert rules select (deploy/observability), and JSON log
lines that carry the request id."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devstack.image_server import ImageServer
from devstack.stack import Stack
from support.batch import FAULT_ENV, serve_batch, submit, wait_terminal
from support.csv_files import batch_csv
from support.promql_files import expressions, selectors

INGEST_FAMILIES = {
    "grpc_server_handled",
    "grpc_server_handling_seconds",
    "imgpipe_ingest_attempts",
    "imgpipe_ingest_image_outcomes",
    "imgpipe_ingest_in_flight",
    "imgpipe_ingest_call_limit",
    "imgpipe_ingest_queue_depth",
    "imgpipe_ingest_lease_expiries",
    "imgpipe_ingest_fenced_results",
    "imgpipe_ingest_watchers",
    "imgpipe_ingest_oldest_queued_seconds",
    "imgpipe_ingest_webhook_backlog",
}
PROCESSOR_FAMILIES = {
    "grpc_server_handled",
    "imgpipe_processor_images",
    "imgpipe_processor_in_flight",
    "imgpipe_processor_input_bytes",
    "imgpipe_processor_output_bytes",
    "imgpipe_processor_compress_seconds",
}


def scrape_series(base_url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample: name, labels, value."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(base_url: str) -> dict[str, float]:
    """Every sample as 'name{labels}' -> value."""
    samples = {}
    for name, labels, value in scrape_series(base_url):
        joined = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        samples[f"{name}{{{joined}}}"] = value
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


def test_every_series_the_dashboard_and_alerts_select_is_served_after_a_batch(
    database_url: str, image_server: ImageServer, tmp_path: Path
) -> None:
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    urls = [*serve_batch(image_server, 3, 0), image_server.url("/gone.jpg")]  # one fails
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", extra_env=FAULT_ENV
    ) as stack:
        wait_terminal(stack.ingest_target, submit(stack.ingest_target, batch_csv(urls)))
        served = scrape_series(stack.ingest_http)
        served += scrape_series(stack.services["processor-1"].http_url)
    missing = [
        f"{where}: {selector.name} {selector.matchers}"
        for where, expr in expressions().items()
        for selector in selectors(expr)
        if not any(n == selector.name and selector.matches(labels) for n, labels, _ in served)
    ]
    assert not missing, "selected by the dashboard or the rules, not served:\n" + "\n".join(missing)
