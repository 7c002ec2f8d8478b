"""Every message of a student's kernel is bounded, and overflow is the student's own status.

The kernel belongs to the student: with ``get_ipython().kernel.session`` a notebook sends
whatever message it likes to the grading process (issue 19, item 3). Each attack here runs
in a real kernel through :func:`dnncourse.grading.execute.execute` (without the sandbox,
which does not matter for what the grading process receives) and
writes ``armed`` into its working folder once its flood was sent, so the test sees that it
ran. A control runs the same notebook through plain nbclient (no screen, no budgets) or
with the bound switched off, and shows what the attack would have cost: the grading process
grew by the flood, or the run crashed (a ``grader error`` for the whole notebook).
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from dnncourse.grading.execute import execute
from dnncourse.grading.protocol import Limits

SEND = """\
ip = get_ipython()
session, iopub = ip.kernel.session, ip.kernel.iopub_socket
parent = ip.kernel.get_parent()
def send(msg_type, content, **kw):
    session.send(iopub, msg_type, content, parent=parent, **kw)
"""
ARMED = "\n_ = open('armed', 'w').write('armed')\n"

ATTACKS = {
    "display updates": """\
from IPython.display import display
handles = [display("small", display_id=True) for _ in range(50)]
for handle in handles:
    handle.update("x" * 4_000_000)
""",
    "comm messages": SEND
    + """\
for i in range(40):
    send("comm_open", {"comm_id": f"c{i}", "target_name": "jupyter.widget",
                       "data": {"state": {"_model_name": "M", "value": "x" * 4_000_000}}})
""",
    "clear_output": """\
from IPython.display import clear_output
for _ in range(20_000):
    clear_output(wait=True)
""",
    "huge traceback": """\
raise ValueError("x" * 40_000_000)
""",
    "unknown types": SEND
    + """\
for i in range(20):
    send("dnncourse_unknown", {"data": "x" * 1_000_000})
""",
    "malformed": SEND
    + """\
send("display_data", {"data": {"text/plain": "no metadata"}})
send("display_data", {"data": {"text/plain": "x"}, "metadata": {},
                      "transient": {"display_id": {"not": "hashable"}}})
send("stream", {"name": "stdout"})
send("error", {"ename": 1})
""",
}


def notebook(attack: str) -> nbformat.NotebookNode:
    cells = [
        nbformat.v4.new_code_cell("x = 1\nx"),
        nbformat.v4.new_code_cell(ATTACKS[attack] + ARMED),
        nbformat.v4.new_code_cell("get_ipython().execution_count = 10**4000\nprint('after')\n42"),
        nbformat.v4.new_code_cell("print('last')"),
    ]
    return nbformat.v4.new_notebook(cells=cells)


def stored_bytes(nb) -> int:
    return sum(len(json.dumps(c.get("outputs", []))) for c in nb.cells)


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_flood_of_any_message_costs_only_its_student(tmp_path, attack):
    nb = notebook(attack)
    limits = Limits(cell_timeout=60, memory_limit_mb=0)
    run = execute(nb, tmp_path, limits, sandbox=False)
    assert (tmp_path / "armed").is_file() or attack == "huge traceback", "the attack ran"
    expected = "ok" if attack == "malformed" else "output limit"
    assert run.status == expected, (run.status, run.details)
    assert stored_bytes(nb) <= limits.notebook_output_bytes + 10_000
    assert "nbformat" not in json.dumps(nb.metadata.get("widgets", {}))
    counts = [c.execution_count for c in nb.cells]
    results = [o for c in nb.cells for o in c.outputs if o.output_type == "execute_result"]
    if attack == "huge traceback":  # a frame over the limit: the run stops there
        assert run.stopped_at == 1 and counts == [1, 2, None, None], counts
        return
    # the grader numbers the prompts: 1, 2, 3, 4, whatever the kernel said
    assert counts == [1, 2, 3, 4]
    assert [o.execution_count for o in results] == [1, 3]
    assert "last" in "".join(o.get("text", "") for o in nb.cells[3].outputs), "the run went on"
    outputs = json.dumps([c.outputs for c in nb.cells])
    assert "dnncourse_unknown" not in outputs and "x" * 1000 not in outputs


CONTROL = """\
import json, sys
import nbformat
from nbclient import NotebookClient
from dnncourse.grading import execute
nb = nbformat.reads(sys.stdin.read(), as_version=4)
client = NotebookClient(nb, kernel_name=execute.KERNEL_NAME, allow_errors=True, timeout=60,
                        resources={"metadata": {"path": sys.argv[1]}})
import os
os.environ["JUPYTER_PATH"] = str(execute.kernel_spec_dir())
try:
    client.execute()
    outcome = "ran"
except Exception as error:
    outcome = type(error).__name__
size = sum(len(json.dumps(c.get("outputs", []))) for c in nb.cells)
size += len(json.dumps(nb.metadata.get("widgets", {})))
counts = [o.get("execution_count") for c in nb.cells for o in c.outputs
          if o.get("output_type") == "execute_result"]
print(json.dumps({"outcome": outcome, "bytes": size, "counts": str(counts)[:100]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["display updates", "comm messages", "malformed"])
def test_control_plain_nbclient_keeps_the_flood_or_crashes(tmp_path, attack):
    """Without the screen: the flood is kept (megabytes in the graded notebook and in the
    grading process) or a malformed message stops the run (a grader error)."""
    proc = subprocess.run(
        [sys.executable, "-c", CONTROL, str(tmp_path)],
        input=nbformat.writes(notebook(attack)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    got = json.loads(proc.stdout.splitlines()[-1])
    if attack == "display updates":
        assert got["outcome"] == "ran" and got["bytes"] > 100 * 2**20, got
        assert re.search(r"\d{30}", got["counts"]), "the kernel's own huge prompt number"
    else:  # nbclient fails on the message: the notebook would be a grader error
        assert got["outcome"] != "ran", got


MEMORY = textwrap.dedent(
    """\
    import json, resource, sys
    from pathlib import Path
    import nbformat
    from dnncourse.grading.execute import execute
    from dnncourse.grading.protocol import Limits
    cap = float(sys.argv[2])
    source = '''
    ip = get_ipython()
    session, iopub = ip.kernel.session, ip.kernel.iopub_socket
    frame = bytes(8 * 2**20)
    for _ in range(6):  # messages of 40 frames of 8 MiB: 320 MiB held by ZMQ until whole
        session.send(iopub, "display_data", {"data": {}, "metadata": {}},
                     parent=ip.kernel.get_parent(), buffers=[frame] * 40)
    open("armed", "w").write("armed")
    '''
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source),
                                         nbformat.v4.new_code_cell("print('last')")])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = execute(nb, Path(sys.argv[1]), Limits(memory_limit_mb=0, grader_memory_mb=cap),
                  sandbox=False)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"status": run.status, "grew_mb": grew, "details": run.details}))
    """
)


def grader_growth(folder: Path, cap_mb: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY, str(folder), str(cap_mb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_grading_process_has_a_memory_cap_of_its_own(tmp_path):
    """Messages of many frames, each under the frame limit: without the cap the grading
    process grows by several such messages (320 MiB each); with a cap of 64 MiB the kernel
    is stopped and the student's row says ``output limit``. (On an idle machine the process
    grew by 656 MiB without the cap, by 108 MiB with a cap of 100 MiB.)"""
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    capped = grader_growth(tmp_path / "on", 64)
    assert capped["status"] == "output limit", capped
    assert "the kernel was stopped" in capped["details"][0]
    assert capped["grew_mb"] < 64 + 100, capped  # the cap, and what one poll interval lets in
    free = grader_growth(tmp_path / "off", 0)
    assert (tmp_path / "off" / "armed").is_file(), "the attack ran to its end"
    assert free["grew_mb"] > capped["grew_mb"] + 100, (free, capped)


def test_the_guide_states_the_message_limits():
    guide = Path(__file__).resolve().parents[1] / "book" / "instructors.md"
    text = " ".join(guide.read_text().split())
    limits = Limits()
    assert limits.message_bytes == 16 * 2**20 and "a frame over 16 MiB is refused" in text
    assert limits.grader_memory_mb == 1024 and "grows by more than 1 GiB" in text
