"""The real grpcurl binary against both servers: reflection (list, describe), calls with
JSON bodies, a streamed WatchStatus, and health checks — no .proto at hand."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.image_server import ImageServer
from devstack.stack import Stack
from support.batch import FAULT_ENV, serve_batch
from support.csv_files import batch_csv

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(target: str, *args: str, body: dict[str, object] | None = None) -> str:
    command = [GRPCURL, "-plaintext"]
    if body is not None:
        command += ["-d", json.dumps(body)]
    result = subprocess.run(
        [*command, target, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def json_stream(text: str) -> list[dict[str, object]]:
    """grpcurl prints one pretty JSON object per streamed message."""
    decoder, messages, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        message, position = decoder.raw_decode(text, position)
        messages.append(message)
        while position < len(text) and text[position].isspace():
            position += 1
    return messages


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", extra_env=FAULT_ENV
    ) as running:
        yield running


def test_grpcurl_lists_describes_calls_and_checks_health(
    stack: Stack, image_server: ImageServer
) -> None:
    ingest, processor = stack.ingest_target, stack.processor_targets[0]
    listed = grpcurl(ingest, "list").split()
    assert {
        "imgpipe.v1.IngestService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(listed)
    assert "imgpipe.v1.ProcessorService" in grpcurl(processor, "list").split()
    described = grpcurl(ingest, "describe", "imgpipe.v1.IngestService")
    assert "rpc WatchStatus ( .imgpipe.v1.WatchStatusRequest ) returns ( stream" in described
    assert "bytes csv = 1;" in grpcurl(ingest, "describe", "imgpipe.v1.SubmitRequest")

    csv = batch_csv(serve_batch(image_server, 3, delay=0))
    submitted = json.loads(
        grpcurl(
            ingest,
            "imgpipe.v1.IngestService/Submit",
            body={"csv": base64.b64encode(csv).decode(), "options": {"quality": 40}},
        )
    )
    request_id = str(submitted["request_id"])
    assert submitted["image_count"] == 3

    watched = json_stream(
        grpcurl(ingest, "imgpipe.v1.IngestService/WatchStatus", body={"request_id": request_id})
    )
    assert watched[0]["snapshot"] is True
    assert watched[-1]["state"] == "REQUEST_STATE_COMPLETED"
    sequences = [int(str(m["sequence"])) for m in watched]
    assert sequences == sorted(set(sequences))

    status = json.loads(
        grpcurl(ingest, "imgpipe.v1.IngestService/GetStatus", body={"request_id": request_id})
    )
    assert status["state"] == "REQUEST_STATE_COMPLETED"
    assert status["options"]["quality"] == 40
    assert len(status["products"][0]["images"]) == 3

    for target in (ingest, processor):
        health = json.loads(grpcurl(target, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}
