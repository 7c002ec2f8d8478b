"""Probes: hidden tests that hand back data, never a verdict.

A hidden test calls the student's code on inputs it chooses and *records* what came back;
the grader compares the records with those of the instructor's solution outside the
student's process (:mod:`dnncourse.grading.verdict`), with the tolerances the probe states.
Nothing here decides anything, so nothing here needs to be trusted: a student who forges a
record passes only if the forged value is the right one.

    from dnncourse.grading.probe import probe

    probe("gradient, batch of one", lambda: cubic_gradients(x, y, c), rtol=1e-10,
          forbid=NO_AUTOGRAD, what="for 1 point in float64")

A record goes out as a ``display_data`` output of the test cell with the MIME type
:data:`MIME`, whose payload is JSON: numbers, strings, lists, dicts, exception type names,
and tensors as dtype, shape, device and their raw bytes in base64 (``meta`` tensors without
bytes). No pickle, no code. While the probe runs, what the student's code prints is
swallowed, and the entry points named in ``forbid`` are watched by recorders: a
:class:`torch.overrides.TorchFunctionMode` sees every torch function, tensor method and
``torch.nn.functional`` / ``torch.nn.init`` function by identity (so a reference captured
earlier is caught too), and a profile hook sees calls of the pure-Python ones
(``torch.optim.Adam.step``, ``torch.autograd.grad``, schedules). Their counts go into the
record; the grader allows no more calls than the reference made. A probe whose code raises
(a ``MemoryError`` included) records the exception's type name; the next probe calls the
code again.

Standalone on purpose: this module imports only the standard library, numpy and torch (inside
the grading sandbox the only ``dnncourse`` there is holds this file and the kernel launcher).
In a plain Jupyter session (the instructor's) it works the same; outside IPython a record is
printed as one JSON line.
"""

import base64
import contextlib
import importlib
import io
import json
import math
import sys

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

MIME = "application/vnd.dnncourse.probe+json"  # protocol.PROBE_MIME (the grader's side)
VERSION = 1
MAX_BYTES = 4 * 2**20  # raw tensor bytes in one record; beyond: recorded as too large
MAX_STR = 200
MAX_DEPTH = 8

NO_AUTOGRAD = ("torch.autograd.grad", "torch.autograd.backward", "torch.Tensor.backward")


# -- encoding: plain data only ---------------------------------------------------------------
def _tensor(t: torch.Tensor, budget: list) -> dict:
    with torch._C.DisableTorchFunctionSubclass():  # a subclass cannot intercept the read-out
        t = torch.Tensor.detach(t)
        out = {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "device": t.device.type,
        }
        if t.device.type == "meta":
            return {"tensor": out}
        nbytes = t.numel() * t.element_size()
        if nbytes > budget[0]:
            return {"too_large": nbytes}
        budget[0] -= nbytes
        flat = torch.Tensor.contiguous(torch.Tensor.cpu(t)).reshape(-1)
        if t.dtype in (torch.bfloat16, torch.float16, torch.bool):
            raw = flat.view(torch.uint8 if t.dtype == torch.bool else torch.int16).numpy()
        else:
            raw = flat.resolve_conj().resolve_neg().numpy()
        out["data"] = base64.b64encode(raw.astype(raw.dtype.newbyteorder("<")).tobytes()).decode()
    return {"tensor": out}


def encode(value, depth: int = 0, budget: list | None = None):
    """``value`` as JSON-able plain data (see the module docstring); never raises."""
    budget = [MAX_BYTES] if budget is None else budget
    if depth > MAX_DEPTH:
        return {"object": "too deep"}
    try:
        if value is None or type(value) is bool:
            return value
        if type(value) is int:
            return value if abs(value) < 2**53 else {"float": float(value)}
        if type(value) is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if type(value) is str:
            return {"str": value[:MAX_STR]}
        if isinstance(value, torch.Tensor):
            return _tensor(value, budget)
        if isinstance(value, np.ndarray) and value.dtype != object:
            return _tensor(torch.from_numpy(np.ascontiguousarray(value)), budget)
        if isinstance(value, np.generic) and not isinstance(value, np.object_):
            return encode(value.item(), depth + 1, budget)
        if isinstance(value, (list, tuple)):
            return {"seq": [encode(v, depth + 1, budget) for v in value[:10_000]]}
        if isinstance(value, dict):  # an OrderedDict (a state_dict) too
            items = list(value.items())[:10_000]
            return {"dict": [[str(k)[:MAX_STR], encode(v, depth + 1, budget)] for k, v in items]}
        return {"object": _type_name(value)}
    except Exception as error:  # a hostile object: record that it could not be read
        return {"unreadable": _type_name(error)}


def _type_name(value) -> str:
    try:
        name = type(value).__name__
        return name if isinstance(name, str) and name.isidentifier() and len(name) <= 40 else "?"
    except Exception:
        return "?"


def plain(t):
    """A plain ``torch.Tensor`` copy of ``t`` (no subclass), for a test to compute with."""
    with torch._C.DisableTorchFunctionSubclass():
        return torch.Tensor.clone(torch.Tensor.detach(t)).as_subclass(torch.Tensor)


# -- the recorders ---------------------------------------------------------------------------
def resolve(dotted: str):
    """The object named ``torch.nn.functional.softmax`` / ``torch.optim.Adam.step``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _codes(obj) -> set:
    """The code object of the Python function named, under its decorators (``__wrapped__``).

    Only the innermost one: a wrapper's code is shared by every function it wraps. PyTorch
    wraps each optimizer's ``step`` in the same two wrappers, and a student's own
    ``torch.optim.Optimizer`` subclass gets them too: counting them would charge the
    student's own ``step`` as ``torch.optim.Adam.step``, and each real call three times.
    """
    code, seen = None, 0
    while obj is not None and seen < 10:
        seen += 1
        obj = getattr(obj, "__func__", obj)
        code = getattr(obj, "__code__", None) or code
        obj = getattr(obj, "__wrapped__", None)
    return set() if code is None else {code}


class Recorders(TorchFunctionMode):
    """Count calls of the named entry points while active (torch functions and Python code)."""

    def __init__(self, names):
        super().__init__()
        self.seen = {}, {}  # calls seen by the torch function mode, by the profile hook
        self.by_id, self.by_code = {}, {}
        for name in names:
            try:
                obj = resolve(name)
            except (ImportError, AttributeError):
                continue
            self.by_id.setdefault(id(obj), (obj, []))[1].append(name)
            for code in _codes(obj):  # names of one function (AdamW.step is Adam.step): each
                self.by_code.setdefault(code, []).append(name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        hit = self.by_id.get(id(func))
        if hit is not None and hit[0] is func:
            self._count(self.seen[0], hit[1])
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _count(counts, names):
        for name in names:
            counts[name] = counts.get(name, 0) + 1

    def _profile(self, frame, event, arg):
        if event == "call":
            names = self.by_code.get(frame.f_code)
            if names is not None:
                self._count(self.seen[1], names)

    @property
    def counts(self) -> dict:
        """Calls per entry point (a call both mechanisms saw counts once)."""
        mode, profile = self.seen
        return {n: max(mode.get(n, 0), profile.get(n, 0)) for n in {*mode, *profile}}

    def __enter__(self):
        self._old_profile = sys.getprofile()
        if self.by_code:
            sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            sys.setprofile(self._old_profile)


# -- the probe -------------------------------------------------------------------------------
def comparison(kind="close", rtol=None, atol=None, what="", alpha=1e-6):
    """The comparison the grader makes (it reads this from the REFERENCE record only, as a
    :class:`dnncourse.grading.protocol.Comparison`; an unknown ``kind`` fails the release).

    ``close``: same structure, dtypes, shapes, devices; values within ``rtol``/``atol`` (the
    dtype's defaults of ``torch.testing.assert_close`` when not given). ``equal``: exactly.
    ``ks``: a sample of the same distribution as the reference's (two-sample
    Kolmogorov-Smirnov test at level ``alpha``). ``pattern``: a list whose entries are equal
    and different exactly where the reference's are.
    """
    return {"kind": kind, "rtol": rtol, "atol": atol, "what": str(what), "alpha": alpha}


def record(name: str, value=None, raised: str | None = None, **spec) -> dict:
    """Emit one probe record for an already computed ``value``."""
    payload = {
        "v": VERSION,
        "name": str(name),
        "value": None if raised else encode(value),
        "raised": raised,
        "check": comparison(**spec),
        "watched": [],
        "calls": {},
    }
    _emit(payload)
    return payload


def probe(name: str, thunk, *, forbid=(), **spec):
    """Call ``thunk()`` (student output swallowed, ``forbid`` watched); emit its record.

    Returns the value (``None`` if it raised), so a test can build on it.
    """
    swallowed = io.StringIO()
    recorders = Recorders(forbid)
    value, raised = None, None
    try:
        with (
            contextlib.redirect_stdout(swallowed),
            contextlib.redirect_stderr(swallowed),
            recorders,
        ):
            value = thunk()
    except BaseException as error:
        raised = _type_name(error)
    payload = {
        "v": VERSION,
        "name": str(name),
        "value": None if raised else encode(value),
        "raised": raised,
        "check": comparison(**spec),
        "watched": [str(n) for n in forbid],
        "calls": dict(recorders.counts),
    }
    _emit(payload)
    return value


def _emit(payload: dict) -> None:
    text = json.dumps(payload, allow_nan=False)
    try:
        from IPython import get_ipython
        from IPython.display import publish_display_data
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        publish_display_data({MIME: json.loads(text), "text/plain": f"<probe {payload['name']}>"})
    else:
        print(f"{MIME} {text}")
