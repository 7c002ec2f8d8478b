"""Tests of dnncourse.problems: closed forms against autograd, minimizers, determinism."""

import pytest
import torch
from torch.autograd.functional import hessian

from dnncourse.problems import LeastSquares, Quadratic, least_squares, run_optimizer

CPU = "cpu"


@pytest.fixture(scope="module")
def small_ls():
    return least_squares(200, 20, noise=0.5, seed=3, device=CPU)


def test_default_quadratic_is_the_lecture_example():
    f = Quadratic(device=CPU)
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)
    assert f(x).item() == 3.0**2 + 4 * 2.0**2
    assert f.condition_number == 4.0


@pytest.mark.parametrize("diag", [(1.0, 4.0), (0.5, 3.0, 20.0)])
def test_quadratic_grad_and_hessian_match_autograd(diag):
    f = Quadratic(diag, device=CPU)
    x = torch.randn(len(diag), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    (auto,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(f.grad(x.detach()), auto)
    torch.testing.assert_close(f.hessian(), hessian(f, x.detach()))


def test_quadratic_minimizer_and_batched_values():
    f = Quadratic((1.0, 4.0, 9.0), device=CPU)
    x_star = f.minimizer()
    assert f(x_star).item() == 0.0 and torch.count_nonzero(f.grad(x_star)) == 0
    xs = torch.randn(4, 5, 3, dtype=torch.float64)
    expected = torch.stack([f(v) for v in xs.reshape(-1, 3)]).reshape(4, 5)
    torch.testing.assert_close(f(xs), expected)
    assert (f(xs) > 0).all(), "the minimum 0 is attained only at x* = 0"


def test_from_condition_number():
    f = Quadratic.from_condition_number(100.0, dim=3, device=CPU)
    torch.testing.assert_close(f.diag, torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    assert f.condition_number == pytest.approx(100.0)
    assert Quadratic.from_condition_number(7.0, dim=1, device=CPU).condition_number == 1.0


@pytest.mark.parametrize("diag", [(1.0, 0.0), (1.0, -4.0), (), [[1.0]], (1.0, float("nan"))])
def test_bad_quadratic_raises(diag):
    with pytest.raises(ValueError, match="diag"):
        Quadratic(diag, device=CPU)


def test_quadratic_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        Quadratic(device=CPU)(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="condition_number"):
        Quadratic.from_condition_number(0.5)


def test_run_optimizer_gd_matches_the_closed_form():
    """GD on sum d_i x_i^2 with step a: x_i <- (1 - 2 a d_i) x_i, so x_k = (1 - 2 a d)^k x_0."""
    f, lr, x0 = Quadratic(device=CPU), 0.1, torch.tensor([2.0, 1.0], dtype=torch.float64)
    path = run_optimizer(f, lambda p: torch.optim.SGD(p, lr=lr), x0, 30)
    k = torch.arange(31, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(path, (1 - 2 * lr * f.diag) ** k * x0)


def test_run_optimizer_works_with_closure_methods_and_keeps_dtype():
    path = run_optimizer(Quadratic(device=CPU), torch.optim.LBFGS, [2.0, 1.0], 3)
    assert path.dtype == torch.float64 and path.shape == (4, 2)
    # LBFGS stops once the loss changes by less than tolerance_change = 1e-9
    assert Quadratic(device=CPU)(path[-1]) < 1e-9
    f32 = run_optimizer(
        Quadratic(device=CPU), lambda p: torch.optim.Adam(p, lr=0.1), torch.ones(2), 5
    )
    assert f32.dtype == torch.float32


def test_run_optimizer_drives_closure_only_lecture_forms():
    """NesterovLookahead needs the closure (gradient at the look-ahead point); heavy ball
    in the lecture's form gives the same iterates as torch.optim.SGD with momentum."""
    from dnncourse.lecture_optim import HeavyBall, NesterovLookahead

    f, x0 = Quadratic(device=CPU), [-4.0, 1.5]
    hb = run_optimizer(f, lambda p: HeavyBall(p, lr=0.05, momentum=0.6), x0, 40)
    sgd = run_optimizer(f, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.6), x0, 40)
    torch.testing.assert_close(hb, sgd)
    nag = run_optimizer(f, lambda p: NesterovLookahead(p, lr=0.05, momentum=0.6), x0, 40)
    x_prev = x = torch.tensor(x0, dtype=torch.float64)
    for k in range(40):  # x_{k+1} = y_k - a grad f(y_k), y_k = x_k + b (x_k - x_{k-1})
        y = x + 0.6 * (x - x_prev)
        x, x_prev = y - 0.05 * f.grad(y), x
        torch.testing.assert_close(nag[k + 1], x)


def test_run_optimizer_noise_is_seeded_and_changes_the_path():
    def run(seed, noise=0.5):
        g = torch.Generator().manual_seed(seed)
        opt = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
        return run_optimizer(Quadratic(device=CPU), opt, [2.0, 1.0], 10, noise=noise, generator=g)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), run(0, noise=0.0))
    with pytest.raises(ValueError, match="noise"):
        run(0, noise=-1.0)


def test_least_squares_default_shape_and_optimality():
    problem = least_squares(device=CPU)
    assert problem.X.shape == (10000, 500) and problem.y.shape == (10000,)
    assert problem.X.dtype == torch.float64
    # normal equations: the full gradient vanishes at w*
    grad = problem.grad(problem.w_star)
    assert grad.abs().max() < 1e-10, f"gradient at w* should vanish, got {grad.abs().max()}"
    # m F(w*) / noise^2 is chi-square with m - n degrees of freedom:
    # mean 1 - n/m = 0.95, std sqrt(2 (m - n)) / m = 0.014; allow 5 std
    assert abs(problem.min_loss - 0.95) < 5 * (2 / 10000) ** 0.5


def test_least_squares_grad_matches_autograd_full_and_batch(small_ls):
    w = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for idx in [None, torch.tensor([0, 5, 5, 17, 199])]:
        w_ = w.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(small_ls.loss(w_, idx), w_)
        torch.testing.assert_close(small_ls.grad(w, idx), auto)


def test_least_squares_w_star_is_the_lstsq_minimizer(small_ls):
    expected = torch.linalg.pinv(small_ls.X) @ small_ls.y
    torch.testing.assert_close(small_ls.w_star, expected)
    w = small_ls.w_star + 1e-3 * torch.randn(20, dtype=torch.float64)
    assert small_ls.loss(w) > small_ls.min_loss


def test_least_squares_smoothness_bounds_the_curvature(small_ls):
    """L = 2 lambda_max(X^T X) / m is the largest eigenvalue of the Hessian of F."""
    H = hessian(small_ls.loss, small_ls.w_star)
    torch.testing.assert_close(small_ls.smoothness(), torch.linalg.eigvalsh(H)[-1].item())


def test_least_squares_deterministic_by_seed():
    a, b = least_squares(50, 5, seed=7, device=CPU), least_squares(50, 5, seed=7, device=CPU)
    c = least_squares(50, 5, seed=8, device=CPU)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    torch.testing.assert_close(a.w_star, b.w_star)  # LAPACK: equal up to rounding
    assert not torch.equal(a.X, c.X)
    assert isinstance(a, LeastSquares) and least_squares(50, 5, dtype=torch.float32).X.dtype == (
        torch.float32
    )


def test_least_squares_noise_free_recovers_exact_fit():
    problem = least_squares(100, 10, noise=0.0, device=CPU)
    assert problem.min_loss < 1e-20


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_features": 0}, {"noise": -1.0}])
def test_least_squares_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        least_squares(**{"num_samples": 10, "num_features": 2, **kwargs})


def test_from_data_and_run_optimizer_give_gradient_descent_on_least_squares():
    """run_optimizer with plain SGD on LeastSquares.loss takes the closed-form GD steps."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 2, dtype=torch.float64, generator=gen)
    w_true = torch.tensor([1.0, -2.0], dtype=torch.float64)
    problem = LeastSquares.from_data(X, X @ w_true)
    torch.testing.assert_close(problem.w_star, w_true)
    lr = 0.1
    path = run_optimizer(problem.loss, lambda p: torch.optim.SGD(p, lr=lr), [0.0, 0.0], 3)
    w = torch.zeros(2, dtype=torch.float64)
    for k in range(3):
        w = w - lr * problem.grad(w)  # w_{k+1} = w_k - lr * (2/m) X^T (X w_k - y)
        torch.testing.assert_close(path[k + 1], w)
    long = run_optimizer(problem.loss, lambda p: torch.optim.SGD(p, lr=0.2), [0.0, 0.0], 500)
    torch.testing.assert_close(long[-1], w_true)
    with pytest.raises(ValueError):
        LeastSquares.from_data(X, X[:, 0][:-1])
