"""Central finite differences against autograd, and the error law they obey."""

import pytest
import torch

from dnncourse.gradcheck import (
    autograd_gradient,
    gradcheck_errors,
    numerical_gradient,
    relative_error,
)


def f(w):
    return torch.sin(w).sum() + (w**3).sum() / 3 + (w[..., :1] * w).sum()


def test_numerical_gradient_equals_autograd_in_float64():
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = w.clone()
    # error budget: (h^2 / 6) |f'''| ~ 1e-10 plus rounding ~ 1e-16 / h ~ 1e-11
    torch.testing.assert_close(
        numerical_gradient(f, w, h=1e-5), autograd_gradient(f, w), rtol=1e-8, atol=1e-8
    )
    assert torch.equal(w, before), "the point must be left unchanged"


def test_central_difference_error_is_exactly_h_squared_on_a_cubic():
    # ((w + h)^3 - (w - h)^3) / (2h) = 3 w^2 + h^2: the truncation error is h^2, no more.
    w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    for h in (1e-1, 1e-2):
        err = numerical_gradient(lambda v: (v**3).sum(), w, h) - 3 * w**2
        torch.testing.assert_close(err, torch.full_like(w, h**2), rtol=1e-6, atol=1e-13)


def test_error_curve_is_v_shaped():
    w = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    large, best, tiny = gradcheck_errors(f, w, [1e-1, 1e-5, 1e-12])
    assert best < large and best < tiny


def test_bad_input():
    with pytest.raises(ValueError, match="positive"):
        numerical_gradient(f, torch.zeros(2, dtype=torch.float64), h=0)
    with pytest.raises(TypeError, match="floating"):
        numerical_gradient(f, torch.zeros(2, dtype=torch.int64))
    assert relative_error(torch.ones(3), torch.ones(3)) == 0.0
