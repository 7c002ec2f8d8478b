"""Polynomial fitting with PyTorch: the lecture's first example, layer by layer.

Lecture section: "A simple example" (train :math:`y = a + bx + cx^2 + dx^3` on
:math:`\\sin x`). The same fit is done five ways in the book: hand-derived gradients,
autograd, ``nn.Sequential`` with ``MSELoss``, a built-in optimizer, a custom module.
This module holds the pieces those versions share.

For coefficients :math:`w = (w_0, \\dots, w_p)` and the sum-of-squares loss

.. math::

    L(w) = \\sum_{i=1}^{m} \\big(\\hat y_i - y_i\\big)^2, \\qquad
    \\hat y_i = \\sum_{k=0}^{p} w_k x_i^k,

the chain rule gives :math:`\\partial L / \\partial w_k = \\sum_i 2 (\\hat y_i - y_i) x_i^k`.

References: Baydin et al. (2017) on the three ways to compute derivatives.
"""

import torch
from torch import nn


def polynomial_features(x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Stack the powers :math:`x, x^2, \\dots, x^p` as columns: shape ``(m, degree)``.

    This turns the cubic into a linear model, so ``nn.Linear(degree, 1)`` can fit it
    (the constant term is the layer's bias).

    Example:
        >>> polynomial_features(torch.tensor([2.0]))
        tensor([[2., 4., 8.]])
    """
    if x.dim() != 1:
        raise ValueError(f"x must be a 1-D tensor of inputs, got shape {tuple(x.shape)}")
    if degree < 1:
        raise ValueError(f"degree must be at least 1, got {degree}")
    powers = torch.arange(1, degree + 1, device=x.device)
    return x.unsqueeze(-1).pow(powers)


def polynomial(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Evaluate :math:`\\sum_k w_k x^k` with Horner's rule; ``coeffs[k]`` multiplies ``x**k``."""
    y_hat = torch.zeros_like(x) + coeffs[-1]
    for w_k in coeffs.flip(0)[1:]:
        y_hat = y_hat * x + w_k
    return y_hat


def sum_squares_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lecture's loss :math:`\\sum_i (\\hat y_i - y_i)^2` (``MSELoss(reduction='sum')``)."""
    return (y_hat - y).pow(2).sum()


def polynomial_gradients(x: torch.Tensor, y: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Hand-derived gradient of :func:`sum_squares_loss` with respect to ``coeffs``.

    .. math::  \\frac{\\partial L}{\\partial w_k} = \\sum_{i} 2(\\hat y_i - y_i)\\, x_i^k

    Args:
        x: inputs, shape ``(m,)``.
        y: targets, shape ``(m,)``.
        coeffs: :math:`(w_0, \\dots, w_p)`, shape ``(p + 1,)``.

    Returns:
        The gradient, same shape, dtype and device as ``coeffs``.

    Example:
        >>> x, y = torch.tensor([1.0]), torch.tensor([0.0])
        >>> polynomial_gradients(x, y, torch.tensor([1.0, 0.0]))  # residual 1
        tensor([2., 2.])
    """
    residual2 = 2.0 * (polynomial(x, coeffs) - y)
    powers = torch.arange(len(coeffs), device=x.device)
    return (residual2.unsqueeze(-1) * x.unsqueeze(-1).pow(powers)).sum(0)


@torch.no_grad()
def gradient_descent_step(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float):
    """In place: :math:`w \\leftarrow w - \\text{lr}\\,\\nabla L(w)` for each tensor."""
    for p, g in zip(params, grads, strict=True):
        p.sub_(lr * g)


class Polynomial3(nn.Module):
    """The cubic :math:`y = a + bx + cx^2 + dx^3` as an ``nn.Module`` with four scalar parameters.

    Args:
        generator: optional ``torch.Generator`` for the standard-normal initial values.

    Example:
        >>> model = Polynomial3(generator=torch.Generator().manual_seed(0))
        >>> model(torch.zeros(5)).shape
        torch.Size([5])
    """

    def __init__(self, generator: torch.Generator | None = None):
        super().__init__()
        init = torch.randn(4, generator=generator)
        self.a, self.b, self.c, self.d = (nn.Parameter(v.clone()) for v in init)

    def coefficients(self) -> torch.Tensor:
        """The coefficients ``(a, b, c, d)`` as one detached tensor."""
        return torch.stack([self.a, self.b, self.c, self.d]).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * x + self.c * x**2 + self.d * x**3

    def extra_repr(self) -> str:
        a, b, c, d = self.coefficients().tolist()
        return f"y = {a:.4f} + {b:.4f} x + {c:.4f} x^2 + {d:.4f} x^3"
