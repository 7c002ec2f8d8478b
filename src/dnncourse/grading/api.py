"""The two instructor commands as functions: grade a class, release and validate homework."""

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..homework import (
    ROOT_MARKERS,
    assignments,
    hidden_lines,
    layout,
    release,
    repo_root,
    shown_lines,
)
from . import reference
from . import sandbox as sandboxes
from .course import prepare
from .engine import check_scheduler, grade_class, summary
from .protocol import Limits, Result, Status

MAX_ZIP_BYTES = 2 * 2**30


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this host; the message says what is missing."""


def students_in(submissions: Path) -> dict[str, Path]:
    """Student id -> folder, one per sub-folder of ``submissions`` (hidden ones skipped)."""
    if not submissions.is_dir():
        raise FileNotFoundError(f"{submissions} is not a folder of student folders")
    return {
        p.name: p
        for p in sorted(submissions.iterdir())
        if p.is_dir() and not p.name.startswith((".", "__"))
    }


def unpack_zip(archive: Path, dest: Path) -> Path:
    """Extract an LMS download (``student_id/notebook.ipynb`` inside) safely into ``dest``."""
    with zipfile.ZipFile(archive) as zf:
        total = sum(info.file_size for info in zf.infolist())
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} unpacks to {total / 2**30:.1f} GiB: too large")
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or not parts or ".." in parts or parts[0] in ("/", "__MACOSX"):
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    folders = [p for p in dest.iterdir() if p.is_dir()]
    if len(folders) == 1 and not any(p.is_file() for p in dest.iterdir()):
        inner = students_in(folders[0])  # a zip of one folder holding the student folders
        if inner and all(any(f.rglob("*.ipynb")) for f in inner.values()):
            return folders[0]
    return dest


def grade(
    assignment: str,
    submissions: Path,
    out: Path,
    jobs: int | None = None,
    limits: Limits | None = None,
    db_url: str | None = None,
    root: Path | None = None,
    progress: bool = True,
    scheduler: str | None = None,
    resume: bool = False,
    sandbox: bool = True,
) -> list[Result]:
    """Grade a class; writes ``out/grades.csv`` and ``out/feedback/``; a result per student.

    ``limits``: per student, both timeouts included (default :class:`~.protocol.Limits`);
    ``scheduler``: a Dask scheduler's address (default: ``DNNCOURSE_SCHEDULER``, else a
    local cluster of ``jobs`` workers); ``resume``: keep the stored results of students
    whose files did not change. Every kernel runs sandboxed; where no sandbox can be made
    this raises :class:`SandboxUnavailable` before anything is graded, unless
    ``sandbox=False``.
    """
    if sandbox and (why := sandboxes.problem()):
        raise SandboxUnavailable(
            f"{why}.\nRun `dnncourse doctor` for details; to grade without a sandbox "
            "anyway (student code then runs as you), pass --no-sandbox."
        )
    root = repo_root() if root is None else root
    check_scheduler(scheduler)  # before any work: a cluster that cannot be reached
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        unpacked = out / "submitted-zip"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        submissions = unpack_zip(submissions, unpacked)
    students = students_in(submissions)
    course = prepare(root, assignment, out, db_url)
    results = grade_class(
        course,
        students,
        jobs=jobs,
        limits=limits,
        scheduler=scheduler,
        resume=resume,
        sandbox=sandbox,
        progress=progress,
    )
    (out / "summary.txt").write_text(summary(results, sandbox) + "\n")
    return results


@dataclass
class Validation:
    """What the release validation of one assignment found: problems fail it, warnings not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:  # true when it failed, as a list of problems was
        return bool(self.problems)


def leaks(root: Path, name: str) -> list[str]:
    """Solution or hidden-test lines (and nbgrader markers) found in the released folder.

    A line that the instructor's notebook also shows outside those regions (in the statement,
    a visible test, given code) is shown on purpose: not a leak.
    """
    lay = layout(root)
    secret, public = set(), set()
    for notebook in (root / lay.source / name).glob("*.ipynb"):
        secret |= hidden_lines(notebook)
        public |= shown_lines(notebook)
    secret -= public
    problems = []
    for path in sorted((root / lay.release / name).rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            problems += [f"{path}: contains {m!r}" for m in ROOT_MARKERS if m in text]
            if path.suffix == ".ipynb":
                cells = json.loads(text)["cells"]
                lines = {s.strip() for c in cells for s in "".join(c["source"]).splitlines()}
                leaked = sorted(lines & secret)
                if leaked:
                    problems.append(f"{path}: shows hidden lines, e.g. {leaked[0]!r}")
    return problems


def _validate(root: Path, name: str, limits: Limits) -> Validation:
    """Problems with the released ``name`` (solution below full marks, stub above zero,
    leaks); warnings (cells decided by asserts, points graded by hand)."""
    lay = layout(root)
    found = Validation(leaks(root, name))
    problems = found.problems
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp) / "submissions"
        shutil.copytree(root / lay.source / name, subs / "solution")
        shutil.copytree(root / lay.release / name, subs / "stub")
        try:
            graded = grade(
                name, subs, Path(tmp) / "out", jobs=2, limits=limits, root=root, progress=False
            )
        except reference.ReferenceError as error:  # the solution fails its own tests
            problems.append(f"the solution cannot be the reference: {error}")
            return found
        results = {r.student: r for r in graded}
    solution, stub = results["solution"], results["stub"]
    auto = sum(c.max_points for c in solution.checks)  # the automatically graded points
    earned = sum(c.points for c in solution.checks)
    if not solution.max_score:
        problems.append(f"{name} has no points")
    if solution.status != Status.OK or earned != auto:
        problems.append(
            f"the solution scored {earned:g}/{auto:g} ({solution.status}: {solution.detail})"
        )
    stub_score = sum(c.points for c in stub.checks)
    if stub_score != 0:
        problems.append(f"the untouched stub scored {stub_score:g} (every test must fail)")
    asserted = [f"{c.notebook}/{c.grade_id}" for c in solution.checks if c.kind == "assert"]
    if asserted:
        found.warnings.append(
            f"{len(asserted)} graded cell(s) record no probe and are decided by their asserts "
            f"inside the student's process (forgeable, as in plain nbgrader): "
            f"{', '.join(asserted)}; the instructor's guide shows how to make them probes"
        )
    if solution.max_score > auto:
        found.warnings.append(
            f"{solution.max_score - auto:g} of {solution.max_score:g} points are graded by hand "
            "(written answers, tasks): not validated"
        )
    return found


def release_and_validate(
    names: list[str] | None = None, root: Path | None = None, limits: Limits | None = None
) -> dict[str, Validation]:
    """Regenerate the released folders of ``names`` (default: all) and validate each one."""
    root = repo_root() if root is None else root
    names = names or assignments(root)
    release(names, root)
    return {name: _validate(root, name, limits or Limits()) for name in names}
