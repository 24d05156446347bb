"""The contract: the committed stubs match protos/ (buf lint runs in `make lint`)."""

from __future__ import annotations

from pathlib import Path

from devstack.protogen import OUT_ROOT, PACKAGE_DIR, generate
from imgpipe.v1 import ingest_pb2, processor_pb2, requests_pb2


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    committed = {
        p.name: p.read_bytes()
        for p in (OUT_ROOT / PACKAGE_DIR).iterdir()
        if p.suffix in {".py", ".pyi"} and "_pb2" in p.name
    }
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make gen`: {stale} differ from protos/"


def test_contract_names() -> None:
    ingest = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]
    assert ingest.full_name == "imgpipe.v1.IngestService"
    assert {"Cancel", "DeleteRequest", "GetStatus", "Submit", "WatchStatus"} <= {
        m.name for m in ingest.methods
    }
    assert ingest.methods_by_name["WatchStatus"].server_streaming
    processor = processor_pb2.DESCRIPTOR.services_by_name["ProcessorService"]
    assert [m.name for m in processor.methods] == ["ProcessImage", "ProcessImages"]
    assert processor.methods_by_name["ProcessImages"].server_streaming
    assert requests_pb2.RequestState.Value("REQUEST_STATE_CANCELLED") == 6
    assert requests_pb2.ImageState.Value("IMAGE_STATE_CANCELLED") == 5
