"""How the book is built: the one command and environment of ``make book``.

``make book``, ``tests/test_book.py`` and ``benchmarks/bench_book.py`` all build through
:func:`build`, so the flags (``-W``: warnings are errors, ``-n``: nitpicky references,
``--keep-going``: report every warning) and the environment are written only here:
this interpreter's ``bin/`` first on PATH (Jupyter finds the kernel there), the Agg
backend for matplotlib, and no debugger file-validation warnings from the kernel.

Command line: ``python -m dnncourse.bookbuild [FLAG ...]`` in the book's root (the flags
replace :data:`FLAGS`; ``make book JBFLAGS=...`` passes them).
"""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

FLAGS = ("-W", "-n", "--keep-going")


def environment() -> dict[str, str]:
    """``os.environ`` plus what the build needs (see the module docstring)."""
    bindir = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        MPLBACKEND="Agg",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )


def command(flags: Sequence[str] = FLAGS) -> list[str]:
    """``jupyter-book build . FLAGS`` with this interpreter's ``jupyter-book``."""
    return [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", *flags]


def build(
    root: Path, *, flags: Sequence[str] = FLAGS, capture: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Build the book in ``root`` (into ``root/_build``); never raises on a failed build."""
    return subprocess.run(
        command(flags),
        cwd=root,
        env=environment(),
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    flags = sys.argv[1:] if argv is None else argv
    return build(Path.cwd(), flags=flags or FLAGS, capture=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
