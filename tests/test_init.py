"""Tests for dnncourse.init: same numbers as torch.nn.init, and the variances theory gives.

Oracles:

- ``torch.nn.init``: each function draws exactly as PyTorch does (one ``uniform_`` or
  ``normal_`` with the same bound, or QR of the same Gaussian matrix), so with the same
  generator state the tensors must be *identical* (``torch.equal``).
- Theory for the statistics. For ``n`` iid zero-mean draws with variance ``v``, the
  second moment ``m2 = mean(w^2)`` estimates ``v`` with standard error
  ``v * sqrt(2 / n)`` for a normal (``Var(w^2) = E w^4 - v^2 = 3v^2 - v^2``) and
  ``v * sqrt(0.8 / n)`` for a uniform on ``[-a, a]`` (``E w^4 = a^4/5``, ``v = a^2/3``,
  so ``Var(w^2) = a^4 (1/5 - 1/9) = 0.8 v^2``); the mean has standard error
  ``sqrt(v / n)``. We allow 6 standard errors (a false alarm has probability about
  2e-9). With ``n = 10^6`` that is a relative tolerance of 0.85% (normal) or 0.54%
  (uniform) on the variance, far tighter than the gaps between the schemes tested
  (e.g. ``2/(d_in + d_out)`` against ``2/d_in`` differ by 16% for the shape below).
"""

import math

import pytest
import torch
from torch import nn

from dnncourse import init as I

D_OUT, D_IN = 400, 2500  # n = 10^6 entries; fans differ, so each formula is distinguishable
N = D_OUT * D_IN
SE_FACTOR = {"normal": math.sqrt(2 / N), "uniform": math.sqrt(0.8 / N)}
K = 6  # standard errors allowed


def assert_variance(w: torch.Tensor, variance: float, distribution: str) -> None:
    w = w.double()
    m2 = (w**2).mean().item()
    assert abs(m2 - variance) <= K * variance * SE_FACTOR[distribution], (
        f"second moment {m2:.6g}, theory {variance:.6g}"
    )
    mean = w.mean().item()
    assert abs(mean) <= K * math.sqrt(variance / w.numel()), f"mean {mean:.3g} is not ~0"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- equal to torch.nn.init

CASES = [
    ("xavier_uniform_", {}),
    ("xavier_uniform_", {"gain": 5 / 3}),
    ("xavier_normal_", {"gain": 2.0}),
    ("kaiming_uniform_", {}),
    ("kaiming_uniform_", {"a": 0.2, "mode": "fan_out"}),
    ("kaiming_normal_", {"nonlinearity": "relu"}),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "tanh"}),
    ("orthogonal_", {}),
    ("orthogonal_", {"gain": 1.5}),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (8, 3, 3, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_values_as_torch_with_the_same_generator(name, kwargs, shape, dtype):
    ours = getattr(I, name)(torch.empty(shape, dtype=dtype), generator=gen(7), **kwargs)
    theirs = getattr(nn.init, name)(torch.empty(shape, dtype=dtype), generator=gen(7), **kwargs)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", ["xavier_normal_", "kaiming_uniform_", "orthogonal_"])
def test_same_values_as_torch_with_the_global_generator(name):
    torch.manual_seed(3)
    ours = getattr(I, name)(torch.empty(6, 4))
    torch.manual_seed(3)
    theirs = getattr(nn.init, name)(torch.empty(6, 4))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("nonlinearity", "param"),
    [
        ("linear", None),
        ("conv2d", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("selu", None),
    ],
)
def test_calculate_gain_equals_torch(nonlinearity, param):
    assert I.calculate_gain(nonlinearity, param) == nn.init.calculate_gain(nonlinearity, param)


def test_gains_from_the_variance_argument():
    # ReLU keeps half the second moment: gain^2 = 2; leaky ReLU keeps (1 + a^2) / 2
    assert I.calculate_gain("relu") ** 2 == pytest.approx(2.0)
    assert I.calculate_gain("leaky_relu", 0.5) ** 2 == pytest.approx(2 / 1.25)


# ---------------------------------------------------------------- statistics from theory


@pytest.mark.parametrize(
    ("fill", "variance", "distribution"),
    [
        (lambda w: I.xavier_normal_(w, generator=gen(1)), 2 / (D_IN + D_OUT), "normal"),
        (lambda w: I.xavier_uniform_(w, generator=gen(2)), 2 / (D_IN + D_OUT), "uniform"),
        (lambda w: I.kaiming_normal_(w, generator=gen(3)), 2 / D_IN, "normal"),
        (lambda w: I.kaiming_uniform_(w, generator=gen(4)), 2 / D_IN, "uniform"),
        (
            lambda w: I.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=gen(5)),
            2 / D_OUT,
            "normal",
        ),
        (
            lambda w: I.kaiming_uniform_(w, nonlinearity="linear", generator=gen(6)),
            1 / D_IN,
            "uniform",
        ),
        (lambda w: I.defazio_bottou_(w, generator=gen(8)), 2 / math.sqrt(D_IN * D_OUT), "normal"),
        (
            lambda w: I.defazio_bottou_(w, c=0.5, distribution="uniform", generator=gen(9)),
            0.5 / math.sqrt(D_IN * D_OUT),
            "uniform",
        ),
    ],
    ids=[
        "xavier_normal",
        "xavier_uniform",
        "kaiming_normal",
        "kaiming_uniform",
        "kaiming_normal_fan_out",
        "kaiming_uniform_linear",
        "defazio_bottou_normal",
        "defazio_bottou_uniform",
    ],
)
def test_variance_matches_theory(fill, variance, distribution):
    w = fill(torch.empty(D_OUT, D_IN))
    assert_variance(w, variance, distribution)


def test_tolerance_separates_xavier_from_kaiming():
    """The check above can fail: Kaiming's weights are not Xavier's variance."""
    w = I.kaiming_normal_(torch.empty(D_OUT, D_IN), generator=gen(10))
    with pytest.raises(AssertionError, match="second moment"):
        assert_variance(w, 2 / (D_IN + D_OUT), "normal")


@pytest.mark.parametrize(
    ("fill", "bound"),
    [
        (lambda w: I.xavier_uniform_(w, generator=gen(11)), math.sqrt(6 / (D_IN + D_OUT))),
        # the lecture's Kaiming bound sqrt(6 / d_in), from PyTorch's defaults
        (lambda w: I.kaiming_uniform_(w, generator=gen(12)), math.sqrt(6 / D_IN)),
        (
            lambda w: I.kaiming_uniform_(w, nonlinearity="relu", generator=gen(13)),
            math.sqrt(6 / D_IN),
        ),
    ],
    ids=["xavier", "kaiming_default", "kaiming_relu"],
)
def test_uniform_bounds(fill, bound):
    w = fill(torch.empty(D_OUT, D_IN, dtype=torch.float64))
    assert w.abs().max() <= bound
    # and the bound is reached: P(max |w| < (1 - 1e-4) bound) = (1 - 1e-4)^n = e^-100
    assert w.abs().max() >= (1 - 1e-4) * bound


def test_conv_weight_fans():
    w = torch.empty(16, 3, 5, 5)  # (out channels, in channels, kernel)
    assert I.calculate_fan_in_and_fan_out(w) == (3 * 25, 16 * 25)
    assert I.calculate_fan_in_and_fan_out(torch.empty(7, 2)) == (2, 7)
    assert I.calculate_fan_in_and_fan_out(w) == nn.init._calculate_fan_in_and_fan_out(w)


def test_conv_weight_variance():
    w = I.kaiming_normal_(torch.empty(200, 50, 10, 10), generator=gen(14))  # n = 10^6
    assert_variance(w, 2 / (50 * 100), "normal")


# ---------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("gain", [1.0, 2.5])
@pytest.mark.parametrize("shape", [(20, 60), (60, 20), (30, 30), (8, 3, 3, 3)], ids=str)
def test_orthogonal_rows_or_columns_are_orthonormal(shape, gain):
    w = I.orthogonal_(torch.empty(shape, dtype=torch.float64), gain=gain, generator=gen(15))
    W = w.reshape(shape[0], -1)
    rows, cols = W.shape
    gram = W @ W.T if rows <= cols else W.T @ W
    torch.testing.assert_close(gram, gain**2 * torch.eye(min(rows, cols), dtype=torch.float64))


def test_orthogonal_preserves_lengths_in_a_deep_linear_stack():
    x = torch.randn(64, dtype=torch.float64, generator=gen(16))
    h = x
    for layer in range(50):
        h = I.orthogonal_(torch.empty(64, 64, dtype=torch.float64), generator=gen(layer)) @ h
    torch.testing.assert_close(h.norm(), x.norm())


# ---------------------------------------------------------------- API behaviour

ALL = [
    I.xavier_uniform_,
    I.xavier_normal_,
    I.kaiming_uniform_,
    I.kaiming_normal_,
    I.orthogonal_,
    I.defazio_bottou_,
]


@pytest.mark.parametrize("fill", ALL, ids=lambda f: f.__name__)
def test_in_place_returns_the_tensor_and_keeps_dtype(fill):
    layer = nn.Linear(5, 3, dtype=torch.float64)
    before = layer.weight.detach().clone()
    out = fill(layer.weight, generator=gen(17))  # a Parameter that requires grad
    assert out is layer.weight
    assert out.dtype == torch.float64 and out.requires_grad
    assert not torch.equal(out.detach(), before)


@pytest.mark.parametrize("fill", ALL, ids=lambda f: f.__name__)
def test_same_generator_state_same_tensor(fill):
    a = fill(torch.empty(4, 6), generator=gen(18))
    b = fill(torch.empty(4, 6), generator=gen(18))
    c = fill(torch.empty(4, 6), generator=gen(19))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fill", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(5,), ()], ids=["1d", "0d"])
def test_fewer_than_two_dimensions_raise(fill, shape):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fill(torch.empty(shape))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        I.kaiming_normal_(torch.empty(3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity"):
        I.kaiming_uniform_(torch.empty(3, 3), nonlinearity="swish")
    with pytest.raises(ValueError, match="negative_slope"):
        I.calculate_gain("leaky_relu", "0.1")
    with pytest.raises(ValueError, match="distribution"):
        I.defazio_bottou_(torch.empty(3, 3), distribution="laplace")
    with pytest.raises(ValueError, match="positive"):
        I.defazio_bottou_(torch.empty(3, 3), c=0.0)


@pytest.mark.parametrize("fill", ALL, ids=lambda f: f.__name__)
def test_zero_element_tensor_is_a_no_op(fill):
    w = torch.empty(0, 4)
    assert fill(w) is w


@pytest.mark.gpu
@pytest.mark.parametrize("fill", ALL, ids=lambda f: f.__name__)
def test_init_on_cuda(fill):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = fill(torch.empty(300, 400, device="cuda"), generator=g)
    assert w.device.type == "cuda" and torch.isfinite(w).all()
    if fill is not I.defazio_bottou_:
        g = torch.Generator(device="cuda").manual_seed(0)
        ref = getattr(nn.init, fill.__name__)(torch.empty(300, 400, device="cuda"), generator=g)
        assert torch.equal(w, ref)
