"""The `imgpipe` CLI as a process against a running stack (ingest and a processor as
processes, an S3 server, a loopback image server), and against an in-process ingest with
TLS, mutual TLS and tokens."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.image_server import ImageServer
from devstack.postgres import PostgresServer
from devstack.sample_images import sample
from devstack.stack import Stack
from support.batch import object_path
from support.csv_files import RESULT_HEADER, products_csv
from support.eventually import eventually
from support.ingest_harness import IngestFactory

CLI = str(Path(sys.executable).parent / "imgpipe")
# The CLI reads these; the developer's shell must not change what a test does.
CLI_VARIABLES = ("IMGPIPE_", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLI_VARIABLES)}
    return {**env, **extra}


def imgpipe(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    done = subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env or cli_env(),
        stdin=subprocess.DEVNULL,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def imgpipe_on_a_terminal(*args: str, timeout: float = 60) -> Run:
    """stderr on a pseudo-terminal, as a person at a terminal has it; stdout a pipe."""
    controller, terminal = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="140")
    process = subprocess.Popen(
        [CLI, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    screen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed its end
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        reader.join(timeout=5)
        os.close(controller)
    return Run(process.returncode, stdout.decode(), screen.decode(errors="replace"))


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def stack(
    pg_server: PostgresServer, database_url: str, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[Stack]:
    with Stack(database_url, s3_env, processors=1, log_dir=tmp_path / "logs") as running:
        yield running


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_bytes(products_csv(rows))
    return path


def photos(image_server: ImageServer, count: int) -> list[str]:
    return [
        image_server.add(f"/photos/{i}.jpg", sample(160 + 8 * i, 120, "JPEG", seed=i))
        for i in range(count)
    ]


def test_submit_watch_completes_with_a_live_bar_then_status_and_result(
    stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = photos(image_server, 6)
    products = write_csv(tmp_path / "products.csv", [urls[0:2], urls[2:5], urls[5:6]])
    target = ("--target", stack.ingest_target)

    run = imgpipe_on_a_terminal(*target, "submit", str(products), "--watch", "--quality", "60")
    assert run.code == 0, run.stderr + stack.tails()
    request_id = run.stdout.splitlines()[0]
    assert str(uuid.UUID(request_id)) == request_id
    assert "\x1b[" in run.stderr  # a live display, redrawn in place
    assert "6/6" in run.stderr
    assert "COMPLETED: 6 of 6 images succeeded" in run.stderr

    status = imgpipe(*target, "status", request_id)
    assert status.code == 0, status.stderr
    assert "state     COMPLETED" in status.stdout
    assert "images    6: 6 succeeded, 0 failed" in status.stdout
    assert "quality   60" in status.stdout
    as_json = imgpipe(*target, "status", request_id, "--json")
    (document,) = json_lines(as_json.stdout)
    assert document["state"] == "REQUEST_STATE_COMPLETED"
    assert document["progress"] == {
        "total_images": 6,
        "succeeded_images": 6,
        "failed_images": 0,
        "cancelled_images": 0,
    }

    out = tmp_path / "result.csv"
    result = imgpipe(*target, "result", request_id, "-o", str(out))
    assert result.code == 0, result.stderr
    table = list(csv.reader(io.StringIO(out.read_text("utf-8"))))
    assert table[0] == RESULT_HEADER
    assert [row[2].split(",") for row in table[1:]] == [urls[0:2], urls[2:5], urls[5:6]]
    products_json = document["products"]
    assert isinstance(products_json, list)
    # The stored CSV names each object unsigned (s3://BUCKET/KEY); GetStatus signs it when
    # read (http://ENDPOINT/BUCKET/KEY?X-Amz-...): the same objects.
    for row, product in zip(table[1:], products_json, strict=True):
        stored = [object_path(url) for url in row[3].split(",")]
        assert stored == [object_path(image["output_url"]) for image in product["images"]]
        assert all(url.startswith("s3://") for url in row[3].split(","))


def test_a_partially_failed_request_exits_1_and_lists_its_failures(
    stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = photos(image_server, 3)
    missing = image_server.url("/gone/404.jpg")
    products = write_csv(tmp_path / "products.csv", [urls[0:2], [missing, urls[2]]])
    target = ("--target", stack.ingest_target)

    run = imgpipe(*target, "--json", "submit", str(products), "--watch")
    assert run.code == 1, run.stderr + stack.tails()
    submitted, *events = json_lines(run.stdout)
    assert submitted["image_count"] == 4
    request_id = str(submitted["request_id"])
    assert events[0]["snapshot"] is True
    sequences = [int(str(e["sequence"])) for e in events]
    assert sequences == sorted(set(sequences))
    assert events[-1]["state"] == "REQUEST_STATE_PARTIALLY_COMPLETED"
    failed = [e["image"] for e in events if isinstance(e.get("image"), dict)]
    assert {"serial_number": 2, "index": 0} in [
        {"serial_number": i["serial_number"], "index": i["index"]}  # type: ignore[index]
        for i in failed
        if i["state"] == "IMAGE_STATE_FAILED"  # type: ignore[index]
    ]

    # Watching it again, for a person: the outcome and the failures, exit 1.
    again = imgpipe(*target, "watch", request_id)
    assert again.code == 1
    assert "PARTIALLY_COMPLETED: 3 of 4 images succeeded, 1 failed" in again.stderr
    assert "1 image(s) failed:" in again.stderr
    assert f"#2-0 {missing}" in again.stderr
    assert "404" in again.stderr
    assert again.stdout == ""


def test_cancel_a_request_whose_images_are_slow(
    stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = photos(image_server, 4)
    for i in range(4):  # unavailable for a long while: retried with backoff, never done
        image_server.fail_first(f"/photos/{i}.jpg", *[503] * 50)
    products = write_csv(tmp_path / "products.csv", [urls[0:2], urls[2:4]])
    target = ("--target", stack.ingest_target)

    submitted = imgpipe(*target, "submit", str(products))
    assert submitted.code == 0, submitted.stderr
    request_id = submitted.stdout.strip()
    assert "submitted 2 products, 4 images" in submitted.stderr

    status = imgpipe(*target, "status", request_id, "--json")
    assert json_lines(status.stdout)[0]["state"] in (
        "REQUEST_STATE_QUEUED",
        "REQUEST_STATE_PROCESSING",
    )
    cancelled = imgpipe(*target, "cancel", request_id)
    assert cancelled.code == 0, cancelled.stderr
    assert f"{request_id} CANCELLED" in cancelled.stdout
    twice = imgpipe(*target, "cancel", request_id)
    assert twice.code == 2
    assert "FAILED_PRECONDITION" in twice.stderr

    watched = imgpipe(*target, "watch", request_id)
    assert watched.code == 1
    assert "CANCELLED" in watched.stderr

    unknown = imgpipe(*target, "status", str(uuid.uuid4()))
    assert unknown.code == 2
    assert "NOT_FOUND" in unknown.stderr
    malformed = imgpipe(*target, "status", "not-a-uuid")
    assert malformed.code == 2
    assert "request_id: not a UUID" in malformed.stderr


async def test_tls_mutual_tls_and_a_token(
    start_ingest: IngestFactory, tmp_path: Path, pki: dict[str, Path]
) -> None:
    """Against an in-process ingest serving TLS (client certificates required) and tokens."""
    env = {
        "IMGPIPE_RETRY_BASE_SECONDS": "30",
        "IMGPIPE_RETRY_CAP_SECONDS": "60",
        "IMGPIPE_TLS_CERT": str(pki["server"]),
        "IMGPIPE_TLS_KEY": str(pki["server_key"]),
        "IMGPIPE_TLS_CLIENT_CA": str(pki["ca"]),
        "IMGPIPE_AUTH_TOKENS": "alpha-token",
        # Result URLs this machine cannot fetch, so `result` goes through ingest's HTTP side.
        "IMGPIPE_PUBLIC_BASE_URL": "ftp://storage.invalid/objects",
    }
    products = write_csv(tmp_path / "products.csv", [["https://img.example/a.jpg"]])
    ingest = await start_ingest(env)
    http_url = f"http://127.0.0.1:{ingest.app.http_port}"
    tls = ["--ca-cert", str(pki["ca"])]
    mtls = [*tls, "--client-cert", str(pki["client"]), "--client-key", str(pki["client_key"])]

    async def cli(*args: str, env: dict[str, str] | None = None) -> Run:
        return await asyncio.to_thread(imgpipe, "--target", ingest.target, *args, env=env)

    submitted = await cli(*mtls, "--token", "alpha-token", "submit", str(products))
    assert submitted.code == 0, submitted.stderr
    request_id = submitted.stdout.strip()

    no_token = await cli(*mtls, "status", request_id)
    assert no_token.code == 2
    assert "UNAUTHENTICATED" in no_token.stderr
    no_client_cert = await cli(*tls, "--token", "alpha-token", "status", request_id)
    assert no_client_cert.code == 2
    assert "UNAVAILABLE" in no_client_cert.stderr
    plaintext = await cli("--token", "alpha-token", "status", request_id)
    assert plaintext.code == 2

    # Everything from the environment instead, options after the command too.
    from_env = cli_env(
        IMGPIPE_TLS_CA=str(pki["ca"]),
        IMGPIPE_TLS_CLIENT_CERT=str(pki["client"]),
        IMGPIPE_TLS_CLIENT_KEY=str(pki["client_key"]),
        IMGPIPE_TOKEN="alpha-token",
    )
    cancelled = await cli("cancel", request_id, "--json", env=from_env)
    assert cancelled.code == 0, cancelled.stderr
    assert json_lines(cancelled.stdout)[0]["state"] == "REQUEST_STATE_CANCELLED"

    await eventually(  # the result CSV is written just after the cancel
        lambda: cli("status", request_id, "--json", env=from_env),
        lambda status: bool(json_lines(status.stdout)[0]["result_csv_url"]),
        what="the cancelled request's result CSV",
    )
    out = tmp_path / "result.csv"
    unreachable = await cli("result", request_id, "-o", str(out), env=from_env)
    assert unreachable.code == 2
    assert "--http-url" in unreachable.stderr
    result = await cli("result", request_id, "-o", str(out), "--http-url", http_url, env=from_env)
    assert result.code == 0, result.stderr
    table = list(csv.reader(io.StringIO(out.read_text("utf-8"))))
    assert table == [RESULT_HEADER, ["1", "Product 1", "https://img.example/a.jpg", ""]]


@pytest.fixture
def quick_stack(
    pg_server: PostgresServer, database_url: str, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[Stack]:
    """Short grace and retry delays, and retries without end: restarts take a second, and
    a failing image is asked for again within a second until its source heals."""
    quick = {
        "IMGPIPE_GRACE_SECONDS": "1",
        "IMGPIPE_RETRY_BASE_SECONDS": "0.5",
        "IMGPIPE_RETRY_CAP_SECONDS": "1",
        "IMGPIPE_RETRY_MAX_ATTEMPTS": "1000",
    }
    with Stack(
        database_url, s3_env, processors=1, log_dir=tmp_path / "logs", extra_env=quick
    ) as running:
        yield running


def test_watch_resumes_across_an_ingest_restart(
    quick_stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    urls = photos(image_server, 4)
    paths = [f"/photos/{i}.jpg" for i in range(4)]
    for path in paths:  # retried until healed below, so the watch is on across the restart
        image_server.fail_first(path, *[503] * 1000)
    products = write_csv(tmp_path / "products.csv", [urls])
    target = ("--target", quick_stack.ingest_target)
    request_id = imgpipe(*target, "submit", str(products)).stdout.strip()

    watching = subprocess.Popen(
        [CLI, *target, "watch", request_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert watching.stderr is not None
        first = watching.stderr.readline()  # the watch is on
        assert first.startswith("[")
        quick_stack.restart("ingest")
        for path in paths:
            image_server.heal(path)
        _, rest = watching.communicate(timeout=60)
    finally:
        watching.kill()
    stderr = first + rest
    assert watching.returncode == 0, stderr + quick_stack.tails()
    assert "resuming after event" in stderr
    sequences = [int(line[1:6]) for line in stderr.splitlines() if line.startswith("[")]
    assert sequences == list(range(sequences[0], sequences[-1] + 1))  # none twice, none lost
    assert "COMPLETED: 4 of 4 images succeeded" in stderr
