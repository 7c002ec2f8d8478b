"""Benchmark: a cold build of the whole book, then a warm rebuild after a prose-only change.

The book's sources (``_config.yml``, ``_toc.yml``, ``book/``, ``exercises/``) are copied to
a temporary directory, so the repository's ``_build/`` and its execution cache are left
alone. There the script runs the command of ``make book``
(:func:`dnncourse.bookbuild.build`, the one definition of its flags and environment):

1. **cold**: empty ``_build``, every chapter executed exactly once (goal: at most 3
   minutes on a 2-core CPU machine); the chapters run side by side, one kernel per core
   (``book/_ext/parallel_execution.py``);
   **baseline**: the same cold build with ``DNNCOURSE_BOOK_SERIAL=1``, myst-nb executing
   one chapter at a time as it reads them (skipped with ``--no-baseline``); the ratio of
   the two is printed;
2. **warm**: one sentence of chapter 1's prose is changed, then the book is rebuilt; the
   jupyter-cache keys notebooks on their code only, so nothing may be re-executed (the
   build log has no "Executing notebook" line and the cache holds no new record).

Prints the wall-clock times, the number of chapters, and each chapter's execution time.

Usage:
    python benchmarks/bench_book.py [--keep] [--no-baseline]    # --keep: leave the copy
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dnncourse import bookbuild

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["_config.yml", "_toc.yml", "book", "exercises"]
COLD_LIMIT_S = 180.0


def build(workdir: Path, serial: bool = False) -> tuple[float, str]:
    """Run `make book`'s command in ``workdir``; return (seconds, log). Fails loudly."""
    os.environ["DNNCOURSE_BOOK_SERIAL"] = "1" if serial else "0"
    start = time.perf_counter()
    proc = bookbuild.build(workdir)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"build failed (rc={proc.returncode}):\n" + "\n".join(log.splitlines()[-40:]))
    return seconds, log


def executions(log: str) -> list[tuple[str, float]]:
    """(chapter, seconds) for every execution in the build log, repeats included."""
    pattern = re.compile(r"([\w./-]+)\.(?:md|ipynb): Executed notebook in ([\d.]+) seconds")
    return [(Path(m[1]).name, float(m[2])) for m in pattern.finditer(log)]


def executed(log: str) -> dict[str, float]:
    """Chapter -> seconds, for every notebook the build executed."""
    return dict(executions(log))


def cache_records(workdir: Path) -> int:
    from jupyter_cache import get_cache

    return len(get_cache(workdir / "_build" / ".jupyter_cache").list_cache_records())


def prose_change(chapter: Path) -> None:
    """Change one sentence of markdown (outside code cells and directives)."""
    lines = chapter.read_text(encoding="utf8").splitlines(keepends=True)
    fence = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", ":::")):
            fence = stripped[:3]
        elif fence is not None and stripped == fence:
            fence = None
        elif (
            fence is None
            and i > 12
            and stripped.endswith(".")
            and stripped[:1].isalpha()
            and not stripped.startswith(("$", "#", "-", "|"))
        ):
            lines[i] = line.rstrip("\n") + " (Changed for the rebuild benchmark.)\n"
            chapter.write_text("".join(lines), encoding="utf8")
            return
    raise RuntimeError(f"no prose sentence found in {chapter}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the serial build")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dnncourse-bench-book-"))
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, workdir / name)
    chapters = sorted((workdir / "book").glob("[0-9][0-9]_*.md"))
    print(f"copy of the book in {workdir}: {len(chapters)} chapters")

    if not args.no_baseline:
        serial_s, _ = build(workdir, serial=True)
        shutil.rmtree(workdir / "_build")
    cold_s, cold_log = build(workdir)
    cold_exec = executed(cold_log)
    repeats = len(executions(cold_log)) - len(cold_exec)
    records = cache_records(workdir)
    print(f"\ncold build: {cold_s:7.1f} s  ({len(cold_exec)} notebooks executed)")
    for name, seconds in sorted(cold_exec.items()):
        print(f"    {name:40s} {seconds:6.1f} s")
    missing = [c.name for c in chapters if c.stem not in cold_exec]
    if missing:
        print(f"    not executed (no code cells?): {', '.join(missing)}")
    if not args.no_baseline:
        print(f"baseline:   {serial_s:7.1f} s  (serial, myst-nb alone)")
        print(f"    parallel / serial: {cold_s / serial_s:.2f}x the time")

    prose_change(chapters[0])
    warm_s, warm_log = build(workdir)
    warm_exec = executed(warm_log) or {
        m: 0.0 for m in re.findall(r"([\w.-]+): Executing notebook", warm_log)
    }
    print(f"warm build: {warm_s:7.1f} s  after a prose-only change to {chapters[0].name}")
    print(f"    notebooks re-executed: {len(warm_exec)} {sorted(warm_exec) or ''}")
    print(f"    cache records: {records} after cold, {cache_records(workdir)} after warm")
    print(f"\nchapters: {len(chapters)}   cold: {cold_s:.1f} s   warm: {warm_s:.1f} s")

    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    assert repeats == 0, f"the cold build executed {repeats} notebook(s) twice"
    assert not warm_exec, f"a prose-only change re-executed {sorted(warm_exec)}"
    assert "Executing notebook" not in warm_log, "the warm rebuild executed a notebook"
    assert cold_s <= COLD_LIMIT_S, f"cold build took {cold_s:.0f} s > {COLD_LIMIT_S:.0f} s"


if __name__ == "__main__":
    main()
