"""The lap timer of the grading path (:mod:`dnncourse.grading.timings`), without a kernel."""

import time

import nbformat
import pytest

from dnncourse.grading import timings


def test_laps_add_up_to_the_whole_and_nothing_is_recorded_outside():
    timings.lap("verdict: rules")  # outside record(): nothing to charge, no error
    start = time.perf_counter()
    with timings.record("read and rebuild") as laps:
        timings.lap("feedback page")
        sum(range(200_000))  # some CPU time
        timings.lap("read and rebuild")  # a phase again: its seconds add up
        timings.watch_kernel(lambda: 2.0)  # a kernel that used 2 s of CPU before it was seen
        timings.lap("test cells")
        timings.kernel_gone()
        timings.lap("kernel stop")
    whole = time.perf_counter() - start
    seconds = laps.rounded()
    assert set(seconds) == {"read and rebuild", "feedback page", "test cells", "kernel stop"}
    assert sum(lap[0] for lap in seconds.values()) == pytest.approx(whole, abs=0.01)
    assert seconds["feedback page"][1] > 0 and seconds["feedback page"][2] == 0
    # the kernel's CPU goes to the phase under way when it is first read, and only once
    assert seconds["read and rebuild"][1] >= 2.0 and seconds["read and rebuild"][2] == 2.0
    assert seconds["test cells"][1] < 1.0 and seconds["kernel stop"][1] < 1.0
    assert seconds["test cells"][2] == 0 and seconds["kernel stop"][2] == 0


@pytest.mark.parametrize(
    "source, phase",
    [
        (
            "import math\n\nimport torch\n\ndevice = torch.device('cpu')\nprint(device)",
            "import cells",
        ),
        ("import torch\n\ndef f(x):\n    return x", "student cells"),
        ("x = 1", "student cells"),
        ("%matplotlib inline\nimport torch", "student cells"),  # not Python: not parsed
    ],
)
def test_cells_are_told_apart(source, phase):
    assert timings.cell_phase(nbformat.v4.new_code_cell(source)) == phase


def test_a_test_cell_is_a_test_cell_whatever_it_holds():
    cell = nbformat.v4.new_code_cell("import torch")
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "t", "points": 1}
    assert timings.cell_phase(cell) == "test cells"
    cell.metadata["nbgrader"]["solution"] = True  # an answer cell with points: the student's
    assert timings.cell_phase(cell) == "import cells"
