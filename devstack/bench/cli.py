"""`python -m devstack.bench [--quick] [--only SECTION ...] [--json PATH] [--profile] [--keep]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from devstack.bench import (
    hostile,
    machine,
    offline,
    photos,
    pipeline,
    politeness,
    procstat,
    profiling,
)
from devstack.bench.codec import ARENA_ENV
from devstack.bench.config import DEFAULT, QUICK, Config
from devstack.bench.corpus import Source, generate
from devstack.bench.figures import Section, table
from devstack.bench.frontdoor import submit_section, watchers_section
from devstack.bench.harness import Harness, Running
from devstack.image_server import ImageServer
from devstack.postgres import postgres

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_JSON = ROOT / "var" / "bench" / "latest.json"

TITLES = {
    "codec": "1. codec vs the limit, one core",
    "parallel": "1b. codec on every core: threads vs processes, allocator in threads",
    "photos": "1c. codec on photographs: requantiser, compress(), Pillow, simplejpeg",
    "e2e": "2. end to end vs the bare loop",
    "scaling": "3. scaling: 1 processor vs N",
    "submit": "4. Submit latency",
    "dispatch": "5. dispatch cost",
    "watchers": "6. watchers",
    "memory": "7. memory",
    "output": "8. output at quality 50",
    "politeness": "9. polite fetching and work not done twice",
    "hostile": "10. hostile images: scan bombs, worst-case decodes, a small image among them",
}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts (tests)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(TITLES),
        default=sorted(TITLES),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(sorted(TITLES))})",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy a processor (e2e) and ingest (dispatch)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


class Runner:
    def __init__(
        self,
        config: Config,
        workdir: Path,
        profile: bool,
        profile_dir: Path,
        only: Sequence[str] = tuple(TITLES),
    ) -> None:
        self.config = config
        self.only = frozenset(only)
        self.workdir = workdir
        self.profile = profile
        self.profile_dir = profile_dir
        self.sections = {key: Section(key, title) for key, title in TITLES.items()}
        self.profiles: list[str] = []
        self.postmaster: int | None = None

    @contextlib.contextmanager
    def section(self, key: str) -> Iterator[Section]:
        section = self.sections[key]
        say(f"{section.title}…")
        roots = [self.postmaster] if self.postmaster else []
        started = time.monotonic()
        busy, own = procstat.system_busy_seconds(), procstat.own_seconds(roots)
        try:
            yield section
        except Exception as exc:
            section.error = f"{type(exc).__name__}: {exc}"
            say(f"{section.title} FAILED\n{traceback.format_exc()}")
        finally:
            section.seconds += time.monotonic() - started
            busy = procstat.system_busy_seconds() - busy
            section.other_cpu += max(0.0, busy - (procstat.own_seconds(roots) - own))

    def guarded(self, key: str, fn: Callable[[Section], None]) -> None:
        if key not in self.only:
            return
        with self.section(key) as section:
            fn(section)

    @contextlib.contextmanager
    def profiled(self, pid: int, name: str, title: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        path = self.profile_dir / f"profile-{name}.folded"
        with profiling.record(pid, path):
            yield
        self.profiles.append(profiling.report(path, title))

    def run(self) -> None:
        config, cores = self.config, self.config.processors
        say(f"corpus into {self.workdir / 'corpus'}…")
        corpus = generate(config, self.workdir / "corpus", cores)
        self.guarded("codec", lambda s: offline.codec_section(config, corpus, s))
        self.guarded("parallel", lambda s: offline.parallel_section(config, corpus, s))
        self.guarded("photos", lambda s: photos.photos_section(config.codec_seconds, s))
        self.guarded("output", lambda s: offline.quality_section(config, corpus, s))
        self.guarded("hostile", lambda s: hostile.hostile_section(config, self.workdir, s))
        bare: dict[str, tuple[list[float], list[float]]] = {}
        if "e2e" in self.only:
            with self.section("e2e"):
                bare = offline.bare_pool_rates(config, corpus, cores)
        if not self.only & {
            "e2e",
            "dispatch",
            "memory",
            "watchers",
            "scaling",
            "submit",
            "politeness",
        }:
            return
        # Always a private cluster: its CPU can be measured, and nothing else runs on it.
        with postgres(None) as database, ImageServer() as images:
            for sources in corpus.values():
                for source in sources:
                    images.add(source.url_path, source.path.read_bytes())
            h = Harness(self.workdir, database, images)
            self.postmaster = h.postmaster
            self._stack_sections(h, corpus, bare)

    def _stack_sections(
        self,
        h: Harness,
        corpus: dict[str, list[Source]],
        bare: dict[str, tuple[list[float], list[float]]],
    ) -> None:
        config, s, only = self.config, self.sections, self.only
        e2e_wanted = "e2e" in only
        if only & {"e2e", "dispatch"}:
            with h.stack("e2e", config.processors) as run:
                if e2e_wanted:
                    with (
                        self.section("e2e") as e2e,
                        self.profiled(run.processor_pids[0], "processor-e2e", "processor-1, e2e"),
                    ):
                        pipeline.e2e_section(config, h, corpus, run, bare, e2e, s["memory"])
                if "dispatch" in only:
                    with self.section("dispatch") as dispatch:
                        self._dispatch(h, corpus, run, dispatch)
        if e2e_wanted:
            with (
                h.stack("malloc", config.processors, ARENA_ENV) as run,
                self.section("e2e") as e2e,
            ):
                pipeline.malloc_variant(config, h, corpus, run, bare, e2e, s["memory"])
        env = pipeline.matched_env(config)
        if only & {"e2e", "dispatch", "watchers"}:
            with h.stack("matched", config.processors, env) as run:
                if e2e_wanted:
                    with self.section("e2e") as e2e:
                        pipeline.matched_variant(config, h, corpus, run, bare, e2e)
                if "dispatch" in only:
                    with self.section("dispatch") as dispatch:
                        pipeline.dispatch_section(config, h, corpus, run, dispatch, "matched")
                if "watchers" in only:
                    with self.section("watchers") as watchers:
                        watchers_section(config, corpus, run, watchers)
                        watchers_section(
                            config, corpus, run, watchers, "paced", config.watch_paced_per_second
                        )
        if "watchers" in only:
            with (
                h.stack("replicas", config.processors, env, ingests=2) as run,
                self.section("watchers") as watchers,
            ):
                watchers_section(config, corpus, run, watchers, "replicas")
        self.guarded("scaling", lambda sec: pipeline.scaling_section(config, h, corpus, sec))
        self.guarded("submit", lambda sec: submit_section(config, h, sec))
        self.guarded("politeness", lambda sec: politeness.run_sections(config, h, corpus, sec))

    def _dispatch(
        self, h: Harness, corpus: dict[str, list[Source]], run: Running, section: Section
    ) -> None:
        with self.profiled(run.ingest_pid, "ingest-dispatch", "ingest, dispatch of tiny images"):
            pipeline.dispatch_section(self.config, h, corpus, run, section)


def _check(sections: list[Section]) -> list[str]:
    """Figures that are missing a value, or not finite, or not positive where they must be."""
    bad = []
    for section in sections:
        for f in section.figures:
            values = [f.median, f.min, f.max]
            if not f.samples or not all(math.isfinite(v) for v in values):
                bad.append(f"{f.id}: no finite value")
            elif f.positive and f.min <= 0:
                bad.append(f"{f.id}: not positive ({f.min})")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    config = QUICK if args.quick else DEFAULT
    info = machine.describe()
    workdir = Path(tempfile.mkdtemp(prefix="imgpipe-bench-"))
    out: Path = args.json.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    runner = Runner(config, workdir, args.profile, out.parent, args.only)
    started = time.monotonic()
    interrupted = False
    say(machine.line(info))
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seconds = time.monotonic() - started
    sections = [s for s in runner.sections.values() if s.key in runner.only or s.figures]
    failed = [s.key for s in sections if s.error]
    bad = _check(sections)
    print(machine.line(info))
    print(f"mode: {'quick' if config.quick else 'default'}; {seconds:.0f} s in all")
    print(table(sections))
    for text in runner.profiles:
        print()
        print(text)
    document = {
        "machine": info,
        "mode": "quick" if config.quick else "default",
        "seconds": round(seconds, 1),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds)),
        "sections": {s.key: s.as_json() for s in sections},
        "figures": [f.as_json() for s in sections for f in s.figures],
        "problems": bad,
        "failed_sections": failed,
    }
    out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"\nJSON: {out}")
    if bad:
        print("figures without a proper value:\n  " + "\n  ".join(bad))
    if failed or interrupted or args.keep:
        print(f"work directory (logs) kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed or bad or interrupted else 0
