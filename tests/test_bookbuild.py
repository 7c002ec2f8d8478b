"""The book's build command is defined once (dnncourse.bookbuild) and used by `make book`."""

import os
import sys
from pathlib import Path

from dnncourse import bookbuild

ROOT = Path(__file__).resolve().parents[1]


def test_command_and_environment_use_this_interpreter():
    bindir = Path(sys.executable).parent
    command = bookbuild.command()
    assert command == [str(bindir / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going"]
    env = bookbuild.environment()
    assert env["PATH"].split(os.pathsep)[0] == str(bindir)
    assert env["MPLBACKEND"] == "Agg"


def test_makefile_and_benchmark_build_through_bookbuild():
    for path in ("Makefile", "benchmarks/bench_book.py", "tests/book_site.py"):
        text = (ROOT / path).read_text(encoding="utf8")
        assert "bookbuild" in text, f"{path} does not use dnncourse.bookbuild"
        assert '"--keep-going"' not in text and "-W -n --keep-going" not in text, (
            f"{path} repeats the build flags"
        )
