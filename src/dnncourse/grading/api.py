"""The two instructor commands as functions: grade a class, release and validate homework."""

import json
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..homework import ROOT_MARKERS, assignments, hidden_lines, release, repo_root
from . import reference
from .course import prepare
from .execute import Limits
from .pool import grade_class, summary, write_csv

MAX_ZIP_BYTES = 2 * 2**30


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
    timeout: float | None = 600.0,
    db_url: str | None = None,
    root: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Grade a class; writes ``out/grades.csv`` and ``out/feedback/``; returns the rows."""
    root = repo_root() if root is None else root
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
    reference.prepare(course, limits or Limits())  # the solution's run, once, before the class
    rows = grade_class(
        course, students, jobs=jobs, limits=limits, timeout=timeout, progress=progress
    )
    write_csv(rows, out / "grades.csv")
    (out / "summary.txt").write_text(summary(rows) + "\n")
    return rows


def _validate(root: Path, name: str, limits: Limits) -> list[str]:
    """Problems with the released ``name``: solution below full marks, stub above zero, leaks."""
    problems = []
    secret = set()
    for notebook in (root / "solutions" / name).glob("*.ipynb"):
        secret |= hidden_lines(notebook)
    for path in (root / "exercises" / name).rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            problems += [f"{path}: contains {m!r}" for m in ROOT_MARKERS if m in text]
            if path.suffix == ".ipynb":
                cells = json.loads(text)["cells"]
                lines = {s.strip() for c in cells for s in "".join(c["source"]).splitlines()}
                leaked = sorted(lines & secret)
                if leaked:
                    problems.append(f"{path}: shows hidden lines, e.g. {leaked[0]!r}")
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp) / "submissions"
        shutil.copytree(root / "solutions" / name, subs / "solution")
        shutil.copytree(root / "exercises" / name, subs / "stub")
        try:
            graded = grade(
                name, subs, Path(tmp) / "out", jobs=2, limits=limits, root=root, progress=False
            )
        except reference.ReferenceError as error:  # the solution fails its own tests
            return [*problems, f"the solution cannot be the reference: {error}"]
        rows = {r["student_id"]: r for r in graded}
    solution, stub = rows["solution"], rows["stub"]
    if not solution["max_score"]:
        problems.append(f"{name} has no points")
    if solution["status"] != "ok" or solution["score"] != solution["max_score"]:
        problems.append(
            f"the solution scored {solution['score']:g}/{solution['max_score']:g} "
            f"({solution['status']}: {solution['detail']})"
        )
    if stub["score"] != 0:
        problems.append(f"the untouched stub scored {stub['score']:g} (every test must fail)")
    return problems


def release_and_validate(
    names: list[str] | None = None, root: Path | None = None, limits: Limits | None = None
) -> dict[str, list[str]]:
    """Regenerate ``exercises/`` for ``names`` (default: all) and validate each one."""
    root = repo_root() if root is None else root
    names = names or assignments(root)
    release(names, root)
    return {name: _validate(root, name, limits or Limits()) for name in names}
