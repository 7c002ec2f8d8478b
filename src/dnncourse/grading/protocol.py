"""The types that cross the grading boundary: :class:`Task` in, :class:`Result` out.

A task is one student: the bytes of what they handed in, the limits, and the content hash
of the assignment bundle (the released notebooks and the trusted reference data) that the
worker grades against. A result is plain data: a :class:`Status`, one :class:`Check` per
graded test cell with points and a message written by the trusted side, the feedback pages
and the graded notebooks. Nothing here carries code, so a result can cross a process, a
Dask worker or a network without trusting the side that made it.

The limits of a student (:class:`Limits`, both timeouts included) are defined once, here,
with their help text: ``dnncourse grade``, ``dnncourse serve`` and the API read them from
here (:func:`add_limit_options`, :func:`limits_from_options`).

The columns of ``grades.csv`` are :data:`COLUMNS`, derived from :class:`Result`. One codec
carries every type here through a pipe or a file: :func:`encode` and :func:`decode` (typed by
the dataclass fields: a line that is not a well-formed value of the type is a ValueError or
TypeError, never a half-read value); :func:`result_to_json` and :func:`result_from_json` are
its two uses for a result. Results without grades are made by :func:`failed` and
:func:`zero_checks`, the one place they are built.
"""

import argparse
import base64
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum

# the MIME type of a probe record among a cell's outputs; the kernel's side (probe.py, which
# runs standalone in the sandbox) spells it too, and a test keeps the two the same. Here, the
# grader's processes read it without importing probe.py's PyTorch.
PROBE_MIME = "application/vnd.dnncourse.probe+json"


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


def _limit(default, help: str, flag: str = ""):
    """A field of :class:`Limits`: its default, its help text, its command-line flag."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class Limits:
    """Per-student limits (seconds, MiB, bytes), each default written once, here.

    ``None`` or 0 switches a limit off (for a timeout: no deadline), the same in ``grade``,
    ``serve`` and the API; a negative value is a ValueError (an error message on the
    command line), never a deadline already past.
    """

    cell_timeout: float | None = _limit(
        60.0, "seconds a cell may run; then the kernel is killed (0: no limit)", "--cell-timeout"
    )
    timeout: float | None = _limit(
        600.0,
        "seconds per student, all notebooks; then everything is killed (0: no limit)",
        "--timeout",
    )
    memory_limit_mb: float | None = _limit(
        4096.0,
        "MiB of memory of all a student's processes together, and of address space of each "
        "(0: no limit; use 0 on a GPU machine, see the instructor's guide)",
        "--memory-limit",
    )
    file_limit_mb: float | None = _limit(256, "MiB of one file the kernel writes")
    cell_output_bytes: int = _limit(100_000, "bytes of output a cell may show")
    notebook_output_bytes: int = _limit(2_000_000, "bytes of output a notebook may show")
    probe_output_bytes: int = _limit(
        32 * 2**20, "bytes of the hidden tests' probe records, per notebook"
    )
    message_bytes: int = _limit(
        16 * 2**20, "bytes of one frame of a kernel message (larger: refused, output limit)"
    )
    grader_memory_mb: float | None = _limit(
        1024.0,
        "MiB the grading process may grow by while a kernel runs; then the kernel is killed "
        "(output limit; 0: no limit)",
    )
    processes: int = _limit(256, "processes of the student's sandbox")
    workdir_mb: float = _limit(512, "MiB of the sandbox's work folder")
    cpu_seconds: float | None = _limit(600.0, "seconds of CPU time of all the student's processes")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 0:
                raise ValueError(f"{f.name} must be >= 0 (0: no limit), got {value:g}")
            if value == 0 and f.type == float | None:  # 0 and None say the same: no limit
                object.__setattr__(self, f.name, None)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0: no limit), got {text}")
    return value


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`Limits` (``--cell-timeout``, ``--timeout``, ``--memory-limit``)
    with their defaults and help text, for ``grade`` and ``serve`` alike."""
    for f in dataclasses.fields(Limits):
        if f.metadata["flag"]:
            parser.add_argument(
                f.metadata["flag"],
                type=_non_negative,
                default=f.default,
                help=f"{f.metadata['help']} (default {f.default:g})",
            )


def limits_from_options(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` of the flags that :func:`add_limit_options` added."""
    return Limits(
        **{
            f.name: getattr(args, f.metadata["flag"].lstrip("-").replace("-", "_"))
            for f in dataclasses.fields(Limits)
            if f.metadata["flag"]
        }
    )


class Compare(StrEnum):
    """How a probe's value is compared with the reference's (see :class:`Comparison`)."""

    CLOSE = "close"  # same structure, dtypes, shapes, devices; values within rtol/atol
    EQUAL = "equal"  # exactly
    KS = "ks"  # a sample of the same distribution (two-sample Kolmogorov-Smirnov, alpha)
    PATTERN = "pattern"  # entries equal and different exactly where the reference's are


@dataclass(frozen=True)
class Comparison:
    """The comparison a probe states (the ``check`` field of a probe record): read from the
    *reference* record only, and an error at release (:func:`Comparison.of` raises
    ValueError) when its kind is unknown, never a silent default."""

    kind: Compare = Compare.CLOSE
    rtol: float | None = None  # None: the dtype's default of torch.testing.assert_close
    atol: float | None = None
    what: str = ""  # words added to the message ("after 5 steps")
    alpha: float = 1e-6  # level of the KS test

    @classmethod
    def of(cls, record: dict) -> "Comparison":
        """The comparison of a probe record (ValueError if it is not a well-formed one)."""
        spec = record.get("check") or {}
        if not isinstance(spec, dict):
            raise ValueError(f"probe {record.get('name')!r}: its comparison is not a dict")
        kinds = [k.value for k in Compare]
        if spec.get("kind", "close") not in kinds:
            raise ValueError(
                f"probe {record.get('name')!r}: unknown comparison {spec.get('kind')!r} "
                f"(one of {', '.join(kinds)})"
            )
        try:
            return _typed(cls, {k: v for k, v in spec.items() if v is not None or k != "alpha"})
        except TypeError as error:
            raise ValueError(f"probe {record.get('name')!r}: {error}") from None


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
    # "probe": decided outside, from probe records; "assert": a cell without probes, scored
    # as nbgrader scores it (its points if it ran without error), inside the student's
    # process: forgeable, as in plain nbgrader
    kind: str = "probe"


@dataclass(frozen=True)
class Task:
    """One student to grade: bytes in, no paths shared with the client."""

    student: str
    assignment: str
    files: dict[str, bytes]  # path relative to the student's folder -> bytes
    bundle: str  # content hash of the assignment bundle the worker grades against
    limits: Limits = field(default_factory=Limits)  # the whole student's timeout included
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

    @property
    def grade_cells(self) -> dict[str, dict[str, float]]:
        """Notebook -> grade id -> points (of ``gradebook.json``)."""
        cells = json.loads(self.files["gradebook.json"])
        return {name: entry["grade_cells"] for name, entry in cells.items()}


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
    # phase -> (wall, CPU, the kernel's CPU) seconds (:mod:`.timings`): for the benchmark,
    # never shown to a student, never trusted for anything
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def review(self) -> str:
        """The cells held for a person to decide, with the evidence ("" when none)."""
        return "; ".join(f"{c.grade_id}: {c.review}" for c in self.checks if c.review)

    @property
    def assert_score(self) -> float:
        """The points of cells decided by asserts inside the student's process (forgeable)."""
        return float(sum(c.points for c in self.checks if c.kind == "assert"))

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
    "assert_score": "assert_score",
    "review": "review",
}
COLUMNS = list(_CSV)


def failed(
    student: str, assignment: str, detail: str, status: Status = Status.GRADER_ERROR
) -> Result:
    """A result without grades: zero (the client stores zero for every test)."""
    return Result(student, assignment, status, 0.0, 0.0, detail)


def zero_checks(notebook: str, points: dict[str, float], message: str = "not graded") -> list:
    """Every test of a notebook that could not be graded, at zero (``points``: grade id ->
    its points, the ``grade_cells`` of the bundle's ``gradebook.json``)."""
    return [
        Check(notebook, gid, 0.0, max_points, False, message)
        for gid, max_points in sorted(points.items())
    ]


# -- the codec ------------------------------------------------------------------------------
def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def encode(value) -> str:
    """A value of the types here (a dataclass, with what it holds) as one line of JSON."""
    return json.dumps(_plain(value))


def _typed(kind, data):
    """``data`` (plain JSON) as a value of ``kind``; TypeError/ValueError if it is not one."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _typed(kind, data)
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise TypeError(f"expected {kind.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        if set(data) - names:
            raise TypeError(f"{kind.__name__} has no field {sorted(set(data) - names)[0]!r}")
        return kind(**{name: _typed(hints[name], value) for name, value in data.items()})
    if origin is tuple:
        return tuple(_typed(args[0], v) for v in _expect(data, list))
    if origin is list:
        return [_typed(args[0], v) for v in _expect(data, list)]
    if origin is dict:
        return {_expect(k, str): _typed(args[1], v) for k, v in _expect(data, dict).items()}
    if kind is bytes:
        return base64.b64decode(_expect(data, str), validate=True)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(data)
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise TypeError(f"expected a number, got {type(data).__name__}")
        return float(data)
    if kind is int and isinstance(data, bool):
        raise TypeError("expected an integer, got bool")
    return _expect(data, kind)


def _expect(data, kind):
    if not isinstance(data, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(data).__name__}")
    return data


def decode(kind: type, text: str):
    """The value of ``kind`` that :func:`encode` wrote (ValueError/TypeError if not one)."""
    return _typed(kind, json.loads(text))


def result_to_json(result: Result, pages: bool = True) -> str:
    """``result`` as one line of JSON (``pages=False``: without feedback and notebooks)."""
    if not pages:
        result = dataclasses.replace(result, feedback={}, graded={})
    return encode(result)


def result_from_json(text: str) -> Result:
    """The :class:`Result` of :func:`result_to_json` (raises ValueError/TypeError if not one)."""
    return decode(Result, text)
