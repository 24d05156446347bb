"""Traces across both services: the console scripts as processes, exporting over OTLP/HTTP
(the standard OTEL_* variables) to a receiver this test runs on loopback. One image's
attempt is one trace that spans ingest and the processor, with the right parents; a
caller's own trace context on Submit is honoured; JSON log lines carry the trace ids.

The trace is also written, as text, to tmp_path/trace.txt for review."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from devstack.stack import Stack
from imgpipe.v1 import ingest_pb2, requests_pb2
from support.batch import stub, wait_terminal
from support.eventually import eventually_blocking
from support.otlp_receiver import OtlpReceiver, Span

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PROCESS_IMAGE = "/imgpipe.v1.ProcessorService/ProcessImage"
SUBMIT = "/imgpipe.v1.IngestService/Submit"
STAGES = {"fetch", "decode", "encode", "store"}  # a PNG: no JPEG requantisation


def one(spans: list[Span], **match: str) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def render(spans: list[Span], root: Span) -> str:
    """The tree under root: name, service, duration."""
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        lines.append(f"{'  ' * depth}{span.name} [{span.service}] {span.milliseconds:.1f} ms")
        for child in sorted(spans, key=lambda s: s.start_ns):
            if child.parent_span_id == span.span_id:
                walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines) + "\n"


def test_one_image_is_one_trace_across_ingest_and_the_processor(
    database_url: str, image_server: ImageServer, tmp_path: Path
) -> None:
    url = image_server.add("/shoe.png", sample(320, 240, "PNG", seed=1))
    csv = f"S. No.,Product Name,Input Image Urls\n1,Shoe,{url}\n".encode()
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: export promptly
            "IMGPIPE_LOG_LEVEL": "INFO",
        }
        storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
        with Stack(
            database_url, storage, processors=1, log_dir=tmp_path / "logs", extra_env=env
        ) as stack:
            traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
            submitted = stub(stack.ingest_target).Submit(
                ingest_pb2.SubmitRequest(csv=csv),
                metadata=(("traceparent", traceparent),),
                timeout=10,
            )
            request_id = submitted.request_id
            wait_terminal(stack.ingest_target, request_id)

            wanted = {
                ("imgpipe-ingest", "record outcome"),
                ("imgpipe-ingest", "result csv"),
                *(("imgpipe-processor", stage) for stage in STAGES),
            }
            spans = eventually_blocking(
                receiver.snapshot,
                lambda got: wanted <= {(s.service, s.name) for s in got},
                what="the spans of the image from both services",
            )

    # The caller's trace context is honoured: Submit is a child of the caller's span.
    submit = one(spans, name=SUBMIT, kind="SERVER")
    assert (submit.service, submit.trace_id) == ("imgpipe-ingest", CALLER_TRACE)
    assert submit.parent_span_id == CALLER_SPAN
    assert submit.attributes["imgpipe.request_id"] == submitted.request_id

    # One trace for the attempt, across both processes, with the right parents.
    root = one(spans, name="image attempt")
    assert root.service == "imgpipe-ingest"
    assert root.parent_span_id == ""
    assert root.attributes["imgpipe.request_id"] == request_id
    trace = [s for s in spans if s.trace_id == root.trace_id]
    assert {s.service for s in trace} == {"imgpipe-ingest", "imgpipe-processor"}
    claim = one(trace, name="claim")
    client = one(trace, name=PROCESS_IMAGE, kind="CLIENT")
    server = one(trace, name=PROCESS_IMAGE, kind="SERVER")
    record = one(trace, name="record outcome")
    assert claim.parent_span_id == client.parent_span_id == record.parent_span_id == root.span_id
    assert (client.service, server.service) == ("imgpipe-ingest", "imgpipe-processor")
    assert server.parent_span_id == client.span_id
    for stage in STAGES:
        span = one(trace, name=stage)
        assert (span.service, span.parent_span_id) == ("imgpipe-processor", server.span_id)
    # The source fetch (aiohttp client instrumentation) too.
    fetch = one(trace, name="fetch")
    assert [s for s in trace if s.parent_span_id == fetch.span_id and s.kind == "CLIENT"]
    result = one(spans, name="result csv", service="imgpipe-ingest")
    assert result.attributes["imgpipe.request_id"] == request_id
    (tmp_path / "trace.txt").write_text(render(trace, root))

    # JSON log lines written inside a span carry its ids: the image's one line, the call's.
    processor_log = (tmp_path / "logs" / "processor-1.log").read_text().splitlines()
    processed = [
        json.loads(line)
        for line in processor_log
        if line.startswith("{") and "output_bytes" in json.loads(line)
    ]
    assert [(p["trace_id"], p["span_id"]) for p in processed] == [(root.trace_id, server.span_id)]


def test_without_otel_variables_nothing_is_traced_nor_logged_with_ids(
    database_url: str, image_server: ImageServer, tmp_path: Path
) -> None:
    url = image_server.add("/mug.jpg", sample(200, 150, "JPEG", seed=2))
    csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{url}\n".encode()
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    env = {"IMGPIPE_LOG_LEVEL": "INFO"}
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", extra_env=env
    ) as stack:
        request_id = (
            stub(stack.ingest_target)
            .Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=10)
            .request_id
        )
        final = wait_terminal(stack.ingest_target, request_id)
        assert final.state == requests_pb2.REQUEST_STATE_COMPLETED
    lines = [
        json.loads(line)
        for name in ("ingest.log", "processor-1.log")
        for line in (tmp_path / "logs" / name).read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines
    assert not [line for line in lines if "trace_id" in line]
