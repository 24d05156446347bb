"""JSON log lines carry the fields of the block they are written in, and the fields a call
notes of its outcome on its one line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

from imgpipe.common.logs import JsonFormatter, log_fields, note_fields


def lines_of(write: Callable[[logging.Logger], None]) -> list[dict[str, object]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        write(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_noted_fields_go_on_the_lines_written_later_in_the_block() -> None:
    def write(logger: logging.Logger) -> None:
        with log_fields(method="/a/B"):
            logger.info("before")
            note_fields(output_bytes=12)
            logger.info("rpc")
        logger.info("after")

    before, rpc, after = lines_of(write)
    assert before["method"] == rpc["method"] == "/a/B"
    assert "output_bytes" not in before
    assert rpc["output_bytes"] == 12
    assert "method" not in after and "output_bytes" not in after


def test_noting_outside_any_block_changes_nothing() -> None:
    def write(logger: logging.Logger) -> None:
        note_fields(output_bytes=12)
        logger.info("line")

    (line,) = lines_of(write)
    assert "output_bytes" not in line
