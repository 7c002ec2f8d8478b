"""Homework plumbing on top of nbgrader: generate the student notebooks.

The flow: ``solutions/<hw>/*.ipynb`` (instructor notebooks with solutions and hidden
tests) -> ``nbgrader generate_assignment`` -> ``exercises/<hw>/*.ipynb`` (student
notebooks). Generation runs in a scratch copy of the course so that the repository never
holds a gradebook; the result replaces ``exercises/<hw>/``.

The command is ``dnncourse release`` (:mod:`dnncourse.cli`), which calls :func:`release`
and then validates what it produced (:func:`dnncourse.grading.release_and_validate`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT_MARKERS = (
    "### BEGIN SOLUTION",
    "### END SOLUTION",
    "### BEGIN HIDDEN TESTS",
    "### END HIDDEN TESTS",
)
SOLUTION_REGION = re.compile(
    r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", flags=re.DOTALL
)


def repo_root() -> Path:
    """The course root: the nearest folder upwards holding ``nbgrader_config.py``."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "nbgrader_config.py").is_file():
            return folder
    raise FileNotFoundError(f"no nbgrader_config.py in {here} or any parent folder")


def assignments(root: Path) -> list[str]:
    """Names of the assignments: the folders of ``solutions/`` (not hidden ones such as
    ``.ipynb_checkpoints`` or a tool's cache)."""
    folders = (root / "solutions").iterdir()
    return sorted(p.name for p in folders if p.is_dir() and not p.name.startswith((".", "_")))


def tool_env() -> dict[str, str]:
    """Environment for nbgrader: this interpreter's ``bin/`` first on PATH (for alembic)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def nbgrader(course_dir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in ``course_dir``; raise with nbgrader's log if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course_dir,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc


def scratch_course(root: Path, dest: Path) -> Path:
    """Copy the config and ``solutions/`` of ``root`` into the empty folder ``dest``."""
    shutil.copy2(root / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(root / "solutions", dest / "solutions")
    return dest


def generate(assignment: str, course_dir: Path) -> Path:
    """``nbgrader generate_assignment`` in ``course_dir``; returns ``exercises/<assignment>``."""
    nbgrader(course_dir, "generate_assignment", assignment, "--force")
    return course_dir / "exercises" / assignment


def release(names: list[str] | None = None, root: Path | None = None) -> list[Path]:
    """Regenerate ``exercises/<hw>/`` from ``solutions/<hw>/`` for each assignment."""
    root = repo_root() if root is None else root
    names = names or assignments(root)
    known = assignments(root)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; solutions/ holds {known}")
    released = []
    with tempfile.TemporaryDirectory() as tmp:
        course = scratch_course(root, Path(tmp))
        for name in names:
            generated = generate(name, course)
            target = root / "exercises" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(generated, target)
            released.append(target)
    return released


def hidden_lines(notebook: Path, min_length: int = 8) -> set[str]:
    """Stripped lines inside solution and hidden-test regions (the ones that must not leak).

    Lines shorter than ``min_length`` (``else:``, ``)``) say nothing about the answer.
    """
    cells = json.loads(notebook.read_text())["cells"]
    lines = set()
    for cell in cells:
        for match in SOLUTION_REGION.finditer("".join(cell["source"])):
            stripped = (s.strip() for s in match.group(2).splitlines())
            lines |= {s for s in stripped if len(s) >= min_length}
    return lines
