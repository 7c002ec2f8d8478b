"""Attacks on the statement's rules (issue 19): right answers by a forbidden capability.

Each attack computes the *right* answer of one question with the capability its statement
rules out, by a route that beats the in-kernel recorders of ``probe`` (a worker thread, where
neither the torch function mode nor the profile hook looks; the engine's internals; forward
mode; ``torch.func``; a functional twin; ``torch.ops``; the recorders patched), or hidden
behind code that no static analysis can follow (``exec``, ``eval``, a built ``getattr``,
``ctypes``, ``importlib``, ``sys.modules``, dunders, a module the notebook writes, an IPython
input transformer, ``globals()``).

``ATTACKS[name] = Attack(hw, question, replace, extra, outcome)``: the instructor's answers
with ``replace`` ({answer grade_id: source}) and ``extra`` cells ([(after grade_id, source)]);
``outcome`` is ``"fails"`` (certain use: the cell scores 0 and its message says every hidden
check matched otherwise, which proves the attack computed the right answer) or ``"held"``
(the cell is held for review: 0 points, ``Check.review`` set, which also happens only when
every hidden check matched). ``test_rules.py`` checks both statically and by grading.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Attack:
    hw: str
    question: str  # the test cell it attacks
    replace: dict
    extra: list = field(default_factory=list)  # [(after grade id, source)]
    outcome: str = "fails"  # or "held"
    graded: bool = True  # also run through the grader (False: static only, too slow there)


LOSS = """
def _loss(c, x, y):
    a, b, cc, d = c
    return ((a + b * x + cc * x**2 + d * x**3 - y) ** 2).sum()
"""


def in_thread(body: str, imports: str = "import threading\n") -> str:
    """cubic_gradients whose work (``body`` sets ``out["g"]``) runs in a worker thread."""
    lines = "\n".join("        " + line for line in body.strip().splitlines())
    return (
        imports
        + LOSS
        + f"""

def cubic_gradients(x, y, coeffs):
    out = {{}}

    def work():
{lines}

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out["g"]
"""
    )


LEAF = "c = coeffs.detach().clone().requires_grad_(True)"
Q = "test_cubic_gradients"
HW1 = {
    "thread_backward": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\n_loss(c, x, y).backward()\nout['g'] = c.grad",
            )
        },
    ),
    "engine_internals": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nloss = _loss(c, x, y)\n"
                "engine = torch.autograd.Variable._execution_engine\n"
                "(out['g'],) = engine.run_backward(\n"
                "    (loss,), (torch.ones_like(loss),), False, False, (c,), False, False\n"
                ")",
            )
        },
    ),
    "forward_mode": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                "tangents = []\n"
                "with fwAD.dual_level():\n"
                "    for k in range(4):\n"
                "        t = torch.zeros_like(coeffs)\n"
                "        t[k] = 1\n"
                "        dual = fwAD.make_dual(coeffs, t)\n"
                "        tangents.append(fwAD.unpack_dual(_loss(dual, x, y)).tangent)\n"
                "out['g'] = torch.stack(tangents)",
                imports="import threading\nimport torch.autograd.forward_ad as fwAD\n",
            )
        },
    ),
    "torch_func": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                "from torch.func import grad\nout['g'] = grad(_loss)(coeffs, x, y)",
            )
        },
    ),
    "functional_twin": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                "jac = torch.autograd.functional.jacobian\n"
                "out['g'] = jac(lambda c: _loss(c, x, y), coeffs)",
            )
        },
    ),
    "recorders_patched": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": LOSS
            + """

def cubic_gradients(x, y, coeffs):
    c = coeffs.detach().clone().requires_grad_(True)
    return torch.autograd.grad(_loss(c, x, y), c)[0]
"""
        },
        extra=[
            (
                "setup",
                "import dnncourse.grading.probe as _probe\n\n\n"
                "def _quiet(self, func, types, args=(), kwargs=None):\n"
                "    return func(*args, **(kwargs or {}))\n\n\n"
                "_probe.Recorders.__torch_function__ = _quiet\n"
                "_probe.Recorders._profile = lambda self, *args: None\n",
            )
        ],
    ),
    "recorders_off": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": "import sys\n"
            + LOSS
            + """

def cubic_gradients(x, y, coeffs):
    sys.setprofile(None)
    with torch._C.DisableTorchFunction():
        c = coeffs.detach().clone().requires_grad_(True)
        return torch.autograd.grad(_loss(c, x, y), c)[0]
"""
        },
    ),
    "builtins_injection": Attack(
        "hw1",
        Q,
        {"cubic_gradients": in_thread("out['g'] = helper(_loss)(coeffs, x, y)")},
        extra=[("setup", "import builtins\n\nbuiltins.helper = torch.func.grad\n")],
    ),
    "monkeypatched_tensor": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": "def cubic_gradients(x, y, coeffs):\n"
            "    return coeffs.cubic_grads(x, y)\n"
        },
        extra=[
            (
                "setup",
                in_thread(f"{LEAF}\n_loss(c, x, y).backward()\nout['g'] = c.grad").replace(
                    "def cubic_gradients(x, y, coeffs):", "def _grads(coeffs, x, y):"
                )
                + "\n\ntorch.Tensor.cubic_grads = _grads\n",
            )
        ],
    ),
    # -- hidden from any static analysis: held for review -------------------------------------
    "exec_defined": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": "SOURCE = "
            + repr(in_thread(f"{LEAF}\n_loss(c, x, y).backward()\nout['g'] = c.grad"))
            + "\nexec(SOURCE)\n"
        },
        outcome="held",
    ),
    "eval_name": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nfn = eval('torch.autog' + 'rad.grad')\n"
                "out['g'] = fn(_loss(c, x, y), c)[0]"
            )
        },
        outcome="held",
    ),
    "getattr_built": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nag = getattr(torch, 'auto' + 'grad')\n"
                "out['g'] = ag.grad(_loss(c, x, y), c)[0]"
            )
        },
        outcome="held",
    ),
    "ctypes_lookup": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nget = ctypes.pythonapi.PyObject_GetAttrString\n"
                "get.restype = ctypes.py_object\n"
                "get.argtypes = [ctypes.py_object, ctypes.c_char_p]\n"
                "ag = get(torch, b'auto' + b'grad')\n"
                "out['g'] = ag.grad(_loss(c, x, y), c)[0]",
                imports="import ctypes\nimport threading\n",
            )
        },
        outcome="held",
    ),
    "importlib_built": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                "tf = importlib.import_module('torch.' + 'func')\n"
                "out['g'] = tf.grad(_loss)(coeffs, x, y)",
                imports="import importlib\nimport threading\n",
            )
        },
        outcome="held",
    ),
    "sys_modules": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nag = sys.modules['torch.' + 'autograd']\n"
                "out['g'] = ag.grad(_loss(c, x, y), c)[0]",
                imports="import sys\nimport threading\n",
            )
        },
        outcome="held",
    ),
    "dunder_dict": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\nag = torch.__dict__['auto' + 'grad']\n"
                "out['g'] = ag.grad(_loss(c, x, y), c)[0]",
            )
        },
        outcome="held",
    ),
    "written_module": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": "from _my_helpers import cubic_gradients  # noqa: F401\n",
        },
        extra=[
            (
                "setup",
                "with open('_my_helpers.py', 'w') as f:\n    f.write("
                + repr(
                    "import torch\n"
                    + in_thread(f"{LEAF}\n_loss(c, x, y).backward()\nout['g'] = c.grad")
                )
                + ")\n",
            )
        ],
        outcome="held",
    ),
    "input_transformer": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": in_thread(
                f"{LEAF}\n_loss(c, x, y).__BACKWARD__()\nout['g'] = c.grad"
            ),
        },
        extra=[
            (
                "setup",
                "def _expand(lines):\n"
                "    back = '__BACK' + 'WARD__'\n"
                "    return [line.replace(back, 'back' + 'ward') for line in lines]\n\n\n"
                "get_ipython().input_transformers_cleanup.append(_expand)\n",
            )
        ],
        outcome="held",
    ),
    "globals_write": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": "_impl = compile("
            + repr(in_thread(f"{LEAF}\n_loss(c, x, y).backward()\nout['g'] = c.grad"))
            + ", 'answer', 'exec')\nexec(_impl, globals())\n"
        },
        outcome="held",
    ),
    "subprocess_autograd": Attack(
        "hw1",
        Q,
        {
            "cubic_gradients": """
import subprocess, sys


def cubic_gradients(x, y, coeffs):
    code = "import torch, sys; print(sys.argv)"
    subprocess.run([sys.executable, "-c", code], check=True)
    a, b, c, d = coeffs
    r = 2 * (a + b * x + c * x**2 + d * x**3 - y)
    return torch.stack([r.sum(), (r * x).sum(), (r * x**2).sum(), (r * x**3).sum()])
"""
        },
        outcome="held",
        graded=False,
    ),
}

MOMENTUM_VIA_SGD = """
import threading

from torch.optim.sgd import sgd as _update


class MomentumSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.0, nesterov=False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    worker = threading.Thread(target=self._delegate, args=(p, group))
                    worker.start()
                    worker.join()
        return loss

    def _delegate(self, p, group):
        state, mu = self.state[p], group["momentum"]
        buffers = [state.get("momentum_buffer")]
        with torch.no_grad():  # grad mode is per thread
            _update(
                [p],
                [p.grad],
                buffers,
                foreach=False,
                weight_decay=0.0,
                momentum=mu,
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
            )
        if mu != 0:
            state["momentum_buffer"] = buffers[0]
"""

HW2 = {
    "optimizer_in_thread": Attack("hw2", "test_heavy_ball", {"momentum_sgd": MOMENTUM_VIA_SGD}),
}

HW3 = {
    "aten_softmax": Attack(
        "hw3",
        "test_softmax",
        {
            "softmax": "def softmax(z, dim=-1):\n"
            "    return torch.ops.aten._softmax(z, dim, False)\n"
        },
    ),
    "getattr_softmax": Attack(
        "hw3",
        "test_softmax",
        {
            "softmax": "import threading\n\n\ndef softmax(z, dim=-1):\n"
            "    out = {}\n\n"
            "    def work():\n"
            "        out['y'] = getattr(torch.special, 'soft' + 'max')(z, dim)\n\n"
            "    worker = threading.Thread(target=work)\n"
            "    worker.start()\n"
            "    worker.join()\n"
            "    return out['y']\n"
        },
        outcome="held",
    ),
}

BATCHNORM_VIA_LAYER_NORM = """
class BatchNorm1d(torch.nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
        if not self.training:
            x_hat = (x - self.running_mean.view(shape)) / torch.sqrt(
                self.running_var.view(shape) + self.eps
            )
            return x_hat * self.weight.view(shape) + self.bias.view(shape)
        channels = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N * L)
        n = channels.shape[1]
        with torch.no_grad():
            mean, var = channels.mean(dim=1), channels.var(dim=1, unbiased=False)
            eta = self.momentum
            self.running_mean.mul_(1 - eta).add_(eta * mean)
            self.running_var.mul_(1 - eta).add_(eta * var * n / (n - 1))
        # layer norm of each channel's values is batch norm's normalization
        normed = torch.nn.functional.layer_norm(channels, (n,), eps=self.eps)
        moved = x.transpose(0, 1).shape
        x_hat = normed.reshape(moved).transpose(0, 1)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)
"""

HW4 = {
    "layer_norm_twin": Attack(
        "hw4", "test_batchnorm_train", {"batchnorm": BATCHNORM_VIA_LAYER_NORM}
    ),
}

ATTACKS = {**HW1, **HW2, **HW3, **HW4}
