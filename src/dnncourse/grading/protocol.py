"""The types that cross the grading boundary: :class:`Task` in, :class:`Result` out.

A task is one student: the bytes of what they handed in, the limits, and the content hash
of the assignment bundle (the released notebooks and the trusted reference data) that the
worker grades against. A result is plain data: a :class:`Status`, one :class:`Check` per
graded test cell with points and a message written by the trusted side, the feedback pages
and the graded notebooks. Nothing here carries code, so a result can cross a process, a
Dask worker or a network without trusting the side that made it.

The columns of ``grades.csv`` are :data:`COLUMNS`, derived from :class:`Result`;
:func:`result_to_json` and :func:`result_from_json` carry a result through a pipe or a file.
"""

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    """How a student's grading ended, worst first (a :class:`str`, so it compares to text)."""

    GRADER_ERROR = "grader error"
    INVALID = "invalid notebook"
    MISSING = "missing notebook"
    TIMEOUT = "timeout"
    KERNEL_DIED = "kernel died"
    MEMORY_LIMIT = "memory limit"
    OUTPUT_LIMIT = "output limit"
    RENAMED = "renamed notebook"
    OK = "ok"

    @classmethod
    def worst(cls, statuses) -> "Status":
        """The worst of ``statuses`` (``OK`` for none)."""
        order = list(cls)
        return min((cls(s) for s in statuses), key=order.index, default=cls.OK)

    @property
    def needs_a_look(self) -> bool:
        """Whether an instructor should look at this row (anything but a clean run)."""
        return self not in (Status.OK, Status.RENAMED)


@dataclass(frozen=True)
class Limits:
    """Per-student limits (seconds, MiB, bytes); ``None`` or 0 switches one off."""

    cell_timeout: float = 60.0
    memory_limit_mb: float | None = 4096
    file_limit_mb: float | None = 256
    cell_output_bytes: int = 100_000
    notebook_output_bytes: int = 2_000_000
    probe_output_bytes: int = 32 * 2**20  # the hidden tests' probe records, per notebook
    processes: int = 256
    workdir_mb: float = 512


@dataclass(frozen=True)
class Check:
    """The trusted verdict on one graded test cell."""

    notebook: str
    grade_id: str
    points: float
    max_points: float
    passed: bool
    message: str = ""  # written outside the sandbox; never student output or hidden source
    # non-empty: a person must decide this cell (it scores 0 until then); the evidence of
    # :mod:`~dnncourse.grading.rules`, from closed sets (never the student's text)
    review: str = ""


@dataclass(frozen=True)
class Task:
    """One student to grade: bytes in, no paths shared with the client."""

    student: str
    assignment: str
    files: dict[str, bytes]  # path relative to the student's folder -> bytes
    bundle: str  # content hash of the assignment bundle the worker grades against
    limits: Limits = field(default_factory=Limits)
    sandbox: bool = True
    timeout: float | None = 600.0  # seconds for the whole student; then everything is killed

    @property
    def checksum(self) -> str:
        """SHA-256 over the submitted files (names and bytes): what ``--resume`` compares."""
        return checksum(self.files)


def checksum(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """What a worker grades against, the same for every student of an assignment.

    ``files``: path -> bytes: ``release/<notebook>.ipynb`` (the released notebooks),
    ``gradebook.json`` (the instructor's cells and points, as nbgrader stores them),
    ``data/...`` (the assignment's data files) and, later, the trusted reference data.
    It travels to each worker once and is cached there under :attr:`hash`.
    """

    assignment: str
    files: dict[str, bytes]

    @property
    def hash(self) -> str:
        return checksum({"assignment": self.assignment.encode(), **self.files})


@dataclass(frozen=True)
class Result:
    """What grading one student produced; only the client writes it anywhere."""

    student: str
    assignment: str
    status: Status
    score: float
    max_score: float
    detail: str = ""
    seconds: float = 0.0
    checksum: str = ""  # of the submitted files (Task.checksum): what --resume compares
    bundle: str = ""  # hash of the bundle it was graded against
    checks: tuple[Check, ...] = ()
    feedback: dict[str, str] = field(default_factory=dict)  # notebook -> HTML page
    graded: dict[str, bytes] = field(default_factory=dict)  # notebook -> graded .ipynb

    @property
    def review(self) -> str:
        """The cells held for a person to decide, with the evidence ("" when none)."""
        return "; ".join(f"{c.grade_id}: {c.review}" for c in self.checks if c.review)

    def row(self) -> dict:
        """The row of ``grades.csv``."""
        return {name: getattr(self, attr) for name, attr in _CSV.items()}


_CSV = {
    "student_id": "student",
    "assignment": "assignment",
    "score": "score",
    "max_score": "max_score",
    "status": "status",
    "detail": "detail",
    "seconds": "seconds",
    "review": "review",
}
COLUMNS = list(_CSV)


def result_to_json(result: Result, pages: bool = True) -> str:
    """``result`` as one line of JSON (``pages=False``: without feedback and notebooks)."""
    data = dataclasses.asdict(result)
    data["checks"] = [dataclasses.asdict(c) for c in result.checks]
    if pages:
        data["graded"] = {k: base64.b64encode(v).decode() for k, v in result.graded.items()}
    else:
        data["feedback"], data["graded"] = {}, {}
    return json.dumps(data)


def result_from_json(text: str) -> Result:
    """The :class:`Result` of :func:`result_to_json` (raises ValueError/TypeError if not one)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a result")
    data["status"] = Status(data["status"])
    data["checks"] = tuple(Check(**c) for c in data.get("checks", ()))
    data["graded"] = {k: base64.b64decode(v) for k, v in data.get("graded", {}).items()}
    return Result(**data)
