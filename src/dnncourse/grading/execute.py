"""Run a sanitized notebook in the grading kernel, with limits; report how it ended.

No verdict is made here: the hidden tests of the test cells emit probe records
(:mod:`dnncourse.grading.probe`) among the cells' outputs, and the worker compares them
with the reference run outside the kernel (:mod:`dnncourse.grading.verdict`).

Limits: a per-cell timeout (the kernel is killed, not interrupted: a loop may ignore SIGINT),
a cap on the messages a cell and a notebook may send (:mod:`~dnncourse.grading.messages`:
every message screened and charged, dropped while it streams in, so a flood of any kind
costs the worker nothing; probe records have a budget of their own per notebook), a cap on
the grading process's own memory, the kernel's memory limit, and files it may write. The
prompt numbers are the grader's.

The kernel is started by :class:`SandboxedKernelManager`: jupyter_client's manager with ZMQ
over ``ipc://`` sockets in a per-kernel folder (no TCP port, no connection file in a shared
folder), and the kernel's command wrapped in the kernel's sandbox
(:mod:`dnncourse.grading.sandbox`) unless grading runs with ``sandbox=False``.
"""

import asyncio
import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from time import time as wall_time

import nbformat
import psutil
import zmq
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from . import sandbox as sandboxes
from . import template, timings
from .messages import GradingClient, MemoryWatch, number_prompts, truncated_note
from .processes import kill_tree
from .protocol import Limits, Status, encode

__all__ = ["Execution", "Kernel", "Limits", "SandboxedKernelManager", "execute"]

KERNEL_NAME = "dnncourse-grader"


@functools.cache
def _spec_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="dnncourse-kernels-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def kernel_spec_dir() -> Path:
    """A Jupyter data dir with the grading kernel spec (this interpreter, our launcher).

    A fresh folder per process: one named after the pid was found, after a pid was reused,
    holding the spec of a killed process of another checkout, whose interpreter did not
    exist in the sandbox (every kernel of that grading process died at start).
    """
    root = _spec_root()
    spec = root / "kernels" / KERNEL_NAME
    if not (spec / "kernel.json").is_file():
        spec.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "dnncourse.grading.kernel", "-f", "{connection_file}"]
        kernel = {"argv": argv, "display_name": "dnncourse grader", "language": "python"}
        (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


async def _wait_for_ready(kc, timeout: float | None = None) -> None:
    """jupyter_client's ``wait_for_ready`` without its closing 0.2 s of silence on IOPub.

    As jupyter_client does: ask for ``kernel_info`` until the reply comes on the shell channel
    and IOPub is seen connected, else start over. It then waits until IOPub has been quiet
    for 0.2 s, whatever the kernel; we wait instead for the one message that ends the
    request, its ``idle`` status on IOPub (a kernel publishes it after the reply), so a kernel
    started ahead is ready at once. A message left on IOPub would be of no cell: nbclient reads
    a cell's messages by their parent only.
    """
    from queue import Empty

    deadline = monotonic() + (float("inf") if timeout is None else timeout)
    asked = set()  # every kernel_info request sent: a late reply to any of them will do
    while True:
        asked.add(kc.kernel_info())
        try:
            reply = await kc.shell_channel.get_msg(timeout=1)
        except Empty:
            reply = None
        if (
            reply is not None
            and reply.get("msg_type") == "kernel_info_reply"
            and await _idle_after(kc, asked, until=monotonic() + 1)
        ):
            kc._handle_kernel_info_reply(reply)
            return
        if not await kc._async_is_alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


async def _idle_after(kc, asked: set, until: float) -> bool:
    """Did IOPub say ``idle`` for one of the requests ``asked`` before ``until``?"""
    from queue import Empty

    while (left := until - monotonic()) > 0:
        try:
            msg = await kc.iopub_channel.get_msg(timeout=left)
        except Empty:
            return False
        if (
            msg.get("parent_header", {}).get("msg_id") in asked
            and msg.get("msg_type") == "status"
            and msg.get("content", {}).get("execution_state") == "idle"
        ):
            return True
    return False


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel runs in ``box`` (a :class:`sandbox.KernelBox`, or None).

    The connection file and the ipc sockets live in the box's per-kernel folder, which is
    bound into the sandbox at the same path; the folder is handed to the sandbox's user.
    """

    box = None
    max_frame = 16 * 2**20  # Limits.message_bytes
    limits = None  # with a box: fork the kernel from the template (grading/template.py)

    def client(self, **kwargs):
        """A client whose IOPub socket refuses frames larger than ``max_frame`` (ZMQ drops
        the connection before it allocates one, and connects again)."""
        kc = super().client(**kwargs)
        connect = kc.connect_iopub

        def connect_iopub(identity=None):
            kc.context.setsockopt(zmq.MAXMSGSIZE, self.max_frame)
            try:
                return connect(identity=identity)
            finally:
                kc.context.setsockopt(zmq.MAXMSGSIZE, -1)

        kc.connect_iopub = connect_iopub
        kc.wait_for_ready = functools.partial(_wait_for_ready, kc)
        return kc

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        """jupyter_client's wait for a killed kernel to be gone, polled every 5 ms instead of
        every 100 ms: a killed kernel is gone within milliseconds, and every student waited
        for the first 100."""
        await super()._async_wait(pollinterval=0.005)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if self.box is None or self.limits is not None:
            return cmd
        return self.box.command(cmd)

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        if self.box is not None and self.limits is not None:
            try:
                await asyncio.to_thread(self._fork_from_template, kernel_cmd, kw)
                return
            except template.Unavailable as error:  # started cold, in bwrap, as without one
                template.say_once(f"grading kernels start cold: {error}")
                kernel_cmd = self.box.command(kernel_cmd)
        await super()._async_launch_kernel(kernel_cmd, **kw)
        if self.box is not None:  # the sandbox's totals are watched from now on
            pid = self.provisioner.process.pid
            self.box.watch(pid)
            # the kernel binds its sockets in the sandbox's own small tmpfs: connect there
            self.ip = await asyncio.to_thread(self.box.sockets_from_outside, pid)

    def _fork_from_template(self, kernel_cmd, kw) -> None:
        """The kernel forked from this process's template into a sandbox of its own; its
        connection file written into the kernel's own folder, then let go."""
        from . import template as templates

        box = self.box
        argv = kernel_cmd[kernel_cmd.index("dnncourse.grading.kernel") + 1 :]
        argv[argv.index("-f") + 1] = f"{sandboxes.SOCKETS}/kernel.json"
        request = {**templates.request_for(box, box.options, self.limits), "argv": argv}
        fds = [kw.get(name) for name in ("stdout", "stderr")]
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            fds = [fd if isinstance(fd, int) and fd >= 0 else null for fd in fds]
            tpl = templates.template_for(box.options.data, templates.base_env(box.options))
            spawned = tpl.spawn(request, *fds)
        finally:
            os.close(null)
        self.provisioner.process, self.provisioner.pid = spawned, spawned.pid
        self.provisioner.pgid = None  # its group is the template's: signal the kernel only
        self._reconcile_connection_info(self.provisioner.connection_info)
        inside = Path(f"/proc/{spawned.kernel}/root{sandboxes.SOCKETS}/kernel.json")
        fd = os.open(inside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(Path(self.connection_file).read_bytes())
        if box.identity is not None:
            os.chown(inside, box.uid, box.uid)
        templates.enter(box, spawned)
        self.ip = f"/proc/{spawned.kernel}/root{box.sockets}"
        spawned.go()

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**kwargs)
        if self.box is not None:
            self.box.hand_over()


@dataclass
class Execution:
    """What happened: a status and details for humans (no verdict: see verdict.py)."""

    status: Status = Status.OK
    details: list[str] = field(default_factory=list)
    stopped_at: int | None = None  # index of the cell where the run stopped (limits)


class FirstWords:
    """A pipe for the kernel's stderr that keeps its first ``limit`` bytes and drops the rest.

    What a kernel says before it answers (a sandbox that would not start, an import that
    failed) explains a kernel that died at start; anything after that is read and dropped,
    so a flood on fd 2 costs neither memory nor disk, and never reaches the grader's log.
    """

    def __init__(self, limit: int = 2000):
        self.limit, self.data = limit, b""
        self.read_end, self.write_end = os.pipe()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with open(self.read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                if len(self.data) < self.limit:
                    self.data += chunk[: self.limit - len(self.data)]

    def close(self) -> None:
        """Close our copy of the write end (the kernel holds its own until it ends)."""
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None

    def text(self, wait: float = 2.0) -> str:
        """What was kept, once the kernel's copies are closed too (or after ``wait`` s)."""
        self.close()
        self._thread.join(wait)
        return self.data.decode("utf-8", "replace").strip()


def _last_line(text: str, chars: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-chars:] if lines else ""


def _failure(reason: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output(
        "error", ename="GradingError", evalue=reason, traceback=[f"GradingError: {reason}"]
    )


def _near_memory_limit(client, limits: Limits) -> bool:
    """Is the kernel's address space within 10% of its limit (a hung memory bomb)?"""
    if not limits.memory_limit_mb:
        return False
    try:  # the kernel runs under bwrap: the largest process of the family is the kernel
        top = psutil.Process(client.km.provisioner.process.pid)
        vms = max(p.memory_info().vms for p in [top, *top.children(recursive=True)])
    except Exception:  # the kernel is gone or the provisioner has no process
        return False
    return vms > 0.9 * limits.memory_limit_mb * 2**20


def _is_memory_error(output) -> bool:
    if output.get("output_type") != "error":
        return False
    text = f"{output.get('ename', '')} {output.get('evalue', '')}"
    return "MemoryError" in text or "can't allocate memory" in text or "out of memory" in text


def _kernel_folder() -> Path:
    """A fresh per-kernel folder on a short path (an ``ipc://`` socket path has to fit
    in the 107 bytes of a Unix socket address, whatever ``TMPDIR`` is).

    A socket is ``BASE/dnncourse-kernel-XXXXXXXX/kernel-ipc-N``: 43 bytes past ``BASE``
    with ``N`` of up to five digits, so ``BASE`` may have 64.
    """
    base = tempfile.gettempdir()
    if len(base) > 64 and os.access("/tmp", os.W_OK):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="dnncourse-kernel-", dir=base))


def _over_total(result: Execution, exceeded: str | None, limits: Limits) -> None:
    """The student's own status when the sandbox as a whole went over a limit (and died)."""
    if exceeded == "memory":
        result.status = Status.MEMORY_LIMIT
        result.details.append(
            f"all processes together used more than {limits.memory_limit_mb:g} MiB: stopped"
        )
    elif exceeded == "cpu":
        result.status = Status.TIMEOUT
        result.details.append(
            f"all processes together used more than {limits.cpu_seconds:g} s of CPU time: stopped"
        )


def _run_cells(client, nb, limits: Limits, result: Execution, watchdog, refused):
    """Execute the code cells in order until one stops the run; the index where it
    stopped (or None) and the last index run. Prompt numbers are the grader's."""
    count = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        count += 1
        client.current = index
        timings.cell_lap(cell)
        stop = None
        try:
            client.execute_cell(cell, index, execution_count=count)
        except CellTimeoutError:
            if _near_memory_limit(client, limits):
                result.status = Status.MEMORY_LIMIT
                result.details.append(f"cell {index + 1} hung at the memory limit")
                stop = "this cell hit the memory limit"
            else:
                result.status = Status.TIMEOUT
                result.details.append(
                    f"cell {index + 1} ran longer than {limits.cell_timeout:g} s"
                )
                stop = "this cell exceeded the time limit"
        except DeadKernelError:
            if watchdog.fired:
                client.truncated.add(index)
                result.details.append(
                    f"the kernel was stopped in cell {index + 1}: its messages took more than "
                    f"{limits.grader_memory_mb:g} MiB of the grader's memory"
                )
                stop = "this cell's output was too large"
            else:
                result.status = Status.KERNEL_DIED
                result.details.append(f"the kernel died in cell {index + 1}")
                stop = "the kernel died while running this cell"
        number_prompts(cell, count)
        if refused.seen() and not stop:  # a frame was refused: IOPub is gone for good
            client.truncated.add(index)
            mib = f"{limits.message_bytes / 2**20:g} MiB"
            result.details.append(f"cell {index + 1} sent a message frame over {mib}: stopped")
            stop = "this cell's output was too large"
        if index in client.truncated:
            cell.outputs.append(truncated_note())
        if stop:
            cell.outputs.append(_failure(stop))
            return index, index
    return None, index


NOT_STARTED = Status.GRADER_ERROR  # the kernel did not start: no student code ran


def execute(
    nb,
    cwd: Path | None,
    limits: Limits,
    sandbox: bool = True,
    data: Path | None = None,
    kernel: "Kernel | None" = None,
) -> Execution:
    """Execute ``nb`` in place in the grading kernel (no verdict: see verdict.py).

    With ``sandbox`` the kernel runs in a fresh sandbox whose working folder shows the
    entries of ``data`` (the assignment's data files), read-only; without, it runs as the
    grader in ``cwd`` (None: a fresh folder holding a copy of ``data``).

    ``kernel``: a :class:`Kernel` launched ahead for this run (:mod:`.warm`), made with the
    same ``limits``, ``sandbox`` and ``data``; it is used and closed here. One that turns out
    dead before it answered is no one's fault and is not mentioned: the run starts over
    with a fresh kernel, exactly as if none had been made ahead.

    A kernel that dies before it answers has run none of the student's code: that is the
    grader's failure, never the student's. It is started once more in a fresh sandbox, and
    if that one does not start either, the run is a ``grader error`` (graded again later).
    So is a forked kernel whose template stopped while it ran (:mod:`.template`): the
    notebook runs once more from its first cell in a fresh kernel.
    """
    if kernel is not None:
        result = _execute_once(nb, cwd, limits, sandbox, data, kernel)
        if result.status != NOT_STARTED:
            return result
    result = _execute_once(nb, cwd, limits, sandbox, data)
    if result.status == NOT_STARTED:
        time.sleep(1.0)
        first = result.details[-1]
        result = _execute_once(nb, cwd, limits, sandbox, data)
        if result.status != NOT_STARTED:
            result.details.insert(0, f"a second kernel was started ({first})")
    return result


HISTORY = ["--HistoryManager.hist_file=:memory:"]


class Kernel:
    """One student's kernel, launched (not yet connected): its per-kernel folder, sandbox,
    manager and the first words of its stderr; closed once, with everything it holds.

    :func:`execute` makes one when it needs it, or is handed one that was launched ahead
    (:mod:`~dnncourse.grading.warm`): the same kernel either way, made for one student only.
    Without a sandbox, a kernel made ahead (``cwd`` None) runs in a fresh folder of its own
    holding a copy of ``data``.
    """

    def __init__(self, limits: Limits, sandbox: bool = True, data: Path | None = None, cwd=None):
        self.limits, self.sandbox, self.data = limits, sandbox, data
        self.work = _kernel_folder()
        self.own_cwd = None
        if not sandbox and cwd is None:
            self.own_cwd = Path(tempfile.mkdtemp(prefix="dnncourse-student-"))
            if data is not None:
                shutil.copytree(data, self.own_cwd, dirs_exist_ok=True)
            cwd = self.own_cwd
        self.cwd = self.work if sandbox else Path(cwd)
        config = self.work / "limits.json"
        config.write_text(encode(limits))  # the kernel reads memory_limit_mb and file_limit_mb
        self.env = {**os.environ, "DNNCOURSE_GUARD": str(config)}
        self.box = None
        if sandbox:
            env = {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")}
            self.box = sandboxes.KernelBox(
                sandboxes.Options(
                    folder=self.work,
                    data=data,
                    workdir_mb=limits.workdir_mb,
                    processes=limits.processes,
                    memory_mb=limits.memory_limit_mb,
                    cpu_seconds=limits.cpu_seconds,
                    env={**env, "DNNCOURSE_GUARD": str(config)},
                )
            )
            self.box.options.env["DNNCOURSE_SANDBOX"] = json.dumps(self.box.config())
        km = SandboxedKernelManager(
            kernel_name=KERNEL_NAME,
            transport="ipc",
            connection_file=str(self.work / "kernel.json"),
        )
        if self.box is not None:  # the connection file's ip: the sockets' path inside
            km.ip = self.box.sockets
        km.box = self.box
        if self.box is not None and template.enabled():  # forked from the template
            km.limits = limits
        km.max_frame = limits.message_bytes
        self.km = km
        spec_dir = str(kernel_spec_dir())
        if spec_dir not in os.environ.get("JUPYTER_PATH", "").split(os.pathsep):
            os.environ["JUPYTER_PATH"] = os.pathsep.join(
                [spec_dir, *filter(None, [os.environ.get("JUPYTER_PATH")])]
            )
        self.stderr = FirstWords()
        self.launched_at: float | None = None  # the wall-clock time of the launch

    def launch(self) -> None:
        """Start the kernel's process (its start-up then runs on its own): the kernel's stdout
        (its banner) is dropped, its stderr kept only for a kernel that dies at start."""
        self.launched_at = wall_time()
        run_sync(self.km.start_kernel)(
            extra_arguments=HISTORY,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.write_end,
            cwd=str(self.cwd),
            env=self.env,
        )

    @property
    def process(self):
        """The process launched (a ``Popen`` of bwrap, or a :class:`.template.Spawned`), or
        None before the launch."""
        return getattr(self.km.provisioner, "process", None) if self.km.provisioner else None

    @property
    def pid(self) -> int | None:
        """The pid of the process launched (bwrap, in a sandbox), or None."""
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        """Is the launched process still running (a kernel made ahead may die waiting)?"""
        return self.process is not None and self.process.poll() is None

    def template_died(self) -> bool:
        """Was this kernel forked from a template that has stopped since (its kernels die
        with it: that is the grader's failure, never the student's)?"""
        process = self.process
        return isinstance(process, template.Spawned) and not process.template.alive()

    def close(self) -> None:
        """Kill the kernel and everything of its sandbox; remove its folders (idempotent).

        The launched process's whole tree is killed and waited for first: killing bwrap alone
        ends the sandbox's processes only a moment later (its child dies with its parent,
        then the pid namespace with its pid 1), and nothing a student started may outlive
        ``close``."""
        pid = self.pid
        if pid is not None and self.alive():
            kill_tree(pid)
        try:
            if self.km.has_kernel:
                run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # already gone: the sandbox's cgroup and folders still go below
            pid = self.pid
            if pid is not None:
                kill_tree(pid)
        finally:
            try:
                run_sync(self.km.cleanup_resources)()
            except Exception:
                pass
            self.stderr.close()
            if self.box is not None:
                self.box.close()  # whatever the student left running goes with the cgroup
            shutil.rmtree(self.work, ignore_errors=True)
            if self.own_cwd is not None:
                shutil.rmtree(self.own_cwd, ignore_errors=True)


def _execute_once(
    nb, cwd, limits: Limits, sandbox: bool, data: Path | None, kernel: Kernel | None = None
) -> Execution:
    timings.lap("sandbox")
    result = Execution()
    if kernel is None:
        kernel = Kernel(limits, sandbox, data, cwd)
    km, box, stderr = kernel.km, kernel.box, kernel.stderr
    client = GradingClient(
        nb,
        limits,
        km=km,
        timeout=limits.cell_timeout or None,
        kernel_name=KERNEL_NAME,
        allow_errors=True,
        interrupt_on_timeout=False,
        shutdown_kernel="immediate",
        record_timing=False,  # timestamps would come from the kernel's message headers
        store_widget_state=False,
        extra_arguments=HISTORY,
        resources={"metadata": {"path": str(kernel.cwd)}},
    )
    stopped_at, started, index = None, False, 0
    watchdog = None
    timings.lap("kernel start")
    try:
        if kernel.launched_at is None:
            kernel.launch()
        # cleanup_kc: nbclient shuts down (kills and collects) only a kernel whose manager it
        # made itself; ours, without it, lived on unsandboxed and was left a zombie otherwise
        with client.setup_kernel(cleanup_kc=True):
            started = True
            timings.watch_kernel(timings.kernel_cpu(box, km))  # its start's CPU included
            stderr.close()
            refused = client.guard_channels()
            watchdog = MemoryWatch(km, limits.grader_memory_mb)
            try:
                stopped_at, index = _run_cells(client, nb, limits, result, watchdog, refused)
            finally:  # before nbclient closes the sockets (its context waits for ours)
                timings.lap("kernel stop")
                refused.close()
    except RuntimeError as error:
        index = max(client.current, 0)
        if started:  # the kernel went away in a way nbclient does not name
            result.status = Status.KERNEL_DIED
            result.details.append(f"the kernel stopped in cell {index + 1}: {str(error)[:200]}")
        else:  # the kernel did not start: no student code ran yet
            said = stderr.text()
            if said:
                print(f"the grading kernel did not start; it said:\n{said}", file=sys.stderr)
            last = _last_line(said)
            result.status = NOT_STARTED
            result.details.append(
                f"the kernel did not start: {error}" + (f" (it said: {last})" if last else "")
            )
        stopped_at = index
    finally:
        if watchdog is not None:
            watchdog.stop()
        timings.kernel_gone()
        if box is not None:
            _over_total(result, box.exceeded(), limits)
        if result.status == Status.KERNEL_DIED and kernel.template_died():
            result.status = NOT_STARTED  # so run again from the start in a fresh kernel
            result.details.append("the kernel template stopped, and the kernel with it")
        kernel.close()
    result.stopped_at = stopped_at
    if client.truncated:
        result.details.append(f"output truncated in {len(client.truncated)} cell(s)")
        if result.status == Status.OK:
            result.status = Status.OUTPUT_LIMIT
    if (
        watchdog is not None
        and watchdog.fired
        and result.status in (Status.KERNEL_DIED, Status.TIMEOUT)
    ):
        result.status = Status.OUTPUT_LIMIT  # the kernel was stopped for the grader's memory
    memory = [
        i for i, c in enumerate(nb.cells) if any(map(_is_memory_error, c.get("outputs", [])))
    ]
    if memory:
        result.details.append(f"memory limit reached in cell(s) {[i + 1 for i in memory]}")
        if result.status in (Status.OK, Status.KERNEL_DIED):
            result.status = Status.MEMORY_LIMIT
    return result
