"""The processor's malloc tuning applies on glibc (this machine's C library)."""

from __future__ import annotations

import subprocess
import sys


def test_mallopt_accepts_every_setting() -> None:
    # In a child process, so this test process keeps its own allocator settings.
    code = "from imgpipe.processor.allocator import tune_malloc; print(tune_malloc())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"
