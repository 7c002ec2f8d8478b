"""The reference run: the instructor's solution through the grading path, as plain data.

The expected value of every hidden check is what the instructor's solution records when its
notebook runs through exactly the path a student's does (:func:`~dnncourse.grading.execute.
execute`, the same kernel and limits). The records (:mod:`dnncourse.grading.probe`) are
grouped by graded cell, checked (no name twice, nothing unreadable; a cell without probes is
a classic nbgrader test, decided by its asserts), and cached as JSON under ``OUT/reference/``
by the checksum of the solution notebook and its data files, of the probe module, of the
torch version and of whether a GPU is present: a class is graded against one reference run,
and regrading into the same ``OUT`` reuses it. Workers that need it at the same time wait on
a file lock, so it is computed once. ``DNNCOURSE_REFERENCE_CACHE`` names one folder for
every ``OUT`` instead (an instructor grading sections into separate folders; the test suite).
"""

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import nbformat

from ..homework import Layout
from . import probe, verdict
from .execute import execute
from .protocol import Comparison, Limits, Status


class ReferenceError(RuntimeError):
    """The instructor's solution does not produce a usable reference (a bug to fix first)."""


def data_files(folder: Path, layout: Layout | None = None) -> list[Path]:
    """The files an assignment's notebooks may read: every file of its ``folder`` but
    the notebooks and what the course's nbgrader ``ignore`` patterns leave out (``*.pyc``,
    ``__pycache__``, ...), as ``nbgrader autograde`` copies them."""
    layout = layout or Layout()
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".ipynb" and not layout.ignored(p.relative_to(folder))
    ]


def checksum(solution: Path, layout: Layout | None = None) -> str:
    h = hashlib.sha256(solution.read_bytes())
    for extra in data_files(solution.parent, layout):
        h.update(extra.relative_to(solution.parent).as_posix().encode())
        h.update(hashlib.sha256(extra.read_bytes()).digest())
    h.update(Path(probe.__file__).read_bytes())
    h.update(metadata.version("torch").encode())
    h.update(b"gpu" if Path("/dev/nvidia0").exists() else b"cpu")
    return h.hexdigest()[:32]


def problems(records: dict[str, list[dict]]) -> list[str]:
    """What makes these records unusable as a reference (a cell without probes is not:
    it is a classic nbgrader test, decided by :func:`.verdict.by_asserts`)."""
    found = []
    for gid, recs in records.items():
        names = [r["name"] for r in recs]
        found += [
            f"{gid}: probe {n!r} recorded twice" for n in sorted(set(names)) if names.count(n) > 1
        ]
        for rec in recs:
            try:
                Comparison.of(rec)
            except ValueError as error:
                found.append(f"{gid}: {error}")
            try:
                value = verdict.decode(rec.get("value"))
            except verdict.Unreadable:
                value = ("opaque", "unreadable")
            if _opaque(value):
                found.append(f"{gid}: probe {rec['name']!r} recorded a value that is not data")
    return found


def _opaque(value) -> bool:
    if isinstance(value, tuple):
        return True
    if isinstance(value, list):
        return any(map(_opaque, value))
    if isinstance(value, dict):
        return any(map(_opaque, value.values()))
    return False


def run(
    solution: Path, limits: Limits, sandbox: bool = True, layout: Layout | None = None
) -> dict[str, list[dict]]:
    """Execute the solution notebook (with its folder's data files); its records by cell.

    It runs as a student's notebook does: in the sandbox (unless ``sandbox=False``), with the
    data files in the kernel's working folder, read-only (one copy, made here).
    """
    nb = nbformat.read(solution, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with tempfile.TemporaryDirectory(prefix="dnncourse-reference-") as tmp:
        for extra in data_files(solution.parent, layout):
            target = Path(tmp) / extra.relative_to(solution.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, target)
        data = Path(tmp) if any(Path(tmp).iterdir()) else None
        result = execute(nb, Path(tmp), limits, sandbox=sandbox, data=data)
    if result.status != Status.OK:
        raise ReferenceError(
            f"the reference run of {solution.name} ended with {result.status}: "
            + "; ".join(result.details)
        )
    failed = [
        f"{c.metadata.nbgrader['grade_id']}: {o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells
        if verdict.is_test(c)
        for o in c.outputs
        if o.output_type == "error"
    ]
    if failed:
        raise ReferenceError(f"a test of the solution {solution.name} failed: {failed[0]}")
    records = verdict.collect(nb)
    bad = problems(records)
    if bad:
        raise ReferenceError(f"reference of {solution.name}: " + "; ".join(bad))
    return records


def records(
    solution: Path,
    cache: Path,
    limits: Limits | None = None,
    sandbox: bool = True,
    layout: Layout | None = None,
) -> dict[str, list[dict]]:
    """The reference records of ``solution``, from ``cache`` or computed once (locked)."""
    limits = limits or Limits()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{solution.stem}-{checksum(solution, layout)}.json"
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return json.loads(path.read_text())
            data = run(solution, limits, sandbox, layout)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(data))
            partial.replace(path)
            return data
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def solution_of(course, name: str) -> Path:
    """The instructor's notebook ``name`` in the grading course."""
    return Path(course.root) / course.source / course.assignment / f"{name}.ipynb"


def cache_of(course) -> Path:
    """``DNNCOURSE_REFERENCE_CACHE`` if set, else ``OUT/reference/``."""
    shared = os.environ.get("DNNCOURSE_REFERENCE_CACHE")
    return Path(shared) if shared else Path(course.out) / "reference"
