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

With ``--clone`` it measures instead what a new contributor waits for: ``git clone`` of the
repository's committed ``HEAD`` into a temporary folder, then ``make venv`` (a fresh
``.venv``: ``tools/install_lock.py``) and ``make book`` (the cold build) there, each with its
wall-clock and CPU time (all child processes, kernels included) and the load average around
it, and each chapter's execution time. It fails when the two together exceed 3 minutes
(:data:`COLD_LIMIT_S`): on a loaded machine read the CPU times and the load it prints.
``--installer pip`` makes the venv with pip alone (the set-up before uv).

Usage:
    python benchmarks/bench_book.py [--keep] [--no-baseline]    # --keep: leave the copy
    python benchmarks/bench_book.py --clone [--installer pip] [--keep]
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
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


def executed_cpu(log: str) -> dict[str, float]:
    """Chapter -> CPU seconds (its kernel and its pool process), as the pool logs them."""
    pattern = re.compile(r"([\w./-]+)\.md: Executed notebook in [\d.]+ seconds \(([\d.]+) s CPU")
    return {Path(m[1]).name: float(m[2]) for m in pattern.finditer(log)}


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


def timed_make(target: str, cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``make target`` in ``cwd``: (wall seconds, CPU seconds of all children, log)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["make", target], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"make {target} failed:\n" + "\n".join(log.splitlines()[-40:]))
    return wall, cpu, log


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def cold_make_book(installer: str | None, keep: bool) -> None:
    """A fresh clone, ``make venv``, ``make book``: what a new contributor waits for."""
    workdir = Path(tempfile.mkdtemp(prefix="dnncourse-bench-clone-"))
    repo = workdir / "dnncourse"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    print(f"clone of HEAD ({head[:70]}) in {repo}; {os.cpu_count()} cores")
    # make's own python3, not this benchmark's venv
    ours = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != ours)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH=path, DNNCOURSE_INSTALLER=installer or "uv")
    env.pop("DNNCOURSE_BOOK_SERIAL", None)
    rows = []
    for target in ("venv", "book"):
        before = load()
        wall, cpu, log = timed_make(target, repo, env)
        rows.append((target, wall, cpu, before, load(), log))
    print(f"\n{'':14s} {'wall':>8s} {'CPU':>8s}")
    for target, wall, cpu, before, after, _ in rows:
        print(f"make {target:9s} {wall:7.1f}s {cpu:7.1f}s   {before} before, {after} after")
    total, total_cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    who = installer or "uv"
    print(f"{'cold make book':14s} {total:7.1f}s {total_cpu:7.1f}s   (installer: {who})")
    book_log = rows[1][5]
    pool = re.search(r"Executed \d+ notebooks in ([\d.]+) s", book_log)
    if pool:
        build_s = rows[1][1]
        print(f"    chapters in the pool: {float(pool[1]):6.1f} s of the build's {build_s:.1f} s")
    cpu = executed_cpu(book_log)
    for name, seconds in sorted(executed(book_log).items(), key=lambda item: -item[1]):
        print(f"    {name:40s} {seconds:6.1f} s  {cpu.get(name, float('nan')):6.1f} s CPU")
    print(f"    {'all chapters':40s} {'':8s} {sum(cpu.values()):6.1f} s CPU")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    assert total <= COLD_LIMIT_S, f"a cold make book took {total:.0f} s > {COLD_LIMIT_S:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the serial build")
    parser.add_argument("--clone", action="store_true", help="fresh clone: make venv, make book")
    parser.add_argument("--installer", choices=["uv", "pip"], help="with --clone: who installs")
    args = parser.parse_args()
    if args.clone:
        cold_make_book(args.installer, args.keep)
        return

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
