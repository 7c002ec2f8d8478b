"""Run a sanitized notebook in the guarded kernel; decide each test cell out of band.

nbgrader decides a test cell from its outputs (an error output means zero). A notebook can
hide its errors (a custom ``showtraceback``) or never run the test (an input transformer),
so here a test cell passes only if the kernel's guard (:mod:`dnncourse.grading.kernel`)
wrote a receipt ``ok`` for it *and* the execute reply says ``ok``. The outputs of each test
cell are then made to agree with that verdict (an error output when it failed), so that
nbgrader's own ``SaveAutoGrades`` stores the right score and the feedback shows why.

Limits: a per-cell timeout (the kernel is killed, not interrupted: a loop may ignore SIGINT),
a cap on the output a cell and a notebook may produce (dropped while it streams in, so an
output flood costs the worker nothing), the kernel's memory limit, and files it may write.
"""

import atexit
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbgrader import utils as nbutils

from .kernel import digest
from .protocol import Limits

__all__ = ["Execution", "Limits", "execute"]  # Limits: re-exported from protocol

KERNEL_NAME = "dnncourse-grader"


def kernel_spec_dir() -> Path:
    """A Jupyter data dir with the grading kernel spec (this interpreter, our launcher)."""
    root = Path(tempfile.gettempdir()) / f"dnncourse-kernels-{os.getuid()}-{os.getpid()}"
    spec = root / "kernels" / KERNEL_NAME
    if not (spec / "kernel.json").is_file():
        spec.mkdir(parents=True, exist_ok=True)
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        argv = [sys.executable, "-m", "dnncourse.grading.kernel", "-f", "{connection_file}"]
        kernel = {"argv": argv, "display_name": "dnncourse grader", "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


@dataclass
class Execution:
    """What happened: a status, details for humans, and the verdict of each test cell."""

    status: str = "ok"
    details: list[str] = field(default_factory=list)
    verdicts: dict[str, bool] = field(default_factory=dict)  # grade_id -> passed


class GradingClient(NotebookClient):
    """nbclient's client with output caps (output beyond the caps is dropped as it arrives)."""

    def __init__(self, nb, limits: Limits, **kw):
        super().__init__(nb, **kw)
        self.limits = limits
        self.cell_bytes = defaultdict(int)
        self.total_bytes = 0
        self.truncated = set()

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {})))
        over = (
            self.cell_bytes[cell_index] + size > self.limits.cell_output_bytes
            or self.total_bytes + size > self.limits.notebook_output_bytes
        )
        if not over:
            self.cell_bytes[cell_index] += size
            self.total_bytes += size
            return super().output(outs, msg, display_id, cell_index)
        if cell_index not in self.truncated:
            self.truncated.add(cell_index)
            text = "\n[output truncated by the grader: this cell printed too much]\n"
            outs.append(nbformat.v4.new_output("stream", name="stdout", text=text))
        return None


def _failure(reason: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output(
        "error", ename="GradingError", evalue=reason, traceback=[f"GradingError: {reason}"]
    )


def _near_memory_limit(client, limits: Limits) -> bool:
    """Is the kernel's address space within 10% of its limit (a hung memory bomb)?"""
    if not limits.memory_limit_mb:
        return False
    try:
        pid = client.km.provisioner.process.pid
        vms = psutil.Process(pid).memory_info().vms
    except Exception:  # the kernel is gone or the provisioner has no process
        return False
    return vms > 0.9 * limits.memory_limit_mb * 2**20


def _is_memory_error(output) -> bool:
    if output.get("output_type") != "error":
        return False
    text = f"{output.get('ename', '')} {output.get('evalue', '')}"
    return "MemoryError" in text or "can't allocate memory" in text or "out of memory" in text


def execute(nb, cwd: Path, limits: Limits) -> Execution:
    """Execute ``nb`` in place in the guarded kernel with working directory ``cwd``."""
    result = Execution()
    tests = {
        i: cell
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and nbutils.is_grade(cell) and not nbutils.is_solution(cell)
    }
    locked = [c for c in nb.cells if c.cell_type == "code" and nbutils.is_locked(c)]
    nonce = secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="dnncourse-guard-"))
    receipts = work / "receipts"
    receipts.touch()
    config = work / "guard.json"
    config.write_text(
        json.dumps(
            {
                "memory_limit_mb": limits.memory_limit_mb,
                "file_limit_mb": limits.file_limit_mb,
                "receipts": str(receipts),
                "nonce": nonce,
                "protected": sorted({digest(c.source) for c in [*locked, *tests.values()]}),
                "graded": sorted({digest(c.source) for c in tests.values()}),
            }
        )
    )
    os.environ["DNNCOURSE_GUARD"] = str(config)
    spec_dir = str(kernel_spec_dir())
    if spec_dir not in os.environ.get("JUPYTER_PATH", "").split(os.pathsep):
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [spec_dir, *filter(None, [os.environ.get("JUPYTER_PATH")])]
        )
    client = GradingClient(
        nb,
        limits,
        timeout=limits.cell_timeout or None,
        kernel_name=KERNEL_NAME,
        allow_errors=True,
        interrupt_on_timeout=False,
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(cwd)}},
    )
    replies: dict[int, str] = {}

    def on_cell_executed(cell, cell_index, execute_reply):
        replies[cell_index] = (execute_reply or {}).get("content", {}).get("status", "error")

    client.on_cell_executed = on_cell_executed
    stopped_at = None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    if _near_memory_limit(client, limits):
                        result.status = "memory limit"
                        result.details.append(f"cell {index + 1} hung at the memory limit")
                        cell.outputs.append(_failure("this cell hit the memory limit"))
                        stopped_at = index
                        break
                    result.status = "timeout"
                    result.details.append(
                        f"cell {index + 1} ran longer than {limits.cell_timeout:g} s"
                    )
                    cell.outputs.append(_failure("this cell exceeded the time limit"))
                    stopped_at = index
                    break
                except DeadKernelError:
                    result.status = "kernel died"
                    result.details.append(f"the kernel died in cell {index + 1}")
                    cell.outputs.append(_failure("the kernel died while running this cell"))
                    stopped_at = index
                    break
    except RuntimeError as error:  # the kernel did not start
        result.status = "kernel died"
        result.details.append(f"the kernel did not start: {error}")
        stopped_at = 0
    finally:
        os.environ.pop("DNNCOURSE_GUARD", None)
    verdicts = defaultdict(list)
    for line in receipts.read_text().splitlines():
        try:
            receipt = json.loads(line)
        except ValueError:
            continue
        if isinstance(receipt, dict) and receipt.get("nonce") == nonce:
            verdicts[receipt.get("cell")].append(receipt.get("status"))
    for path in work.iterdir():
        path.unlink()
    work.rmdir()

    for index, cell in tests.items():
        grade_id = cell.metadata.nbgrader["grade_id"]
        receipt = verdicts[digest(cell.source)].pop(0) if verdicts[digest(cell.source)] else None
        if stopped_at is not None and index > stopped_at:
            reason = f"not run: the grading stopped earlier ({result.status})"
        elif receipt is None:
            reason = "the test did not report a result to the grader"
        elif receipt == "tampered":
            reason = "the test ran with grader state changed by the notebook"
        elif receipt != "ok" or replies.get(index) != "ok":
            reason = "the test failed"
        else:
            reason = None
        passed = reason is None
        result.verdicts[grade_id] = passed
        outputs = [o for o in cell.outputs if o.output_type not in ("error", "execute_result")]
        for output in outputs:  # nbgrader scores stderr as a failure: the verdict decides
            if output.output_type == "stream":
                output.name = "stdout"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        cell.outputs = outputs if passed else outputs + (errors or [_failure(reason)])
    if client.truncated:
        result.details.append(f"output truncated in {len(client.truncated)} cell(s)")
        if result.status == "ok":
            result.status = "output limit"
    memory = [
        i for i, c in enumerate(nb.cells) if any(map(_is_memory_error, c.get("outputs", [])))
    ]
    if memory:
        result.details.append(f"memory limit reached in cell(s) {[i + 1 for i in memory]}")
        if result.status in ("ok", "kernel died"):
            result.status = "memory limit"
    return result
