"""Tests for dnncourse.lecture_optim: where the lecture's forms equal PyTorch's, and where not.

Oracle: torch.optim.SGD and torch.optim.Adam (foreach=False) in float64. The heavy ball
and PyTorch's momentum are the same iteration written with different intermediate
quantities, so the iterates agree up to rounding only: 1e-10 relative over 150 steps of a
contractive problem (rounding is ~1e-16 per step), while any real difference (a wrong
beta, an off-by-one in the history) moves the iterates by 1e-3 or more.
"""

import math

import pytest
import torch

from dnncourse.lecture_optim import HeavyBall, LectureAdam, NesterovLookahead

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = {"rtol": 1e-10, "atol": 1e-12}
NUM_STEPS = 150


def make_problem(seed=0):
    """A non-quadratic loss (log-sum-exp plus a quartic) in two parameters of float64."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    params = [
        torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64)),
        torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64)),
    ]

    def loss_fn():
        u, v = params
        return torch.logsumexp(A @ u, 0) + 0.1 * (u**2).sum() + (v**4).sum() / 4 + v.sum()

    return params, loss_fn


def flat(params):
    return torch.cat([p.detach().flatten() for p in params])


def run(optimizer_fn, num_steps=NUM_STEPS, schedule=None):
    """Iterates x_1..x_N of plain step() (gradient at the current parameters)."""
    params, loss_fn = make_problem()
    optimizer = optimizer_fn(params)
    path = []
    for k in range(num_steps):
        if schedule is not None:
            schedule(optimizer, k)
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
        path.append(flat(params))
    return torch.stack(path)


def two_groups(params, lr, momentum):
    return [{"params": params[:1]}, {"params": params[1:], "lr": lr / 2, "momentum": momentum / 3}]


@pytest.mark.parametrize(("lr", "momentum"), [(0.1, 0.9), (0.05, 0.5), (0.2, 0.0)])
def test_heavy_ball_equals_torch_sgd_momentum(lr, momentum):
    ours = run(lambda p: HeavyBall(two_groups(p, lr, momentum), lr=lr, momentum=momentum))
    theirs = run(
        lambda p: torch.optim.SGD(
            two_groups(p, lr, momentum), lr=lr, momentum=momentum, dampening=0, foreach=False
        )
    )
    assert (ours[-1] - ours[0]).norm() > 1e-2  # it moves
    torch.testing.assert_close(ours, theirs, **TOL)


def test_heavy_ball_under_a_schedule_has_rescaled_momentum_in_torch():
    """Halving lr at step 50: PyTorch's momentum term is scaled by alpha_k / alpha_{k-1}."""
    lr, momentum, switch = 0.1, 0.9, 50

    def halve(optimizer, k):
        if k == switch:
            optimizer.param_groups[0]["lr"] = lr / 2

    def halve_and_rescale(optimizer, k):
        group = optimizer.param_groups[0]
        if k == switch:  # the lecture's beta_k = beta * alpha_k / alpha_{k-1}, for one step
            group["lr"], group["momentum"] = lr / 2, momentum / 2
        elif k == switch + 1:
            group["momentum"] = momentum

    def torch_sgd(p):
        return torch.optim.SGD(p, lr=lr, momentum=momentum, foreach=False)

    def heavy_ball(p):
        return HeavyBall(p, lr=lr, momentum=momentum)

    theirs = run(torch_sgd, schedule=halve)
    same_schedule = run(heavy_ball, schedule=halve)
    torch.testing.assert_close(same_schedule[:switch], theirs[:switch], **TOL)
    assert (same_schedule[switch] - theirs[switch]).abs().max() > 1e-3  # the forms split
    torch.testing.assert_close(run(heavy_ball, schedule=halve_and_rescale), theirs, **TOL)


@pytest.mark.parametrize(("lr", "momentum"), [(0.1, 0.9), (0.05, 0.6)])
def test_nesterov_lookahead_equals_torch_nesterov_after_change_of_variables(lr, momentum):
    """PyTorch's parameter p_k is the look-ahead y_k; x_{k+1} = p_k - lr * grad f(p_k)."""
    params, loss_fn = make_problem()
    optimizer = NesterovLookahead(two_groups(params, lr, momentum), lr=lr, momentum=momentum)
    lookaheads, iterates = [], []

    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        lookaheads.append(flat(params))  # the closure runs at y_k
        return loss

    for _ in range(NUM_STEPS):
        optimizer.step(closure)
        iterates.append(flat(params))  # x_{k+1}

    params, loss_fn = make_problem()
    sgd = torch.optim.SGD(
        two_groups(params, lr, momentum), lr=lr, momentum=momentum, nesterov=True, foreach=False
    )
    points, gradient_steps, buffers = [], [], []
    for _ in range(NUM_STEPS):
        points.append(flat(params))  # p_k
        sgd.zero_grad()
        loss_fn().backward()
        gradient_steps.append(
            torch.cat(
                [(p - g["lr"] * p.grad).detach() for g in sgd.param_groups for p in g["params"]]
            )
        )
        sgd.step()
        buffers.append(torch.cat([sgd.state[p]["momentum_buffer"] for p in params]))

    lookaheads, iterates = torch.stack(lookaheads), torch.stack(iterates)
    assert (iterates[-1] - iterates[0]).norm() > 1e-2
    torch.testing.assert_close(lookaheads, torch.stack(points), **TOL)  # p_k = y_k
    torch.testing.assert_close(iterates, torch.stack(gradient_steps), **TOL)  # x_{k+1}
    # b_k = (x_k - x_{k+1}) / lr, per group
    x = torch.cat([flat(make_problem()[0]).unsqueeze(0), iterates])
    lr_per_entry = torch.tensor([lr] * 4 + [lr / 2] * 3, dtype=torch.float64)
    torch.testing.assert_close((x[:-1] - x[1:]) / lr_per_entry, torch.stack(buffers), **TOL)
    # and the look-ahead form is not the heavy ball
    heavy = run(lambda p: HeavyBall(two_groups(p, lr, momentum), lr=lr, momentum=momentum))
    assert (heavy[10] - iterates[10]).abs().max() > 1e-4


def test_nesterov_lookahead_needs_a_closure():
    params, _ = make_problem()
    with pytest.raises(ValueError, match="closure"):
        NesterovLookahead(params).step()


def constant_gradient_steps(optimizer_cls, g, num_steps, **kwargs):
    """Step lengths |x_{k+1} - x_k| for the linear loss <g, x> (constant gradient g)."""
    x = torch.nn.Parameter(torch.zeros_like(g))
    optimizer = optimizer_cls([x], **kwargs)
    steps = []
    for _ in range(num_steps):
        before = x.detach().clone()
        x.grad = g.clone()
        optimizer.step()
        steps.append((x.detach() - before).abs())
    return torch.stack(steps)


def test_lecture_adam_first_step_is_longer_than_torch_adam():
    """k = 1: lecture (1-b1)|g| / sqrt((1-b2) g^2 + eps), PyTorch |g| / (|g| + eps)."""
    lr, (b1, b2), eps = 1e-2, (0.9, 0.999), 1e-8
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = constant_gradient_steps(LectureAdam, g, 1, lr=lr)[0]
    theirs = constant_gradient_steps(torch.optim.Adam, g, 1, lr=lr, foreach=False)[0]
    torch.testing.assert_close(ours, lr * (1 - b1) * g.abs() / ((1 - b2) * g**2 + eps).sqrt())
    torch.testing.assert_close(theirs, lr * g.abs() / (g.abs() + eps))
    # for |g| >> sqrt(eps / (1 - b2)) ~ 3e-3 the ratio is (1 - b1) / sqrt(1 - b2) = 3.162...
    big = g.abs() > 0.1  # there eps changes the ratio by less than 1e-3 (relative)
    ratio = ours[big] / theirs[big]
    torch.testing.assert_close(
        ratio, torch.full_like(ratio, 0.1 / math.sqrt(1e-3)), rtol=1e-3, atol=0
    )


def test_lecture_adam_approaches_torch_adam_as_bias_correction_fades():
    """Constant gradient, eps = 0: the step ratio is (1 - b1^k) / sqrt(1 - b2^k) exactly."""
    g = torch.tensor([0.7, -2.0], dtype=torch.float64)
    num_steps, (b1, b2) = 4000, (0.9, 0.999)
    ours = constant_gradient_steps(LectureAdam, g, num_steps, lr=1e-3, eps=0.0)
    theirs = constant_gradient_steps(torch.optim.Adam, g, num_steps, lr=1e-3, eps=0.0)
    k = torch.arange(1, num_steps + 1, dtype=torch.float64).unsqueeze(1)
    predicted = (1 - b1**k) / (1 - b2**k).sqrt()
    torch.testing.assert_close(ours / theirs, predicted.expand(-1, 2), rtol=1e-9, atol=0)
    ratio = (ours / theirs)[:, 0]
    assert ratio.argmax().item() + 1 == 12 and 6.5 < ratio.max() < 6.6  # largest at k = 12
    assert ratio[999] > 1.25  # still a quarter longer after 1000 steps
    assert abs(ratio[-1] - 1) < 0.01  # within 1% after 4000 steps


def test_lecture_adam_and_torch_adam_reach_the_same_minimizer():
    """Elongated quadratic x1^2 + 4 x2^2, lr t/(1 + k/10): both end near the minimizer 0."""
    finals = {}
    for cls in (LectureAdam, torch.optim.Adam):
        x = torch.nn.Parameter(torch.tensor([-2.0, 1.5], dtype=torch.float64))
        optimizer = cls([x], lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 / (1 + k / 10))
        for _ in range(1000):
            optimizer.zero_grad()
            (x[0] ** 2 + 4 * x[1] ** 2).backward()
            optimizer.step()
            scheduler.step()
        finals[cls.__name__] = x.detach()
    # the last learning rate is 0.1 / 101 ~ 1e-3 and Adam's steps are at most about lr long:
    # ending within one step of the minimizer is what convergence means here
    for name, final in finals.items():
        assert final.abs().max() < 1e-3, f"{name} ended at {final}"
    # and a minimizer with zero state is a fixed point of both
    for cls in (LectureAdam, torch.optim.Adam):
        x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        optimizer = cls([x], lr=0.1)
        for _ in range(5):
            x.grad = torch.zeros_like(x)
            optimizer.step()
        assert torch.equal(x.detach(), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (HeavyBall, {"lr": -1.0}),
        (HeavyBall, {"momentum": -0.1}),
        (NesterovLookahead, {"momentum": float("nan")}),
        (LectureAdam, {"betas": (1.0, 0.9)}),
        (LectureAdam, {"eps": -1.0}),
    ],
)
def test_invalid_hyperparameters(cls, kwargs):
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("cls", [HeavyBall, NesterovLookahead, LectureAdam])
@pytest.mark.parametrize(("device", "dtype"), [("cpu", torch.float64), ("meta", torch.float32)])
def test_state_follows_parameter(cls, device, dtype):
    x = torch.nn.Parameter(torch.ones(3, device=device, dtype=dtype))
    optimizer = cls([x], lr=0.1)

    def closure():
        x.grad = torch.ones_like(x)

    optimizer.step(closure)
    for key, value in optimizer.state[x].items():
        if key != "step":
            assert (value.device.type, value.dtype) == (device, dtype), key
