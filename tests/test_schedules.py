"""Tests of dnncourse.schedules: the lecture's formulas and PyTorch's own schedulers as oracles.

Rates are Python floats (float64); the only difference to PyTorch's recursive schedulers
(``lr *= gamma`` at each step) is rounding, about ``k`` ulps after ``k`` steps, so
``rtol=1e-12`` is loose enough for 300 steps and tight enough to catch an off-by-one step.
"""

import copy
import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

import dnncourse
from dnncourse import optim
from dnncourse.schedules import CosineDecay, ExponentialDecay, InverseTimeDecay, StaircaseDecay

NUM_STEPS = 300
TOL = {"rtol": 1e-12, "atol": 0.0}


def make_optimizer(lr=0.5, groups=False, cls=torch.optim.SGD):
    torch.manual_seed(0)
    w1, w2 = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    if groups:
        return cls([{"params": [w1]}, {"params": [w2], "lr": lr / 4}], lr=lr)
    return cls([w1, w2], lr=lr)


def rates(scheduler, num_steps=NUM_STEPS):
    """Learning rates of every group *used* at steps k = 0, ..., num_steps - 1."""
    out = []
    for _ in range(num_steps):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


FORMULAS = {
    "inverse_time": (
        lambda opt: InverseTimeDecay(opt, decay_rate=0.3),
        lambda a, k: a / (1 + 0.3 * k),
    ),
    "exponential": (
        lambda opt: ExponentialDecay(opt, decay_rate=0.02),
        lambda a, k: a * math.exp(-0.02 * k),
    ),
    "staircase": (
        lambda opt: StaircaseDecay(opt, step_size=7, factor=5),
        lambda a, k: a / 5 ** (k // 7),
    ),
    "cosine": (  # after T = 200 the rate stays at the floor
        lambda opt: CosineDecay(opt, total_steps=200, warmup_steps=10, final_factor=0.1),
        lambda a, k: (
            a * (0.1 + 0.45 * (1 + math.cos(math.pi * min(k - 10, 190) / 190)))
            if k >= 10
            else a * (0.1 + 0.9 * k / 10)
        ),
    ),
}


@pytest.mark.parametrize("name", FORMULAS)
@pytest.mark.parametrize("groups", [False, True])
def test_rates_equal_the_lecture_formula(name, groups):
    make, formula = FORMULAS[name]
    opt = make_optimizer(groups=groups)
    initial = [g["lr"] for g in opt.param_groups]
    got = rates(make(opt))
    expected = [[formula(a, k) for a in initial] for k in range(NUM_STEPS)]
    torch.testing.assert_close(got, expected, **TOL)


TORCH_EQUIVALENTS = {
    "inverse_time": (
        lambda opt: InverseTimeDecay(opt, decay_rate=0.3),
        lambda opt: LambdaLR(opt, lambda k: 1 / (1 + 0.3 * k)),
    ),
    "exponential": (
        lambda opt: ExponentialDecay(opt, decay_rate=0.02),
        lambda opt: ExponentialLR(opt, gamma=math.exp(-0.02)),
    ),
    "staircase": (
        lambda opt: StaircaseDecay(opt, step_size=7, factor=5),
        lambda opt: StepLR(opt, step_size=7, gamma=1 / 5),
    ),
}


def _warmup_cosine(opt, w=10, total=NUM_STEPS):
    return SequentialLR(
        opt,
        [
            LinearLR(opt, start_factor=1 / w, total_iters=w),
            CosineAnnealingLR(opt, T_max=total - w, eta_min=0.0),
        ],
        milestones=[w],
    )


TORCH_EQUIVALENTS["cosine"] = (  # k <= T: PyTorch's class oscillates after T_max
    lambda opt: CosineDecay(opt, total_steps=NUM_STEPS - 1, final_factor=0.0),
    lambda opt: CosineAnnealingLR(opt, T_max=NUM_STEPS - 1),
)
TORCH_EQUIVALENTS["warmup_cosine"] = (
    lambda opt: CosineDecay(opt, total_steps=NUM_STEPS - 1, warmup_steps=10),
    lambda opt: _warmup_cosine(opt, total=NUM_STEPS - 1),
)


@pytest.mark.parametrize("name", TORCH_EQUIVALENTS)
def test_rates_equal_torch_equivalent(name):
    ours, theirs = TORCH_EQUIVALENTS[name]
    torch.testing.assert_close(
        rates(ours(make_optimizer(groups=True))),
        rates(theirs(make_optimizer(groups=True))),
        **TOL,
    )


def test_get_last_lr_and_closed_form_step():
    opt = make_optimizer(lr=1.0)
    scheduler = InverseTimeDecay(opt, decay_rate=1.0)
    assert scheduler.get_last_lr() == [1.0]
    for _ in range(3):
        opt.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [0.25], "after 3 steps 1 / (1 + 3) was expected"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # step(epoch) is deprecated in PyTorch
        scheduler.step(9)
    assert scheduler.get_last_lr() == [0.1], "step(9) should jump to 1 / (1 + 9)"


@pytest.mark.parametrize("name", FORMULAS)
def test_state_dict_round_trip_resumes_the_schedule(name):
    make, _ = FORMULAS[name]
    opt = make_optimizer(groups=True)
    scheduler = make(opt)
    rates(scheduler, 40)
    saved_sched, saved_opt = copy.deepcopy(scheduler.state_dict()), opt.state_dict()
    expected = rates(scheduler, 30)

    opt2 = make_optimizer(groups=True)
    scheduler2 = make(opt2)
    opt2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    assert scheduler2.last_epoch == 40
    torch.testing.assert_close(rates(scheduler2, 30), expected, **TOL)


def test_state_dict_carries_hyperparameters():
    state = StaircaseDecay(make_optimizer(), step_size=3, factor=2).state_dict()
    assert state["step_size"] == 3 and state["factor"] == 2.0 and "optimizer" not in state
    fresh = StaircaseDecay(make_optimizer(), step_size=100, factor=10)
    fresh.load_state_dict(state)
    assert (fresh.step_size, fresh.factor) == (3, 2.0)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "0.1", None])
@pytest.mark.parametrize("cls", [InverseTimeDecay, ExponentialDecay])
def test_bad_decay_rate_raises(cls, bad):
    with pytest.raises(ValueError, match="decay_rate"):
        cls(make_optimizer(), decay_rate=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_step_size_raises(bad):
    with pytest.raises(ValueError, match="step_size"):
        StaircaseDecay(make_optimizer(), step_size=bad)


@pytest.mark.parametrize("bad", [0.5, 0, -10, math.inf, math.nan])
def test_bad_factor_raises(bad):
    with pytest.raises(ValueError, match="factor"):
        StaircaseDecay(make_optimizer(), step_size=2, factor=bad)


def test_zero_decay_rate_keeps_the_rate():
    assert rates(InverseTimeDecay(make_optimizer(lr=0.3), 0.0), 5) == [[0.3]] * 5
    assert rates(ExponentialDecay(make_optimizer(lr=0.3), 0.0), 5) == [[0.3]] * 5


OPTIMIZER_CLASSES = [
    *(getattr(torch.optim, n) for n in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")),
    *(getattr(optim, n) for n in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")),
]


@pytest.mark.parametrize(
    "opt_cls", OPTIMIZER_CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}"
)
def test_schedule_drives_any_optimizer(opt_cls):
    """The scheduled rate is what the optimizer uses: plain SGD moves by exactly lr * grad."""
    opt = make_optimizer(lr=0.2, groups=True, cls=opt_cls)
    scheduler = StaircaseDecay(opt, step_size=2, factor=10)
    w = opt.param_groups[0]["params"][0]
    used = []
    for _ in range(5):
        used.append([g["lr"] for g in opt.param_groups])
        before = w.detach().clone()
        opt.zero_grad()
        w.sum().backward()  # gradient of ones
        opt.step()
        scheduler.step()
        if opt_cls.__name__ == "SGD":
            torch.testing.assert_close(before - w.detach(), torch.full_like(w, used[-1][0]))
    expected = [[0.2 / 10 ** (k // 2), 0.05 / 10 ** (k // 2)] for k in range(5)]
    torch.testing.assert_close(used, expected, **TOL)


def test_with_dnncourse_train_per_batch():
    """Through dnncourse.train with scheduler_interval="batch", k counts iterations."""
    torch.manual_seed(0)
    X, y = torch.randn(20, 3), torch.randn(20, 1)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = InverseTimeDecay(opt, decay_rate=0.5)
    history = dnncourse.train(
        model, torch.nn.MSELoss(), opt, (X, y), num_epochs=3, batch_size=5,
        scheduler=scheduler, scheduler_interval="batch", device="cpu", progress=False,
    )  # fmt: skip
    assert scheduler.last_epoch == 12, "4 batches per epoch, 3 epochs"
    torch.testing.assert_close(
        history.lr, [0.1 / (1 + 0.5 * k) for k in (0, 4, 8)], **TOL
    )  # the rate each epoch starts with


def test_reduce_on_plateau_divides_after_patience():
    """How the lecture's heuristic variant is used: step with the watched value."""
    opt = make_optimizer(lr=1.0)
    scheduler = ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=2)
    for value in [5.0, 4.0, 4.0, 4.0]:  # best 4.0, then two epochs without improvement
        scheduler.step(value)
    assert opt.param_groups[0]["lr"] == 1.0, "patience=2 tolerates two bad epochs"
    scheduler.step(4.0)  # the third bad epoch
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_cosine_mistakes_are_caught_by_the_torch_oracle():
    """The oracle can fail: a warmup one step short, or a cosine over T instead of T - w."""
    theirs = rates(_warmup_cosine(make_optimizer(), total=NUM_STEPS - 1))
    short = rates(CosineDecay(make_optimizer(), total_steps=NUM_STEPS - 1, warmup_steps=9))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(short, theirs, **TOL)
    longer = rates(CosineDecay(make_optimizer(), total_steps=NUM_STEPS + 9, warmup_steps=10))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(longer, theirs, **TOL)


def test_cosine_reaches_its_floor_and_stays():
    got = rates(CosineDecay(make_optimizer(lr=1.0), total_steps=8, final_factor=0.25), 12)
    assert got[0] == [1.0] and got[4] == [pytest.approx(0.625)]
    assert got[8:] == [[0.25]] * 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 5, "warmup_steps": 5}, "exceed"),
        ({"total_steps": 5, "warmup_steps": -1}, "warmup_steps"),
        ({"total_steps": 5.0}, "total_steps"),
        ({"total_steps": 5, "final_factor": 1.5}, "final_factor"),
    ],
)
def test_bad_cosine_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CosineDecay(make_optimizer(), **kwargs)
