"""The deterministic corpus: photo-like JPEGs (quality 92) at each size, and RGBA PNGs,
generated at start (in parallel) into a directory, one sub-directory per kind."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from devstack.bench.config import Config, Kind
from devstack.sample_images import sample

SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}


@dataclass(frozen=True)
class Source:
    kind: str
    path: Path
    width: int
    height: int
    size: int  # bytes

    @property
    def url_path(self) -> str:
        return f"/{self.kind}/{self.path.name}"


def _make(task: tuple[Kind, int, Path]) -> Source:
    kind, index, directory = task
    # Seeds differ per kind and file; the same config always yields the same bytes.
    data = sample(kind.width, kind.height, kind.fmt, seed=1000 * len(kind.name) + index)
    path = directory / kind.name / f"{index}{SUFFIX[kind.fmt]}"
    path.write_bytes(data)
    return Source(kind.name, path, kind.width, kind.height, len(data))


def generate(config: Config, directory: Path, workers: int) -> dict[str, list[Source]]:
    tasks = []
    for kind in config.kinds:
        (directory / kind.name).mkdir(parents=True, exist_ok=True)
        tasks += [(kind, i, directory) for i in range(kind.files)]
    # Largest first, so the pool does not end on one big image.
    tasks.sort(key=lambda t: -t[0].width * t[0].height)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        made = list(pool.map(_make, tasks))
    corpus: dict[str, list[Source]] = {k.name: [] for k in config.kinds}
    for source in sorted(made, key=lambda s: s.path):
        corpus[source.kind].append(source)
    return corpus
