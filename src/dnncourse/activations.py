"""Activation functions, written from ``exp`` so that each one is stable at any input.

Lecture section: "Three design choices", *Which activation at the hidden nodes?* and
*Which activation at the output node?* The lecture's desiderata for a hidden activation:
(almost everywhere) differentiable, nonzero derivatives (almost) everywhere, cheap to
compute. Sigmoid and tanh saturate (derivatives vanish for large :math:`|x|`), ReLU has a
zero derivative for :math:`x < 0`, leaky ReLU and ELU keep a nonzero slope there
(Maas et al., 2013; Clevert et al., 2016), and maxout learns a piecewise-linear
activation (Goodfellow et al., 2013).

Each function returns what its ``torch.nn.functional`` namesake returns, in value and in
gradient (to float64 rounding), including at inputs like :math:`\\pm 1000` or
:math:`\\pm 10^{30}`: no exponential here ever sees a positive argument, so nothing
overflows, and :func:`torch.where` never has an ``inf`` in the branch it discards (which
would turn the gradient into ``0 * inf = nan``).
"""

import torch
from torch import nn


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The logistic sigmoid, stable for inputs of either sign.

    .. math::  \\sigma(x) = \\frac{1}{1 + e^{-x}} = \\frac{e^{x}}{1 + e^{x}},
       \\qquad \\sigma'(x) = \\sigma(x)\\,(1 - \\sigma(x)).

    The first form is used for :math:`x \\ge 0`, the second for :math:`x < 0`, so the
    exponential is always :math:`e^{-|x|} \\le 1`: the naive first form would compute
    :math:`e^{1000} = \\infty` at :math:`x = -1000`.

    Args:
        x: any floating point tensor.

    Example:
        >>> sigmoid(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    positive = x >= 0
    e = torch.exp(torch.where(positive, -x, x))  # e^{-|x|}, in (0, 1]
    return torch.where(positive, 1 / (1 + e), e / (1 + e))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """The hyperbolic tangent, stable and accurate near zero.

    .. math::  \\tanh(x) = \\frac{e^{x} - e^{-x}}{e^{x} + e^{-x}} = 2\\sigma(2x) - 1,
       \\qquad \\tanh'(x) = 1 - \\tanh^2(x).

    Computed as :math:`\\operatorname{sign}(x)\\,(1 - e^{-2|x|}) / (1 + e^{-2|x|})`, with
    :func:`torch.expm1` for the numerator so small :math:`|x|` keep their relative precision.

    Args:
        x: any floating point tensor.

    Example:
        >>> tanh(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([-1.,  0.,  1.])
    """
    positive = x >= 0
    minus_two_abs = -2 * torch.where(positive, x, -x)  # -2|x|, differentiable at 0 too
    t = -torch.expm1(minus_two_abs) / (1 + torch.exp(minus_two_abs))
    return torch.where(positive, t, -t)


def relu(x: torch.Tensor) -> torch.Tensor:
    """The rectified linear unit :math:`\\max(0, x)`.

    Its derivative is 1 for :math:`x > 0` and 0 for :math:`x < 0`; at :math:`x = 0`
    PyTorch (and this function) uses 0.

    Args:
        x: any floating point tensor.

    Example:
        >>> relu(torch.tensor([-2.0, 0.0, 3.0]))
        tensor([0., 0., 3.])
    """
    return torch.where(x <= 0, torch.zeros_like(x), x)  # keeps NaN as NaN, like torch


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """Leaky ReLU :math:`\\max(\\alpha x, x)` for :math:`0 \\le \\alpha < 1`.

    Precisely: :math:`x` for :math:`x > 0` and :math:`\\alpha x` otherwise (the derivative
    at 0 is :math:`\\alpha`, as in PyTorch).

    Args:
        x: any floating point tensor.
        negative_slope: :math:`\\alpha`, the slope for negative inputs (default 0.01).

    Note:
        The lecture's slide writes :math:`\\max(0.1x, x)`; its text and PyTorch use
        :math:`\\alpha = 0.01`.

    Example:
        >>> leaky_relu(torch.tensor([-2.0, 3.0]), negative_slope=0.1)
        tensor([-0.2000,  3.0000])
    """
    return torch.where(x > 0, x, negative_slope * x)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Exponential linear unit (Clevert et al., 2016).

    .. math::  f(x) = \\begin{cases} x & x > 0 \\\\ \\alpha (e^{x} - 1) & x \\le 0 \\end{cases},
       \\qquad f'(x) = \\begin{cases} 1 & x > 0 \\\\ \\alpha e^{x} & x \\le 0 \\end{cases}.

    The exponential only ever sees :math:`\\min(x, 0)`: at :math:`x = 1000` the discarded
    branch would otherwise be :math:`e^{1000} = \\infty` and its zero weight in the
    gradient would become ``0 * inf = nan``.

    Args:
        x: any floating point tensor.
        alpha: the value :math:`-\\alpha` that :math:`f` tends to as :math:`x \\to -\\infty`
            (default 1.0).

    Example:
        >>> elu(torch.tensor([-1000.0, 2.0]))
        tensor([-1.,  2.])
    """
    return torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0)))


def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The logarithm of :func:`softmax`, computed without forming the softmax.

    .. math::  \\log \\operatorname{softmax}(z)_i = (z_i - m) - \\log \\sum_j e^{z_j - m},
       \\qquad m = \\max_j z_j,

    which holds for any shift :math:`m`; with the maximum every exponent is
    :math:`\\le 0` and the sum is :math:`\\ge 1`, so neither overflows nor takes
    :math:`\\log 0`.

    Args:
        x: logits, any floating point tensor.
        dim: the dimension along which the classes lie.

    Example:
        >>> log_softmax(torch.tensor([0.0, 1000.0]), dim=0)
        tensor([-1000.,     0.])
    """
    shifted = x - x.amax(dim=dim, keepdim=True).detach()  # a constant shift: no gradient
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along ``dim``, stable at any logits.

    .. math::  \\operatorname{softmax}(z)_i = \\frac{e^{z_i}}{\\sum_j e^{z_j}}
       = \\frac{e^{z_i - m}}{\\sum_j e^{z_j - m}}, \\qquad m = \\max_j z_j.

    Subtracting the maximum changes nothing mathematically (numerator and denominator
    both gain the factor :math:`e^{-m}`) but keeps every exponent :math:`\\le 0`, so a logit
    of 1000 no longer gives :math:`\\infty / \\infty`. Since the shift is a constant, it is
    detached: the gradient is exactly that of the softmax.

    Args:
        x: logits, any floating point tensor.
        dim: the dimension along which the result sums to one.

    Example:
        >>> softmax(torch.tensor([1000.0, 1000.0, -1000.0]), dim=0)
        tensor([0.5000, 0.5000, 0.0000])
    """
    e = torch.exp(x - x.amax(dim=dim, keepdim=True).detach())
    return e / e.sum(dim=dim, keepdim=True)


class Maxout(nn.Module):
    """Maxout units (Goodfellow et al., 2013): the maximum of ``num_pieces`` affine maps.

    .. math::  h_i(x) = \\max_{j = 1, \\dots, k} \\left( w_{ij}^\\top x + b_{ij} \\right),
       \\qquad i = 1, \\dots, \\text{out\\_features}.

    With :math:`k = 2`, :math:`w_{i2} = 0`, :math:`b_{i2} = 0` a unit is a ReLU of its
    first piece, so maxout generalizes ReLU and leaky ReLU; it is a layer with its own
    weights, not a fixed function. The :math:`k` pieces of unit :math:`i` are rows
    :math:`ik, \\dots, ik + k - 1` of ``self.linear``.

    Args:
        in_features: size of each input sample.
        out_features: number of maxout units.
        num_pieces: :math:`k`, the number of affine pieces per unit (default 2).
        bias: whether the pieces have biases (default True).
        device, dtype: as for :class:`torch.nn.Linear`.

    Example:
        >>> layer = Maxout(4, 3, num_pieces=2)
        >>> layer(torch.randn(10, 4)).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_pieces: int = 2,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_pieces < 1:
            raise ValueError(f"num_pieces must be a positive integer, got {num_pieces}")
        self.in_features = in_features
        self.out_features = out_features
        self.num_pieces = num_pieces
        self.linear = nn.Linear(
            in_features, out_features * num_pieces, bias=bias, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Maxout expected inputs with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        pieces = self.linear(x).unflatten(-1, (self.out_features, self.num_pieces))
        return pieces.amax(dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_pieces={self.num_pieces}"
        )


__all__ = ["Maxout", "elu", "leaky_relu", "log_softmax", "relu", "sigmoid", "softmax", "tanh"]
