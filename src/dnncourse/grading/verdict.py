"""The verdict, made outside the student's process: probe records against the reference's.

A graded test cell passes exactly when every probe the instructor's solution recorded in that
cell (:mod:`dnncourse.grading.reference`) has a matching record from the student's run
(:mod:`dnncourse.grading.probe`). The comparison, its tolerances and the words of the message
come from the *reference* record only: a student's record is data to compare, never an
instruction (its ``check`` field is ignored), and two student records with the same name in
one cell fail that probe. Visible asserts no longer decide: they are for students.

The result is one :class:`~dnncourse.grading.protocol.Check` per graded cell, with a message
written here ("max error 0.03 where 1e-09 is allowed ... after 60 steps"). The student's
process has read the hidden tests (``linecache``) and writes its own records, so a message
is built from the reference record and from closed sets only: a field of the student's
record enters it only once validated (:func:`shown_dtype`, :func:`shown_device`,
:func:`shown_shape`, :func:`shown_exception`, a count up to :data:`MAX_COUNT`), a number
computed from the student's values only rounded to one significant digit
(:func:`shown_number`), and every message is capped (:data:`MAX_FAILURE`,
:data:`MAX_MESSAGE`). What a student could carry out through a message is then a few bits per
check, never a line of a hidden test. :func:`mark` then makes the outputs of
the test cells agree with the checks (an error output for a failed cell, none for a passed
one, the probe outputs removed) so that nbgrader's ``SaveAutoGrades`` stores the right score.

A graded cell for which the instructor's solution recorded no probe is a classic nbgrader
test (asserts, hidden or not): it is scored as nbgrader scores it (:func:`by_asserts`, with
nbgrader's own ``determine_grade``: its points if it ran without an error or a line on
stderr), and its check says ``kind="assert"``: decided inside the student's process, so a
student who makes errors vanish there gets the points, exactly as in plain nbgrader.
"""

import base64
import builtins
import math
from dataclasses import dataclass

import nbformat
import numpy as np
from nbgrader import utils as nbutils

from .protocol import PROBE_MIME as MIME
from .protocol import Check, Compare, Comparison

# torch.testing.assert_close's defaults per dtype (rtol, atol)
DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}
NUMPY_DTYPES = {
    "float16": "<i2",
    "bfloat16": "<i2",
    "bool": "|u1",
    "float32": "<f4",
    "float64": "<f8",
    "complex64": "<c8",
    "complex128": "<c16",
    "int8": "|i1",
    "uint8": "|u1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
}


# -- what of a student's record a message may show: closed sets ---------------------------
DEVICES = frozenset({"cpu", "cuda", "meta", "mps", "xpu"})
EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
) | {"OutOfMemoryError", "LinAlgError", "HiddenTestFailed"}
MAX_COUNT = 1000  # a count (items, records) shown in a message
MAX_FAILURE = 300  # characters of one failed check's reason
MAX_MESSAGE = 1000  # characters of a cell's message


def shown_dtype(dtype) -> str:
    return dtype if dtype in NUMPY_DTYPES else "another dtype"


def shown_device(device) -> str:
    return device if device in DEVICES else "another device"


def shown_shape(shape, expected: tuple) -> str:
    """A student's shape made of the expected sizes, 0 and 1 (transposed, a dimension too
    many or too few: the usual mistakes), at most one dimension more; else not shown."""
    sizes = {0, 1, *expected}
    ok = len(shape) <= len(expected) + 1 and all(d in sizes for d in shape)
    return str(tuple(shape)) if ok else "another shape"


def shown_exception(name) -> str:
    return name if isinstance(name, str) and name in EXCEPTIONS else "an exception"


def shown_count(n: int) -> str:
    return str(n) if 0 <= n <= MAX_COUNT else f"more than {MAX_COUNT}"


def shown_number(x: float) -> str:
    """A number computed from the student's values, to one significant digit (a closed set:
    about 9 digits times 60 exponents)."""
    if not math.isfinite(x):
        return "infinite"
    if x != 0 and not 1e-30 <= abs(x) <= 1e30:
        return "tiny" if abs(x) < 1e-30 else "huge"
    return f"{x:.1g}"


def capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_test(cell) -> bool:
    """A graded test cell (a grade cell that is not an answer)."""
    return cell.cell_type == "code" and nbutils.is_grade(cell) and not nbutils.is_solution(cell)


def probe_records(cell) -> list[dict]:
    """The probe records among a cell's outputs (malformed ones skipped)."""
    found = []
    for output in cell.get("outputs", []):
        if output.get("output_type") not in ("display_data", "execute_result"):
            continue
        payload = output.get("data", {}).get(MIME)
        if isinstance(payload, dict) and isinstance(payload.get("name"), str):
            found.append(payload)
    return found


def collect(nb) -> dict[str, list[dict]]:
    """grade_id -> the probe records of that test cell, in order."""
    return {
        cell.metadata.nbgrader["grade_id"]: probe_records(cell)
        for cell in nb.cells
        if is_test(cell)
    }


# -- decoding --------------------------------------------------------------------------------
@dataclass
class Tensor:
    dtype: str
    shape: tuple
    device: str
    values: np.ndarray | None  # None on the meta device


class Unreadable(Exception):
    pass


def decode(data):
    """Plain data back from a record (numpy arrays for tensors)."""
    if data is None or type(data) in (bool, int, float):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise Unreadable("not a probe value")
    ((kind, body),) = data.items()
    if kind == "float":
        return float(body) if isinstance(body, float) else float(str(body))
    if kind == "str":
        return str(body)
    if kind == "seq":
        return [decode(v) for v in body]
    if kind == "dict":
        return {str(k): decode(v) for k, v in body}
    if kind == "tensor":
        dtype, shape, device = (
            str(body["dtype"]),
            tuple(int(s) for s in body["shape"]),
            body["device"],
        )
        values = None
        if "data" in body:
            raw = base64.b64decode(body["data"])
            np_dtype = NUMPY_DTYPES.get(dtype)
            if np_dtype is None:
                raise Unreadable(f"dtype {dtype}")
            values = np.frombuffer(raw, dtype=np_dtype)
            if dtype == "bool":
                values = values.astype(bool)
            elif dtype in ("float16", "bfloat16"):  # compare their bit patterns as numbers
                values = _half_to_float(values, dtype)
            if values.size != math.prod(shape):
                raise Unreadable("tensor size")
            values = values.reshape(shape)
        return Tensor(dtype, shape, str(device), values)
    return ("opaque", kind)  # object, too_large, unreadable: never equal to a reference value


def _half_to_float(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


# -- comparing -------------------------------------------------------------------------------
def _kind(value) -> str:
    if isinstance(value, Tensor):
        return "a tensor"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "None"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a dict"
    return "something else"


def _where(path: str) -> str:
    return f" in {path}" if path else ""


def _close_arrays(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    if want.dtype == bool or got.dtype == bool:
        return None if np.array_equal(got, want) else "values differ"
    got, want = got.astype(np.complex128 if np.iscomplexobj(want) else np.float64), want
    want = want.astype(got.dtype)
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_g, nan_w):
        return "NaN where the expected value is a number" if nan_g.any() else "a number where NaN"
    ok = ~nan_w
    got, want = got[ok], want[ok]
    inf = np.isinf(want) | np.isinf(got)
    if not np.array_equal(got[inf], want[inf]):
        return "an infinite value where a finite one is expected (or the reverse)"
    got, want = got[~inf], want[~inf]
    if got.size == 0:
        return None
    err = np.abs(got - want)
    allowed = atol + rtol * np.abs(want)
    worst = int(np.argmax(err - allowed))
    if err[worst] <= allowed[worst]:
        return None
    return (
        f"max error {shown_number(float(err[worst]))} where {allowed[worst]:.2g} is allowed "
        f"(rtol {rtol:g}, atol {atol:g}, expected value {abs(want[worst]):.3g} in magnitude)"
    )


def compare(got, want, rtol, atol, exact: bool, path: str = "") -> str | None:
    """None when ``got`` matches ``want``, else why not (in the grader's words)."""
    if isinstance(want, Tensor):
        if not isinstance(got, Tensor):
            return f"expected a tensor{_where(path)}, got {_kind(got)}"
        if got.dtype != want.dtype:
            return f"expected dtype {want.dtype}{_where(path)}, got {shown_dtype(got.dtype)}"
        if got.shape != want.shape:
            shape = shown_shape(got.shape, want.shape)
            return f"expected shape {want.shape}{_where(path)}, got {shape}"
        if got.device != want.device:
            where = shown_device(got.device)
            return f"expected the result on {want.device}{_where(path)}, got {where}"
        if want.values is None:
            return None
        if got.values is None:
            return f"no values{_where(path)}"
        r, a = (0.0, 0.0) if exact else DEFAULT_TOLERANCES.get(want.dtype, (0.0, 0.0))
        r, a = (rtol if rtol is not None else r), (atol if atol is not None else a)
        why = _close_arrays(got.values, want.values, r, a)
        return f"{why}{_where(path)}" if why else None
    if isinstance(want, bool) or want is None or isinstance(want, str):
        if type(got) is not type(want) or got != want:
            return f"expected {_describe(want)}{_where(path)}, got {_describe_got(got, want)}"
        return None
    if isinstance(want, (int, float)):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"expected a number{_where(path)}, got {_kind(got)}"
        if isinstance(want, int) and exact and not (isinstance(got, int) or got == int(got)):
            return f"expected the integer {want}{_where(path)}, got a fraction"
        r, a = (0.0, 0.0) if exact else (1e-7, 1e-7)
        r, a = (rtol if rtol is not None else r), (atol if atol is not None else a)
        why = _close_arrays(np.array([got], float), np.array([want], float), r, a)
        return f"{why}{_where(path)}" if why else None
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"expected a list or tuple{_where(path)}, got {_kind(got)}"
        if len(got) != len(want):
            return f"expected {len(want)} items{_where(path)}, got {shown_count(len(got))}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            why = compare(g, w, rtol, atol, exact, f"{path}[{i}]")
            if why:
                return why
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"expected a dict{_where(path)}, got {_kind(got)}"
        for key, w in want.items():
            if key not in got:
                return f"missing {key!r}{_where(path)}"
            why = compare(got[key], w, rtol, atol, exact, f"{path}[{key!r}]")
            if why:
                return why
        return None  # entries the reference does not have are the student's own business
    return "the reference value cannot be compared"


def _describe(value) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else "another string"
    return repr(value)


def _describe_got(got, want) -> str:
    if isinstance(got, bool) or got is None:
        return repr(got)
    return _kind(got) if type(got) is not type(want) else "another value"


def ks_statistic(a: np.ndarray, b: np.ndarray, rtol: float = 0.0, atol: float = 0.0) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (ties handled), with each value
    allowed to move by its rounding slack ``atol + rtol * |t|``.

    Two correct computations of the same draw differ by a few roundings (``x * m / (1 - p)``
    against ``x * (m / (1 - p))``, or in float64 then rounded to float32: 1 ulp), and on a
    discrete distribution (dropout: a share of zeros, the rest one value) a plain statistic
    turns 1 ulp into a distance of the whole kept share. The statistic here is
    ``max(sup_t F_a(t) - F_b(t + s), sup_t F_b(t) - F_a(t + s))`` (a Levy-type distance): never
    larger than the plain one, so the test's level stays ``alpha``, and equal to it when
    ``s = 0``.
    """
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    slack = atol + rtol * np.abs(points)
    fa = np.searchsorted(a, points, side="right") / a.size
    fb = np.searchsorted(b, points, side="right") / b.size
    fa_up = np.searchsorted(a, points + slack, side="right") / a.size
    fb_up = np.searchsorted(b, points + slack, side="right") / b.size
    return float(max(np.max(fa - fb_up), np.max(fb - fa_up)))


def compare_ks(got, want, alpha: float) -> str | None:
    """Same distribution as the reference sample, at level ``alpha`` (two-sample KS)."""
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"expected a list of {len(want)} samples"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            why = compare_ks(g, w, alpha)
            if why:
                return f"sample {i}: {why}"
        return None
    why = compare(got, want, 0.0, math.inf, False)  # dtype, shape, device; values below
    if why or want.values is None:
        return why
    a = got.values.astype(np.float64).ravel()
    b = want.values.astype(np.float64).ravel()
    if not np.isfinite(a).all():
        return "NaN or infinite values in the sample"
    # rounding slack: the dtype's tolerances of torch.testing.assert_close (float32: rtol
    # 1.3e-6, 11 eps32, above the 3 eps32 that a product and a quotient take; far below a
    # share or a scale off by 1 %, the smallest defect the sample sizes here resolve)
    rtol, atol = DEFAULT_TOLERANCES.get(want.dtype, (0.0, 0.0))
    d = ks_statistic(a, b, rtol, atol)
    # P(D > c sqrt((n+m)/(nm))) <= 2 exp(-2 c^2) under the null (Dvoretzky-Kiefer-Wolfowitz
    # bound for the two-sample statistic): c = sqrt(ln(2/alpha) / 2)
    limit = math.sqrt(math.log(2 / alpha) / 2) * math.sqrt((a.size + b.size) / (a.size * b.size))
    if d > limit:
        return (
            f"the values do not follow the expected distribution: Kolmogorov-Smirnov "
            f"statistic {shown_number(d)} > {limit:.3g} (n = {b.size}, level {alpha:g})"
        )
    return None


def _same(x, y) -> bool:
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        if (x.dtype, x.shape, x.device) != (y.dtype, y.shape, y.device):
            return False
        if x.values is None or y.values is None:
            return x.values is None and y.values is None
        return bool(np.array_equal(x.values, y.values, equal_nan=True))
    return compare(x, y, 0.0, 0.0, True) is None


def compare_pattern(got, want) -> str | None:
    """Entries equal and different exactly where the reference's are."""
    if not isinstance(got, list) or len(got) != len(want):
        return f"expected a list of {len(want)} results"
    for i, w in enumerate(want):
        why = compare(got[i], w, 0.0, math.inf, False, f"[{i}]")
        if why:
            return why
    for i in range(len(want)):
        for j in range(i + 1, len(want)):
            if _same(want[i], want[j]) != _same(got[i], got[j]):
                same = "equal" if _same(want[i], want[j]) else "different"
                return f"results {i} and {j} should be {same}"
    return None


def judge(reference: dict, records: list[dict]) -> str | None:
    """None when the student's records match one reference record, else the message."""
    name = reference["name"]
    spec = Comparison.of(reference)  # its kind was checked at release (reference.problems)
    what = f" ({spec.what})" if spec.what else ""
    mine = [r for r in records if r.get("name") == name]
    if not mine:
        return f"'{name}' did not report: the cell stopped before it"
    if len(mine) > 1:
        return f"'{name}' reported more than once"
    record = mine[0]
    calls = record.get("calls") if isinstance(record.get("calls"), dict) else {}
    allowed = reference.get("calls") or {}
    for entry in reference.get("watched") or ():
        count = calls.get(entry, 0)
        if not isinstance(count, int) or count > allowed.get(entry, 0):
            return f"'{name}': your code called {entry}{what}: do the computation yourself"
    want_raised = reference.get("raised")
    got_raised = record.get("raised")
    if want_raised or got_raised:
        if want_raised == got_raised:
            return None
        if want_raised and not got_raised:
            return f"'{name}': expected {want_raised} to be raised{what}, got a result"
        if not want_raised:
            return f"'{name}': raised {shown_exception(got_raised)}{what}"
        return f"'{name}': expected {want_raised}{what}, got another exception"
    try:
        got = decode(record.get("value"))
    except Exception:
        return f"'{name}': the result could not be read{what}"
    want = decode(reference.get("value"))
    if spec.kind == Compare.KS:
        why = compare_ks(got, want, spec.alpha)
    elif spec.kind == Compare.PATTERN:
        why = compare_pattern(got, want)
    else:
        why = compare(got, want, spec.rtol, spec.atol, spec.kind == Compare.EQUAL)
    return f"'{name}': {why}{what}" if why else None


# -- per cell --------------------------------------------------------------------------------
ERRORS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def by_asserts(cell, notebook: str, stopped: str = "") -> Check:
    """nbgrader's score of a test cell without probes (``Check.kind == "assert"``).

    The message is made from closed sets (a built-in exception's name, never its text: a
    hidden assert's message may quote the hidden expectation).
    """
    gid = cell.metadata.nbgrader["grade_id"]
    points = float(cell.metadata.nbgrader.get("points", 0) or 0)
    if cell.get("execution_count") is None and not cell.get("outputs"):
        why = f"not run: the grading stopped earlier ({stopped})" if stopped else "not run"
        return Check(notebook, gid, 0.0, points, False, why, kind="assert")
    try:
        score, _ = nbutils.determine_grade(cell)
    except (ValueError, KeyError, TypeError):  # a partial grade above the points, say
        score = 0.0
    score = min(max(float(score or 0.0), 0.0), points)
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    if errors:
        name = errors[0].get("ename")
        message = f"raised {name if name in ERRORS else 'an exception'}"
    elif any(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in cell.outputs):
        message = "wrote to stderr, which nbgrader counts as a failure"
    elif score < points:
        message = f"its result gave partial credit ({score:g} of {points:g})"
    else:
        message = "ran without error"
    message += " (decided by the cell's asserts, inside your notebook's process)"
    return Check(notebook, gid, score, points, score == points, message, kind="assert")


def decide(nb, reference: dict[str, list[dict]], notebook: str, stopped: str = "") -> list[Check]:
    """One :class:`Check` per graded test cell of the executed notebook ``nb``."""
    checks = []
    for cell in nb.cells:
        if not is_test(cell):
            continue
        gid = cell.metadata.nbgrader["grade_id"]
        points = float(cell.metadata.nbgrader.get("points", 0) or 0)
        expected = reference.get(gid) or []
        if not expected:  # no probe: a classic nbgrader test
            checks.append(by_asserts(cell, notebook, stopped))
            continue
        records = probe_records(cell)
        failures = [capped(why, MAX_FAILURE) for ref in expected if (why := judge(ref, records))]
        if failures and stopped and not records:
            failures = [f"not run: the grading stopped earlier ({stopped})"]
        passed = not failures
        if passed:
            message = f"all {len(expected)} hidden checks passed"
        else:
            shown = "; ".join(failures[:3]) + (" ..." if len(failures) > 3 else "")
            message = f"{len(failures)} of {max(len(expected), 1)} hidden checks failed: {shown}"
            message = capped(message, MAX_MESSAGE)
        checks.append(
            Check(
                notebook=notebook,
                grade_id=gid,
                points=points if passed else 0.0,
                max_points=points,
                passed=passed,
                message=message,
            )
        )
    return checks


def mark(nb, checks: list[Check]) -> None:
    """Make the test cells' outputs agree with ``checks`` (for nbgrader's SaveAutoGrades)."""
    by_id = {c.grade_id: c for c in checks}
    for cell in nb.cells:
        if not is_test(cell):
            continue
        check = by_id.get(cell.metadata.nbgrader["grade_id"])
        outputs = [
            o
            for o in cell.outputs
            if o.output_type not in ("error", "execute_result") and MIME not in o.get("data", {})
        ]
        for output in outputs:  # nbgrader scores stderr as a failure: the verdict decides
            if output.output_type == "stream":
                output.name = "stdout"
        if check is None or not check.passed:
            reason = check.message if check else "no verdict"
            outputs.append(
                nbformat.v4.new_output(
                    "error",
                    ename="HiddenTestFailed",
                    evalue=reason,
                    traceback=[f"HiddenTestFailed: {reason}"],
                )
            )
        cell.outputs = outputs
