"""Checking gradients with central finite differences.

Lecture section: "Computing derivatives" (analytic, finite differences, automatic
differentiation; Baydin et al., 2017). For a scalar function :math:`f` and a step
:math:`h`, the central difference

.. math::  \\frac{\\partial f}{\\partial x_i} \\approx \\frac{f(x + h e_i) - f(x - h e_i)}{2h}

has truncation error :math:`\\tfrac{h^2}{6} f'''` (Taylor expansion), while rounding
adds about :math:`\\varepsilon_{\\text{mach}} |f| / h`. The total error is smallest near
:math:`h \\approx \\varepsilon_{\\text{mach}}^{1/3}`: about 1e-5 in float64, 5e-3 in float32.
"""

from collections.abc import Callable

import torch


@torch.no_grad()
def numerical_gradient(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float = 1e-5
) -> torch.Tensor:
    """Central finite-difference gradient of a scalar function ``f`` at ``x``.

    ``x`` may have any shape; it is restored exactly after each probe, and the result
    has its shape, dtype and device. Costs ``2 * x.numel()`` calls of ``f``.

    Args:
        f: maps a tensor shaped like ``x`` to a scalar tensor (or float).
        x: the point.
        h: the step (default 1e-5, good in float64).

    Example:
        >>> numerical_gradient(lambda w: (w**2).sum(), torch.tensor([3.0], dtype=torch.float64))
        tensor([6.0000], dtype=torch.float64)
    """
    if h <= 0:
        raise ValueError(f"step h must be positive, got {h}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    x = x.detach().clone()
    grad = torch.empty_like(x)
    flat, grad_flat = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        original = flat[i].item()
        flat[i] = original + h
        f_plus = float(f(x))
        flat[i] = original - h
        f_minus = float(f(x))
        flat[i] = original
        grad_flat[i] = (f_plus - f_minus) / (2 * h)
    return grad


def autograd_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The gradient of scalar ``f`` at ``x`` by reverse-mode automatic differentiation."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> float:
    """:math:`\\|a - b\\|_2 / \\max(\\|a\\|_2, \\|b\\|_2)`: 0 for equal tensors, scale free."""
    return float((a - b).norm() / max(float(a.norm()), float(b.norm()), eps))


def gradcheck_errors(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps
) -> list[float]:
    """Relative error of :func:`numerical_gradient` against autograd for each step ``h``.

    Plotted on log-log axes this shows the V shape: truncation error :math:`O(h^2)` on
    the right, rounding error :math:`O(1/h)` on the left.
    """
    exact = autograd_gradient(f, x)
    return [relative_error(numerical_gradient(f, x, h), exact) for h in steps]
