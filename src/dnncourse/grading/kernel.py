"""The grading kernel: an IPython kernel with limits and a guard around the graded cells.

Run as ``python -m dnncourse.grading.kernel -f CONNECTION_FILE`` with the environment
variable ``DNNCOURSE_GUARD`` naming a JSON file (read, then deleted, before any student code
runs) that holds ``memory_limit_mb``, ``receipts`` (a file to append verdicts to), ``nonce``
and ``protected`` (SHA-256 digests of the locked cells' source, ``graded`` of the test cells).

Before student code exists, the launcher

* caps the kernel's address space (``RLIMIT_AS``) and the size of the files it writes, and
  asks Linux to kill it when the grading worker dies;
* imports the comparison libraries and takes a snapshot: the callables of ``builtins``,
  ``math``, ``torch``, ``torch.testing``, ``numpy``, ``numpy.testing``, ...; the classes of
  ``torch.Tensor`` and of the IPython shell and kernel; IPython's input transformers, AST
  transformers, prefilters, event callbacks, traceback and display hooks; ``sys`` hooks.

Each execute request whose code is a protected cell first restores that snapshot (so a
student cell cannot blank the tests with an input transformer, hide their tracebacks, or make
``torch.allclose`` always true), runs the cell, then compares the state with the snapshot
again: a test that ran with patched comparisons or a tracer fails. The verdict of a graded
cell is appended to the receipts file: the worker counts a test as passed only with a receipt
saying ``ok``, never from what the notebook displays.

Note:
    Student code runs in this process, so a student who reads this module can still find
    ways around the guard (a thread that patches in a loop, ctypes); see the instructor's
    guide for what the grader does and does not protect against.
"""

import builtins
import ctypes
import gc
import hashlib
import json
import os
import resource
import signal
import sys
import traceback
import types

COMPARE = (
    "all any abs allclose isclose equal eq ne lt le gt ge isfinite isnan isinf is_tensor "
    "is_floating_point is_complex isreal sign max min sum mean norm dist numel sort where "
    "array_equal array_equiv count_nonzero nan_to_num"
).split()
# module -> the names the tests' verdicts rest on (None: every callable of the module)
PROTECTED = {
    "builtins": None,
    "math": None,
    "operator": None,
    "functools": None,
    "inspect": None,
    "torch": COMPARE,
    "torch.testing": None,
    "torch.testing._comparison": None,
    "torch.linalg": ["norm", "vector_norm", "matrix_norm"],
    "numpy": COMPARE,
    "numpy.testing": None,
    "numpy.linalg": ["norm"],
}
TENSOR_METHODS = (
    "__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __abs__ __bool__ __len__ __float__ __int__ "
    "__sub__ __rsub__ __neg__ __getitem__ __iter__ __repr__ __format__ tolist item all any "
    "abs allclose isclose equal eq ne max min sum norm numel data_ptr size dim detach clone "
    "to cpu double float"
).split()
SHELL_METHODS = (
    "run_cell run_cell_async run_ast_nodes run_code should_run_async transform_cell "
    "transform_ast showtraceback _showtraceback showsyntaxerror get_exception_only "
    "_get_exc_info excepthook ex"
).split()
PRELOAD = ("torch", "torch.testing", "numpy", "numpy.testing", "inspect")
SYS_HOOKS = ("excepthook", "displayhook", "breakpointhook", "stdout", "stderr", "stdin")


def digest(code: str) -> str:
    """SHA-256 of a cell's source: how the worker and the kernel name a protected cell."""
    return hashlib.sha256(code.encode()).hexdigest()


def _protectable(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType)


def set_limits(memory_limit_mb: float | None, file_limit_mb: float | None) -> None:
    """Cap the address space and file sizes of this process; die with the parent."""
    if memory_limit_mb:
        size = int(memory_limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if file_limit_mb:
        size = int(file_limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    try:  # PR_SET_PDEATHSIG = 1: SIGKILL when the worker that started us goes away
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker kills the process tree
        pass


CAP_LAST = 63  # capability numbers to drop from the bounding set (unknown ones are ignored)


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good, with no capability left (the sandbox, run as root).

    bwrap, started by root, leaves this process only the capabilities to change user: empty
    the bounding set, drop the groups, set every uid and gid, clear what is left, and refuse
    to go on unless the result really is unprivileged.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(CAP_LAST + 1):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    libc.capset(header, (ctypes.c_uint32 * 6)())
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    caps = [int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
    if os.getuid() != uid or os.geteuid() != uid or 0 in os.getresuid() or any(caps):
        os._exit(70)


def prepare_sandbox(config: dict) -> None:
    """Inside the sandbox, before anything else: process limit, identity, data files.

    ``config`` (from :func:`dnncourse.grading.sandbox.launcher_config`): ``processes``
    (``RLIMIT_NPROC``, where no cgroup limits them), ``uid``/``gid`` to drop to (when bwrap
    ran as root), ``data`` (a read-only folder copied into the working folder).
    """
    if config.get("processes"):
        n = int(config["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("uid") is not None:
        drop_privileges(int(config["uid"]), int(config["gid"]))
    if config.get("data"):
        import shutil

        for entry in os.scandir(config["data"]):  # the working folder itself stays as it is
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, entry.name, symlinks=True)
            else:
                shutil.copy(entry.path, entry.name, follow_symlinks=False)


class Guard:
    """Snapshot of the state the tests rely on; restores it around protected cells."""

    def __init__(self, kernel, protected: set[str], graded: set[str], receipts, nonce: str):
        import IPython.core.compilerop
        import IPython.core.inputtransformer2
        import IPython.core.interactiveshell

        self.kernel, self.shell = kernel, kernel.shell
        _free_memory_before_tracebacks(self.shell)
        self.protected, self.graded = protected, graded
        self.receipts, self.nonce = receipts, nonce
        self.modules = {n: sys.modules[n] for n in PROTECTED if n in sys.modules}
        self.module_types = {n: type(m) for n, m in self.modules.items()}
        self.module_dicts = {
            n: {
                k: v
                for k, v in vars(m).items()
                if _protectable(v) and (PROTECTED[n] is None or k in PROTECTED[n])
            }
            for n, m in self.modules.items()
        }
        shell_classes = [
            IPython.core.interactiveshell.InteractiveShell,
            *type(self.shell).__mro__,
            IPython.core.compilerop.CachingCompiler,
            IPython.core.inputtransformer2.TransformerManager,
        ]
        classes = {cls: SHELL_METHODS for cls in shell_classes if cls is not object}
        classes[IPython.core.compilerop.CachingCompiler] = ["__call__", "ast_parse", "cache"]
        classes[IPython.core.inputtransformer2.TransformerManager] = ["transform_cell"]
        if "torch" in self.modules:
            classes[self.modules["torch"].Tensor] = TENSOR_METHODS
        if "numpy" in self.modules:
            classes[self.modules["numpy"].ndarray] = TENSOR_METHODS
        self.class_dicts = {
            cls: {k: vars(cls).get(k) for k in names} for cls, names in classes.items()
        }
        self.instances = {
            id(obj): (obj, dict(vars(obj))) for obj in (self.shell, kernel, self.shell.compile)
        }
        self.sys_hooks = {name: getattr(sys, name) for name in SYS_HOOKS}
        manager = self.shell.input_transformer_manager
        self.manager = manager
        self.manager_lists = {
            name: list(getattr(manager, name))
            for name in ("cleanup_transforms", "line_transforms", "token_transformers")
        }
        self.post = list(self.shell.input_transformers_post)
        self.ast = list(self.shell.ast_transformers)
        prefilter = self.shell.prefilter_manager
        self.prefilter = (prefilter, list(prefilter._transformers), list(prefilter._checkers))
        self.events = {k: list(v) for k, v in self.shell.events.callbacks.items()}
        self.custom_exc = (self.shell.custom_exceptions, self.shell.CustomTB)
        self.user_keys = set(self.shell.user_ns)
        self.bindings = {}  # names that locked cells bound to protected modules

    # -- restoring -----------------------------------------------------------------------
    def restore(self) -> None:
        """Put back everything in the snapshot (identity, not equality)."""
        sys.settrace(None)
        sys.setprofile(None)
        for name, module in self.modules.items():
            sys.modules[name] = module
            if type(module) is not self.module_types[name]:
                module.__class__ = self.module_types[name]
            current = vars(module)
            for key, value in self.module_dicts[name].items():
                if current.get(key) is not value:
                    current[key] = value
        for cls, saved in self.class_dicts.items():
            for key, value in saved.items():
                if vars(cls).get(key) is not value:
                    try:
                        if value is None:
                            delattr(cls, key)
                        else:
                            setattr(cls, key, value)
                    except (AttributeError, TypeError):
                        pass
        for obj, saved in self.instances.values():
            current = vars(obj)
            for key in [k for k in current if k not in saved and callable(current[k])]:
                del current[key]
            for key, value in saved.items():
                if _protectable(value) and current.get(key) is not value:
                    current[key] = value
        for name, value in self.sys_hooks.items():
            setattr(sys, name, value)
        shell = self.shell
        shell.input_transformer_manager = self.manager
        for name, saved in self.manager_lists.items():
            getattr(self.manager, name)[:] = saved
        shell.input_transformers_post = list(self.post)
        shell.ast_transformers = list(self.ast)
        prefilter, transformers, checkers = self.prefilter
        shell.prefilter_manager = prefilter
        prefilter._transformers[:] = transformers
        prefilter._checkers[:] = checkers
        for key, callbacks in self.events.items():
            shell.events.callbacks[key] = list(callbacks)
        shell.custom_exceptions, shell.CustomTB = self.custom_exc
        user_ns = shell.user_ns
        user_ns["__builtins__"] = builtins
        for key in [k for k in user_ns if k not in self.user_keys]:
            if key in self.module_dicts["builtins"] and callable(user_ns[key]):
                del user_ns[key]  # a student's `def range(...)` would skip the tests' loops
        user_ns.update(self.bindings)

    def tampered(self) -> list[str]:
        """What differs from the snapshot now (after a test cell ran)."""
        changes = []
        if sys.gettrace() is not None or sys.getprofile() is not None:
            changes.append("a trace or profile function")
        for name, saved in self.module_dicts.items():
            module = sys.modules.get(name)
            if module is not self.modules[name]:
                changes.append(f"sys.modules[{name!r}]")
                continue
            current = vars(module)
            changes += [f"{name}.{k}" for k, v in saved.items() if current.get(k) is not v]
        for cls, saved in self.class_dicts.items():
            current = vars(cls)
            changes += [
                f"{cls.__qualname__}.{k}" for k, v in saved.items() if current.get(k) is not v
            ]
        for name in ("excepthook", "displayhook"):
            if getattr(sys, name) is not self.sys_hooks[name]:
                changes.append(f"sys.{name}")
        return changes

    # -- the execute hook ----------------------------------------------------------------
    def install(self) -> None:
        original = self.kernel.do_execute

        async def do_execute(code, *args, **kwargs):
            key = digest(code)
            if key not in self.protected:
                return await original(code, *args, **kwargs)
            self.restore()
            reply = await original(code, *args, **kwargs)
            changes = self.tampered()
            self.restore()
            if key not in self.graded:
                self.bindings.update(
                    {
                        k: v
                        for k, v in self.shell.user_ns.items()
                        if isinstance(v, types.ModuleType) and v in self.modules.values()
                    }
                )
                return reply
            status = reply.get("status", "error") if isinstance(reply, dict) else "error"
            if changes:
                status = "tampered"
                self.shell.showtraceback(
                    (RuntimeError, RuntimeError(_tamper_message(changes)), None)
                )
                reply = {
                    "status": "error",
                    "ename": "RuntimeError",
                    "evalue": _tamper_message(changes),
                    "traceback": [],
                    "execution_count": self.shell.execution_count - 1,
                }
            line = json.dumps({"nonce": self.nonce, "cell": key, "status": status})
            os.write(self.receipts, (line + "\n").encode())
            return reply

        self.kernel.do_execute = do_execute
        self.instances[id(self.kernel)][1]["do_execute"] = do_execute  # part of the snapshot


def _free_memory_before_tracebacks(shell) -> None:
    """After a MemoryError, drop the failing frames' locals before IPython formats it.

    The frames of a memory bomb still hold the memory, and formatting the traceback then
    fails too: the kernel hangs instead of going on with the next cell.
    """
    original = shell.showtraceback

    def showtraceback(exc_tuple=None, *args, **kwargs):
        value = (exc_tuple or sys.exc_info())[1]
        text = f"{type(value).__name__} {value}" if value is not None else ""
        if isinstance(value, MemoryError) or "can't allocate memory" in text:
            if value.__traceback__ is not None:
                traceback.clear_frames(value.__traceback__)
            gc.collect()
        return original(exc_tuple, *args, **kwargs)

    shell.showtraceback = showtraceback


def _tamper_message(changes: list[str]) -> str:
    shown = ", ".join(changes[:5]) + (" ..." if len(changes) > 5 else "")
    return f"the test ran with grader state changed by the notebook ({shown}): test failed"


def main() -> None:
    sandbox = os.environ.pop("DNNCOURSE_SANDBOX", None)
    if sandbox:
        prepare_sandbox(json.loads(sandbox))
    config_path = os.environ.pop("DNNCOURSE_GUARD", None)
    config = {}
    if config_path:
        with open(config_path) as f:
            config = json.load(f)
        os.unlink(config_path)
    set_limits(config.get("memory_limit_mb"), config.get("file_limit_mb"))
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    receipts = os.open(
        config.get("receipts", os.devnull), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(sys.argv[1:])
    Guard(
        app.kernel,
        protected=set(config.get("protected", [])),
        graded=set(config.get("graded", [])),
        receipts=receipts,
        nonce=config.get("nonce", ""),
    ).install()
    app.start()


if __name__ == "__main__":
    main()
