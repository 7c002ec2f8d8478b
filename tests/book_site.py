"""The built book, shared by tests/test_book.py and tests/test_browser.py.

``build_book`` builds it once per test process with :func:`dnncourse.bookbuild.build`
(the command of ``make book``); the table-of-contents helpers name its pages.

Set ``DNNCOURSE_REUSE_BOOK=1`` to check an existing ``_build/html`` without rebuilding.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from dnncourse import bookbuild

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


@dataclass(frozen=True)
class BookBuild:
    returncode: int
    log: str
    html: Path


@functools.cache
def build_book() -> BookBuild:
    """Build the book into ``_build/`` once per test run (the `make book` command).

    Under pytest-xdist the test processes of one run share a single build: the first to get
    here builds under a file lock and leaves its result beside the build, tagged with the
    run's id; the others wait for the lock and read it.
    """
    if os.environ.get("DNNCOURSE_REUSE_BOOK") == "1" and (HTML / "index.html").exists():
        return BookBuild(0, "(reused the existing _build/html: DNNCOURSE_REUSE_BOOK=1)", HTML)
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        proc = bookbuild.build(ROOT, timeout=20 * 60)
        return BookBuild(proc.returncode, proc.stdout + proc.stderr, HTML)
    (ROOT / "_build").mkdir(exist_ok=True)
    done = ROOT / "_build" / f".tested-{run}.json"
    with open(ROOT / "_build" / ".test-build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            for old in (ROOT / "_build").glob(".tested-*.json"):  # earlier runs' results
                old.unlink()
            proc = bookbuild.build(ROOT, timeout=20 * 60)
            result = {"returncode": proc.returncode, "log": proc.stdout + proc.stderr}
            done.write_text(json.dumps(result))
        result = json.loads(done.read_text())
    return BookBuild(result["returncode"], result["log"], HTML)


def toc_files() -> list[str]:
    """Every document of ``_toc.yml`` (root first, globs expanded), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(str(Path(entry["file"]).with_suffix("")))
            if "glob" in entry:
                found = sorted(
                    p.relative_to(ROOT).with_suffix("").as_posix()
                    for p in ROOT.glob(entry["glob"])
                    if p.suffix in {".md", ".ipynb"}
                )
                files.extend(found)
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def chapter_files() -> list[str]:
    """The numbered chapters: ``book/NN_topic``."""
    return [f for f in toc_files() if re.fullmatch(r"book/\d\d_\w+", f)]
