"""The external tools some tests run (kubectl, hadolint): found, or the test skips with
the reason. In CI (`IMGPIPE_CI=1`, which `.ci/run` exports) a missing tool fails the test
instead, so a gate can never pass by having checked nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

IN_CI = os.environ.get("IMGPIPE_CI") == "1"


def require(tool: str, how_to_get_it: str) -> str:
    """The path of `tool` (beside this Python first, then on PATH)."""
    beside_python = Path(sys.executable).parent / tool
    found = str(beside_python) if beside_python.exists() else shutil.which(tool)
    if found is None:
        reason = f"{tool} not found: {how_to_get_it}"
        if IN_CI:
            pytest.fail(f"{reason} (IMGPIPE_CI=1: a missing tool is a failure)")
        pytest.skip(reason)
    return found


@cache
def _kustomize(directory: Path) -> str:
    kubectl = require("kubectl", "install kubectl (kustomize is built in) to render deploy/k8s")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return result.stdout


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIR` renders, in its order; a fresh copy each call,
    so that no test can change what another sees."""
    return [doc for doc in yaml.safe_load_all(_kustomize(directory)) if doc]
