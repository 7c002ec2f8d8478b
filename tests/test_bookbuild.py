"""The book's build command is defined once (dnncourse.bookbuild) and used by `make book`."""

import ast
import os
import subprocess
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


def builds_elsewhere(source: str) -> str | None:
    """Why a script's ``source`` builds the book other than through ``bookbuild.build``."""
    tree = ast.parse(source)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    if "bookbuild.build" not in calls:
        return "it never calls bookbuild.build"
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    if any(isinstance(v, str) and ("jupyter-book" in v or "--keep-going" in v) for v in strings):
        return "it runs jupyter-book or repeats its flags itself"
    return None


def test_the_benchmark_and_the_tests_build_through_bookbuild():
    for path in ("benchmarks/bench_book.py", "tests/book_site.py"):
        why = builds_elsewhere((ROOT / path).read_text(encoding="utf8"))
        assert why is None, f"{path}: {why}"
    # the check can fail: a script that runs jupyter-book itself is caught
    own = 'import subprocess\nsubprocess.run(["jupyter-book", "build", ".", "--keep-going"])\n'
    assert builds_elsewhere(own) == "it never calls bookbuild.build"
    both = "from dnncourse import bookbuild\nbookbuild.build(R)\nflags = ['--keep-going']\n"
    assert builds_elsewhere(both) == "it runs jupyter-book or repeats its flags itself"


def test_make_book_runs_bookbuild_and_nothing_else_builds():
    """What ``make book`` would run (``make -n``): the module, never jupyter-book itself."""
    stamp = ROOT / ".venv" / ".installed"
    proc = subprocess.run(
        ["make", "-n", "book", f"STAMP={stamp}" if stamp.exists() else "STAMP=Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    assert [ln for ln in lines if ln.endswith("-m dnncourse.bookbuild")], proc.stdout
    assert not [ln for ln in lines if "jupyter-book" in ln or "--keep-going" in ln], proc.stdout


def test_the_longest_chapters_are_submitted_first():
    """``dnncourse_start_first`` (``_config.yml``) names existing chapters only, and the pool
    takes them first in its order, the rest after in their own order."""
    import yaml

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from parallel_execution import longest_first
    finally:
        sys.path.pop(0)
    first = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"][
        "dnncourse_start_first"
    ]
    chapters = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))
    assert first and set(first) <= set(chapters), set(first) - set(chapters)
    pending = [(ROOT / "book" / f"{name}.md", None, "md") for name in chapters]
    order = [Path(p).stem for p, *_ in longest_first(pending, first)]
    assert order[: len(first)] == first
    assert order[len(first) :] == [c for c in chapters if c not in first]
