"""The compatibility routes of the Express services imgpipe replaces (POST /upload, GET
/status?request_id=ID, GET /status/ID), driven by curl as the teams' scripts drive them,
and the web page's files; against a real ingest and PostgreSQL, in-process on port 0."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from support.ingest_harness import IngestFactory
from support.tools import require

EXAMPLE_CSV = Path(__file__).resolve().parents[2] / "examples" / "products.csv"
TOKEN = "alpha-token"
UNKNOWN_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


# No processor: images wait for a retry, so requests hold still while a test reads them.
SLOW_RETRIES = {"IMGPIPE_RETRY_BASE_SECONDS": "30", "IMGPIPE_RETRY_CAP_SECONDS": "15"}


@pytest.fixture
async def base_url(start_ingest: IngestFactory) -> str:
    running = await start_ingest(SLOW_RETRIES)
    return f"http://127.0.0.1:{running.app.http_port}"


@pytest.fixture
async def secured_url(start_ingest: IngestFactory) -> str:
    running = await start_ingest({**SLOW_RETRIES, "IMGPIPE_AUTH_TOKENS": f"{TOKEN},beta-token"})
    return f"http://127.0.0.1:{running.app.http_port}"


async def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Runs curl; returns the HTTP status, the response headers (lower-case) and the body."""
    curl_path = require("curl", "apt-get install -y curl")
    process = await asyncio.create_subprocess_exec(
        curl_path, "-sS", "-D", "-", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out
    head, _, body = out.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def curl_json(*args: str) -> tuple[int, dict[str, Any]]:
    status, headers, body = await curl(*args)
    assert headers["content-type"].startswith("application/json"), headers
    return status, json.loads(body)


async def test_a_script_of_the_express_services_works_unchanged(base_url: str) -> None:
    status, submitted = await curl_json(
        "-F",
        f"file=@{EXAMPLE_CSV}",
        "-F",
        "webhook_url=https://hooks.example/done",
        f"{base_url}/upload",
    )
    assert status == 202, submitted
    assert submitted == {
        "request_id": submitted["request_id"],
        "product_count": 5,
        "image_count": 10,
    }
    request_id = submitted["request_id"]

    answers = [
        await curl_json(f"{base_url}/status?request_id={request_id}"),
        await curl_json(f"{base_url}/status/{request_id}"),
        await curl_json(f"{base_url}/v1/requests/{request_id}"),
    ]
    for code, body in answers:
        assert code == 200, body
        assert body["request_id"] == request_id
        assert body["progress"]["total_images"] == 10
        assert [p["serial_number"] for p in body["products"]] == [1, 2, 3, 4, 5]
    # The very /v1 JSON: same fields, same products, whichever route answered (image
    # states may move between the calls).
    shapes = [
        (
            set(body),
            [(p["product_name"], [i["input_url"] for i in p["images"]]) for p in body["products"]],
        )
        for _, body in answers
    ]
    assert shapes[0] == shapes[1] == shapes[2]


async def test_compat_routes_answer_the_v1_errors(base_url: str) -> None:
    status, body = await curl_json(f"{base_url}/status")
    assert status == 400
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert body["error"]["field_violations"][0]["field"] == "request_id"

    for path in ("/status?request_id=not-a-uuid", "/status/not-a-uuid"):
        status, body = await curl_json(base_url + path)
        assert (status, body["error"]["code"]) == (400, "INVALID_ARGUMENT"), path
    for path in (f"/status?request_id={UNKNOWN_ID}", f"/status/{UNKNOWN_ID}"):
        status, body = await curl_json(base_url + path)
        assert (status, body["error"]["code"]) == (404, "NOT_FOUND"), path

    status, body = await curl_json("-F", "webhook_url=https://hooks.example/", f"{base_url}/upload")
    assert status == 400
    assert body["error"]["field_violations"][0]["field"] == "file"


async def test_compat_routes_need_the_token_and_see_only_its_requests(secured_url: str) -> None:
    upload = ("-F", f"file=@{EXAMPLE_CSV}", f"{secured_url}/upload")
    status, body = await curl_json(*upload)
    assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")

    status, submitted = await curl_json("-H", f"Authorization: Bearer {TOKEN}", *upload)
    assert status == 202, submitted
    request_id = submitted["request_id"]
    for path in (f"/status?request_id={request_id}", f"/status/{request_id}"):
        status, body = await curl_json(secured_url + path)
        assert (status, body["error"]["code"]) == (401, "UNAUTHENTICATED")
        status, body = await curl_json("-H", "Authorization: Bearer beta-token", secured_url + path)
        assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
        status, body = await curl_json("-H", f"Authorization: Bearer {TOKEN}", secured_url + path)
        assert (status, body["request_id"]) == (200, request_id)


async def test_the_page_is_served_to_anyone_and_asks_for_a_token_only_when_needed(
    base_url: str, secured_url: str
) -> None:
    for url, auth in ((base_url, "off"), (secured_url, "required")):
        status, headers, body = await curl(f"{url}/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert f'data-auth="{auth}"' in body
        assert "script-src 'self'" in headers["content-security-policy"]
        for path, content_type in (
            ("/ui/page.js", "text/javascript"),
            ("/ui/page.css", "text/css"),
        ):
            status, headers, _ = await curl(f"{url}{path}")
            assert status == 200
            assert headers["content-type"].startswith(content_type)
