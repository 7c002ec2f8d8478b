"""A template process with the kernel's libraries loaded, from which each student's kernel is
forked into a fresh sandbox of its own (issue 24, item 2: kernels ready before the student).

Why: a kernel's start costs ~3.5 s of CPU per student (torch, the ``meta``/``_dynamo``
preload, IPython, ipykernel: :data:`.kernel.PRELOAD`). Per grading process, one *template*
pays it once; per student it forks, and the fork makes a sandbox of its own from nothing.
The model is Android's zygote and the fork servers of ``multiprocessing.forkserver``, with
the isolation of :mod:`.sandbox` built per student inside the template's own sandbox.

The template (:func:`serve`) runs in a bubblewrap sandbox like a student's
(:func:`.sandbox.command` with ``template=True``: the same read-only root and data files,
no network, an environment without any of the grader's variables), imports the preload and
ipykernel but starts no thread, socket or ZMQ context, never runs student code, and reads
requests on a private socket (its stdin) from the grading process. Per student
(:func:`_child`), the forked child, single-threaded:

1. takes fresh namespaces of its own with ``unshare``: mount, pid, net, ipc and uts, and,
   as an ordinary user, a nested user namespace mapping only its own uid and gid (as root
   the template keeps CAP_SYS_ADMIN for this, and the kernel drops to a uid of its own);
2. mounts fresh size-capped tmpfs on every writable folder (``/tmp``, ``/dev/shm``, HOME)
   and on the sockets' folder, binds the data files read-only into the working folder,
   and (as root) its own ``/etc/passwd`` naming its uid;
3. forks again, so that the kernel is pid 1 of the new pid namespace, with a fresh
   ``/proc`` (the key files masked, as bwrap does for a student);
4. reports ready and waits; the grading process finds the kernel's host pid, puts it in its
   cgroups (root) or under the watchdog, writes the connection file into the kernel's own
   ``/run/kernel``, and only then lets it go;
5. then, as :func:`.kernel.prepare_sandbox` does in a bwrap sandbox: its limits, its uid
   (root) and no capability at all, a fresh session keyring, ``no_new_privs`` and the seccomp
   filter (which denies ``unshare``, ``setns``, ``mount``, ``umount2``, ``ptrace``), a clean
   environment, every inherited descriptor closed but its own stdio, and IPKernelApp.

The template never sees a connection key, and nothing of one student reaches the next: each
child is forked from the template as it was before any student (copy on write).

:class:`Template` is the grading process's side. It is on by default; ``DNNCOURSE_TEMPLATE=0``
(read by :func:`enabled`) starts every kernel cold in bwrap. A template that cannot start
raises :class:`Unavailable` and that grading process's kernels start cold (said once in its
log); a template that stops kills its kernels with it (``PR_SET_PDEATHSIG``), which
:func:`.execute.execute` treats as the grader's failure: the notebook runs again.
"""

import ctypes
import json
import os
import signal
import socket
import sys
import weakref

# -- the switch -----------------------------------------------------------------------------
SWITCH = "DNNCOURSE_TEMPLATE"


def enabled() -> bool:
    """Fork each kernel from a template (the default, ``DNNCOURSE_TEMPLATE=1``) or start each
    one cold in bwrap (``DNNCOURSE_TEMPLATE=0``)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


class Unavailable(RuntimeError):
    """No kernel could be forked (the template did not start, or went away before it
    answered): that kernel starts cold in bwrap instead, as it would without a template."""


_SAID: set = set()


def say_once(text: str) -> None:
    """Tell the grader's log once per process (a template that cannot start here would
    otherwise say so for every student)."""
    if text not in _SAID:
        _SAID.add(text)
        print(f"dnncourse: {text}", file=sys.stderr, flush=True)


# -- inside the template's sandbox ----------------------------------------------------------
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 32, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
HOME, WORK, SOCKETS = "/home/student", "/home/student/work", "/run/kernel"
PROC_COVERED = ("sys", "sysrq-trigger", "irq", "bus")  # as bwrap covers them for root
PROC_MASKED = ("keys", "key-users")  # the keys of the host uid, named: shown empty

_libc = ctypes.CDLL(None, use_errno=True)


def _check(value: int, what: str) -> None:
    if value != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, kind, flags=0, data=None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, kind, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _tmpfs(target: str, size: int, mode: str) -> None:
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")


def _bind_ro(source: str, target: str) -> None:
    """Bind ``source`` read-only on ``target``, keeping the flags it had (a mount inherited
    into a user namespace keeps its flags locked: a remount that drops one is refused)."""
    _mount(source, target, None, MS_BIND | MS_REC)
    kept = os.statvfs(target).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | (kept & (MS_NOSUID | MS_NODEV | MS_NOEXEC))
    flags |= (kept & 1024) | (kept & 2048) | (MS_RELATIME if kept & 4096 else 0)  # atime
    _check(_libc.mount(None, target.encode(), None, flags, None), f"read-only {target}")


def _loopback_up() -> None:
    """The new network namespace's ``lo`` up, as bwrap does (SIOCSIFFLAGS: IFF_UP|IFF_RUNNING)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", 0x1 | 0x8 | 0x40))


FRESH = ("/dev/shm", "/tmp", HOME, SOCKETS)  # each child mounts a tmpfs of its own on these


def _bound_inside(folders) -> list[str]:
    """The outermost mount points strictly inside ``folders`` (from ``mountinfo``)."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 is a space
            if any(point.startswith(folder + "/") for folder in folders):
                points.add(point)
    return sorted(p for p in points if not any(p.startswith(q + "/") for q in points))


def preload() -> None:
    """What every kernel imports before student code, imported once here (no thread, socket
    or ZMQ context is made by importing these)."""
    from dnncourse.grading import kernel

    for name in (*kernel.PRELOAD, "pyseccomp", "ipykernel.kernelapp", "ipykernel.ipkernel"):
        try:
            __import__(name)
        except ImportError:
            pass
    import gc

    gc.collect()
    gc.freeze()  # the collector of each kernel leaves these alone (no copy of their pages)


def _receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One request (a JSON line) and the descriptors that came with it."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, more, _, _ = socket.recv_fds(sock, 65536, 8)
        fds += more
        if not chunk:
            return None, fds
        data += chunk
    return json.loads(data), fds


def _answer(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _reap(*_) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def serve() -> None:
    """The template's loop: preload, say ready, then per request fork a kernel or let one go."""
    sock = socket.socket(fileno=0)
    preload()
    threads = len(os.listdir("/proc/self/task"))
    signal.signal(signal.SIGCHLD, _reap)
    _answer(sock, {"ready": True, "threads": threads})
    gates: dict[int, int] = {}  # pid -> the write end that lets that kernel go
    while True:
        request, fds = _receive(sock)
        if request is None:
            return
        if "go" in request:
            gate = gates.pop(int(request["go"]), None)
            if gate is not None:
                try:
                    os.write(gate, b"g")
                except OSError:
                    pass
                os.close(gate)
            _answer(sock, {"went": gate is not None})
        else:
            _answer(sock, _spawn(request, fds, gates))


def _spawn(request: dict, fds: list[int], gates: dict) -> dict:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    template = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _child(request, fds, ready_w, go_r, template)
        except BaseException as error:  # said to the grader, then gone
            try:
                os.write(ready_w, f"{type(error).__name__}: {error}\n".encode())
            finally:
                os._exit(70)
        os._exit(0)
    for fd in (ready_w, go_r, *fds):
        os.close(fd)
    said = b""
    with os.fdopen(ready_r, "rb") as pipe:
        while not said.endswith(b"\n") and (chunk := pipe.read(1)):
            said += chunk
    if said == b"ok\n":
        gates[pid] = go_w
        return {"pid": pid}
    os.close(go_w)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return {"error": said.decode("utf-8", "replace").strip() or "the child ended at start"}


def _child(request, fds, ready_w, go_r, template) -> None:
    """The forked child: namespaces, folders, then the kernel as pid 1 of its own."""
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != template:
        os._exit(0)
    os.setsid()
    stdout, stderr, status_w = fds
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    keep = {0, 1, 2, ready_w, go_r, status_w}
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    for fd in keep:
        if fd > 2:
            os.set_inheritable(fd, False)
    uid, gid = os.getuid(), os.getgid()
    spaces = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if request.get("uid") is None:  # an ordinary user: a user namespace nested in bwrap's
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # to write our own maps
        _check(_libc.unshare(spaces | CLONE_NEWUSER), "unshare")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    else:  # root: the template's CAP_SYS_ADMIN; the kernel drops to its uid after
        _check(_libc.unshare(spaces), "unshare")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "private /")
    # what bwrap bound inside the folders about to be covered (the data files in WORK, a
    # virtualenv in /tmp), as this mount namespace sees them: bound again on the fresh ones
    kept = {point: os.open(point, os.O_PATH | os.O_CLOEXEC) for point in _bound_inside(FRESH)}
    _check(_libc.sethostname(b"sandbox", 7), "hostname")
    _loopback_up()
    size = int(request["size"])
    _tmpfs("/dev/shm", size, "1777")
    _tmpfs("/tmp", size, "1777")
    _tmpfs(HOME, size, "0777")
    os.mkdir(WORK)
    os.chmod(WORK, 0o777)
    _tmpfs(SOCKETS, 64 * 1024, "0777")
    for point, fd in kept.items():  # read-only, as bwrap binds them
        os.makedirs(os.path.dirname(point), 0o755, exist_ok=True)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.mkdir(point, 0o755)
        else:
            os.close(os.open(point, os.O_CREAT | os.O_WRONLY, 0o644))
        _bind_ro(f"/proc/self/fd/{fd}", point)
        os.close(fd)
    if request.get("uid") is not None:  # root: a passwd naming this kernel's uid
        etc = f"{SOCKETS}/etc"
        os.mkdir(etc, 0o755)
        n = int(request["uid"])
        files = {
            "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"student:x:{n}:{n}:student:{HOME}:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nstudent:x:{n}:\n",
        }
        for name, text in files.items():
            with open(f"{etc}/{name}", "w") as f:
                f.write(text)
            os.chmod(f"{etc}/{name}", 0o644)
            _bind_ro(f"{etc}/{name}", f"/etc/{name}")
    kernel = os.fork()  # pid 1 of the new pid namespace
    if kernel == 0:
        os.close(status_w)
        _kernel(request, ready_w, go_r)
        os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    _, status = os.waitpid(kernel, 0)
    os.write(status_w, f"{os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def _kernel(request, ready_w, go_r) -> None:
    """Pid 1 of the student's namespaces: a fresh /proc, wait for the grader, then the kernel."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_MASKED:
        _bind_ro("/dev/null", f"/proc/{name}")
    if request.get("uid") is not None:
        for name in PROC_COVERED:
            if os.path.exists(f"/proc/{name}"):
                _bind_ro(f"/proc/{name}", f"/proc/{name}")
    os.chdir(WORK)
    os.write(ready_w, b"ok\n")
    os.close(ready_w)
    go = os.read(go_r, 1)
    os.close(go_r)
    if go != b"g":  # the grader or the template went away
        os._exit(0)
    from dnncourse.grading import kernel

    uid = request.get("uid")
    kernel.prepare_sandbox(
        {
            "processes": request.get("processes"),
            "cpu_seconds": request.get("cpu_seconds"),
            "uid": os.getuid() if uid is None else uid,
            "gid": os.getgid() if uid is None else request["gid"],
            "seccomp": request.get("seccomp", True),
        }
    )
    kernel.set_limits(request.get("memory_limit_mb"), request.get("file_limit_mb"))
    os.environ.clear()
    os.environ.update(request["env"])
    _reseed()
    if "code" in request:  # the sandbox's checks (sandbox._run_inside)
        namespace = {"__name__": "__main__", "json": json, "os": os, "sys": sys}
        try:
            exec(compile(request["code"], "<check>", "exec"), namespace)
        except SystemExit as end:
            sys.stdout.flush()
            os._exit(end.code if isinstance(end.code, int) else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.argv = ["dnncourse.grading.kernel", *request["argv"]]
    kernel.start(request["argv"])
    sys.stdout.flush()
    os._exit(0)


def _reseed() -> None:
    """Fresh seeds for the generators the template seeded once at import (numpy's global
    generator, Python's ``random``): forked kernels would otherwise draw the same numbers."""
    import random

    random.seed()
    try:
        import numpy

        numpy.random.seed()  # noqa: NPY002 - the legacy global generator itself
    except ImportError:
        pass


# -- the grading process's side -------------------------------------------------------------
class Spawned:
    """A kernel forked from the template, as jupyter_client's provisioner sees a process:
    ``pid`` is the host pid of the child whose only child is the kernel (the sandbox's pid 1,
    ``kernel``), as bwrap's pid is for a cold kernel."""

    def __init__(self, template: "Template", nspid: int, pid: int, kernel: int, status: int):
        self.template, self.nspid, self.pid, self.kernel = template, nspid, pid, kernel
        self._status, self.returncode = status, None
        self.stdout = self.stderr = self.stdin = None

    def poll(self) -> int | None:
        import select

        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            self._finish()
        return self.returncode

    def _finish(self) -> None:
        data = b""
        while chunk := os.read(self._status, 64):
            data += chunk
        os.close(self._status)
        try:
            self.returncode = int(data.decode().strip())
        except ValueError:
            self.returncode = -signal.SIGKILL  # the child itself was killed
        try:  # until the template reaps it, the child is a zombie
            import psutil

            psutil.Process(self.pid).wait(1)
        except Exception:
            pass

    def wait(self, timeout: float | None = None) -> int:
        import select

        if self.returncode is None:
            if not select.select([self._status], [], [], timeout)[0]:
                import subprocess

                raise subprocess.TimeoutExpired(f"kernel {self.kernel}", timeout)
            self._finish()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.kernel, signum)

    def kill(self) -> None:
        if self.returncode is None:
            from .processes import kill_tree

            kill_tree(self.pid, wait=0)

    terminate = kill

    def go(self) -> None:
        self.template.go(self.nspid)


START_TIMEOUT = 300  # seconds for a template's start (its imports: ~3 s on a quiet core)


class Template:
    """One template process in its sandbox, for one assignment's data files (see above)."""

    def __init__(self, data, env: dict):
        import subprocess
        import tempfile
        import threading
        from pathlib import Path

        from . import sandbox

        self.folder = Path(tempfile.mkdtemp(prefix="dnncourse-template-"))
        self.options = sandbox.Options(folder=self.folder, data=data, env=env)
        sandbox.share_data(data)
        argv = sandbox.command(
            [sys.executable, "-m", "dnncourse.grading.template"], self.options, template=True
        )
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.log = open(self.folder / "template.log", "wb")
        null = subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdin=theirs, stdout=null, stderr=self.log)
        theirs.close()
        self.lock = threading.Lock()
        self.buffer = b""
        self.spawned = weakref.WeakSet()  # the kernels forked, while the grader holds them
        self.sock.settimeout(START_TIMEOUT)
        try:
            hello = self._read()
        except (OSError, ValueError):  # no word in time, or not a ready line
            hello = {}
        self.sock.settimeout(None)
        if not hello.get("ready"):
            said = (self.folder / "template.log").read_text(errors="replace").strip()
            self.close()
            raise Unavailable(f"the kernel template did not start: {said[-300:]}")
        self.threads = hello["threads"]

    def _read(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return {}
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def busy(self) -> bool:
        """Is a kernel forked from it still running?"""
        return any(spawned.poll() is None for spawned in list(self.spawned))

    def host_pid(self) -> int | None:
        """The template's own host pid (bwrap's only child)."""
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None

    def spawn(self, request: dict, stdout: int, stderr: int) -> Spawned:
        """Fork a kernel (``request``: see :func:`_child`); it waits for :meth:`Spawned.go`."""
        import psutil

        status_r, status_w = os.pipe()
        try:
            with self.lock:
                message = json.dumps(request).encode() + b"\n"
                socket.send_fds(self.sock, [message], [stdout, stderr, status_w])
                answer = self._read()
        finally:
            os.close(status_w)
        if "pid" not in answer:
            os.close(status_r)
            raise Unavailable(answer.get("error") or "the kernel template is gone")
        nspid, top = answer["pid"], self.host_pid()
        for child in psutil.Process(top).children():
            with open(f"/proc/{child.pid}/status") as f:
                ns = next(ln.split()[1:] for ln in f if ln.startswith("NSpid:"))
            if len(ns) > 1 and int(ns[1]) == nspid:
                kernel = child.children()[0].pid
                spawned = Spawned(self, nspid, child.pid, kernel, status_r)
                self.spawned.add(spawned)
                return spawned
        os.close(status_r)
        raise Unavailable("the forked kernel was not found")

    def go(self, nspid: int) -> None:
        with self.lock:
            self.sock.sendall(json.dumps({"go": nspid}).encode() + b"\n")
            self._read()

    def close(self) -> None:
        import shutil
        import subprocess

        from .processes import kill_tree

        self.sock.close()  # the template reads the end of its requests and ends
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_TEMPLATES: dict = {}  # in the order they were made
_FAILED: dict = {}  # the templates that did not start, and why
KEEP = 2  # templates kept per grading process (assignments graded in turn)
_LOCK = __import__("threading").Lock()


def base_env(options) -> dict:
    """The environment a template starts with: the kernel's, without the grader's settings."""
    return {k: v for k, v in (options.env or {}).items() if not k.startswith("DNNCOURSE_")}


def template_for(data, env: dict) -> Template:
    """This grading process's template for the data files ``data`` (started on first use, and
    again if it died); one per assignment's data folder and environment."""
    import atexit

    from . import sandbox

    options = sandbox.Options(folder=sandbox.Path("/"), data=data, env=env)
    key = tuple(sandbox.command(["template"], options, template=True))  # what it would see
    with _LOCK:
        template = _TEMPLATES.get(key)
        if template is None or not template.alive():
            if template is not None:  # it died: what is left of it goes
                _TEMPLATES.pop(key).close()
            if key in _FAILED:  # it could not start here once: every kernel starts cold
                raise Unavailable(_FAILED[key])
            if not _TEMPLATES:
                atexit.register(close_all)
            for other in [k for k, t in _TEMPLATES.items() if not t.busy()][: -KEEP + 1 or None]:
                _TEMPLATES.pop(other).close()  # the oldest idle ones (each holds torch)
            try:
                template = _TEMPLATES[key] = Template(data, env)
            except Exception as error:
                _FAILED[key] = str(error) if isinstance(error, Unavailable) else repr(error)
                raise Unavailable(_FAILED[key]) from error
    return template


def close_all() -> None:
    while _TEMPLATES:
        _TEMPLATES.popitem()[1].close()


def request_for(box, options, limits=None) -> dict:
    """The spawn request for a sandbox ``box`` (:class:`.sandbox.KernelBox`): its identity and
    limits; no secret (the connection file is written into the kernel's own folder)."""
    from . import sandbox

    config = box.config()
    return {
        "uid": config["uid"],
        "gid": config["gid"],
        "processes": config["processes"],
        "cpu_seconds": config["cpu_seconds"],
        "seccomp": config["seccomp"],
        "size": int(options.workdir_mb * 2**20),
        "memory_limit_mb": limits.memory_limit_mb if limits else None,
        "file_limit_mb": limits.file_limit_mb if limits else None,
        "env": sandbox.environment(options),
    }


def run_code(box, code: str, timeout: float):
    """``python -c code`` as :func:`.sandbox._run_inside` runs it, in a kernel's place: forked
    from the template, in the sandbox ``box`` (cgroups, uid, watchdog); a CompletedProcess."""
    import subprocess
    import threading

    template = template_for(box.options.data, base_env(box.options))
    request = {**request_for(box, box.options), "code": code}
    pipes = [os.pipe(), os.pipe()]
    try:
        spawned = template.spawn(request, pipes[0][1], pipes[1][1])
    finally:
        for _, write in pipes:
            os.close(write)
    texts = ["", ""]

    def drain(i: int) -> None:
        with open(pipes[i][0], "rb") as pipe:
            texts[i] = pipe.read().decode("utf-8", "replace")

    readers = [threading.Thread(target=drain, args=(i,), daemon=True) for i in (0, 1)]
    for reader in readers:
        reader.start()
    try:
        enter(box, spawned)
        spawned.go()
        code = spawned.wait(timeout)
    except subprocess.TimeoutExpired:
        spawned.kill()
        raise
    for reader in readers:
        reader.join(5)
    result = subprocess.CompletedProcess(["template", str(spawned.kernel)], code, *texts)
    result.exceeded = box.exceeded()
    return result


def enter(box, spawned: Spawned) -> None:
    """Put the forked kernel into the sandbox's cgroups (root) and under its watchdog."""
    if box.group is not None:
        for procs in box.group.procs():
            procs.write_text(str(spawned.kernel))
    box.watch(spawned.pid)


if __name__ == "__main__":
    serve()
