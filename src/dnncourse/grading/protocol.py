"""The types that cross the grading boundary: :class:`Task` in, :class:`Result` out.

A task is one student: the bytes of what they handed in, the limits, and the content hash
of the assignment bundle (the released notebooks and the trusted reference data) that the
worker grades against. A result is plain data: a :class:`Status`, one :class:`Check` per
graded test cell with points and a message written by the trusted side, the feedback pages
and the graded notebooks. Nothing here carries code, so a result can cross a process, a
Dask worker or a network without trusting the side that made it.

The columns of ``grades.csv`` are :data:`COLUMNS`, derived from :class:`Result`.
"""

import hashlib
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


@dataclass(frozen=True)
class Task:
    """One student to grade: bytes in, no paths shared with the client."""

    student: str
    assignment: str
    files: dict[str, bytes]  # path relative to the student's folder -> bytes
    bundle: str  # content hash of the assignment bundle the worker grades against
    limits: Limits = field(default_factory=Limits)
    sandbox: bool = True

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
class Result:
    """What grading one student produced; only the client writes it anywhere."""

    student: str
    assignment: str
    status: Status
    score: float
    max_score: float
    detail: str = ""
    seconds: float = 0.0
    checksum: str = ""
    checks: tuple[Check, ...] = ()
    feedback: dict[str, str] = field(default_factory=dict)  # notebook -> HTML page
    graded: dict[str, bytes] = field(default_factory=dict)  # notebook -> graded .ipynb

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
}
COLUMNS = list(_CSV)
