"""The contract: buf lint STANDARD passes, and the committed stubs match protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from devstack.protogen import OUT_ROOT, PACKAGE_DIR, ROOT, generate
from imgpipe.v1 import ingest_pb2, processor_pb2, requests_pb2


def test_buf_lint_standard_is_clean() -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run(
        [str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert sorted(m.name for m in ingest.methods) == [
        "Cancel",
        "GetStatus",
        "Submit",
        "WatchStatus",
    ]
    assert ingest.methods_by_name["WatchStatus"].server_streaming
    processor = processor_pb2.DESCRIPTOR.services_by_name["ProcessorService"]
    assert [m.name for m in processor.methods] == ["ProcessImage"]
    assert requests_pb2.RequestState.Name(6) == "REQUEST_STATE_CANCELLED"
    assert requests_pb2.ImageState.Name(5) == "IMAGE_STATE_CANCELLED"
