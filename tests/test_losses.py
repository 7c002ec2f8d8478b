"""Tests for dnncourse.losses: values and gradients equal torch.nn.functional's.

Oracle: PyTorch in float64 (``assert_close`` defaults, rtol 1e-7 and atol 1e-7), for every
reduction, on random inputs and at extreme logits (+-1000) where a naive
``log(softmax(z))`` gives -inf. Warnings are errors (an overflow warning fails a test).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dnncourse import losses as L

# a socket another test left to the garbage collector may be collected during these tests:
# its ResourceWarning is not theirs
pytestmark = pytest.mark.filterwarnings(
    "error", "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)

REDUCTIONS = ["mean", "sum", "none"]
f64 = torch.float64


def randn(*shape, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, dtype=f64, generator=gen)


def value_and_grads(f, *inputs):
    """f's value and its gradients with respect to the inputs that are floating point."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    y = f(*inputs)
    upstream = torch.linspace(0.5, 2, y.numel(), dtype=y.dtype).reshape(y.shape)
    wrt = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(y, wrt, upstream)
    return y.detach(), grads


def assert_same(ours, theirs, *inputs, equal_nan=False):
    y, grads = value_and_grads(ours, *inputs)
    y_ref, grads_ref = value_and_grads(theirs, *inputs)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, equal_nan=equal_nan)
    return y, grads


# ---------------------------------------------------------------- regression losses


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_regression_losses_equal_torch(name, reduction):
    y_hat, y = randn(8, 3, seed=1), randn(8, 3, seed=2)
    y[0, 0] = y_hat[0, 0]  # a zero residual: l1's subgradient there is 0 in both
    ours, theirs = getattr(L, name), getattr(F, name)
    assert_same(
        lambda a, b: ours(a, b, reduction=reduction),
        lambda a, b: theirs(a, b, reduction=reduction),
        y_hat,
        y,
    )


def test_l1_gradient_is_bounded_under_an_outlier_and_mse_is_not():
    y_hat = torch.zeros(5, dtype=f64, requires_grad=True)
    y = torch.tensor([0.1, -0.2, 0.1, 0.0, 1000.0], dtype=f64)
    (g1,) = torch.autograd.grad(L.l1_loss(y_hat, y, reduction="sum"), y_hat)
    (g2,) = torch.autograd.grad(L.mse_loss(y_hat, y, reduction="sum"), y_hat)
    assert g1.abs().max() == 1.0  # sign(y_hat - y)
    assert g2.abs().max() == 2000.0  # 2 (y_hat - y)


# ---------------------------------------------------------------- binary cross-entropy


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_equals_torch_including_clamps(reduction):
    # p = 0 and p = 1 hit the log clamp at -100; 1e-20 hits the 1e-12 gradient clamp
    p = torch.tensor([0.0, 1e-20, 0.3, 0.5, 0.999, 1.0, 1.0], dtype=f64)
    y = torch.tensor([1.0, 0.5, 0.2, 1.0, 0.0, 0.0, 1.0], dtype=f64)
    value, _ = assert_same(
        lambda a, b: L.binary_cross_entropy(a, b, reduction=reduction),
        lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
        p,
        y,
    )
    if reduction == "none":
        assert value[0] == 100.0 and value[5] == 100.0  # -max(log 0, -100)
        assert value[6] == 0.0


def test_binary_cross_entropy_with_weight_and_random_inputs():
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(6, 4, dtype=f64, generator=gen)
    y = (torch.rand(6, 4, dtype=f64, generator=gen) > 0.5).to(f64)
    w = torch.rand(4, dtype=f64, generator=gen)
    assert_same(
        lambda a, b: L.binary_cross_entropy(a, b, weight=w),
        lambda a, b: F.binary_cross_entropy(a, b, weight=w),
        p,
        y,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_equals_torch_at_extremes(reduction):
    z = torch.tensor([-1e30, -1000.0, -30.0, -1.0, 0.0, 2.0, 1000.0, 1e30], dtype=f64)
    y = torch.tensor([1.0, 1.0, 0.0, 0.3, 0.5, 1.0, 0.0, 1.0], dtype=f64)
    value, _ = assert_same(
        lambda a, b: L.binary_cross_entropy_with_logits(a, b, reduction=reduction),
        lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
        z,
        y,
    )
    assert torch.isfinite(value).all()


def test_binary_cross_entropy_rejects_probabilities_outside_unit_interval():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        L.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0]))


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["unit", "extreme"])
def test_cross_entropy_with_class_indices_equals_torch(scale, reduction, label_smoothing):
    logits = randn(7, 5, scale=scale, seed=4)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    value, _ = assert_same(
        lambda z, t: L.cross_entropy(z, t, reduction=reduction, label_smoothing=label_smoothing),
        lambda z, t: F.cross_entropy(z, t, reduction=reduction, label_smoothing=label_smoothing),
        logits,
        y,
    )
    assert torch.isfinite(value).all()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_probability_targets_equals_torch(reduction, label_smoothing):
    logits = randn(6, 4, scale=1000.0, seed=5)
    target = torch.softmax(randn(6, 4, seed=6), dim=1)
    target[0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # a one-hot row
    assert_same(
        lambda z, t: L.cross_entropy(z, t, reduction=reduction, label_smoothing=label_smoothing),
        lambda z, t: F.cross_entropy(z, t, reduction=reduction, label_smoothing=label_smoothing),
        logits,
        target,
    )


@pytest.mark.parametrize(
    ("shape", "target_shape"), [((5,), ()), ((3, 4, 2, 2), (3, 2, 2))], ids=["single", "4d"]
)
def test_cross_entropy_other_layouts_equal_torch(shape, target_shape):
    logits = randn(*shape, seed=7)
    gen = torch.Generator().manual_seed(8)
    y = torch.randint(0, shape[0 if len(shape) == 1 else 1], target_shape, generator=gen)
    assert_same(
        lambda z, t: L.cross_entropy(z, t, label_smoothing=0.1),
        lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
        logits,
        y,
    )


def test_cross_entropy_gradient_is_softmax_minus_target():
    logits = randn(4, 3, scale=1000.0, seed=9).requires_grad_(True)
    y = torch.tensor([2, 0, 1, 1])
    (grad,) = torch.autograd.grad(L.cross_entropy(logits, y, reduction="sum"), logits)
    expected = torch.softmax(logits.detach(), dim=1) - F.one_hot(y, 3).to(f64)
    torch.testing.assert_close(grad, expected)


def test_cross_entropy_at_logits_1000_is_finite_where_naive_is_not():
    logits = torch.tensor([[1000.0, -1000.0]], dtype=f64)
    y = torch.tensor([1])
    assert L.cross_entropy(logits, y).item() == 2000.0  # log-sum-exp = 1000, z_1 = -1000
    naive = -torch.log(torch.softmax(logits, dim=1))[0, 1]
    assert torch.isinf(naive)


# ---------------------------------------------------------------- one-hot and smoothing


def test_one_hot_equals_torch():
    y = torch.tensor([[2, 0], [1, 4]])
    assert torch.equal(L.one_hot(y), F.one_hot(y))
    assert torch.equal(L.one_hot(y, 6), F.one_hot(y, 6))
    assert L.one_hot(y).dtype == torch.int64


def test_smooth_labels_lecture_convention():
    # m = 4 classes, eps = 0.05: off-target 0.05, target 1 - 3 * 0.05 = 0.85
    s = L.smooth_labels(torch.tensor([2]), 4, 0.05, dtype=f64)
    torch.testing.assert_close(s, torch.tensor([[0.05, 0.05, 0.85, 0.05]], dtype=f64))
    assert s.dtype == f64


def test_smooth_labels_pytorch_convention():
    # eps = 0.2 spread over all m = 4 classes: 0.05 each, target 0.8 + 0.05
    s = L.smooth_labels(torch.tensor([2]), 4, 0.2, convention="pytorch", dtype=f64)
    torch.testing.assert_close(s, torch.tensor([[0.05, 0.05, 0.85, 0.05]], dtype=f64))


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1])
def test_smoothing_conventions_relate_by_the_number_of_classes(eps):
    """Lecture eps with m classes == PyTorch's label_smoothing = m * eps."""
    m = 5
    logits = randn(8, m, scale=10.0, seed=10)
    y = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2])
    lecture = L.cross_entropy(logits, L.smooth_labels(y, m, eps, dtype=f64))
    torch.testing.assert_close(lecture, F.cross_entropy(logits, y, label_smoothing=m * eps))
    pytorch = L.cross_entropy(logits, L.smooth_labels(y, m, eps, "pytorch", dtype=f64))
    torch.testing.assert_close(pytorch, F.cross_entropy(logits, y, label_smoothing=eps))
    torch.testing.assert_close(pytorch, L.cross_entropy(logits, y, label_smoothing=eps))


def test_smoothing_gives_every_wrong_class_a_gradient():
    """The lecture's argument: with one-hot targets y_i = 0 contributes nothing."""
    z = torch.tensor([[0.0, 0.0, 50.0]], dtype=f64, requires_grad=True)
    y = torch.tensor([2])
    (g_hot,) = torch.autograd.grad(L.cross_entropy(z, y), z)
    (g_smooth,) = torch.autograd.grad(L.cross_entropy(z, y, label_smoothing=0.3), z)
    assert g_hot.abs().max() < 1e-20  # the softmax already matches the one-hot target
    torch.testing.assert_close(g_smooth[0, :2], torch.full((2,), -0.1, dtype=f64))


# ---------------------------------------------------------------- KL divergence


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_equals_torch(reduction, log_target):
    log_q = torch.log_softmax(randn(4, 6, scale=3.0, seed=11), dim=1)
    p = torch.softmax(randn(4, 6, scale=3.0, seed=12), dim=1)
    if not log_target:
        p[0] = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0])  # 0 log 0 = 0
    target = p.log() if log_target else p
    # d/dp (p log p) = log p + 1 is -inf at p = 0: PyTorch's target gradient is nan there
    _, (_, g_target) = assert_same(
        lambda a, b: L.kl_div(a, b, reduction=reduction, log_target=log_target),
        lambda a, b: F.kl_div(a, b, reduction=reduction, log_target=log_target),
        log_q,
        target,
        equal_nan=True,
    )
    assert torch.isnan(g_target).sum() == (0 if log_target else 4)


def test_kl_div_mean_reduction_equals_torch():
    log_q = torch.log_softmax(randn(3, 5, seed=13), dim=1)
    p = torch.softmax(randn(3, 5, seed=14), dim=1)
    with pytest.warns(UserWarning, match="batchmean"):  # PyTorch warns, we do not
        expected = F.kl_div(log_q, p, reduction="mean")
    torch.testing.assert_close(L.kl_div(log_q, p, reduction="mean"), expected)


def test_kl_div_default_is_batchmean_and_is_the_kl_divergence():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=f64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=f64)
    # D(p || q) = 2 * 0.5 * log(0.5 / 0.25) = log 2
    torch.testing.assert_close(L.kl_div(q.log(), p), torch.tensor(math.log(2), dtype=f64))
    # D(q || q) = 0, and D(p || q) = cross-entropy(p, q) - entropy(p) otherwise
    assert L.kl_div(q.log(), q).item() == 0.0
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    torch.testing.assert_close(
        L.kl_div(q.log(), p), L.cross_entropy(q.log(), p, reduction="sum") - entropy
    )


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: L.mse_loss(torch.zeros(2), torch.zeros(2), reduction="avg"),
        lambda: L.l1_loss(torch.zeros(2), torch.zeros(2), reduction="batchmean"),
        lambda: L.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "avg"),
        lambda: L.kl_div(torch.zeros(2), torch.zeros(2), reduction="max"),
    ],
)
def test_bad_reduction_raises(call):
    with pytest.raises(ValueError, match="reduction must be one of"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: L.mse_loss(torch.zeros(2, 1), torch.zeros(2)),
        lambda: L.l1_loss(torch.zeros(3), torch.zeros(2)),
        lambda: L.binary_cross_entropy(torch.zeros(2), torch.zeros(1)),
        lambda: L.binary_cross_entropy_with_logits(torch.zeros(2), torch.zeros(2, 2)),
        lambda: L.kl_div(torch.zeros(2, 3), torch.zeros(3, 2)),
        lambda: L.cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4)),
        lambda: L.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)),
    ],
)
def test_shape_mismatch_raises(call):
    with pytest.raises(ValueError, match="shape"):
        call()


def test_bad_class_indices_and_smoothing_raise():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        L.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="label_smoothing"):
        L.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"1/\(m-1\)"):
        L.smooth_labels(torch.tensor([0]), 3, 0.6)
    with pytest.raises(ValueError, match="convention"):
        L.smooth_labels(torch.tensor([0]), 3, 0.1, convention="keras")
    with pytest.raises(ValueError, match="integer"):
        L.one_hot(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        L.one_hot(torch.tensor([0, 2]), 2)


@pytest.mark.gpu
def test_losses_on_cuda_equal_torch():
    logits = randn(16, 5, scale=1000.0).cuda()
    y = torch.arange(16, device="cuda") % 5
    for eps in (0.0, 0.1):
        out = L.cross_entropy(logits, y, label_smoothing=eps)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out, F.cross_entropy(logits, y, label_smoothing=eps))
    p, t = torch.sigmoid(logits), (logits > 0).to(f64)
    torch.testing.assert_close(L.binary_cross_entropy(p, t), F.binary_cross_entropy(p, t))
    smooth = L.smooth_labels(y, 5, 0.02, dtype=f64)
    assert smooth.device.type == "cuda"
