"""The polynomial example against autograd (the oracle for hand-written gradients)."""

import math

import pytest
import torch

from dnncourse.datasets import sine_data
from dnncourse.polynomial import (
    Polynomial3,
    gradient_descent_step,
    polynomial,
    polynomial_features,
    polynomial_gradients,
    sum_squares_loss,
)


def test_sine_data_is_the_lectures():
    x, y = sine_data(device="cpu", dtype=torch.float64)
    assert x.shape == y.shape == (2000,)
    assert x[0] == -math.pi and x[-1] == math.pi
    torch.testing.assert_close(y, torch.sin(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_points"):
        sine_data(1)


@pytest.mark.parametrize("degree", [1, 3, 5])
def test_polynomial_gradients_equal_autograd(degree):
    gen = torch.Generator().manual_seed(degree)
    x = torch.rand(300, generator=gen, dtype=torch.float64) * 2 * math.pi - math.pi
    y = torch.sin(x)
    coeffs = torch.randn(degree + 1, generator=gen, dtype=torch.float64, requires_grad=True)
    sum_squares_loss(polynomial(x, coeffs), y).backward()
    got = polynomial_gradients(x, y, coeffs.detach())
    torch.testing.assert_close(got, coeffs.grad, rtol=1e-12, atol=1e-9)


def test_polynomial_matches_the_explicit_cubic():
    model = Polynomial3(generator=torch.Generator().manual_seed(0)).double()
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    torch.testing.assert_close(model(x), polynomial(x, model.coefficients()))
    assert "x^3" in repr(model)


def test_features_make_the_cubic_a_linear_layer():
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    features = polynomial_features(x)
    assert features.shape == (7, 3)
    torch.testing.assert_close(features[:, 2], x**3)
    with pytest.raises(ValueError, match="1-D"):
        polynomial_features(features)
    with pytest.raises(ValueError, match="degree"):
        polynomial_features(x, degree=0)


def test_gradient_descent_step_matches_torch_sgd():
    gen = torch.Generator().manual_seed(1)
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float64)
    y = torch.sin(x)
    ours = torch.randn(4, generator=gen, dtype=torch.float64)
    theirs = ours.clone().requires_grad_(True)
    opt = torch.optim.SGD([theirs], lr=1e-6)
    for _ in range(100):
        gradient_descent_step([ours], [polynomial_gradients(x, y, ours)], lr=1e-6)
        opt.zero_grad()
        sum_squares_loss(polynomial(x, theirs), y).backward()
        opt.step()
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-12)
