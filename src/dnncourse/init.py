"""Weight initialization, mirroring ``torch.nn.init``: in place, returns the tensor.

Lecture section: "Where to start" (initialization). ``W = 0`` gives zero gradients for
the first layers and identical units; very large or small weights blow up or shrink
activations and gradients with depth. Random initialization with the right scale keeps
the variance of a unit's output at that of its inputs: for
:math:`w \\in \\mathbb{R}^{d}` with iid zero-mean entries and independent zero-mean,
unit-variance inputs :math:`v`,

.. math::  \\operatorname{Var}(w^\\top v) = \\sum_i \\operatorname{Var}(w_i)
   \\operatorname{Var}(v_i) = d \\operatorname{Var}(w_i),

so :math:`\\operatorname{Var}(w_i) = 1/d_{\\text{in}}` (forward) or :math:`1/d_{\\text{out}}`
(backward, through :math:`W^\\top`). Xavier/Glorot (Glorot and Bengio, 2010) compromises
on :math:`2/(d_{\\text{in}} + d_{\\text{out}})`; for ReLU, which zeroes half of a symmetric
input, :math:`\\mathbb{E}[\\mathrm{ReLU}^2(w^\\top v)] = \\tfrac12 d \\operatorname{Var}(w_i)`
and Kaiming/He (He et al., 2015) uses :math:`2/d_{\\text{in}}`. Defazio and Bottou (2019)
propose :math:`c / \\sqrt{d_{\\text{in}} d_{\\text{out}}}`; orthogonal initialization
(Saxe et al., 2014) makes each :math:`W` (semi-)orthogonal.

A uniform distribution on :math:`[-a, a]` has variance :math:`a^2/3`, so a target
standard deviation :math:`s` becomes the bound :math:`a = \\sqrt{3}\\, s`. The fans of a
weight of shape ``(d_out, d_in, k1, k2, ...)`` (a convolution) are
:math:`d_{\\text{in}} k_1 k_2 \\cdots` and :math:`d_{\\text{out}} k_1 k_2 \\cdots`.

Every function draws its numbers exactly as ``torch.nn.init`` does (one ``uniform_`` or
``normal_`` call with the same bounds, or the same QR of a Gaussian matrix), so with the
same generator state both give identical tensors.
"""

import math

import torch

_LINEAR = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The factor by which to scale a unit-variance-preserving std for a nonlinearity.

    ============================  ==========================================
    nonlinearity                  gain
    ============================  ==========================================
    linear, conv*, sigmoid        :math:`1`
    tanh                          :math:`5/3`
    relu                          :math:`\\sqrt{2}`
    leaky_relu (slope ``param``)  :math:`\\sqrt{2 / (1 + \\text{slope}^2)}`
    selu                          :math:`3/4`
    ============================  ==========================================

    ReLU's :math:`\\sqrt 2` is the lecture's factor 2 in the variance: the ReLU keeps half
    of the second moment, the gain squared gives it back.

    Args:
        nonlinearity: the name of the function, as in ``torch.nn.functional``.
        param: the negative slope for ``'leaky_relu'`` (default None: 0.01).

    Example:
        >>> calculate_gain("relu")
        1.4142135623730951
    """
    if nonlinearity in _LINEAR or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shaped ``(d_out, d_in, *kernel)``.

    For a linear layer's ``(d_out, d_in)`` weight these are :math:`d_{\\text{in}}` and
    :math:`d_{\\text{out}}`; for a convolution each is multiplied by the kernel size.

    Args:
        tensor: a weight with at least two dimensions.

    Example:
        >>> calculate_fan_in_and_fan_out(torch.empty(16, 3, 5, 5))
        (75, 400)
    """
    if tensor.dim() < 2:
        raise ValueError(
            "fan in and fan out need a tensor with at least 2 dimensions (d_out, d_in, ...), "
            f"got shape {tuple(tensor.shape)}"
        )
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field


def _fan(tensor: torch.Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


@torch.no_grad()
def _uniform_(tensor, std, generator):
    bound = math.sqrt(3.0) * std  # Var(U[-a, a]) = a^2 / 3
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def _normal_(tensor, std, generator):
    return tensor.normal_(0.0, std, generator=generator)


def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Xavier/Glorot uniform: :math:`U(-a, a)` with the bound below.

    .. math::  a = \\text{gain} \\sqrt{\\frac{6}{d_{\\text{in}} + d_{\\text{out}}}}.

    The variance is :math:`a^2/3 = \\text{gain}^2 \\cdot 2/(d_{\\text{in}} + d_{\\text{out}})`.

    Args:
        tensor: the weight to fill in place, at least 2-D.
        gain: scale factor, see :func:`calculate_gain` (default 1.0).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = xavier_uniform_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    return _uniform_(tensor, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Xavier/Glorot normal: iid :math:`\\mathcal{N}(0, \\sigma^2)` entries.

    .. math::  \\sigma^2 = \\text{gain}^2 \\, \\frac{2}{d_{\\text{in}} + d_{\\text{out}}}.

    Args:
        tensor: the weight to fill in place, at least 2-D.
        gain: scale factor, see :func:`calculate_gain` (default 1.0).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = xavier_normal_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    return _normal_(tensor, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaiming/He uniform: :math:`U(-b, b)`, :math:`b = \\text{gain}\\sqrt{3/\\text{fan}}`.

    Note:
        The lecture's bound for ReLU is :math:`\\sqrt{6/d_{\\text{in}}}`: that is this
        :math:`b` with gain :math:`\\sqrt 2` and ``mode='fan_in'``. PyTorch's default,
        ``nonlinearity='leaky_relu'`` with ``a=0``, has exactly that gain
        (:math:`\\sqrt{2/(1 + 0^2)}`), so the defaults give the lecture's initialization.

    Args:
        tensor: the weight to fill in place, at least 2-D.
        a: negative slope of the leaky ReLU that follows (default 0: a ReLU).
        mode: ``'fan_in'`` (default; keeps the forward variance) or ``'fan_out'``
            (keeps the backward variance).
        nonlinearity: name for :func:`calculate_gain` (default ``'leaky_relu'``).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = kaiming_uniform_(torch.empty(3, 5), nonlinearity="relu")
    """
    fan = _fan(tensor, mode)
    if fan == 0:  # a zero-element tensor: nothing to fill
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _uniform_(tensor, std, generator)


def kaiming_normal_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaiming/He normal: :math:`\\mathcal{N}(0, \\text{gain}^2/\\text{fan})`.

    For ReLU (gain :math:`\\sqrt 2`) and ``mode='fan_in'`` the variance is the lecture's
    :math:`2/d_{\\text{in}}`.

    Args:
        tensor: the weight to fill in place, at least 2-D.
        a: negative slope of the leaky ReLU that follows (default 0: a ReLU).
        mode: ``'fan_in'`` (default) or ``'fan_out'``.
        nonlinearity: name for :func:`calculate_gain` (default ``'leaky_relu'``).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = kaiming_normal_(torch.empty(3, 5), mode="fan_out", nonlinearity="relu")
    """
    fan = _fan(tensor, mode)
    if fan == 0:  # a zero-element tensor: nothing to fill
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _normal_(tensor, std, generator)


def defazio_bottou_(
    tensor: torch.Tensor,
    c: float = 2.0,
    distribution: str = "normal",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Variance :math:`c / \\sqrt{d_{\\text{in}} d_{\\text{out}}}` (Defazio and Bottou, 2019).

    The geometric mean of the two fans replaces Kaiming's :math:`d_{\\text{in}}`, so
    neither the forward nor the backward pass is favoured. With :math:`c = 2` it equals
    Kaiming's :math:`2/d_{\\text{in}}` on square layers.

    Note:
        PyTorch has no such function; the lecture leaves :math:`c` open.

    Args:
        tensor: the weight to fill in place, at least 2-D.
        c: the constant :math:`c > 0` (default 2.0, the ReLU choice).
        distribution: ``'normal'`` (default) or ``'uniform'`` (same variance).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = defazio_bottou_(torch.empty(3, 5), c=2.0)
    """
    if c <= 0:
        raise ValueError(f"c must be positive, got {c}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    std = math.sqrt(c / math.sqrt(fan_in * fan_out))
    if distribution == "normal":
        return _normal_(tensor, std, generator)
    if distribution == "uniform":
        return _uniform_(tensor, std, generator)
    raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")


@torch.no_grad()
def orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with a (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2014).

    The weight, flattened to ``(d_out, d_in k1 k2 ...)``, gets orthonormal rows if it is
    wide and orthonormal columns if it is tall: :math:`W W^\\top = \\text{gain}^2 I` or
    :math:`W^\\top W = \\text{gain}^2 I`, so :math:`\\|W v\\| = \\text{gain}\\,\\|v\\|` for
    every :math:`v` in the row space: lengths neither grow nor shrink with depth.
    The matrix is :math:`Q` from the QR factorization of a Gaussian matrix, with the signs
    of :math:`R`'s diagonal moved into :math:`Q` so that it is uniformly (Haar) distributed
    (Mezzadri, 2007).

    Args:
        tensor: the weight to fill in place, at least 2-D.
        gain: scale factor (default 1.0).
        generator: the ``torch.Generator`` to draw from (default None: the global one).

    Example:
        >>> w = orthogonal_(torch.empty(3, 5))
    """
    if tensor.dim() < 2:
        raise ValueError(
            "orthogonal_ needs a tensor with at least 2 dimensions, "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        return tensor
    rows = tensor.size(0)
    cols = tensor.numel() // rows
    gaussian = tensor.new_empty((rows, cols)).normal_(0, 1, generator=generator)
    if rows < cols:
        gaussian.t_()
    q, r = torch.linalg.qr(gaussian)
    q *= torch.diag(r, 0).sign()
    if rows < cols:
        q.t_()
    tensor.view_as(q).copy_(q)
    tensor.mul_(gain)
    return tensor


__all__ = [
    "calculate_fan_in_and_fan_out",
    "calculate_gain",
    "defazio_bottou_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "orthogonal_",
    "xavier_normal_",
    "xavier_uniform_",
]
