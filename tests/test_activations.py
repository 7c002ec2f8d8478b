"""Tests for dnncourse.activations: values and gradients equal torch.nn.functional's.

Oracle: PyTorch in float64 (``torch.testing.assert_close`` defaults: rtol 1e-7, atol 1e-7),
on random inputs and at extreme ones (+-1000, +-1e30) where a naive formula overflows.
Warnings are errors here, so an overflow warning would fail a test.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from dnncourse import activations as A

# a socket another test left to the garbage collector may be collected during these tests:
# its ResourceWarning is not theirs
pytestmark = pytest.mark.filterwarnings(
    "error", "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)

EXTREME = torch.tensor(
    [-1e30, -1e4, -1000.0, -50.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 50.0, 1000.0, 1e4, 1e30],
    dtype=torch.float64,
)

ELEMENTWISE = [
    (A.sigmoid, torch.sigmoid),
    (A.tanh, torch.tanh),
    (A.relu, F.relu),
    (A.leaky_relu, F.leaky_relu),
    (lambda x: A.leaky_relu(x, negative_slope=0.2), lambda x: F.leaky_relu(x, 0.2)),
    (A.elu, F.elu),
    (lambda x: A.elu(x, alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
]


def value_and_grad(f, x):
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    # a non-constant upstream gradient, so every entry of the vector-Jacobian product counts
    upstream = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).reshape(y.shape)
    (grad,) = torch.autograd.grad(y, x, upstream)
    return y.detach(), grad


def random_input(*shape, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, dtype=torch.float64, generator=gen)


@pytest.mark.parametrize(("ours", "theirs"), ELEMENTWISE)
@pytest.mark.parametrize("x", [random_input(50, 7), EXTREME], ids=["random", "extreme"])
def test_elementwise_value_and_gradient_equal_torch(ours, theirs, x):
    y, g = value_and_grad(ours, x)
    y_ref, g_ref = value_and_grad(theirs, x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)


def test_derivatives_match_the_closed_forms():
    x = random_input(200)
    upstream = torch.linspace(-1, 2, 200, dtype=torch.float64)  # as in value_and_grad
    s, t = A.sigmoid(x), A.tanh(x)
    torch.testing.assert_close(value_and_grad(A.sigmoid, x)[1], upstream * s * (1 - s))
    torch.testing.assert_close(value_and_grad(A.tanh, x)[1], upstream * (1 - t**2))


def test_derivatives_at_zero_follow_pytorch_conventions():
    functions = {"sigmoid": A.sigmoid, "tanh": A.tanh, "relu": A.relu}
    functions |= {"leaky_relu": A.leaky_relu, "elu": A.elu}
    grads = {}
    for name, f in functions.items():
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (grads[name],) = torch.autograd.grad(f(x).sum(), x)
    assert grads["sigmoid"].item() == 0.25  # sigma(0)(1 - sigma(0))
    assert grads["tanh"].item() == 1.0
    assert grads["relu"].item() == 0.0  # PyTorch's choice at the kink
    assert grads["leaky_relu"].item() == 0.01
    assert grads["elu"].item() == 1.0  # alpha * e^0


def test_sigmoid_is_accurate_in_both_tails():
    # For x << 0, sigma(x) = e^x (1 - e^x + ...): relative accuracy, not just "small".
    x = torch.tensor([-700.0, -300.0, -40.0], dtype=torch.float64)
    torch.testing.assert_close(A.sigmoid(x), torch.exp(x), rtol=1e-15, atol=0)
    assert A.sigmoid(torch.tensor([1000.0], dtype=torch.float64)).item() == 1.0


def test_tanh_keeps_relative_precision_near_zero():
    x = torch.tensor([1e-10, -1e-12, 1e-300], dtype=torch.float64)
    torch.testing.assert_close(A.tanh(x), x, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape_preserved(dtype):
    x = torch.randn(2, 3, 4, dtype=dtype)
    for f in (A.sigmoid, A.tanh, A.relu, A.leaky_relu, A.elu):
        y = f(x)
        assert y.dtype == dtype and y.shape == x.shape
    assert A.softmax(x, dim=1).dtype == dtype


def test_relu_propagates_nan_like_torch():
    x = torch.tensor([float("nan"), -1.0, 2.0])
    torch.testing.assert_close(A.relu(x), F.relu(x), equal_nan=True)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("scale", [1.0, 1000.0, 1e30], ids=["unit", "1e3", "1e30"])
def test_softmax_and_log_softmax_equal_torch(dim, scale):
    x = random_input(6, 5, scale=scale, seed=1)
    for ours, theirs in [(A.softmax, F.softmax), (A.log_softmax, F.log_softmax)]:
        y, g = value_and_grad(lambda z, f=ours: f(z, dim=dim), x)
        y_ref, g_ref = value_and_grad(lambda z, f=theirs: f(z, dim=dim), x)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(g, g_ref)


def test_softmax_at_logits_of_plus_minus_1000():
    x = torch.tensor([[1000.0, 1000.0, -1000.0], [-1000.0, -1000.0, -1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = A.softmax(x, dim=1)
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2))
    # the naive formula fails exactly here: exp(1000) = inf, inf / inf = nan
    naive = torch.exp(x) / torch.exp(x).sum(dim=1, keepdim=True)
    assert torch.isnan(naive).any()


def test_maxout_equals_max_of_affine_pieces():
    torch.manual_seed(0)
    layer = A.Maxout(4, 3, num_pieces=5, dtype=torch.float64)
    x = random_input(10, 4)
    W = layer.linear.weight.detach().reshape(3, 5, 4)
    b = layer.linear.bias.detach().reshape(3, 5)
    # unit i, piece j: w_ij^T x + b_ij
    pieces = torch.einsum("ijd,nd->nij", W, x) + b
    torch.testing.assert_close(layer(x), pieces.amax(dim=-1))
    assert layer(x).shape == (10, 3)
    assert "num_pieces=5" in repr(layer)


def test_maxout_gradient_goes_to_the_winning_piece():
    layer = A.Maxout(2, 1, num_pieces=2, dtype=torch.float64)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        layer.linear.bias.zero_()
    x = torch.tensor([[3.0, 7.0], [-3.0, 7.0]], dtype=torch.float64)
    # piece 1 is x_1, piece 2 is 0: the unit is a ReLU of x_1
    torch.testing.assert_close(layer(x), torch.tensor([[3.0], [0.0]], dtype=torch.float64))
    layer(x).sum().backward()
    torch.testing.assert_close(
        layer.linear.weight.grad, torch.tensor([[3.0, 7.0], [-3.0, 7.0]], dtype=torch.float64)
    )


def test_maxout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_pieces"):
        A.Maxout(3, 2, num_pieces=0)
    with pytest.raises(ValueError, match="last dimension 3"):
        A.Maxout(3, 2)(torch.randn(4, 5))


@pytest.mark.gpu
def test_activations_on_cuda_equal_torch():
    x = random_input(64, 10).cuda()
    for ours, theirs in ELEMENTWISE:
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(A.softmax(1000 * x, dim=1), F.softmax(1000 * x, dim=1))
    layer = A.Maxout(10, 4, device="cuda")
    assert layer(x.float()).device.type == "cuda"
