"""Probes (in the kernel) and verdicts (outside): plain data in, trusted checks out.

No kernel here: probes run in this process (outside IPython a record is printed as a JSON
line, which is read back), and the verdict compares such records as the worker does.
"""

import json
import math

import nbformat
import pytest
import torch

from dnncourse.grading import probe as P
from dnncourse.grading import verdict as V


def records(capsys) -> list[dict]:
    """The records the probes of the test printed (and nothing else was printed)."""
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(P.MIME + " ") for line in lines), lines
    return [json.loads(line.split(" ", 1)[1]) for line in lines]


def test_a_probe_records_data_and_swallows_what_the_code_prints(capsys):
    def noisy():
        print("the hidden test's source, read with linecache")
        return {"t": torch.arange(3.0), "n": 2, "nan": math.nan, "s": "x"}

    P.probe("p", noisy, rtol=1e-9, what="after 5 steps")
    (rec,) = records(capsys)
    value = V.decode(rec["value"])
    assert value["t"].values.tolist() == [0.0, 1.0, 2.0] and value["t"].dtype == "float32"
    assert value["n"] == 2 and math.isnan(value["nan"]) and value["s"] == "x"
    assert rec["check"]["rtol"] == 1e-9 and rec["check"]["what"] == "after 5 steps"
    P.probe("q", lambda: 1 / 0)
    (rec,) = records(capsys)
    assert rec["raised"] == "ZeroDivisionError" and rec["value"] is None


def reference_and_student(capsys, want, got, **spec):
    P.probe("p", lambda: want, **spec)
    P.probe("p", lambda: got)
    return records(capsys)


@pytest.mark.parametrize(
    ("got", "message"),
    [
        (torch.ones(3, dtype=torch.float64), None),
        (torch.ones(3, dtype=torch.float64) * (1 + 1e-12), None),
        (torch.ones(3, dtype=torch.float64) * 1.01, "max error 0.01"),
        (torch.ones(3), "expected dtype float64"),
        (torch.ones(1, 3, dtype=torch.float64), "expected shape (3,)"),
        ([1.0, 1.0, 1.0], "expected a tensor"),
        (torch.tensor([1.0, math.nan, 1.0], dtype=torch.float64), "NaN"),
    ],
)
def test_values_are_compared_with_the_reference_tolerance(capsys, got, message):
    ref, mine = reference_and_student(capsys, torch.ones(3, dtype=torch.float64), got, rtol=1e-9)
    why = V.judge(ref, [mine])
    assert (why is None) if message is None else (message in why), why


def test_the_check_comes_from_the_reference_never_from_the_student(capsys):
    ref, mine = reference_and_student(capsys, 1.0, 2.0)
    mine["check"] = {"kind": "close", "rtol": 1e9, "atol": 1e9, "what": "forged"}
    why = V.judge(ref, [mine])
    assert why is not None and "forged" not in why
    forged = {**mine, "value": ref["value"]}  # a forged record passes with the right value only
    assert V.judge(ref, [forged]) is None
    assert "reported more than once" in V.judge(ref, [forged, forged])
    assert "did not report" in V.judge(ref, [{**forged, "name": "other"}])


def test_a_tensor_that_agrees_with_everything_is_read_as_its_data(capsys):
    class Agreeable(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return True

    liar = torch.zeros(3, dtype=torch.float64).as_subclass(Agreeable)
    assert liar == 1 and torch.allclose(liar, torch.ones(3))  # it fools an in-process assert
    ref, mine = reference_and_student(capsys, torch.ones(3, dtype=torch.float64), liar)
    assert "max error 1" in V.judge(ref, [mine])


def test_meta_tensors_compare_shape_dtype_and_device(capsys):
    meta = torch.empty(2, 3, dtype=torch.float64, device="meta")
    ref, mine = reference_and_student(capsys, meta, torch.zeros(2, 3, dtype=torch.float64))
    assert "expected the result on meta, got cpu" in V.judge(ref, [mine])
    ref, mine = reference_and_student(capsys, meta, torch.empty(2, 3, device="meta"))
    assert "expected dtype float64" in V.judge(ref, [mine])


def test_recorders_catch_delegation_also_through_references_taken_before(capsys):
    from torch.nn.functional import softmax as captured

    forbid = ["torch.nn.functional.softmax", "torch.softmax", "torch.optim.Adam.step"]
    x = torch.randn(4)
    P.probe("p", lambda: torch.exp(x) / torch.exp(x).sum(), forbid=forbid)
    P.probe("p", lambda: captured(x, 0), forbid=forbid)
    ref, mine = records(capsys)
    assert ref["calls"] == {} and list(mine["calls"]) == ["torch.nn.functional.softmax"]
    assert "your code called torch.nn.functional.softmax" in V.judge(ref, [mine])
    weight = torch.zeros(2, requires_grad=True)
    weight.grad = torch.ones(2)
    step = torch.optim.Adam([weight]).step  # a bound method taken before the probe
    P.probe("adam", step, forbid=forbid)
    (rec,) = records(capsys)
    assert rec["calls"] == {"torch.optim.Adam.step": 1}, "one call, counted once"


def test_a_students_own_optimizer_is_not_counted_as_torchs(capsys):
    """torch.optim wraps every optimizer's ``step`` (and that of a student's own subclass of
    ``Optimizer``, as hw2 asks for) in the same wrappers: only the function a name denotes is
    counted, not the wrappers it shares. Control: torch's own step, called inside the
    student's, is counted once per call."""

    class Mine(torch.optim.Optimizer):
        def __init__(self, params, inner=None):
            super().__init__(params, {"lr": 0.1})
            self.inner = inner

        @torch.no_grad()
        def step(self, closure=None):
            if self.inner is not None:
                self.inner.step()
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["lr"])

    forbid = [f"torch.optim.{n}.step" for n in ("SGD", "Adam", "AdamW")]
    weight = torch.zeros(2, requires_grad=True)
    weight.grad = torch.ones(2)
    torch.optim.SGD([weight]).step()  # step is wrapped once an instance exists
    torch.optim.Adam([weight]).step()

    def run(inner):
        mine = Mine([weight], inner)
        for _ in range(3):
            mine.step()
        return weight.sum()

    P.probe("own", lambda: run(None), forbid=forbid)
    P.probe("own, with torch's inside", lambda: run(torch.optim.Adam([weight])), forbid=forbid)
    own, delegating = records(capsys)
    assert own["calls"] == {}, own["calls"]
    adam = {"torch.optim.Adam.step": 3}  # and AdamW's, where AdamW.step is Adam.step
    if torch.optim.AdamW.step is torch.optim.Adam.step:
        adam["torch.optim.AdamW.step"] = 3
    assert delegating["calls"] == adam, delegating["calls"]


def test_distribution_shape_by_kolmogorov_smirnov(capsys):
    gen = torch.Generator().manual_seed(0)
    uniform = (torch.rand(40_000, generator=gen) * 2 - 1) * math.sqrt(3)  # variance 1
    other_uniform = (torch.rand(40_000, generator=gen) * 2 - 1) * math.sqrt(3)
    normal = torch.randn(40_000, generator=gen)  # the same mean and variance, another shape
    ref, mine = reference_and_student(capsys, uniform, other_uniform, kind="ks", alpha=1e-6)
    assert V.judge(ref, [mine]) is None
    ref, mine = reference_and_student(capsys, uniform, normal, kind="ks", alpha=1e-6)
    assert "Kolmogorov-Smirnov" in V.judge(ref, [mine])


def test_patterns_of_equal_and_different_results(capsys):
    a, b = torch.zeros(3), torch.ones(3)
    ref, mine = reference_and_student(capsys, [a, a, b], [a, b, b], kind="pattern")
    assert "results 0 and 1 should be equal" in V.judge(ref, [mine])
    ref, mine = reference_and_student(capsys, [a, a, b], [b, b, a], kind="pattern")
    assert V.judge(ref, [mine]) is None


def test_a_cell_passes_iff_every_reference_probe_matches(capsys):
    P.probe("one", lambda: 1.0, what="first")
    P.probe("two", lambda: 2.0)
    reference = records(capsys)
    cell = nbformat.v4.new_code_cell("test")
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "t", "points": 2, "locked": True}
    nb = nbformat.v4.new_notebook(cells=[cell])

    def outputs(*recs):
        return [nbformat.v4.new_output("display_data", data={P.MIME: r}) for r in recs]

    cell.outputs = outputs(*reference)
    (check,) = V.decide(nb, {"t": reference}, "nb")
    assert check.passed and check.points == 2
    cell.outputs = outputs({**reference[0], "value": 1.5}, reference[1])
    (check,) = V.decide(nb, {"t": reference}, "nb")
    assert not check.passed and check.points == 0 and "'one'" in check.message
    assert "(first)" in check.message
    V.mark(nb, [check])
    assert [o.output_type for o in cell.outputs] == ["error"], "probe outputs removed"


# -- issue 19: a student's record carries the hidden tests out? ---------------------------------
def _text_carriers(secret: str) -> dict:
    """Student records (for a reference record named "p") that carry ``secret`` in a field,
    in a key or in the record's structure: what a function under test can write once it has
    read the hidden test with ``linecache``."""
    word = "".join(c if c.isalnum() else "_" for c in secret)  # an identifier of the text
    codes = list(secret.encode())
    big = int.from_bytes(secret.encode(), "big")
    tensor = {"dtype": "float64", "shape": [3], "device": "cpu"}
    return {
        "name": {"name": "p" + secret},
        "raised": {"raised": word},
        "raised str": {"raised": secret},
        "value str": {"value": {"str": secret}},
        "value kind": {"value": {word: secret}},
        "object type": {"value": {"object": word}},
        "unreadable type": {"value": {"unreadable": word}},
        "dtype": {"value": {"tensor": {**tensor, "dtype": secret}}},
        "dtype word": {"value": {"tensor": {**tensor, "dtype": word}}},
        "device": {"value": {"tensor": {**tensor, "device": secret}}},
        "shape codes": {"value": {"tensor": {**tensor, "shape": codes, "device": "meta"}}},
        "shape few codes": {"value": {"tensor": {**tensor, "shape": codes[:4], "device": "meta"}}},
        "shape number": {"value": {"tensor": {**tensor, "shape": [big], "device": "meta"}}},
        "shape text": {"value": {"tensor": {**tensor, "shape": [secret]}}},
        "dict keys": {"value": {"dict": [[secret, 1.0], [word, {"str": secret}]]}},
        "nesting": {"value": {"seq": [{"seq": [{"str": c}]} for c in secret]}},
        "length": {"value": {"seq": [0.0] * (big % 100_000 + 2000)}},
        "calls": {"calls": {secret: 1, word: secret}},
        "watched": {"watched": [secret, word]},
        "check": {"check": {"kind": secret, "what": secret, "rtol": secret}},
        "extra field": {word: secret, "v": secret},
        "too large": {"value": {"too_large": big}},
    }


SECRETS = (  # two lines of a hidden test, the same length
    "assert torch.allclose(cubic_gradients(x, y, c), want)",
    "probe('float64, 7 points', lambda: f(x), rtol=1e-10)x",
)


def _messages(capsys, secret: str) -> dict:
    """Each carrier judged against references of every kind (tensor, meta tensor, number,
    string, list, dict, an exception expected, a sample, a pattern)."""
    references = {
        "tensor": P.record("p", torch.ones(3, dtype=torch.float64)),
        "meta": P.record("p", torch.empty(3, dtype=torch.float64, device="meta")),
        "number": P.record("p", 1.0),
        "string": P.record("p", "ok"),
        "list": P.record("p", [1.0, 2.0]),
        "dict": P.record("p", {"a": 1.0}),
        "raises": P.record("p", raised="ValueError"),
        "ks": P.record("p", torch.rand(50, dtype=torch.float64), kind="ks"),
        "pattern": P.record("p", [1.0, 1.0, 2.0], kind="pattern"),
    }
    capsys.readouterr()
    got = {}
    for kind, ref in references.items():
        base = {**ref, "raised": None, "calls": {}, "watched": []}
        for label, fields in _text_carriers(secret).items():
            got[kind, label] = V.judge(ref, [{**base, **fields}])
    return got


def test_no_field_of_a_students_record_carries_text_into_a_message(capsys):
    """Every field, key and nesting of a record carrying a hidden test's line: the messages
    are the same whichever line was carried (so they carry none of it), and never quote it."""
    first, second = (_messages(capsys, s) for s in SECRETS)
    assert first == second, {k: (first[k], second[k]) for k in first if first[k] != second[k]}
    assert sum(m is not None for m in first.values()) > 0.8 * len(first)
    for key, message in first.items():
        if message is None:  # a field the verdict ignores (the value is the reference's)
            continue
        assert len(message) <= V.MAX_FAILURE
        for secret in SECRETS:
            words = [w for w in secret.replace("(", " ").replace(")", " ").split() if len(w) > 4]
            assert not [w for w in words if w in message], (key, message)


def test_numbers_from_the_students_values_are_rounded_to_a_closed_set(capsys):
    """Values that encode text (the bytes of a hidden line) show up as one digit."""
    secret = SECRETS[0].encode()
    ref = P.record("p", torch.zeros(len(secret), dtype=torch.float64))
    got = P.record("p", torch.tensor(list(secret), dtype=torch.float64) * 1.2345)
    capsys.readouterr()
    message = V.judge(ref, [got])
    import re

    error = re.search(r"max error (\S+) where", message).group(1)
    assert re.fullmatch(r"\d(e[+-]\d\d)?", error), message
    assert V.shown_number(123.456) == "1e+02" and V.shown_number(0.5) == "0.5"


def test_a_cells_message_is_capped(capsys):
    ref = [P.record(f"p{i}" + "x" * 500, 1.0) for i in range(10)]
    capsys.readouterr()
    cell = nbformat.v4.new_code_cell("test")
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "t", "points": 2, "locked": True}
    nb = nbformat.v4.new_notebook(cells=[cell])
    (check,) = V.decide(nb, {"t": ref}, "nb")
    assert not check.passed and len(check.message) <= V.MAX_MESSAGE


def test_the_guide_states_the_caps_of_a_message():
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "book" / "instructors.md"
    text = " ".join(guide.read_text().split())
    assert f"a count up to {V.MAX_COUNT}" in text
    assert f"cut at {V.MAX_FAILURE} characters, a cell's message at {V.MAX_MESSAGE:,}" in text
    assert "an exception's name only from Python's built-in ones" in text
    assert {"OutOfMemoryError", "ValueError", "StopIteration"} <= V.EXCEPTIONS
