"""Generates src/imgpipe/v1/ from protos/ (`make gen`); the tests compare against it."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = "imgpipe/v1"
# Where the generated package is committed: src/imgpipe/v1.
OUT_ROOT = ROOT / "src"


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc into out_dir and returns the files it wrote."""
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = str(files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted(p for p in (out_dir / PACKAGE_DIR).iterdir() if p.suffix in {".py", ".pyi"})


def main() -> int:
    written = generate(OUT_ROOT)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
