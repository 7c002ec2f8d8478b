"""The statement's rules ("do not use autograd", every ``forbid=``), decided from the code.

The recorders of :mod:`~dnncourse.grading.probe` live in the student's kernel: they are
evidence, and a student who has read them can switch them off (a worker thread, the engine's
internals, ``torch.func``, a patched profile hook). This module decides the same rules where
the student cannot reach: in the grading process, from the *source* of the student's cells
(Python's :mod:`ast`, after IPython's own input transformation), on the notebook rebuilt from
the release. It never imports or runs student code.

For each graded test cell whose reference probes watch entry points (``forbid=``):

1. **The rule** is the *capability* those entry points belong to, not the names: "autograd"
   is every route to it (``torch.autograd``, ``Tensor.backward``, ``torch.func``, functorch,
   forward mode, the engine, ``grad_fn``, the ``*_backward`` kernels); "torch.optim's
   optimizers" is every class and functional form in ``torch.optim`` but the ``Optimizer``
   base and the fused kernels; a named function adds its twins (``torch.softmax``,
   ``Tensor.softmax``, ``torch.special.softmax``, ``nn.Softmax``, ``torch.ops.aten._softmax``).
2. **The scope** is the code the probes can reach: the names the (trusted) test cell uses,
   followed through every student definition of them (answer cells and added cells, before
   the test cell), and on through the names *those* use, locked cells followed but never
   judged. Top-level statements that change shared state (an attribute of an imported module
   or class assigned, a thread started) join the scope. A top-level check such as
   ``loss.backward()`` that the probe never reaches is not in the scope: a statement that
   rules out autograd in one answer does not forbid it elsewhere.
3. **Certain use** of the capability in the scope (a name that resolves to it through the
   imports and aliases, or an attribute that only it has) is a *violation*: the cell fails.
4. **Code the analysis cannot see through** is *opaque*: ``exec``/``eval``/``compile``,
   dynamic imports, attributes by computed names, ``ctypes`` and native code,
   ``sys.modules``, frames and tracing (``sys.setprofile``, ``_getframe``, ``gc``), dunder
   attributes (``__globals__``, ``__dict__``, ``__subclasses__``), ``torch._C``,
   ``torch.overrides`` and dispatch modes, IPython's machinery, other processes, serialized
   code, a module the notebook writes itself, a name bound nowhere in plain code. In the scope
   these hold the cell for review; at the top level of any student cell, those that can change
   what every later cell runs (``exec``, dynamic imports, ``sys.modules``, tracing, dunders,
   dispatch, IPython's machinery, native and serialized code, computed ``setattr``) do too.

What comes out (:class:`Verdict`) is written from closed sets: the capability's name, the
kind of construct, the answer cell's grade id (from the release) or "a cell added after" one,
and a line number. Never a piece of the student's text.
"""

import ast
import builtins
import importlib.util
import re
import sys
from dataclasses import dataclass, field

from nbgrader import utils as nbutils

# -- the capabilities ------------------------------------------------------------------------
AUTOGRAD = "autograd"
OPTIMIZERS = "torch.optim's optimizers"
SCHEDULES = "torch.optim.lr_scheduler's schedules"
INIT = "torch.nn.init"

# prefixes of qualified names that *are* the capability, and the exceptions
FAMILIES = {
    AUTOGRAD: {
        "trigger": ("torch.autograd", "torch.Tensor.backward", "torch.func", "functorch"),
        "namespaces": (
            "torch.autograd",
            "torch.func",
            "functorch",
            "torch._functorch",
            "torch._C._functorch",
            "torch._C._autograd",
            "torch._C._EngineBase",
            "torch._C._ImperativeEngine",
            "torch._C._functions",
            "torch.Tensor.backward",
            "torch.Tensor.grad_fn",
        ),
        "allowed": (
            "torch.autograd.no_grad",
            "torch.autograd.enable_grad",
            "torch.autograd.set_grad_enabled",
            "torch.autograd.inference_mode",
            "torch.autograd.grad_mode",
            "torch.autograd.Variable",
            "torch.func.vmap",
            "torch.func.functional_call",
            "torch.func.stack_module_state",
            "torch.func.functionalize",
        ),
        # attribute names only this capability has (on any object)
        "attributes": {
            "backward",
            "grad_fn",
            "autograd",
            "forward_ad",
            "_execution_engine",
            "run_backward",
            "_run_backward",
            "functorch",
            "_functorch",
            "make_dual",
            "unpack_dual",
            "dual_level",
            "jacrev",
            "jacfwd",
            "vjp",
            "jvp",
            "grad_and_value",
            "_EngineBase",
            "_ImperativeEngine",
        },
        "suffixes": ("_backward", "_backward_data"),
        "prefixes": (),
    },
    OPTIMIZERS: {
        "trigger": ("torch.optim.",),
        "namespaces": ("torch.optim", "torch.distributed.optim"),
        "allowed": (
            "torch.optim.Optimizer",
            "torch.optim.optimizer",
            "torch.optim.lr_scheduler",
        ),
        "attributes": {
            *("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "Adamax", "NAdam"),
            *("RAdam", "ASGD", "LBFGS", "Rprop", "SparseAdam", "Adafactor"),
            *("sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "nadam"),
            *("radam", "asgd", "rprop", "sparse_adam", "_functional"),
        },
        "suffixes": (),
        "prefixes": ("_fused_", "_single_tensor_", "_multi_tensor_"),
    },
    INIT: {
        "trigger": ("torch.nn.init.",),
        "namespaces": ("torch.nn.init",),
        "allowed": (),
        "attributes": set(),
        "suffixes": (),
        "prefixes": (),
    },
    SCHEDULES: {
        "trigger": ("torch.optim.lr_scheduler.",),
        "namespaces": ("torch.optim.lr_scheduler",),
        "allowed": (
            "torch.optim.lr_scheduler.LRScheduler",
            "torch.optim.lr_scheduler._LRScheduler",
        ),
        "attributes": set(),
        "suffixes": (),
        "prefixes": (),
    },
}
# a forbidden function brings its twins: same operation, other names
TWINS = [
    {"softmax", "log_softmax", "_softmax", "_log_softmax", "softmin"}
    | {"Softmax", "LogSoftmax", "Softmin", "Softmax2d"},
    {"logsumexp"},
    {"cross_entropy", "nll_loss", "nll_loss2d", "nll_loss_nd", "cross_entropy_loss"}
    | {"CrossEntropyLoss", "NLLLoss"},
    {"leaky_relu", "leaky_relu_", "LeakyReLU", "rrelu", "rrelu_", "RReLU"}
    | {"prelu", "_prelu_kernel", "PReLU"},
    {"elu", "elu_", "ELU", "celu", "celu_", "CELU", "selu", "selu_", "SELU"},
    {"batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_batch_norm_impl_index"}
    | {"cudnn_batch_norm", "miopen_batch_norm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
    | {"LazyBatchNorm1d", "SyncBatchNorm", "instance_norm", "InstanceNorm1d", "InstanceNorm2d"}
    | {"layer_norm", "native_layer_norm", "LayerNorm", "group_norm", "native_group_norm"}
    | {"GroupNorm"},
    {"dropout", "dropout_", "native_dropout", "alpha_dropout", "alpha_dropout_"}
    | {"feature_dropout", "feature_dropout_", "feature_alpha_dropout", "fused_dropout"}
    | {"_fused_dropout", "dropout1d", "dropout2d", "dropout3d", "Dropout", "Dropout1d"}
    | {"Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"},
]
GENERIC_CLASSES = {"Tensor", "Module", "Optimizer", "LRScheduler", "TensorBase"}


@dataclass
class Rule:
    """The capabilities one test cell's probes rule out (from the reference's ``watched``)."""

    families: list[str] = field(default_factory=list)
    leaves: set[str] = field(default_factory=set)  # forbidden names and their twins

    @classmethod
    def of(cls, watched) -> "Rule":
        rule = cls()
        for name in watched:
            name = str(name)
            family = _family_of(name)
            if family:  # the family covers it, and its own names are too common as leaves
                if family not in rule.families:
                    rule.families.append(family)
                continue
            parts = name.split(".")
            leaf = parts[-1]
            if len(parts) >= 3 and parts[-2][:1].isupper() and parts[-2] not in GENERIC_CLASSES:
                leaf = parts[-2]  # torch.nn.BatchNorm1d.forward: the class
            rule.leaves.add(leaf)
            if leaf.endswith("_") and not leaf.startswith("_"):  # torch.nn.init's old names
                rule.leaves.add(leaf.rstrip("_"))
        for twins in TWINS:
            if twins & rule.leaves:
                rule.leaves |= twins
        return rule

    def __bool__(self) -> bool:
        return bool(self.families or self.leaves)

    def qualified(self, name: str) -> str | None:
        """The capability a resolved qualified name is part of (None: allowed)."""
        for family in self.families:
            spec = FAMILIES[family]
            if _under(name, spec["allowed"]):
                continue
            if _under(name, spec["namespaces"]):
                return family
        for part in name.split(".")[1:]:
            why = self.attribute(part, family_names=False)
            if why:
                return why
        return None

    def attribute(self, attr: str, after: str = "", family_names: bool = True) -> str | None:
        """The capability an attribute name belongs to on any object (None: not certain)."""
        if attr in self.leaves:
            return attr
        for family in self.families:
            spec = FAMILIES[family]
            if family_names and attr in spec["attributes"]:
                if attr in ("autograd", "func") and after in _ALLOWED_TAILS:
                    continue
                return family
            if attr.endswith(spec["suffixes"] or ("\0",)) or attr.startswith(
                spec["prefixes"] or ("\0",)
            ):
                return family
        return None


_ALLOWED_TAILS = {
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "inference_mode",
    "grad_mode",
    "Variable",
    "vmap",
    "functional_call",
}


def _family_of(name: str) -> str | None:
    if name.startswith("torch.optim.lr_scheduler"):
        return SCHEDULES
    for family, spec in FAMILIES.items():
        if family != SCHEDULES and name.startswith(spec["trigger"]):
            return family
    return None


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- what the analysis cannot see through (closed set of kinds) -------------------------------
EXEC = "exec, eval or compile"
DYNAMIC_IMPORT = "an import by a computed name"
COMPUTED_ATTRIBUTE = "an attribute by a computed name"
COMPUTED_SETATTR = "an attribute set by a computed name (setattr, delattr)"
NAMESPACE = "a namespace by computed names (globals(), vars(), locals())"
SHARED_NAME = "a forbidden attribute name that a class of the student's also defines"
NATIVE = "native code (ctypes, extensions)"
MODULE_TABLE = "the module table (sys.modules, import hooks)"
TRACING = "frames, tracing or the garbage collector"
DUNDER = "a dunder attribute (__dict__, __globals__, __subclasses__, ...)"
TORCH_INTERNALS = "torch's C internals (torch._C)"
DISPATCH = "torch's dispatch machinery (torch.overrides, dispatch modes, torch.library)"
IPYTHON = "IPython's machinery (get_ipython, magics)"
PROCESS = "another process"
SERIALIZED = "serialized code (pickle, marshal, code objects)"
WRITTEN_MODULE = "an import of a module that is not installed (written by the notebook?)"
UNBOUND = "a name bound nowhere in plain code (exec, globals(), builtins?)"

# kinds that change what every later cell runs: held wherever they are
GLOBAL_EFFECT = {
    EXEC,
    COMPUTED_SETATTR,
    NAMESPACE,
    DYNAMIC_IMPORT,
    NATIVE,
    MODULE_TABLE,
    TRACING,
    DUNDER,
    TORCH_INTERNALS,
    DISPATCH,
    IPYTHON,
    SERIALIZED,
    WRITTEN_MODULE,
}

OPAQUE_MODULES = {
    "ctypes": NATIVE,
    "cffi": NATIVE,
    "_ctypes": NATIVE,
    "torch.utils.cpp_extension": NATIVE,
    "torch.ops.load_library": NATIVE,
    "torch.classes": NATIVE,
    "mmap": NATIVE,
    "importlib": DYNAMIC_IMPORT,
    "imp": DYNAMIC_IMPORT,
    "runpy": DYNAMIC_IMPORT,
    "pkgutil": DYNAMIC_IMPORT,
    "zipimport": DYNAMIC_IMPORT,
    "sys.modules": MODULE_TABLE,
    "sys.meta_path": MODULE_TABLE,
    "sys.path_hooks": MODULE_TABLE,
    "sys.path_importer_cache": MODULE_TABLE,
    "sys._getframe": TRACING,
    "sys.setprofile": TRACING,
    "sys.settrace": TRACING,
    "sys.monitoring": TRACING,
    "sys._current_frames": TRACING,
    "threading.setprofile": TRACING,
    "threading.settrace": TRACING,
    "threading.setprofile_all_threads": TRACING,
    "threading.settrace_all_threads": TRACING,
    "gc": TRACING,
    "inspect": TRACING,
    "builtins": EXEC,
    "torch._C": TORCH_INTERNALS,
    "torch.overrides": DISPATCH,
    "torch.utils._python_dispatch": DISPATCH,
    "torch._dispatch": DISPATCH,
    "torch.library": DISPATCH,
    "torch._ops": DISPATCH,
    "torch._dynamo": DISPATCH,
    "IPython": IPYTHON,
    "ipykernel": IPYTHON,
    "subprocess": PROCESS,
    "multiprocessing": PROCESS,
    "torch.multiprocessing": PROCESS,
    "concurrent.futures.ProcessPoolExecutor": PROCESS,
    "os.system": PROCESS,
    "os.popen": PROCESS,
    "os.fork": PROCESS,
    "os.forkpty": PROCESS,
    "os.posix_spawn": PROCESS,
    "os.posix_spawnp": PROCESS,
    "pty": PROCESS,
    "pickle": SERIALIZED,
    "_pickle": SERIALIZED,
    "marshal": SERIALIZED,
    "dill": SERIALIZED,
    "cloudpickle": SERIALIZED,
    "shelve": SERIALIZED,
    "copyreg": SERIALIZED,
    "types.FunctionType": SERIALIZED,
    "types.CodeType": SERIALIZED,
    "types.LambdaType": SERIALIZED,
    "types.ModuleType": SERIALIZED,
    "code": EXEC,
    "codeop": EXEC,
    "torch.jit.load": SERIALIZED,
    "torch.package": SERIALIZED,
    "operator.attrgetter": COMPUTED_ATTRIBUTE,
    "operator.methodcaller": COMPUTED_ATTRIBUTE,
}
for _name in ("execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe"):
    OPAQUE_MODULES[f"os.{_name}"] = PROCESS
for _name in ("spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle"):
    OPAQUE_MODULES[f"os.{_name}"] = PROCESS
ALLOWED_OPAQUE = {"inspect.signature", "inspect.isclass", "inspect.isfunction", "gc.collect"}
ALLOWED_OPAQUE |= {"IPython.display"}  # display(), HTML(), Markdown(): output only
OPAQUE_BUILTINS = {
    "exec": EXEC,
    "eval": EXEC,
    "compile": EXEC,
    "__import__": DYNAMIC_IMPORT,
    "globals": NAMESPACE,
    "locals": NAMESPACE,
    "vars": NAMESPACE,
    "get_ipython": IPYTHON,
    "breakpoint": TRACING,
}
ATTRIBUTE_FUNCTIONS = {"getattr": COMPUTED_ATTRIBUTE, "setattr": COMPUTED_SETATTR}
ATTRIBUTE_FUNCTIONS["delattr"] = COMPUTED_SETATTR
# names the kernel (IPython) puts in every notebook's namespace
KERNEL_NAMES = {"display", "In", "Out", "exit", "quit", "_", "__", "___", "_ih", "_oh", "_dh"}
SAFE_DUNDERS = {
    "__init__",
    "__name__",
    "__qualname__",
    "__doc__",
    "__class__",
    "__module__",
    "__version__",
    "__file__",
    "__len__",
    "__call__",
    "__enter__",
    "__exit__",
    "__iter__",
    "__next__",
    "__getitem__",
    "__setitem__",
    "__contains__",
    "__repr__",
    "__str__",
    "__format__",
    "__hash__",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__array__",
    "__post_init__",
    "__new__",
    "__copy__",
    "__deepcopy__",
    "__annotations__",
    "__slots__",
    "__debug__",
}
_ARITHMETIC = "add sub mul matmul truediv floordiv mod pow lshift rshift and or xor".split()
for _op in _ARITHMETIC:
    SAFE_DUNDERS |= {f"__{_op}__", f"__r{_op}__", f"__i{_op}__"}
SAFE_DUNDERS |= {f"__{n}__" for n in "neg pos abs invert eq ne lt le gt ge".split()}
DUNDER_RE = re.compile(r"^__\w+__$")
DISPATCH_METHODS = {"__torch_function__", "__torch_dispatch__"}

# IPython magics: those that run no code, and those whose code is their argument
SAFE_MAGICS = {
    "matplotlib",
    "config",
    "who",
    "whos",
    "pinfo",
    "pinfo2",
    "psearch",
    "precision",
    "pwd",
    "ls",
    "pip",
    "conda",
    "writefile",
    "env",
    "load_ext",
    "autoreload",
    "aimport",
    "history",
    "xmode",
    "pdef",
    "pdoc",
    "psource",
    "who_ls",
    "lsmagic",
    "magic",
}
CODE_MAGICS = {"time", "timeit", "capture", "prun"}
SHELL = {"system", "getoutput"}
# threads: their targets are followed (the scope includes them); started at the top level
# they join the scope
THREADS = ("threading", "_thread", "concurrent.futures", "asyncio", "sched")


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: a capability or a construct (closed sets), where, which line."""

    what: str
    where: str
    line: int

    def __str__(self) -> str:
        line = f", line {self.line}" if self.line else ""
        return f"{self.what} ({self.where}{line})"


@dataclass
class Verdict:
    """What the analysis found for one test cell."""

    used: list[Finding] = field(default_factory=list)  # certain use: the cell fails
    opaque: list[Finding] = field(default_factory=list)  # held for a person to decide

    def add(self, bucket: list, finding: Finding) -> None:
        if finding not in bucket and len(bucket) < 20:
            bucket.append(finding)


# -- the notebook's cells ----------------------------------------------------------------------
@dataclass
class Cell:
    index: int
    where: str  # "answer cell 'x'", "a cell added after 'x'", "locked cell 'x'"
    student: bool
    test: str | None  # grade id of a test cell
    tree: ast.Module | None
    parse_error: int = 0  # line of a syntax error (student cells)


def _transform(source: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # IPython cannot read it either: parsed as it is (and fails)
        return source


def _blank_head(source: str) -> int:
    count = 0
    for line in source.splitlines():
        if line.strip():
            break
        count += 1
    return count


def cells_of(nb) -> list[Cell]:
    """The code cells of a rebuilt notebook, each parsed and labelled (trusted labels)."""
    out, last = [], "the top"
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {}) if cell.get("metadata") else {}
        gid = meta.get("grade_id")
        if cell.cell_type != "code":
            if gid:
                last = f"'{gid}'"
            continue
        is_test = nbutils.is_grade(cell) and not nbutils.is_solution(cell)
        locked = bool(meta.get("locked")) or is_test
        if nbutils.is_solution(cell) and gid:
            where, student = f"answer cell '{gid}'", True
        elif locked and gid:
            where, student = f"locked cell '{gid}'", False
        else:
            where, student = f"a cell added after {last}", True
        if gid:
            last = f"'{gid}'"
        tree, error = None, 0
        try:
            code = _transform(cell.source)
            tree = ast.parse(code)
            # IPython drops leading blank lines: the lines stay those of the student's cell
            ast.increment_lineno(tree, _blank_head(cell.source) - _blank_head(code))
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            error = int(getattr(e, "lineno", 0) or 0) or 1
        out.append(Cell(index, where, student, gid if is_test else None, tree, error))
    return out


# -- scopes ----------------------------------------------------------------------------------
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _import_bindings(node) -> list[tuple[str, str | None]]:
    """(bound name, qualified name) of an import statement (None: relative or star)."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                out.append((alias.asname, alias.name))
            else:
                top = alias.name.split(".")[0]
                out.append((top, top))
    elif isinstance(node, ast.ImportFrom):
        base = node.module if not node.level else None
        for alias in node.names:
            if alias.name == "*":
                continue
            qual = f"{base}.{alias.name}" if base else None
            out.append((alias.asname or alias.name, qual))
    return out


def _targets(node):
    """Names a target expression binds."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            yield sub.id
        elif isinstance(sub, ast.Starred):
            continue


def local_names(scope) -> dict[str, str | None]:
    """Names bound in a function/lambda/comprehension scope -> qualified name of an import
    (None: another binding)."""
    names: dict[str, str | None] = {}
    declared_global = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = scope.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                names[a.arg] = None
        body = scope.body if isinstance(scope.body, list) else [scope.body]
    elif isinstance(scope, _COMPREHENSIONS):
        for gen in scope.generators:
            for n in _targets(gen.target):
                names[n] = None
        return names
    else:
        body = scope.body

    def visit(node):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared_global.update(node.names)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.setdefault(node.name, None)
            for d in node.decorator_list:
                visit(d)
            return
        if isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name, qual in _import_bindings(node):
                names[name] = qual if names.get(name, qual) == qual else None
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.setdefault(node.id, None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.setdefault(node.name, None)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.setdefault(node.name, None)
        elif isinstance(node, ast.NamedExpr):
            names.setdefault(node.target.id, None)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in body:
        visit(stmt)
    for name in declared_global:
        names.pop(name, None)
    return names


# -- top-level bindings ------------------------------------------------------------------------
@dataclass
class Binding:
    cell: Cell
    node: ast.AST  # what to analyze when the name is followed
    qualified: str | None = None  # an import: the module or object it names
    star: str | None = None  # from M import *
    alias: ast.AST | None = None  # name = <chain>: the chain


def top_bindings(cells: list[Cell]) -> tuple[dict[str, list[Binding]], list[Binding]]:
    """name -> its top-level bindings (imports, defs, assignments, ``global`` in functions),
    and the star imports, over ``cells``."""
    found: dict[str, list[Binding]] = {}
    stars: list[Binding] = []

    def bind(name, binding):
        found.setdefault(name, []).append(binding)

    def walk(cell, stmts):
        for stmt in stmts:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bind(stmt.name, Binding(cell, stmt))
                for sub in ast.walk(stmt):  # `global name` inside: the function binds it
                    if isinstance(sub, ast.Global):
                        for name in sub.names:
                            bind(name, Binding(cell, stmt))
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for name, qual in _import_bindings(stmt):
                    bind(name, Binding(cell, stmt, qualified=qual))
                if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
                    stars.append(Binding(cell, stmt, star=stmt.module if not stmt.level else None))
            elif isinstance(stmt, (ast.If, ast.Try, ast.While, ast.For, ast.AsyncFor, ast.With)):
                if isinstance(stmt, (ast.For, ast.AsyncFor)):
                    for name in _targets(stmt.target):
                        bind(name, Binding(cell, stmt))
                if isinstance(stmt, ast.With):
                    for item in stmt.items:
                        if item.optional_vars is not None:
                            for name in _targets(item.optional_vars):
                                bind(name, Binding(cell, stmt))
                for part in ("body", "orelse", "finalbody"):
                    walk(cell, getattr(stmt, part, []) or [])
                for handler in getattr(stmt, "handlers", []) or []:
                    if handler.name:
                        bind(handler.name, Binding(cell, handler))
                    walk(cell, handler.body)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                value = stmt.value
                for target in targets:
                    for name in _targets(target):
                        chain = value if isinstance(target, ast.Name) and _chain(value) else None
                        bind(name, Binding(cell, stmt, alias=chain))
            else:
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.NamedExpr):
                        bind(sub.target.id, Binding(cell, stmt))

    for cell in cells:
        if cell.tree is not None:
            walk(cell, cell.tree.body)
    return found, stars


def _chain(node) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None if not a plain attribute chain on a name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


# -- the analysis ----------------------------------------------------------------------------
class Analysis:
    """Follow the names a test cell uses through the student's code; judge what is reached."""

    def __init__(self, cells: list[Cell], test: Cell, rule: Rule, modules=()):
        self.rule = rule
        self.verdict = Verdict()
        before = [c for c in cells if c.index < test.index]
        self.cells = before
        self.bindings, self.stars = top_bindings(before)
        self.done: set[int] = set()
        self.modules = set(modules)  # importable files the assignment ships (data files)
        self.methods = {
            sub.name
            for c in before
            if c.student and c.tree is not None
            for node in ast.walk(c.tree)
            if isinstance(node, ast.ClassDef)
            for sub in node.body
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        self.test = test
        self._constant_attribute_calls: set[int] = set()
        self._safe_calls: set[int] = set()
        self.touched: set[str] = set()  # attribute names and unbound names the scope uses
        self.top = False  # scanning a top-level statement the probes do not reach
        self.writes_files = any(
            c.student and c.tree is not None and _writes_files(c.tree) for c in before
        )

    # evidence
    def used(self, cell: Cell | None, what: str, node) -> None:
        if cell is not None and cell.student:
            self.verdict.add(self.verdict.used, Finding(what, cell.where, _line(node)))

    def opaque(self, cell: Cell | None, what: str, node) -> None:
        if cell is not None and cell.student:
            self.verdict.add(self.verdict.opaque, Finding(what, cell.where, _line(node)))

    def run(self) -> Verdict:
        # the roots: what the test cell uses (its own top-level names are its own)
        own, _ = top_bindings([self.test])
        self.visit(self.test.tree, [dict.fromkeys(own)], self.test, judge=False)
        # top-level statements of the student's cells before: those that change an object
        # others share (a module, a class, builtins) join the scope when the scope touches
        # what they change (a thread they start: always); the rest are scanned for what
        # changes every later cell
        pending = []
        for cell in self.cells:
            if cell.student and cell.tree is not None:
                for stmt in cell.tree.body:
                    names = self.shared_names(cell, stmt)
                    if names:
                        pending.append((cell, stmt, names))
                    else:
                        self.top_level(cell, stmt)
        joined = True
        while joined:
            joined = False
            for item in list(pending):
                cell, stmt, names = item
                if "*" in names or names & self.touched:
                    pending.remove(item)
                    self.visit(stmt, [], cell, judge=True)
                    joined = True
        for cell, stmt, _ in pending:
            self.scan_global(cell, stmt)
        return self.verdict

    def top_level(self, cell: Cell, stmt) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            effects = [*stmt.decorator_list]
            if isinstance(stmt, ast.ClassDef):
                effects += [*stmt.bases, *(k.value for k in stmt.keywords)]
                effects += [
                    s
                    for s in stmt.body
                    if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                ]
            else:
                effects += [d for d in [*stmt.args.defaults, *stmt.args.kw_defaults] if d]
            for node in effects:
                self.scan_global(cell, node)
            return
        self.scan_global(cell, stmt)

    def shared_names(self, cell: Cell, stmt) -> set[str]:
        """What a top-level statement changes in shared objects: attribute names, or "*"
        (a computed name, a thread started)."""
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return set()
        names: set[str] = set()
        for node in ast.walk(stmt):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = (
                    node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                )
            for target in targets:
                if isinstance(target, (ast.Attribute, ast.Subscript)) and self.imported(target):
                    names.add(_changed(target))
            if isinstance(node, ast.Call):
                func = _chain(node.func)
                if func and func[0] in ("setattr", "delattr") and not func[1] and node.args:
                    if self.imported(node.args[0]):
                        key = node.args[1] if len(node.args) > 1 else None
                        constant = isinstance(key, ast.Constant) and isinstance(key.value, str)
                        names.add(key.value if constant else "*")
                for qual in self.qualify(node.func, [], cell):
                    if qual and _under(qual, THREADS):
                        names.add("*")
        return names

    def imported(self, node) -> bool:
        """Is the base object of an attribute/subscript target a module or library object?"""
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        if not isinstance(node, ast.Name):
            return False
        return any(b.qualified or b.alias is not None for b in self.bindings.get(node.id, []))

    def scan_global(self, cell: Cell, node) -> None:
        """A top-level statement the probes do not reach: only what changes every later cell."""
        saved = self.verdict.opaque
        self.verdict.opaque, self.top = [], True
        try:
            self.visit(node, [], cell, judge=False, follow=False)
        finally:
            self.top = False
        kept = [f for f in self.verdict.opaque if f.what in GLOBAL_EFFECT]
        self.verdict.opaque = saved
        for finding in kept:
            self.verdict.add(saved, finding)

    def follow(self, name: str, node, scopes_cell: Cell) -> None:
        bindings = self.bindings.get(name, [])
        if not bindings:
            self.touched.add(name)
            stars = [s for s in self.stars if s.star and _has(s.star, name)]
            if stars:
                for star in stars:
                    why = self.rule.qualified(f"{star.star}.{name}")
                    if why:
                        self.used(star.cell, why, star.node)
                return
            if name in vars(builtins) or name in KERNEL_NAMES:
                return
            if scopes_cell is self.test:  # the probes call a name no plain code defines
                where = f"'{name}', which the test '{self.test.test}' calls"
                self.verdict.add(self.verdict.opaque, Finding(UNBOUND, where, 0))
            elif scopes_cell.student:
                self.opaque(scopes_cell, UNBOUND, node)
            return
        for binding in bindings:
            key = id(binding.node)
            if key in self.done:
                continue
            self.done.add(key)
            if isinstance(binding.node, (ast.Import, ast.ImportFrom)):
                self.visit(binding.node, [], binding.cell, judge=binding.cell.student)
            elif isinstance(binding.node, ast.ExceptHandler):
                continue
            else:
                self.visit(binding.node, [], binding.cell, judge=binding.cell.student)

    def qualify(self, node, scopes, cell: Cell) -> list[str | None]:
        """The qualified names ``node`` (a name or attribute chain) may stand for."""
        chain = _chain(node)
        if chain is None:
            return [None]
        root, attrs = chain
        for scope in reversed(scopes):
            if root in scope:
                qual = scope[root]
                return [".".join([qual, *attrs]) if qual else None]
        out = []
        for binding in self.bindings.get(root, []):
            if binding.qualified:
                out.append(".".join([binding.qualified, *attrs]))
            elif binding.alias is not None and binding.alias is not node:
                for qual in self.qualify(binding.alias, [], binding.cell)[:4]:
                    out.append(".".join([qual, *attrs]) if qual else None)
            else:
                out.append(None)
        return out or [None]

    def visit(self, node, scopes, cell: Cell, judge: bool, follow: bool = True) -> None:
        """Walk ``node``: judge uses and constructs (in student code), follow global names."""
        if node is None:
            return
        if isinstance(node, list):
            for sub in node:
                self.visit(sub, scopes, cell, judge, follow)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda):
                self.visit(node.decorator_list, scopes, cell, judge, follow)
                if node.name in DISPATCH_METHODS:
                    self.opaque(cell, DISPATCH, node)
                self.visit(node.returns, scopes, cell, judge, follow)
            self.visit(
                [d for d in [*node.args.defaults, *node.args.kw_defaults] if d],
                scopes,
                cell,
                judge,
                follow,
            )
            inner = [*scopes, local_names(node)]
            self.visit(node.body, inner, cell, judge, follow)
            return
        if isinstance(node, ast.ClassDef):
            self.visit([*node.decorator_list, *node.bases], scopes, cell, judge, follow)
            self.visit([k.value for k in node.keywords], scopes, cell, judge, follow)
            class_scope = local_names(node)
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.visit(stmt, scopes, cell, judge, follow)
                else:
                    self.visit(stmt, [*scopes, class_scope], cell, judge, follow)
            return
        if isinstance(node, _COMPREHENSIONS):
            inner = [*scopes, local_names(node)]
            for i, gen in enumerate(node.generators):
                self.visit(gen.iter, scopes if i == 0 else inner, cell, judge, follow)
                self.visit(gen.ifs, inner, cell, judge, follow)
            elts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            self.visit(elts, inner, cell, judge, follow)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self.imports(node, cell, judge)
            return
        if isinstance(node, ast.Attribute):
            self.attribute(node, scopes, cell, judge, follow)
            return
        if isinstance(node, ast.Name):
            self.name(node, scopes, cell, judge, follow)
            return
        if isinstance(node, ast.Call):
            self.call(node, scopes, cell, judge)
        for child in ast.iter_child_nodes(node):
            self.visit(child, scopes, cell, judge, follow)

    def imports(self, node, cell: Cell, judge: bool) -> None:
        if isinstance(node, ast.ImportFrom) and node.level:
            self.opaque(cell, WRITTEN_MODULE, node)
            return
        modules = (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        for module in modules:
            if not _installed(module) and module.split(".")[0] not in self.modules:
                if self.writes_files:  # else the import failed in the kernel: nothing ran
                    self.opaque(cell, WRITTEN_MODULE, node)
        for _, qual in _import_bindings(node):
            if qual:
                self.judge_qualified(qual, cell, node, judge)
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.judge_qualified(alias.name, cell, node, judge)
        elif any(a.name == "*" for a in node.names) and node.module:
            self.judge_qualified(node.module, cell, node, judge)

    def judge_qualified(self, qual: str, cell: Cell, node, judge: bool) -> None:
        kind = _opaque_module(qual)
        if kind and not (self.top and isinstance(node, (ast.Import, ast.ImportFrom))):
            self.opaque(cell, kind, node)
        if judge:
            why = self.rule.qualified(qual)
            if why:
                self.used(cell, why, node)

    def name(self, node: ast.Name, scopes, cell: Cell, judge: bool, follow: bool) -> None:
        if DUNDER_RE.match(node.id) and node.id not in SAFE_DUNDERS:
            self.opaque(cell, DUNDER, node)
        if isinstance(node.ctx, ast.Load):
            local = any(node.id in scope for scope in scopes)
            if not local:
                kind = OPAQUE_BUILTINS.get(node.id)
                if kind and not self.bindings.get(node.id) and not self.parent_is_safe_call(node):
                    self.opaque(cell, kind, node)
                if node.id in ATTRIBUTE_FUNCTIONS and not self.bindings.get(node.id):
                    if id(node) not in self._constant_attribute_calls:
                        self.opaque(cell, ATTRIBUTE_FUNCTIONS[node.id], node)
                if follow:
                    self.follow(node.id, node, cell)
            for qual in self.qualify(node, scopes, cell):
                if qual:
                    self.judge_qualified(qual, cell, node, judge)

    def parent_is_safe_call(self, node) -> bool:
        return id(node) in self._safe_calls

    def attribute(self, node: ast.Attribute, scopes, cell: Cell, judge: bool, follow: bool):
        chain = _chain(node)
        attrs = chain[1] if chain else [node.attr]
        self.touched.update(attrs)
        if DUNDER_RE.match(node.attr) and node.attr not in SAFE_DUNDERS:
            self.opaque(cell, DUNDER, node)
        if chain is None:
            self.judge_attributes([node.attr], cell, node, judge)
            self.visit(node.value, scopes, cell, judge, follow)
            return
        root = ast.Name(id=chain[0], ctx=ast.Load())
        ast.copy_location(root, node)
        quals = self.qualify(node, scopes, cell)
        resolved = [q for q in quals if q]
        for qual in resolved:
            self.judge_qualified(qual, cell, node, judge)
        if len(resolved) < len(quals):  # some binding is not an import: any object
            self.judge_attributes(attrs, cell, node, judge)
        for attr in attrs:
            if DUNDER_RE.match(attr) and attr not in SAFE_DUNDERS:
                self.opaque(cell, DUNDER, node)
        self.name_only(root, scopes, cell, follow)

    def name_only(self, node: ast.Name, scopes, cell: Cell, follow: bool) -> None:
        """The root of an attribute chain: follow it (its qualified name is judged above)."""
        if DUNDER_RE.match(node.id) and node.id not in SAFE_DUNDERS:
            self.opaque(cell, DUNDER, node)
        if any(node.id in scope for scope in scopes):
            return
        if node.id in OPAQUE_BUILTINS and not self.bindings.get(node.id):
            self.opaque(cell, OPAQUE_BUILTINS[node.id], node)
        if follow:
            self.follow(node.id, node, cell)

    def judge_attributes(self, attrs: list[str], cell: Cell, node, judge: bool) -> None:
        if not judge:
            return
        for i, attr in enumerate(attrs):
            after = attrs[i + 1] if i + 1 < len(attrs) else ""
            why = self.rule.attribute(attr, after)
            if why and attr in self.methods:
                self.opaque(cell, SHARED_NAME, node)  # the student's own method, or torch's?
            elif why:
                self.used(cell, why, node)

    def call(self, node: ast.Call, scopes, cell: Cell, judge: bool) -> None:
        # IPython's transformed magics: get_ipython().run_line_magic('time', '...')
        if (
            isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call)
            and _chain(node.func.value.func) == ("get_ipython", [])
            and not self.bindings.get("get_ipython")
        ):
            self.magic(node, scopes, cell, judge)
        func = _chain(node.func)
        if func is None:
            return
        root, attrs = func
        local = any(root in scope for scope in scopes)
        if not attrs and not local and root in ATTRIBUTE_FUNCTIONS and not self.bindings.get(root):
            name = node.args[1] if len(node.args) > 1 else None
            target = node.args[0] if node.args else None
            if (
                root != "getattr"
                and isinstance(target, ast.Name)
                and any(target.id in scope for scope in scopes)
            ):  # setattr(self, key, value): an object of the code's own, no capability
                self._constant_attribute_calls.add(id(node.func))
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                self._constant_attribute_calls.add(id(node.func))
                if DUNDER_RE.match(name.value) and name.value not in SAFE_DUNDERS:
                    self.opaque(cell, DUNDER, node)
                target = node.args[0]
                quals = [q for q in self.qualify(target, scopes, cell) if q]
                for qual in quals:
                    self.judge_qualified(f"{qual}.{name.value}", cell, node, judge)
                if not quals:
                    self.judge_attributes([name.value], cell, node, judge)
        quals = [q for q in self.qualify(node.func, scopes, cell) if q]
        if any(q == "importlib.import_module" for q in quals):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not node.keywords:
                self.judge_qualified(arg.value, cell, node, judge)
                if not _installed(arg.value):
                    self.opaque(cell, WRITTEN_MODULE, node)

    def magic(self, node: ast.Call, scopes, cell: Cell, judge: bool) -> None:
        method = node.func.attr
        args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
        name = args[0] if args else None
        if method in ("run_line_magic", "run_cell_magic") and isinstance(name, str):
            if name in SAFE_MAGICS:
                self._safe_calls.add(id(node.func.value.func))
                return
            if name in CODE_MAGICS:
                code = args[-1] if method == "run_cell_magic" else args[1]
                if method == "run_cell_magic" and len(args) == 3:
                    code = f"{args[1] or ''}\n{args[2] or ''}"
                if isinstance(code, str):
                    try:
                        tree = ast.parse(_transform(code))
                    except (SyntaxError, ValueError, RecursionError, MemoryError):
                        return
                    self._safe_calls.add(id(node.func.value.func))
                    for stmt in tree.body:
                        ast.increment_lineno(stmt, _line(node) - 1)
                    self.visit(tree.body, scopes, cell, judge)
                return
        if method in SHELL and not scopes:  # `!cmd` at the top level
            self._safe_calls.add(id(node.func.value.func))


def _changed(target) -> str:
    """The attribute or key a target changes ("*" when computed)."""
    if isinstance(target, ast.Attribute):
        return target.attr
    key = target.slice
    return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else "*"


def _line(node) -> int:
    return int(getattr(node, "lineno", 0) or 0)


WRITERS = {"write_text", "write_bytes", "copyfile", "copy", "copy2", "copytree", "move"}
WRITERS |= {"rename", "symlink", "symlink_to", "link", "hardlink_to", "urlretrieve", "savetxt"}
WRITING_MAGICS = {"writefile", "system", "getoutput", "sx", "bash", "sh", "script", "file"}


def _writes_files(tree) -> bool:
    """Does this code write files (so that an uninstalled import may be one it wrote)?"""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITERS:
            return True
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else None
            for kw in node.keywords:
                if kw.arg == "mode":
                    mode = kw.value
            if mode is not None and not (
                isinstance(mode, ast.Constant)
                and isinstance(mode.value, str)
                and not set(mode.value) & set("wax+")
            ):
                return True
        if name in ("run_line_magic", "run_cell_magic", "system", "getoutput"):
            arg = node.args[0] if node.args else None
            magic = arg.value if isinstance(arg, ast.Constant) else None
            if name in ("system", "getoutput") or magic is None or magic in WRITING_MAGICS:
                return True
    return False


def _has(module: str, name: str) -> bool:
    loaded = sys.modules.get(module)
    return loaded is not None and hasattr(loaded, name)


def _opaque_module(qual: str) -> str | None:
    if _under(qual, ALLOWED_OPAQUE):
        return None
    for prefix, kind in OPAQUE_MODULES.items():
        if _under(qual, (prefix,)):
            return kind
    return None


_INSTALLED: dict[str, bool] = {}


def _installed(module: str) -> bool:
    """Is the top-level module part of Python or of this environment (never imported here)?"""
    top = module.split(".")[0]
    if not top:
        return False
    if top not in _INSTALLED:
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            _INSTALLED[top] = True
        else:
            try:
                _INSTALLED[top] = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                _INSTALLED[top] = False
    return _INSTALLED[top]


# -- per notebook ------------------------------------------------------------------------------
def analyze(nb, reference: dict[str, list[dict]], modules=()) -> dict[str, Verdict]:
    """grade id -> :class:`Verdict`, for every test cell whose reference probes watch names.

    ``reference``: the reference run's records by grade id (their ``watched`` lists are the
    statement's rules). ``modules``: names a student may import from the assignment's files.
    """
    cells = cells_of(nb)
    out = {}
    for cell in cells:
        if cell.test is None or cell.tree is None:
            continue
        watched = [n for r in reference.get(cell.test, []) for n in (r.get("watched") or ())]
        rule = Rule.of(watched)
        if not rule:
            continue
        out[cell.test] = Analysis(cells, cell, rule, modules).run()
    return out


# -- the decision ------------------------------------------------------------------------------
HELD = (
    "held for review by the instructor: every hidden check matched, but the grader cannot "
    "follow some of your code (see the guide: what the grader cannot check); it scores 0 "
    "until a person decides"
)


def _first(findings: list[Finding]) -> str:
    shown = "; ".join(str(f) for f in findings[:3])
    return shown + (f"; and {len(findings) - 3} more" if len(findings) > 3 else "")


def apply(checks: list, verdicts: dict[str, Verdict]) -> list:
    """The checks with the rules decided: a certain use fails the cell (whatever its probes
    said), code the analysis cannot see through holds a passing cell for review (0 points
    and ``review`` set until a person decides). A failing cell stays failed, not held."""
    import dataclasses

    out = []
    for check in checks:
        found = verdicts.get(check.grade_id)
        if found is None or not (found.used or found.opaque):
            out.append(check)
            continue
        if found.used:
            rule = f"your code uses {_first(found.used)}, which the statement rules out"
            if check.passed:
                message = f"every hidden check matched, but {rule}"
            else:
                message = f"{check.message}; and {rule}"
            check = dataclasses.replace(check, points=0.0, passed=False, message=message)
        elif check.passed:
            check = dataclasses.replace(
                check, points=0.0, passed=False, message=HELD, review=_first(found.opaque)
            )
        out.append(check)
    return out
