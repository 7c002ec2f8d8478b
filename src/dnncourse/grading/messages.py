"""The grading kernel's messages, screened before nbclient sees them (issue 19, item 3).

The kernel belongs to the student: with ``get_ipython().kernel.session`` a notebook sends
any message it likes, of any type, size, shape and number, to the grading process. So:

* every IOPub message is checked and copied to the fields nbclient reads, each of the type
  it expects (:func:`screen_content`); comm (widget) messages, ``execute_input`` and unknown
  types are dropped; the kernel's prompt numbers are dropped too, and the grader numbers
  the cells it ran (:func:`number_prompts`), so a huge or chosen ``execution_count`` never
  reaches a page;
* every message is charged to the cell's and the notebook's output budgets whatever its
  type (outputs, display updates, ``clear_output``, errors and their tracebacks, comms,
  unknown ones), probe records to a budget of their own; past a budget, messages are dropped
  as they arrive and the student's status is ``output limit``;
* no single IOPub frame may exceed ``Limits.message_bytes``: ZMQ refuses it before
  allocating it (``ZMQ_MAXMSGSIZE``) and drops the connection, which a socket monitor
  reports (:class:`Refusals`): the run stops there, ``output limit``;
* the grading process has a memory cap of its own (:class:`MemoryWatch`): when it has grown
  by more than ``Limits.grader_memory_mb`` since the kernel started (a message of many
  frames, each under the limit), the kernel is killed and the student's status is
  ``output limit``, never ``grader error``;
* a shell reply is read for its status only.
"""

import json
import secrets
import threading
import time
from collections import defaultdict

import nbformat
import psutil
import zmq
from nbclient import NotebookClient
from nbclient.util import ensure_async

from .processes import kill_tree
from .protocol import PROBE_MIME as MIME
from .protocol import Limits

OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error", "update_display_data")


def _text(value, default=None):
    return value if isinstance(value, str) else default


def screen_content(msg_type: str, content: dict) -> dict | None:
    """A clean copy of an IOPub message's content with the fields nbclient reads, each of
    the type it expects; None for a message that is dropped (unknown types, comms, malformed
    ones). Prompt numbers are the grader's (:func:`execute` sets them): any the kernel sent
    are left out."""
    if msg_type == "status":
        state = _text(content.get("execution_state"))
        return {"execution_state": state} if state in ("busy", "idle", "starting") else None
    if msg_type == "clear_output":
        return {"wait": content.get("wait") is True}
    if msg_type == "stream":
        text = _text(content.get("text"))
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return None if text is None else {"name": name, "text": text}
    if msg_type == "error":
        trace = content.get("traceback")
        if not isinstance(trace, list) or not all(isinstance(t, str) for t in trace):
            trace = []
        ename, evalue = _text(content.get("ename"), "Error"), _text(content.get("evalue"), "")
        return {"ename": ename, "evalue": evalue, "traceback": trace}
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        data, metadata = content.get("data"), content.get("metadata")
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            return None
        clean = {"data": data, "metadata": metadata if isinstance(metadata, dict) else {}}
        transient = content.get("transient")
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        if isinstance(display_id, str) and len(display_id) <= 200:
            clean["transient"] = {"display_id": display_id}
        elif msg_type == "update_display_data":
            return None
        if msg_type == "execute_result":
            clean["execution_count"] = None
        return clean
    return None  # execute_input (its prompt number), comm_* (widgets), unknown types


MESSAGE_OVERHEAD = 20  # bytes charged per message on top of its content (a flood of empty ones)


def _size(msg: dict) -> int:
    try:
        size = MESSAGE_OVERHEAD + len(json.dumps(msg.get("content"), default=str))
    except (TypeError, ValueError, RecursionError):
        size = MESSAGE_OVERHEAD
    buffers = msg.get("buffers") or []
    return size + sum(len(memoryview(b)) for b in buffers if isinstance(b, (bytes, memoryview)))


class GradingClient(NotebookClient):
    """nbclient's client that reads the kernel's messages through :meth:`screen`.

    Every message the kernel sends (on IOPub and the shell channel) is student data: it is
    checked and copied to the fields nbclient reads before nbclient sees it, and its size is
    charged to the cell's and the notebook's output budgets, whatever its type (outputs,
    display updates, ``clear_output``, errors and their tracebacks, comm messages). Past a
    budget, messages are dropped as they arrive (status ``output limit``); unknown types and
    comms are always dropped; probe records have a budget of their own per notebook.
    """

    def __init__(self, nb, limits: Limits, **kw):
        super().__init__(nb, **kw)
        self.limits = limits
        self.cell_bytes = defaultdict(int)
        self.total_bytes = 0
        self.probe_bytes = 0
        self.truncated = set()
        self.current = -1  # the index of the cell being executed

    def _charge(self, size: int, cell_index: int) -> bool:
        over = (
            self.cell_bytes[cell_index] + size > self.limits.cell_output_bytes
            or self.total_bytes + size > self.limits.notebook_output_bytes
        )
        if over:
            self.truncated.add(cell_index)
            return False
        self.cell_bytes[cell_index] += size
        self.total_bytes += size
        return True

    def screen(self, msg) -> dict | None:
        """The IOPub message ``msg`` as nbclient may read it, or None (dropped)."""
        if not isinstance(msg, dict):
            return None
        header, parent, content = msg.get("header"), msg.get("parent_header"), msg.get("content")
        if not (isinstance(header, dict) and isinstance(parent, dict)):
            return None
        msg_type, parent_id = _text(header.get("msg_type")), _text(parent.get("msg_id"))
        if msg_type is None or parent_id is None or not isinstance(content, dict):
            return None
        size = _size(msg)
        clean = screen_content(msg_type, content)
        if msg_type not in ("status", "execute_input"):  # those two are not kept
            data = clean.get("data") if clean else None
            if msg_type == "display_data" and isinstance(data, dict) and MIME in data:
                if self.probe_bytes + size <= self.limits.probe_output_bytes:
                    self.probe_bytes += size  # probe records: a budget of their own
                    size = 0
            if size and not self._charge(size, self.current):
                return None
        if clean is None:
            return None
        return {
            "header": {"msg_type": msg_type, "msg_id": _text(header.get("msg_id"), "")},
            "msg_type": msg_type,
            "parent_header": {"msg_id": parent_id},
            "metadata": {},
            "content": clean,
            "buffers": [],
        }

    @staticmethod
    def screen_reply(msg) -> dict | None:
        """A shell reply as nbclient may read it (its status only), or None (dropped)."""
        if not isinstance(msg, dict):
            return None
        header, parent, content = msg.get("header"), msg.get("parent_header"), msg.get("content")
        if not (isinstance(header, dict) and isinstance(parent, dict)):
            return None
        if not isinstance(content, dict) or _text(parent.get("msg_id")) is None:
            return None
        status = content.get("status") if content.get("status") in ("ok", "aborted") else "error"
        msg_type = _text(header.get("msg_type"), "")
        return {
            "header": {"msg_type": msg_type, "msg_id": _text(header.get("msg_id"), "")},
            "msg_type": msg_type,
            "parent_header": {"msg_id": parent["msg_id"]},
            "metadata": {},
            "content": {"status": status},
            "buffers": [],
        }

    def guard_channels(self) -> "Refusals":
        """Put the screens between the kernel's channels and nbclient; watch for IOPub
        frames that ZMQ refused."""
        kc = self.kc
        kc.iopub_channel.get_msg = _screened(kc.iopub_channel.get_msg, self.screen)
        kc.shell_channel.get_msg = _screened(kc.shell_channel.get_msg, self.screen_reply)
        return Refusals(kc.iopub_channel.socket)


def _screened(get_msg, check):
    """``get_msg`` of a channel that returns screened messages only (waiting on past the
    dropped ones, within the caller's timeout)."""

    async def get(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            clean = check(await ensure_async(get_msg(timeout=left)))
            if clean is not None:
                return clean

    return get


def truncated_note() -> nbformat.NotebookNode:
    text = "\n[output truncated by the grader: this cell printed too much]\n"
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def number_prompts(cell, count: int) -> None:
    """The grader's prompt number on a cell and its results (never the kernel's)."""
    cell.execution_count = count
    for output in cell.outputs:
        if output.get("output_type") == "execute_result":
            output["execution_count"] = count


class Refusals:
    """Notices IOPub frames that ZMQ refused (larger than ``Limits.message_bytes``): the
    socket drops its connection to the kernel (and does not get it back), which its
    monitor reports; the run stops there (``output limit``)."""

    def __init__(self, socket):
        self.count = 0
        address = f"inproc://dnncourse-monitor-{secrets.token_hex(8)}"
        self.socket = socket
        socket.monitor(address, zmq.EVENT_DISCONNECTED)
        pair = zmq.Context.shadow(socket.context.underlying).socket(zmq.PAIR)
        pair.connect(address)
        self.monitors = [pair]

    def close(self) -> None:
        for pair in self.monitors:
            pair.close(linger=0)
        self.monitors = []
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass

    def seen(self) -> int:
        """How many times the connection was dropped since the kernel started."""
        for pair in self.monitors:
            while pair.poll(0):
                pair.recv_multipart()
                self.count += 1
        return self.count


class MemoryWatch:
    """The grading process's own memory cap: a thread that kills the kernel when this
    process has grown by more than ``cap_mb`` since the kernel started (its messages are
    the only thing here that grows with what a student does)."""

    def __init__(self, km, cap_mb: float | None, every: float = 0.05):
        self.fired = False
        self._stop = threading.Event()
        if not cap_mb:
            return
        me = psutil.Process()
        limit = me.memory_info().rss + cap_mb * 2**20
        pid = km.provisioner.process.pid

        def watch():
            while not self._stop.wait(every):
                if me.memory_info().rss > limit:
                    self.fired = True
                    kill_tree(pid, wait=0)
                    return

        threading.Thread(target=watch, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
