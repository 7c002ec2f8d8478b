"""Homework plumbing on top of nbgrader: generate the student notebooks.

The flow: ``solutions/<hw>/*.ipynb`` (instructor notebooks with solutions and hidden
tests) -> ``nbgrader generate_assignment`` -> ``exercises/<hw>/*.ipynb`` (student
notebooks). Generation runs in a scratch copy of the course so that the repository never
holds a gradebook; the result replaces ``exercises/<hw>/``.

The command is ``dnncourse release`` (:mod:`dnncourse.cli`), which calls :func:`release`
and then validates what it produced (:func:`dnncourse.grading.release_and_validate`).

The folders are the course's own (:func:`layout`): nbgrader's ``CourseDirectory`` settings
read from the course's ``nbgrader_config.py`` (``source_directory``, ``release_directory``,
``course_id``, ``ignore``), so an nbgrader course with ``source/`` and ``release/`` works as
it is; where the file does not set the folders, ours (``solutions/``, ``exercises/``) when a
``solutions/`` folder exists, else nbgrader's defaults (``source/``, ``release/``).
"""

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Layout:
    """The course's settings that matter to grading (nbgrader's ``CourseDirectory``)."""

    source: str = "solutions"  # the instructor notebooks (nbgrader's source_directory)
    release: str = "exercises"  # the student notebooks (its release_directory)
    course_id: str = "dnncourse"
    ignore: tuple[str, ...] = (".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback")

    def ignored(self, relative: Path) -> bool:
        """Is a file of an assignment folder left out (nbgrader's ``ignore`` patterns, matched
        against each part of its path, as nbgrader's ``find_all_files`` does)?"""
        return any(fnmatch.fnmatch(part, pat) for part in relative.parts for pat in self.ignore)

    def args(self) -> list[str]:
        """The folders as nbgrader arguments (so that nbgrader uses the same ones)."""
        return [
            f"--CourseDirectory.source_directory={self.source}",
            f"--CourseDirectory.release_directory={self.release}",
        ]


def layout(root: Path) -> Layout:
    """The layout of the course in ``root``, from its ``nbgrader_config.py``."""
    config = root / "nbgrader_config.py"
    return _layout(str(root.resolve()), config.stat().st_mtime_ns if config.is_file() else 0)


@functools.cache
def _layout(root: str, _mtime: int) -> Layout:
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    config = Config()
    if Path(root, "nbgrader_config.py").is_file():
        config = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
    given = config.CourseDirectory
    nbgrader_dirs = CourseDirectory(config=config)
    ours = "source_directory" not in given and Path(root, "solutions").is_dir()
    source = "solutions" if ours else nbgrader_dirs.source_directory
    ours = ours or (source == "solutions" and "release_directory" not in given)
    release = "exercises" if ours else nbgrader_dirs.release_directory
    return Layout(
        source, release, nbgrader_dirs.course_id or "dnncourse", tuple(nbgrader_dirs.ignore)
    )


def assignments(root: Path) -> list[str]:
    """Names of the assignments: the folders of the source folder (not hidden ones such as
    ``.ipynb_checkpoints`` or a tool's cache)."""
    source = root / layout(root).source
    if not source.is_dir():
        return []
    return sorted(
        p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


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


def scratch_course(root: Path, dest: Path, assignment: str | None = None) -> Path:
    """Copy the config and the source folder of ``root`` into the empty folder ``dest``
    (with ``assignment``: that assignment and the source folder's own files, such as an
    nbgrader header notebook, only)."""
    lay = layout(root)
    if (root / "nbgrader_config.py").is_file():
        shutil.copy2(root / "nbgrader_config.py", dest / "nbgrader_config.py")
    source = root / lay.source
    if assignment is None:
        shutil.copytree(source, dest / lay.source)
        return dest
    (dest / lay.source).mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / lay.source / path.name)
    shutil.copytree(source / assignment, dest / lay.source / assignment)
    return dest


def generate(assignment: str, course_dir: Path, lay: Layout | None = None) -> Path:
    """``nbgrader generate_assignment`` in ``course_dir``; returns the released folder."""
    lay = lay or layout(course_dir)
    nbgrader(course_dir, "generate_assignment", assignment, "--force", *lay.args())
    return course_dir / lay.release / assignment


def release(names: list[str] | None = None, root: Path | None = None) -> list[Path]:
    """Regenerate the released folder of each assignment from its source folder
    (``exercises/<hw>/`` from ``solutions/<hw>/`` in this course)."""
    root = repo_root() if root is None else root
    lay = layout(root)
    names = names or assignments(root)
    known = assignments(root)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; {lay.source}/ holds {known}")
    released = []
    with tempfile.TemporaryDirectory() as tmp:
        course = scratch_course(root, Path(tmp))
        for name in names:
            generated = generate(name, course, lay)
            target = root / lay.release / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(generated, target)
            released.append(target)
    return released


def shown_lines(notebook: Path) -> set[str]:
    """Stripped lines the instructor shows on purpose: every cell's text outside the solution
    and hidden-test regions (the statement in Markdown, visible tests, given code)."""
    cells = json.loads(notebook.read_text())["cells"]
    lines = set()
    for cell in cells:
        public = SOLUTION_REGION.sub("", "".join(cell["source"]))
        lines |= {s.strip() for s in public.splitlines()}
    return lines


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
