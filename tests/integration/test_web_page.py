"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against
an in-process ingest and processor (real PostgreSQL, file storage) and a loopback image
server. Without Chromium these tests skip and say why (in CI they fail: .ci/run installs it).

Each test leaves a screenshot in its tmp_path for review."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devstack.image_server import ImageServer
from support.ingest_harness import IngestFactory
from support.tcp_proxy import TcpProxy, tcp_proxy
from support.tools import require

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright is not installed (pip install -e '.[dev]')"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "alpha-token"
HELD = "/images/lamp-detail.webp"  # held back while a test looks at the page mid-run
STEP = 30_000  # ms: the most any one step of a test may take


@pytest.fixture
def images(image_server: ImageServer) -> ImageServer:
    image_server.add_directory(EXAMPLES / "images", prefix="/images/")
    return image_server


def example_csv(images: ImageServer, tmp_path: Path) -> Path:
    """examples/products.csv, its image URLs pointed at the loopback image server."""
    text = (EXAMPLES / "products.csv").read_text()
    path = tmp_path / "products.csv"
    path.write_text(text.replace("http://127.0.0.1:8765", images.url("")))
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    chromium = require("chromium", "apt-get install -y chromium (Debian's; .ci/run does)")
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(
        accept_downloads=True, viewport={"width": 1200, "height": 900}
    )
    opened = await context.new_page()
    opened.set_default_timeout(STEP)
    try:
        yield opened
    finally:
        await context.close()


async def submit(page: Any, csv_path: Path) -> str:
    await page.set_input_files("#file", str(csv_path))
    await page.click("#submit")
    await page.wait_for_selector("#watch:not([hidden])")
    return str(await page.text_content("#request-id"))


async def state_is(page: Any, state: str) -> None:
    await playwright_api.expect(page.locator("#state")).to_have_text(state, timeout=STEP)


async def test_submit_watch_live_resume_after_a_dropped_stream_and_download(
    page: Any, images: ImageServer, start_ingest: IngestFactory, tmp_path: Path
) -> None:
    gate = images.hold(HELD)
    running = await start_ingest(processor=True)
    async with tcp_proxy(running.app.http_port) as proxy:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        await playwright_api.expect(page.locator("#token-row")).to_be_hidden()
        request_id = await submit(page, example_csv(images, tmp_path))

        # Live: every image but the held one is done, while the request still runs.
        progress = page.locator("#progress-text")
        await playwright_api.expect(progress).to_contain_text("9 of 10 images done", timeout=STEP)
        await state_is(page, "PROCESSING")
        await playwright_api.expect(page.locator("#connection")).to_have_text("live")
        await page.screenshot(path=str(tmp_path / "page-mid-run.png"), full_page=True)

        # The network drops every connection; the page resumes after the last event it saw.
        proxy.drop()
        resumed = await resumed_after(page, proxy, request_id)
        assert resumed > 0
        gate.set()

        await state_is(page, "COMPLETED")
        await playwright_api.expect(page.locator("#download")).to_be_enabled()
        await playwright_api.expect(progress).to_contain_text("10 of 10 images done: 10 succeeded")
        states = await page.locator("#images tbody td:nth-child(5)").all_text_contents()
        assert states == ["SUCCEEDED"] * 10
        after = await page.locator("#images tbody td:nth-child(7)").all_text_contents()
        assert all(re.fullmatch(r"[0-9,]+", cell) for cell in after), after
        await page.screenshot(path=str(tmp_path / "page-completed.png"), full_page=True)

        async with page.expect_download() as download_info:
            await page.click("#download")
        download = await download_info.value
        saved = tmp_path / "result.csv"
        await download.save_as(str(saved))
    rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
    assert rows[0][-1] == "Output Image Urls"
    assert [row[0] for row in rows[1:]] == ["1", "2", "3", "4", "5"]
    assert all(row[-1] for row in rows[1:])


async def resumed_after(page: Any, proxy: TcpProxy, request_id: str) -> int:
    """The Last-Event-ID the page came back with, once it has and is live again."""
    pattern = re.compile(
        rf"^GET /v1/requests/{request_id}/events .*?^last-event-id: *([0-9]+)", re.I | re.M | re.S
    )
    match = await asyncio.wait_for(proxy.wait_for(pattern), STEP / 1000)
    await playwright_api.expect(page.locator("#connection")).to_have_text("live")
    return int(match.group(1))


async def test_a_failed_image_is_shown_with_its_error(
    page: Any, images: ImageServer, start_ingest: IngestFactory, tmp_path: Path
) -> None:
    path = tmp_path / "some-missing.csv"
    path.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        f'1,Mug,"{images.url("/images/mug.jpg")},{images.url("/images/gone.jpg")}"\n'
    )
    running = await start_ingest(processor=True)
    await page.goto(f"http://127.0.0.1:{running.app.http_port}/")
    await submit(page, path)
    await state_is(page, "PARTIALLY_COMPLETED")
    failed = page.locator("#images tbody tr").nth(1)
    await playwright_api.expect(failed.locator("td").nth(4)).to_have_text("FAILED")
    await playwright_api.expect(failed.locator("td").nth(7)).to_contain_text("404")
    await page.screenshot(path=str(tmp_path / "page-failed-image.png"), full_page=True)


async def test_the_token_is_asked_for_kept_in_the_tab_and_never_put_in_a_url(
    page: Any, images: ImageServer, start_ingest: IngestFactory, tmp_path: Path
) -> None:
    secured = {"IMGPIPE_AUTH_TOKENS": f"{TOKEN},beta-token"}
    running = await start_ingest(secured, processor=True)
    async with tcp_proxy(running.app.http_port) as proxy:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        await playwright_api.expect(page.locator("#token-row")).to_be_visible()
        csv_path = example_csv(images, tmp_path)

        await page.set_input_files("#file", str(csv_path))
        await page.click("#submit")
        await playwright_api.expect(page.locator("#form-error")).to_contain_text("UNAUTHENTICATED")

        await page.fill("#token", TOKEN)
        request_id = await submit(page, csv_path)
        await state_is(page, "COMPLETED")

        # Kept in the tab: a reload asks for nothing and still lists the request.
        await page.reload()
        await playwright_api.expect(page.locator("#token")).to_have_value(TOKEN)
        await playwright_api.expect(page.locator("#recent")).to_contain_text(request_id)
        await page.get_by_role("button", name=request_id).click()
        await state_is(page, "COMPLETED")
        await page.screenshot(path=str(tmp_path / "page-token.png"), full_page=True)

        assert TOKEN not in page.url
        request_lines = [head.split("\r\n", 1)[0] for head in proxy.heads]
        assert not [line for line in request_lines if TOKEN in line]
        assert any(f"bearer {TOKEN}" in head.lower() for head in proxy.heads)
