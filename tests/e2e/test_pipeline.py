"""End to end: the console scripts as processes (ingest, two processors), an S3 server over
HTTP, a loopback image server, and the `imgpipe` CLI, on a CSV of 23 images."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import grpc
import pytest
from PIL import Image

from devstack.image_server import ImageServer
from devstack.postgres import PostgresServer
from devstack.sample_images import sample
from devstack.stack import Stack
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2
from support.batch import RESULT_CSV_MASK, masked_result_csv, object_path
from support.csv_files import RESULT_HEADER

CLI = str(Path(sys.executable).parent / "imgpipe")

# (path, format, width, height); the sizes differ so every output can be matched to its input.
SOURCES = [
    *[(f"/photos/{i}.jpg", "JPEG", 320 + 16 * i, 240 + 8 * i) for i in range(12)],
    *[(f"/alpha/{i}.png", "PNG", 200 + 10 * i, 150) for i in range(3)],
    *[(f"/anim/{i}.gif", "GIF", 180, 120 + 10 * i) for i in range(2)],
    *[(f"/web/{i}.webp", "WEBP", 256, 128 + 4 * i) for i in range(2)],
    ("/misc/0.bmp", "BMP", 128, 96),
    ("/misc/1.tiff", "TIFF", 144, 96),
]
MISSING = "/gone/404.jpg"


@pytest.fixture
def images(image_server: ImageServer) -> dict[str, tuple[str, bytes, tuple[int, int]]]:
    served = {}
    for n, (path, fmt, width, height) in enumerate(SOURCES):
        data = sample(width, height, fmt, seed=n)
        served[image_server.add(path, data)] = (fmt, data, (width, height))
    return served


def products_csv(urls: list[str], missing: str) -> tuple[bytes, list[list[str]]]:
    """Four URLs per product (the 404 in product 3, a repeat in product 5), in the forms
    DESIGN.md allows: a quoted cell with commas and newlines, and trailing cells."""
    rows = [urls[0:4], urls[4:8], [urls[8], missing, urls[9]], urls[10:14], urls[14:18]]
    rows.append([*urls[18:21], urls[18]])
    out = io.StringIO()
    out.write("\ufeffS. No.,Product Name,Input Image Urls\r\n")
    for n, row in enumerate(rows, start=1):
        if n % 2:
            cell = ",\n ".join(row)
            out.write(f'{n * 10},"Product {n}, size {n}","{cell}"\r\n')
        else:
            out.write(f"{n * 10},Product {n}," + ",".join(row) + "\r\n")
    return out.getvalue().encode(), rows


@pytest.fixture
def stack(
    pg_server: PostgresServer, database_url: str, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[Stack]:
    with Stack(database_url, s3_env, processors=2, log_dir=tmp_path / "logs") as running:
        yield running


def test_csv_in_compressed_images_out(
    stack: Stack,
    images: dict[str, tuple[str, bytes, tuple[int, int]]],
    image_server: ImageServer,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    urls = list(images)
    data, rows = products_csv(urls, image_server.url(MISSING))
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(data)

    submit = subprocess.run(
        [CLI, "--target", stack.ingest_target, "submit", str(csv_path), "--watch"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # One image is missing: the request is PARTIALLY_COMPLETED, so the CLI exits non-zero,
    # having printed the failure.
    assert submit.returncode == 1, submit.stderr + stack.tails()
    request_id = submit.stdout.strip()
    assert "PARTIALLY_COMPLETED" in submit.stderr
    assert "1 image(s) failed" in submit.stderr
    assert MISSING in submit.stderr

    with grpc.insecure_channel(stack.ingest_target) as channel:
        status = ingest_pb2_grpc.IngestServiceStub(channel).GetStatus(
            ingest_pb2.GetStatusRequest(request_id=request_id)
        )
    assert status.state == requests_pb2.REQUEST_STATE_PARTIALLY_COMPLETED
    total = sum(len(r) for r in rows)
    assert total == 23
    assert (
        status.progress.total_images,
        status.progress.succeeded_images,
        status.progress.failed_images,
    ) == (total, total - 1, 1)
    assert [p.serial_number for p in status.products] == [10, 20, 30, 40, 50, 60]
    assert status.products[0].product_name == "Product 1, size 1"
    check_outputs(status, rows, images, s3_env)
    check_result_csv(stack, request_id, status, rows)
    codes = stack.stop()
    assert set(codes.values()) == {0}, codes


def check_outputs(
    status: ingest_pb2.GetStatusResponse,
    rows: list[list[str]],
    images: dict[str, tuple[str, bytes, tuple[int, int]]],
    s3_env: dict[str, str],
) -> None:
    """Every output is a JPEG of its input's size, smaller for JPEG inputs, at its key."""
    request_id = status.request_id
    bucket, _, prefix = s3_env["IMGPIPE_STORAGE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    expected_keys = {f"{prefix}/{request_id}{RESULT_CSV_MASK}"}
    for product, row in zip(status.products, rows, strict=True):
        assert [i.input_url for i in product.images] == row
        for index, image in enumerate(product.images):
            if image.input_url.endswith(MISSING):
                assert image.state == requests_pb2.IMAGE_STATE_FAILED
                assert "404" in image.error
                assert image.output_url == ""
                continue
            assert image.state == requests_pb2.IMAGE_STATE_SUCCEEDED, image.error
            key = f"{prefix}/{request_id}/{product.serial_number}-{index}.jpg"
            expected_keys.add(key)
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert image.output_bytes == len(body)
            fmt, source, size = images[image.input_url]
            assert image.input_bytes == len(source)
            with Image.open(io.BytesIO(body)) as output:
                assert output.format == "JPEG"
                assert output.size == size
                output.load()
            if fmt == "JPEG":
                assert len(body) < len(source)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{request_id}/")
    assert {masked_result_csv(o["Key"]) for o in listed["Contents"]} == expected_keys


def check_result_csv(
    stack: Stack, request_id: str, status: ingest_pb2.GetStatusResponse, rows: list[list[str]]
) -> None:
    result = subprocess.run(
        [CLI, "--target", stack.ingest_target, "result", request_id],
        capture_output=True,
        timeout=60,
        check=True,
    )
    table = list(csv.reader(io.StringIO(result.stdout.decode("utf-8"))))
    assert table[0] == RESULT_HEADER
    assert len(table) == len(rows) + 1
    for line, product, row in zip(table[1:], status.products, rows, strict=True):
        assert line[0] == str(product.serial_number)
        assert line[1] == product.product_name
        assert line[2].split(",") == row
        stored = [object_path(url) for url in line[3].split(",")]
        assert stored == [object_path(i.output_url) for i in product.images]
