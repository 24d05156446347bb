"""Nothing lost: processes are killed, PostgreSQL restarts, storage goes away — and every
image still reaches a terminal state exactly once. Real processes throughout."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from devstack.image_server import ImageServer
from devstack.ports import free_port
from devstack.postgres import PostgresServer, PrivateCluster
from devstack.stack import Stack
from imgpipe.v1 import ingest_pb2, requests_pb2
from support.batch import (
    FAULT_ENV,
    RESULT_CSV_MASK,
    done_count,
    masked_result_csv,
    query,
    serve_batch,
    status,
    stub,
    submit,
    terminal_events_per_image,
    wait_done,
    wait_terminal,
)
from support.csv_files import batch_csv
from support.eventually import eventually_blocking

BATCH = 120
LEASED = "SELECT id FROM images WHERE state = 'PROCESSING'"
RETRIES = "SELECT coalesce(max(attempts), 0) AS n FROM images WHERE request_id = $1"
# The most times one image of the request went back to the queue (a QUEUED event each).
MOST_HANDBACKS = (
    "SELECT coalesce(max(n), 0) AS n FROM (SELECT count(*) AS n FROM events"
    " WHERE request_id = $1 AND image_state = 'QUEUED' GROUP BY serial_number, idx) q"
)


def stack_for(
    database_url: str, storage_env: dict[str, str], tmp_path: Path, ingests: int = 1
) -> Stack:
    return Stack(
        database_url, storage_env, log_dir=tmp_path / "logs", extra_env=FAULT_ENV, ingests=ingests
    )


def s3_keys(env: dict[str, str], request_id: str) -> set[str]:
    bucket, _, prefix = env["IMGPIPE_STORAGE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/{request_id}/"
    )
    return {
        masked_result_csv(o["Key"].removeprefix(f"{prefix}/"))
        for page in pages
        for o in page.get("Contents", [])
    }


def expected_keys(request_id: str, count: int, per_row: int = 4) -> set[str]:
    keys = {f"{request_id}{RESULT_CSV_MASK}"}
    for n in range(count):
        keys.add(f"{request_id}/{n // per_row + 1}-{n % per_row}.jpg")
    return keys


def assert_complete_exactly_once(dsn: str, target: str, request_id: str, count: int) -> None:
    final = wait_terminal(target, request_id)
    failed = [
        (image.input_url, image.attempts, image.error)
        for product in final.products
        for image in product.images
        if image.state != requests_pb2.IMAGE_STATE_SUCCEEDED
    ]
    assert final.state == requests_pb2.REQUEST_STATE_COMPLETED, failed
    assert final.progress.succeeded_images == count
    terminal = terminal_events_per_image(dsn, request_id)
    assert len(terminal) == count
    assert set(terminal.values()) == {1}


def test_kill_9_of_a_processor_mid_batch_loses_nothing(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    urls = serve_batch(image_server, BATCH)
    with stack_for(database_url, s3_env, tmp_path) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 20)
        stack.kill("processor-1", signal.SIGKILL)
        assert_complete_exactly_once(database_url, stack.ingest_target, request_id, BATCH)
    assert s3_keys(s3_env, request_id) == expected_keys(request_id, BATCH)
    extra_calls = sum(image_server.hits.values()) - BATCH
    print(f"\nprocessor kill -9: {extra_calls} extra source fetches for {BATCH} images")


def test_kill_9_of_ingest_then_restart_completes(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    urls = serve_batch(image_server, BATCH)
    with stack_for(database_url, s3_env, tmp_path) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 20)
        stack.kill("ingest", signal.SIGKILL)
        stack.wait("ingest")
        stuck = [r["id"] for r in query(database_url, LEASED)]
        assert stuck  # the dead ingest held leases
        stack.restart("ingest")
        eventually_blocking(
            lambda: query(database_url, LEASED + " AND id = ANY($1)", stuck),
            lambda still_leased: not still_leased,
            what="the dead ingest's leases returned",
        )
        assert_complete_exactly_once(database_url, stack.ingest_target, request_id, BATCH)
    assert s3_keys(s3_env, request_id) == expected_keys(request_id, BATCH)


def test_two_ingest_replicas_never_process_an_image_twice(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    urls = serve_batch(image_server, BATCH, delay=0.02)
    with stack_for(database_url, s3_env, tmp_path, ingests=2) as stack:
        first = submit(stack.ingest_target, batch_csv(urls[: BATCH // 2]))
        second = submit(stack.services["ingest-2"].grpc_target, batch_csv(urls[BATCH // 2 :]))
        for request_id in (first, second):
            assert_complete_exactly_once(database_url, stack.ingest_target, request_id, BATCH // 2)
        owners = query(
            database_url,
            "SELECT count(DISTINCT lease_owner) AS n FROM images WHERE lease_owner IS NOT NULL",
        )
    assert owners[0]["n"] == 0  # every lease released
    # One fetch per image: no image was ever processed by two attempts.
    assert sorted(image_server.hits.values()) == [1] * BATCH


def test_postgres_restart_mid_batch_delays_but_loses_nothing(
    pg_server: PostgresServer,
    database_url: str,
    s3_env: dict[str, str],
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    if not isinstance(pg_server, PrivateCluster):
        pytest.skip("needs the private PostgreSQL cluster (DATABASE_URL was given)")
    urls = serve_batch(image_server, BATCH)
    with stack_for(database_url, s3_env, tmp_path) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 20)
        pg_server.restart()
        assert_complete_exactly_once(database_url, stack.ingest_target, request_id, BATCH)
    assert s3_keys(s3_env, request_id) == expected_keys(request_id, BATCH)


@pytest.fixture
def own_s3(s3_env: dict[str, str]) -> Iterator[tuple[dict[str, str], ThreadedMotoServer, int]]:
    """An S3 server of this test's own, so it can be stopped and started again."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = s3_env | {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    try:
        yield env, server, port
    finally:
        server.stop()


def test_storage_down_for_a_while_is_retried(
    database_url: str,
    own_s3: tuple[dict[str, str], ThreadedMotoServer, int],
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    env, server, port = own_s3
    urls = serve_batch(image_server, 40)
    with stack_for(database_url, env, tmp_path) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 5)
        server.stop()
        eventually_blocking(  # storage failures retried, with backoff, while it is down
            lambda: query(database_url, RETRIES, request_id)[0]["n"],
            lambda attempts: attempts >= 3,
            what="an image on its third attempt while S3 is down",
        )
        restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        restarted.start()
        try:
            assert_complete_exactly_once(database_url, stack.ingest_target, request_id, 40)
            assert s3_keys(env, request_id) == expected_keys(request_id, 40)
        finally:
            restarted.stop()


def test_sigterm_drains_every_process_and_leaves_nothing_leased(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    urls = serve_batch(image_server, BATCH, delay=0.2)
    with stack_for(database_url, s3_env, tmp_path) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 10)
        stack.kill("ingest", signal.SIGTERM)
        assert stack.wait("ingest", timeout=10) == 0
        leased = query(database_url, "SELECT count(*) AS n FROM images WHERE state = 'PROCESSING'")[
            0
        ]["n"]
        assert leased == 0
        for name in ("processor-1", "processor-2"):
            stack.kill(name, signal.SIGTERM)
            assert stack.wait(name, timeout=10) == 0
        stack.restart("processor-1")
        stack.restart("processor-2")
        stack.restart("ingest")
        assert_complete_exactly_once(database_url, stack.ingest_target, request_id, BATCH)


def test_transient_failures_are_retried_and_permanent_ones_are_not(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    flaky, good = serve_batch(image_server, 2)
    # 500 and 502 spend attempts; a 429 or 503 would be a throttle, retried for free.
    image_server.fail_first("/batch/0.jpg", 500, 502)
    missing = image_server.url("/missing.jpg")
    csv = batch_csv([flaky, missing, good])
    # Attempts are counted here, so no call may run out of time: on a loaded machine (the
    # suite on parallel workers) a fresh processor's first image can take longer than
    # FAULT_ENV's 3 s, and that spent a second attempt on the good image.
    env = {**FAULT_ENV, "IMGPIPE_CALL_TIMEOUT": "30", "IMGPIPE_LEASE_SECONDS": "40"}
    with Stack(database_url, s3_env, log_dir=tmp_path / "logs", extra_env=env) as stack:
        request_id = submit(stack.ingest_target, csv)
        final = wait_terminal(stack.ingest_target, request_id)
    assert final.state == requests_pb2.REQUEST_STATE_PARTIALLY_COMPLETED
    flaky_image, missing_image, good_image = final.products[0].images
    assert (flaky_image.state, flaky_image.attempts) == (requests_pb2.IMAGE_STATE_SUCCEEDED, 3)
    assert (missing_image.state, missing_image.attempts) == (requests_pb2.IMAGE_STATE_FAILED, 1)
    assert "404" in missing_image.error
    assert "not retried" in missing_image.error
    assert (good_image.state, good_image.attempts) == (requests_pb2.IMAGE_STATE_SUCCEEDED, 1)


class WebhookReceiver:
    """A loopback receiver that answers 503 until told to accept; records every call."""

    def __init__(self) -> None:
        self.accepting = False
        self.calls: list[tuple[int, str]] = []  # (status answered, webhook-id)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                status = 200 if receiver.accepting else 503
                receiver.calls.append((status, self.headers.get("webhook-id", "")))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_crash_between_terminal_and_webhook_delivery_still_delivers(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    receiver = WebhookReceiver()
    env = {
        **FAULT_ENV,
        "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "IMGPIPE_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "IMGPIPE_WEBHOOK_RETRY_CAP_SECONDS": "1",
        # The attempt the kill interrupts holds its row for this + 10 s (the lease); with
        # the default 10 s timeout that left a few seconds of the wait below.
        "IMGPIPE_WEBHOOK_TIMEOUT": "2",
    }
    urls = serve_batch(image_server, 4)
    try:
        with Stack(database_url, s3_env, log_dir=tmp_path / "logs", extra_env=env) as stack:
            request = ingest_pb2.SubmitRequest(csv=batch_csv(urls), webhook_url=receiver.url)
            request_id = stub(stack.ingest_target).Submit(request, timeout=30).request_id
            eventually_blocking(lambda: receiver.calls, what="a first delivery attempt", within=60)
            stack.kill("ingest", signal.SIGKILL)
            stack.wait("ingest")
            receiver.accepting = True
            stack.restart("ingest")
            final = eventually_blocking(
                lambda: status(stack.ingest_target, request_id),
                lambda s: s.webhook.state == ingest_pb2.WebhookDelivery.STATE_DELIVERED,
                what="delivery after restart",
                within=60,
            )
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    assert final.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert receiver.calls[-1][0] == 200
    assert {webhook_id for _, webhook_id in receiver.calls} == {final.webhook.delivery_id}


def test_every_processor_down_for_a_while_delays_work_without_failing_it(
    database_url: str, s3_env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    urls = serve_batch(image_server, 40)
    # Three attempts would be spent in seconds if an unreachable processor counted.
    env = {**FAULT_ENV, "IMGPIPE_RETRY_MAX_ATTEMPTS": "3"}
    with Stack(database_url, s3_env, log_dir=tmp_path / "logs", extra_env=env) as stack:
        request_id = submit(stack.ingest_target, batch_csv(urls))
        wait_done(stack.ingest_target, request_id, 5)
        for name in ("processor-1", "processor-2"):
            stack.kill(name, signal.SIGKILL)
            stack.wait(name)
        # An image handed back more often than its attempts allow: unreachable calls
        # do not count.
        eventually_blocking(
            lambda: query(database_url, MOST_HANDBACKS, request_id)[0]["n"],
            lambda handbacks: handbacks > int(env["IMGPIPE_RETRY_MAX_ATTEMPTS"]),
            what="an image handed back more than its attempts while no processor is up",
            within=60,
        )
        assert done_count(stack.ingest_target, request_id) < 40
        stack.restart("processor-1")
        stack.restart("processor-2")
        assert_complete_exactly_once(database_url, stack.ingest_target, request_id, 40)
