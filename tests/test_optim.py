"""Tests for dnncourse.optim: each optimizer against torch.optim.<Name> as the oracle.

The problem is a small tanh network in float64 (non-quadratic) with two param groups that
use different hyperparameters. Our optimizers perform PyTorch's arithmetic in PyTorch's
order, so the trajectories agree to the last bits; the tolerance 1e-12 (absolute and
relative) leaves room only for rounding, far below any algorithmic difference (a wrong
bias correction, eps placement or dampening shows up at 1e-4 or more after a few steps).
"""

import copy
import inspect

import pytest
import torch

import dnncourse.optim as ours

NAMES = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"rtol": 1e-12, "atol": 1e-12}
NUM_STEPS = 120

# (defaults, overrides for the second param group): every option, and combinations of them.
SETTINGS = {
    "SGD": [
        ({"lr": 0.05}, {"lr": 0.02}),
        ({"lr": 0.05, "momentum": 0.9}, {"momentum": 0.5}),
        ({"lr": 0.05, "momentum": 0.9, "dampening": 0.3}, {"dampening": 0.0}),
        ({"lr": 0.05, "momentum": 0.9, "nesterov": True}, {"lr": 0.01, "momentum": 0.7}),
        ({"lr": 0.05, "weight_decay": 0.01}, {"weight_decay": 0.1}),
        ({"lr": 0.03, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True}, {"lr": 0.01}),
        ({"lr": 0.03, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.05}, {"momentum": 0}),
    ],
    "Adagrad": [
        ({"lr": 0.1}, {"lr": 0.05}),
        ({"lr": 0.1, "lr_decay": 0.01}, {"lr_decay": 0.1}),
        ({"lr": 0.1, "weight_decay": 0.01}, {"weight_decay": 0.0}),
        ({"lr": 0.1, "initial_accumulator_value": 0.5}, {"lr": 0.3}),
        ({"lr": 0.1, "eps": 1e-3}, {"eps": 1e-6}),
        (
            {"lr": 0.2, "lr_decay": 0.05, "weight_decay": 0.02, "initial_accumulator_value": 0.1},
            {"lr_decay": 0.0, "weight_decay": 0.1},
        ),
    ],
    "RMSprop": [
        ({"lr": 0.01}, {"lr": 0.003}),
        ({"lr": 0.01, "alpha": 0.9}, {"alpha": 0.5}),
        ({"lr": 0.01, "eps": 1e-3}, {"eps": 1e-5}),
        ({"lr": 0.01, "weight_decay": 0.01}, {"weight_decay": 0.1}),
        ({"lr": 0.005, "momentum": 0.9}, {"momentum": 0.5}),
        ({"lr": 0.01, "centered": True}, {"centered": False}),
        (
            {"lr": 0.003, "centered": True, "momentum": 0.8, "weight_decay": 0.01, "alpha": 0.95},
            {"momentum": 0.0, "lr": 0.01},
        ),
    ],
    "Adam": [
        ({"lr": 0.01}, {"lr": 0.003}),
        ({"lr": 0.01, "betas": (0.8, 0.99)}, {"betas": (0.5, 0.9)}),
        ({"lr": 0.01, "eps": 1e-3}, {"eps": 1e-6}),
        ({"lr": 0.01, "weight_decay": 0.05}, {"weight_decay": 0.5}),
        ({"lr": 0.01, "amsgrad": True}, {"amsgrad": False}),
        (
            {"lr": 0.02, "betas": (0.7, 0.95), "weight_decay": 0.1, "amsgrad": True},
            {"lr": 0.005, "betas": (0.9, 0.999)},
        ),
    ],
    "AdamW": [
        ({"lr": 0.01}, {"lr": 0.003}),
        ({"lr": 0.01, "betas": (0.8, 0.99)}, {"betas": (0.5, 0.9)}),
        ({"lr": 0.01, "eps": 1e-3}, {"eps": 1e-6}),
        ({"lr": 0.01, "weight_decay": 0.5}, {"weight_decay": 0.0}),
        ({"lr": 0.01, "amsgrad": True}, {"amsgrad": False}),
        (
            {"lr": 0.02, "betas": (0.7, 0.95), "weight_decay": 0.2, "amsgrad": True},
            {"lr": 0.005, "weight_decay": 0.01},
        ),
    ],
}
CASES = [(name, d, g) for name, settings in SETTINGS.items() for d, g in settings]


def case_id(case):
    name, defaults, group = case
    return f"{name}-{defaults}-{group}".replace(" ", "")


class Problem:
    """A 3-8-2 tanh network on fixed data: params, and a closure for the full-batch loss."""

    def __init__(self, device="cpu", dtype=torch.float64, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.X = torch.randn(32, 3, generator=gen, dtype=dtype).to(device)
        self.y = torch.randn(32, 2, generator=gen, dtype=dtype).to(device)
        shapes = [(8, 3), (8,), (2, 8), (2,)]
        self.params = [
            torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype).to(device))
            for s in shapes
        ]

    def loss(self):
        W1, b1, W2, b2 = self.params
        y_hat = torch.tanh(self.X @ W1.T + b1) @ W2.T + b2
        return ((y_hat - self.y) ** 2).mean()

    def groups(self, group_overrides):
        """Two param groups: the first layer with the defaults, the second with overrides."""
        return [{"params": self.params[:2]}, {"params": self.params[2:], **group_overrides}]

    def make_step(self, optimizer):
        optimizer.zero_grad()
        self.loss().backward()
        optimizer.step()


def make(library, name, params, defaults):
    if library == "torch":
        return getattr(torch.optim, name)(params, **defaults, foreach=False)
    return getattr(ours, name)(params, **defaults)


def trajectory(library, name, defaults, group, num_steps=NUM_STEPS, device="cpu"):
    problem = Problem(device=device)
    optimizer = make(library, name, problem.groups(group), defaults)
    path = []
    for _ in range(num_steps):
        problem.make_step(optimizer)
        path.append(torch.cat([p.detach().flatten() for p in problem.params]))
    return torch.stack(path), optimizer, problem


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trajectory_equals_torch(case):
    name, defaults, group = case
    path, optimizer, _ = trajectory("ours", name, defaults, group)
    expected, torch_optimizer, _ = trajectory("torch", name, defaults, group)
    start = torch.cat([p.detach().flatten() for p in Problem().params])
    # the run must go somewhere, or equality would prove nothing
    assert (path[-1] - start).norm() > 1e-2, f"{name} barely moved: {(path[-1] - start).norm()}"
    torch.testing.assert_close(path, expected, **TOL)
    # same state, under the same names, with the same values
    for p_ours, p_torch in zip(optimizer.state, torch_optimizer.state, strict=True):
        s_ours, s_torch = optimizer.state[p_ours], torch_optimizer.state[p_torch]
        assert s_ours.keys() == s_torch.keys()
        for key in s_ours:
            torch.testing.assert_close(s_ours[key], s_torch[key], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_signature_and_defaults_match_torch(name):
    mine = inspect.signature(getattr(ours, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    positional = [n for n, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    skipped = {"foreach", "capturable", "maximize", "differentiable", "fused"}
    expected = [n for n in positional if n not in skipped]
    assert [n for n, p in mine.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == expected
    for n in expected[1:]:
        assert mine[n].default == theirs[n].default, f"{name}({n}=...) default differs"
    param = torch.nn.Parameter(torch.zeros(2))
    torch_defaults = getattr(torch.optim, name)([param]).defaults
    for key, value in getattr(ours, name)([param]).defaults.items():
        assert torch_defaults[key] == value, f"{name} defaults[{key!r}]"


SNAPSHOT_SETTINGS = {
    "SGD": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "Adagrad": {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "Adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01},
    "AdamW": {"lr": 0.01, "amsgrad": True},
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("direction", [("ours", "torch"), ("torch", "ours")])
def test_state_dict_round_trip(name, direction):
    """Run 30 steps in one library, load its state_dict into the other, run 30 more."""
    saver, loader = direction
    defaults, group = SNAPSHOT_SETTINGS[name], {"lr": 0.002}
    expected, _, _ = trajectory("torch", name, defaults, group, num_steps=60)

    problem = Problem()
    first = make(saver, name, problem.groups(group), defaults)
    for _ in range(30):
        problem.make_step(first)
    saved = copy.deepcopy(first.state_dict())

    # a fresh optimizer in the other library, built with other hyperparameters on purpose:
    # the loaded param groups must replace them
    second = make(loader, name, problem.groups({}), {"lr": 0.5})
    second.load_state_dict(saved)
    assert second.param_groups[1]["lr"] == 0.002
    for p in problem.params:
        state, origin = second.state[p], first.state[p]
        assert state.keys() == origin.keys()
        for key, value in state.items():
            assert value.dtype == origin[key].dtype and value.device == origin[key].device
    for _ in range(30):
        problem.make_step(second)
    final = torch.cat([p.detach().flatten() for p in problem.params])
    torch.testing.assert_close(final, expected[-1], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_zero_grad(name):
    problem = Problem()
    optimizer = make("ours", name, problem.params, {})
    problem.loss().backward()
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in problem.params)
    problem.loss().backward()
    optimizer.zero_grad()  # PyTorch's default: set_to_none=True
    assert all(p.grad is None for p in problem.params)
    optimizer.step()  # no gradients: nothing moves, no state is made (Adagrad's is eager)
    assert all(torch.equal(p, q) for p, q in zip(problem.params, Problem().params, strict=True))


INVALID = [
    ("SGD", {"lr": -0.1}),
    ("SGD", {"lr": torch.tensor([0.1, 0.2])}),
    ("SGD", {"momentum": -0.5}),
    ("SGD", {"weight_decay": -1e-4}),
    ("SGD", {"nesterov": True}),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    ("Adagrad", {"lr": -0.1}),
    ("Adagrad", {"lr": float("nan")}),
    ("Adagrad", {"lr_decay": -1.0}),
    ("Adagrad", {"weight_decay": -1.0}),
    ("Adagrad", {"initial_accumulator_value": -0.1}),
    ("Adagrad", {"eps": -1e-10}),
    ("RMSprop", {"lr": -0.1}),
    ("RMSprop", {"alpha": -0.9}),
    ("RMSprop", {"eps": -1e-8}),
    ("RMSprop", {"weight_decay": -1.0}),
    ("RMSprop", {"momentum": -0.9}),
    ("Adam", {"lr": -0.1}),
    ("Adam", {"eps": -1e-8}),
    ("Adam", {"betas": (1.0, 0.999)}),
    ("Adam", {"betas": (-0.1, 0.999)}),
    ("Adam", {"betas": (0.9, 1.0)}),
    ("Adam", {"weight_decay": -1.0}),
    ("Adam", {"betas": (0, 0.999)}),  # PyTorch wants floats (or tensors), not ints
    ("AdamW", {"lr": -0.1}),
    ("AdamW", {"betas": (0.9, 1.5)}),
    ("AdamW", {"weight_decay": -0.01}),
]


@pytest.mark.parametrize(("name", "kwargs"), INVALID, ids=[f"{n}-{k}" for n, k in INVALID])
def test_invalid_hyperparameters_raise_like_torch(name, kwargs):
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError):  # the oracle agrees that this is invalid
        getattr(torch.optim, name)([param], **kwargs)
    with pytest.raises(ValueError) as error:
        getattr(ours, name)([param], **kwargs)
    assert str(error.value), "the message should say what was wrong"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0}),
        ("SGD", {"nesterov": True, "momentum": 1e-3}),
        ("Adagrad", {"lr": 0.0, "eps": 0.0}),
        ("RMSprop", {"alpha": 0.0, "eps": 0.0, "momentum": 0.0}),
        ("Adam", {"betas": (0.0, 0.0), "eps": 0.0}),
    ],
)
def test_boundary_values_are_accepted(name, kwargs):
    """Accepted as torch accepts them, and kept: the optimizer's defaults hold the values."""
    param = torch.nn.Parameter(torch.zeros(2))
    theirs = getattr(torch.optim, name)([param], **kwargs)
    mine = getattr(ours, name)([param], **kwargs)
    for key, value in kwargs.items():
        assert mine.defaults[key] == theirs.defaults[key] == value, key
        assert mine.param_groups[0][key] == value, key


ALL_STATE = {
    "SGD": {"momentum": 0.9},
    "Adagrad": {},
    "RMSprop": {"momentum": 0.9, "centered": True},
    "Adam": {"amsgrad": True},
    "AdamW": {"amsgrad": True},
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("device", "dtype"), [("cpu", torch.float64), ("cpu", torch.float16), ("meta", torch.float32)]
)
def test_state_follows_parameter_dtype_and_device(name, device, dtype):
    """Buffers live with the parameter; the step counter is a CPU scalar as in PyTorch."""
    states = {}
    for library in ("ours", "torch"):
        param = torch.nn.Parameter(torch.ones(3, 2, device=device, dtype=dtype))
        optimizer = make(library, name, [param], ALL_STATE[name])
        param.grad = torch.full_like(param, 0.5)
        optimizer.step()
        optimizer.step()
        states[library] = optimizer.state[param]
    assert states["ours"].keys() == states["torch"].keys()
    for key, value in states["ours"].items():
        reference = states["torch"][key]
        assert (value.dtype, value.device) == (reference.dtype, reference.device), key
        if key != "step":
            assert (value.dtype, value.device.type) == (dtype, device), key


def test_adagrad_uses_each_groups_initial_accumulator():
    """Where we differ on purpose: PyTorch ignores a group's own value."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [a]}, {"params": [b], "initial_accumulator_value": 5.0}]
    mine = ours.Adagrad(groups, initial_accumulator_value=1.0)
    theirs = torch.optim.Adagrad(groups, initial_accumulator_value=1.0)
    assert torch.equal(mine.state[b]["sum"], torch.full((2,), 5.0))
    assert torch.equal(theirs.state[b]["sum"], torch.full((2,), 1.0))


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_and_closure(name):
    """A group added later gets state as in PyTorch; step returns the closure's loss."""
    runs = {}
    for library in ("ours", "torch"):
        problem = Problem()
        optimizer = make(library, name, problem.params[:2], ALL_STATE[name])
        optimizer.add_param_group({"params": problem.params[2:], "lr": 1e-2})

        def closure(optimizer=optimizer, problem=problem):
            optimizer.zero_grad()
            loss = problem.loss()
            loss.backward()
            return loss

        losses = [optimizer.step(closure) for _ in range(5)]
        runs[library] = (losses, problem.params, optimizer.state)
    (losses, params, state), (expected_losses, expected_params, expected_state) = runs.values()
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected_losses), **TOL)
    torch.testing.assert_close(params, expected_params, **TOL)
    assert [s.keys() for s in state.values()] == [s.keys() for s in expected_state.values()]


def test_adamw_loaded_from_adam_state_stays_decoupled():
    param = torch.nn.Parameter(torch.ones(2))
    adam_state = ours.Adam([param], weight_decay=0.1).state_dict()
    adamw = ours.AdamW([param])
    adamw.load_state_dict(adam_state)
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_trajectory_equals_torch_on_cuda(name):
    defaults, group = SNAPSHOT_SETTINGS[name], {"lr": 0.002}
    path, optimizer, problem = trajectory("ours", name, defaults, group, device="cuda")
    expected, _, _ = trajectory("torch", name, defaults, group, device="cuda")
    torch.testing.assert_close(path, expected, **TOL)
    for p in problem.params:
        for key, value in optimizer.state[p].items():
            expected_device = "cpu" if key == "step" else "cuda"
            assert value.device.type == expected_device, key
