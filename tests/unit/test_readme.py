"""README stays true: every setting the services read is in its settings table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_read_by_the_code_is_documented() -> None:
    names: set[str] = set()
    for path in [*ROOT.joinpath("services").rglob("*.py"), *ROOT.joinpath("shared").rglob("*.py")]:
        names |= set(
            re.findall(r'"(IMGPIPE_[A-Z_]+|DATABASE_URL|AWS_[A-Z0-9_]+)"', path.read_text())
        )
    assert len(names) > 30
    readme = ROOT.joinpath("README.md").read_text()
    assert sorted(n for n in names if f"`{n}`" not in readme) == []


def test_the_two_commands_come_first() -> None:
    head = ROOT.joinpath("README.md").read_text().split("\n\n", 3)[1]
    assert "make run" in head and "make test" in head
