"""What a run measures, and how much: the default run (about 5 minutes on 2 cores) and
`--quick` (tiny images and counts, for the test suite)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kind:
    """A class of source image in the corpus: its name, format, size and distinct files."""

    name: str
    fmt: str  # JPEG or PNG
    width: int
    height: int
    files: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def title(self) -> str:
        return f"{self.fmt} {self.megapixels:.2g} MP"


@dataclass(frozen=True)
class Config:
    quick: bool
    kinds: tuple[Kind, ...]
    # Section 1: per run, each codec variant works on each size for this long.
    codec_runs: int
    codec_seconds: float
    # Section 2: the bare loop on a pool, and images per end-to-end batch by kind.
    bare_runs: int
    bare_seconds: float
    e2e_runs: int
    e2e_images: dict[str, int] = field(default_factory=dict)
    # Section 3: the kind and batch size used to compare 1 and N processors.
    scaling_kind: str = "medium"
    scaling_images: int = 100
    processors: int = 2
    # Section 4.
    submit_rows: tuple[int, ...] = (1_000, 10_000)
    submit_runs: int = 5
    # Section 5.
    dispatch_images: int = 800
    dispatch_runs: int = 3
    # Section 6.
    watchers: int = 1_000  # on one ingest; ten times as many over two replicas
    watcher_processes: int = 4
    watcher_channels: int = 5  # per client process
    watch_images: int = 60
    watch_runs: int = 2
    # The paced round: the request's images finish this many a second.
    watch_paced_per_second: float = 10.0
    # Section 7: processor peak RSS after a batch of the largest images.
    memory_kind: str = "large"
    memory_images: int = 24
    # Section 9: one request over three hosts, one allowing this many requests a second;
    # the same CSV submitted twice.
    throttle_images: int = 10_000
    throttle_per_second: float = 50.0
    resubmit_images: int = 1_000
    # Section 10: hostile images; sides of the worst cases are scaled by hostile_scale.
    hostile_runs: int = 3
    hostile_scale: float = 1.0

    def kind(self, name: str) -> Kind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(name)

    @property
    def jpeg_kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in self.kinds if k.fmt == "JPEG" and k.name != "tiny")

    @property
    def e2e_kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in self.kinds if k.name in self.e2e_images)


DEFAULT = Config(
    quick=False,
    kinds=(
        Kind("small", "JPEG", 816, 612, 6),  # 0.5 MP
        Kind("medium", "JPEG", 2000, 1500, 4),  # 3 MP
        Kind("large", "JPEG", 4000, 3000, 3),  # 12 MP
        Kind("png", "PNG", 1200, 900, 3),  # 1.1 MP, RGBA
        Kind("tiny", "JPEG", 16, 16, 1),
    ),
    codec_runs=5,
    codec_seconds=0.4,
    bare_runs=3,
    bare_seconds=1.5,
    e2e_runs=3,
    e2e_images={"small": 240, "medium": 120, "large": 24, "png": 60},
    scaling_images=90,
    memory_images=24,
)

QUICK = Config(
    quick=True,
    kinds=(
        Kind("small", "JPEG", 160, 120, 2),
        Kind("medium", "JPEG", 400, 300, 2),
        Kind("large", "JPEG", 800, 600, 2),
        Kind("png", "PNG", 240, 180, 2),
        Kind("tiny", "JPEG", 16, 16, 1),
    ),
    codec_runs=2,
    codec_seconds=0.05,
    bare_runs=2,
    bare_seconds=0.2,
    e2e_runs=2,
    # Enough that each batch costs the processors some clock ticks (10 ms) of CPU.
    e2e_images={"small": 12, "medium": 24, "large": 12, "png": 6},
    scaling_images=40,
    submit_rows=(100, 1_000),
    submit_runs=2,
    dispatch_images=60,
    dispatch_runs=2,
    watchers=50,
    watcher_processes=2,
    watcher_channels=2,
    watch_images=6,
    watch_runs=1,
    watch_paced_per_second=20.0,
    memory_images=6,
    throttle_images=30,
    throttle_per_second=5.0,
    resubmit_images=10,
    hostile_scale=0.1,
)
