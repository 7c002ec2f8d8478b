"""Loss functions with ``torch.nn.functional``'s names, signatures and reductions.

Lecture section: "Three design choices", *Which loss?* Regression: the squared
:math:`\\ell_2` loss (common) or the :math:`\\ell_1` loss (robust to outliers). Binary
classification with classes :math:`\\{0, 1\\}` and a sigmoid output: binary cross-entropy.
Multiclass classification with one-hot targets and a softmax output: cross-entropy
:math:`-\\sum_i y_i \\log \\hat y_i`, optionally with smoothed labels (Szegedy et al., 2016;
Müller et al., 2019). Distributions: the Kullback-Leibler divergence.

Every loss takes ``reduction``: ``'none'`` returns the per-element (or per-sample)
losses, ``'sum'`` their sum and ``'mean'`` their mean. Values and gradients equal
PyTorch's (to float64 rounding), at extreme logits too. Unlike PyTorch, which broadcasts
mismatched shapes with a warning, these functions raise ``ValueError``; and
``cross_entropy`` has no ``weight`` or ``ignore_index`` (class weights and padding are not
in the lecture).
"""

import torch

from dnncourse.activations import log_softmax

_REDUCTIONS = ("none", "mean", "sum")

# PyTorch's guards in binary cross-entropy: log values are clamped below at -100 (so
# p = 0 costs 100, not infinity) and the gradient's denominator p(1 - p) at 1e-12.
_BCE_LOG_CLAMP = -100.0
_BCE_GRAD_EPS = 1e-12


def _check_reduction(reduction: str, allowed=_REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")


def _check_same_shape(name: str, input: torch.Tensor, target: torch.Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} must equal input shape "
            f"{tuple(input.shape)} (no broadcasting)"
        )


def _check_elementwise(
    name: str, input: torch.Tensor, target: torch.Tensor, reduction: str
) -> None:
    """The arguments of an elementwise loss: a known reduction, input and target alike."""
    _check_reduction(reduction)
    _check_same_shape(name, input, target)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error :math:`\\ell(y, \\hat y) = (\\hat y - y)^2`, element by element.

    Args:
        input: predictions :math:`\\hat y`, any shape.
        target: targets :math:`y`, the same shape.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.

    Example:
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    _check_elementwise("mse_loss", input, target, reduction)
    return _reduce((input - target) ** 2, reduction)


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Absolute error :math:`\\ell(y, \\hat y) = |\\hat y - y|`, element by element.

    Its gradient :math:`\\operatorname{sign}(\\hat y - y)` is bounded, so one outlier pulls
    no harder than any other point: the robustness the lecture mentions. At
    :math:`\\hat y = y` the (sub)gradient used is 0, as in PyTorch.

    Args:
        input: predictions :math:`\\hat y`, any shape.
        target: targets :math:`y`, the same shape.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.

    Example:
        >>> l1_loss(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]))
        tensor(1.5000)
    """
    _check_elementwise("l1_loss", input, target, reduction)
    return _reduce((input - target).abs(), reduction)


class _BinaryCrossEntropy(torch.autograd.Function):
    """Elementwise BCE with PyTorch's clamps in the value and in the gradient."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, y)
        log_p = torch.log(p).clamp(min=_BCE_LOG_CLAMP)
        log_one_minus_p = torch.log1p(-p).clamp(min=_BCE_LOG_CLAMP)
        return -(y * log_p + (1 - y) * log_one_minus_p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, y = ctx.saved_tensors
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            # d/dp = -y/p + (1-y)/(1-p) = (p - y) / (p (1 - p))
            grad_p = grad * (p - y) / (p * (1 - p)).clamp(min=_BCE_GRAD_EPS)
        if ctx.needs_input_grad[1]:
            grad_y = grad * (torch.log1p(-p) - torch.log(p))
        return grad_p, grad_y


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy between probabilities :math:`\\hat y` and targets :math:`y`.

    .. math::  \\ell(y, \\hat y) = -\\bigl[y \\log \\hat y + (1 - y) \\log (1 - \\hat y)\\bigr],
       \\qquad \\frac{\\partial \\ell}{\\partial \\hat y}
       = \\frac{\\hat y - y}{\\hat y (1 - \\hat y)}.

    Note:
        The lecture's slide drops a minus sign in front of :math:`y \\log \\hat y`; the loss
        above is the one minimized at :math:`\\hat y = y`. As PyTorch does, each logarithm is
        clamped below at :math:`-100` (a confident wrong answer costs 100, not
        :math:`\\infty`) and the gradient's denominator at :math:`10^{-12}`. From logits,
        prefer :func:`binary_cross_entropy_with_logits` (stable): a sigmoid followed by
        this loss loses everything once :math:`\\hat y` rounds to 0 or 1.

    Args:
        input: probabilities :math:`\\hat y \\in [0, 1]`, any shape.
        target: targets :math:`y \\in [0, 1]`, the same shape.
        weight: optional rescaling of each element's loss (broadcast to ``input``).
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.

    Example:
        >>> binary_cross_entropy(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
        tensor(0.1643)
    """
    _check_elementwise("binary_cross_entropy", input, target, reduction)
    if ((input < 0) | (input > 1)).any():
        raise ValueError("binary_cross_entropy: all elements of input must be in [0, 1]")
    loss = _BinaryCrossEntropy.apply(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy of :math:`\\sigma(z)` computed from the logit :math:`z`.

    .. math::  \\ell(y, z) = -\\bigl[y \\log \\sigma(z) + (1 - y) \\log(1 - \\sigma(z))\\bigr]
       = \\max(z, 0) - y z + \\log\\bigl(1 + e^{-|z|}\\bigr),
       \\qquad \\frac{\\partial \\ell}{\\partial z} = \\sigma(z) - y.

    The right-hand form never exponentiates a positive number, so it is exact at
    :math:`z = \\pm 1000` where :math:`\\sigma(z)` rounds to 0 or 1.

    Args:
        input: logits :math:`z`, any shape.
        target: targets :math:`y \\in [0, 1]`, the same shape.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'``.

    Example:
        >>> binary_cross_entropy_with_logits(torch.tensor([-1000.0]), torch.tensor([1.0]))
        tensor(1000.)
    """
    _check_elementwise("binary_cross_entropy_with_logits", input, target, reduction)
    positive = input >= 0
    relu_z = torch.where(positive, input, torch.zeros_like(input))
    minus_abs_z = torch.where(positive, -input, input)  # where, not abs: exact gradient at 0
    loss = relu_z - target * input + torch.log1p(torch.exp(minus_abs_z))
    return _reduce(loss, reduction)


def one_hot(target: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
    """One-hot encoding: class :math:`k` becomes :math:`e_k = [0, \\dots, 0, 1, 0, \\dots, 0]`.

    As :func:`torch.nn.functional.one_hot`: an ``int64`` tensor of shape
    ``target.shape + (num_classes,)``; ``num_classes=-1`` means ``target.max() + 1``.

    Args:
        target: class indices, an integer tensor with values in ``[0, num_classes)``.
        num_classes: the number of classes :math:`m` (default -1: inferred).

    Example:
        >>> one_hot(torch.tensor([2, 0]), 3)
        tensor([[0, 0, 1],
                [1, 0, 0]])
    """
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"one_hot: target must hold integer class indices, got {target.dtype}")
    if num_classes == -1:
        num_classes = int(target.max()) + 1 if target.numel() else 0
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"one_hot: class indices must lie in [0, {num_classes}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    classes = torch.arange(num_classes, device=target.device)
    return (target.unsqueeze(-1) == classes).long()


def smooth_labels(
    target: torch.Tensor,
    num_classes: int,
    epsilon: float,
    convention: str = "lecture",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Label-smoothed one-hot targets, in the lecture's or in PyTorch's convention.

    With :math:`m` classes and target class :math:`k`:

    - ``'lecture'``: :math:`[\\varepsilon, \\dots, \\varepsilon, 1 - (m - 1)\\varepsilon,
      \\varepsilon, \\dots, \\varepsilon]`, every wrong class gets :math:`\\varepsilon`;
      needs :math:`0 \\le \\varepsilon \\le 1/(m-1)`.
    - ``'pytorch'``: :math:`(1 - \\varepsilon) e_k + \\varepsilon / m`, i.e. a fraction
      :math:`\\varepsilon` of the mass spread evenly over all :math:`m` classes (the target
      included), as ``cross_entropy(..., label_smoothing=epsilon)``; needs
      :math:`0 \\le \\varepsilon \\le 1`.

    Note:
        The two agree when :math:`\\varepsilon_{\\text{pytorch}} = m\\,
        \\varepsilon_{\\text{lecture}}`: the lecture's :math:`\\varepsilon = 0.01` with
        :math:`m = 10` classes is PyTorch's ``label_smoothing=0.1``.

    Args:
        target: class indices, an integer tensor (any shape).
        num_classes: the number of classes :math:`m`.
        epsilon: the smoothing :math:`\\varepsilon` in the chosen convention.
        convention: ``'lecture'`` (default) or ``'pytorch'``.
        dtype: floating dtype of the result (default: torch's default dtype).

    Returns:
        A tensor of shape ``target.shape + (num_classes,)`` whose last dimension sums to 1.

    Example:
        >>> smooth_labels(torch.tensor([1]), 3, 0.1)
        tensor([[0.1000, 0.8000, 0.1000]])
    """
    if convention == "lecture":
        if num_classes < 2 or not 0 <= epsilon <= 1 / (num_classes - 1):
            raise ValueError(
                f"smooth_labels: the lecture's epsilon must lie in [0, 1/(m-1)] with m >= 2 "
                f"classes, got epsilon={epsilon}, m={num_classes}"
            )
        off, on = epsilon, 1 - (num_classes - 1) * epsilon
    elif convention == "pytorch":
        if not 0 <= epsilon <= 1:
            raise ValueError(f"smooth_labels: PyTorch's epsilon must lie in [0, 1], got {epsilon}")
        off, on = epsilon / num_classes, 1 - epsilon + epsilon / num_classes
    else:
        raise ValueError(f"convention must be 'lecture' or 'pytorch', got {convention!r}")
    hot = one_hot(target, num_classes).to(dtype or torch.get_default_dtype())
    return off + (on - off) * hot


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy between ``softmax(input)`` and the target, computed from logits.

    .. math::  \\ell(y, z) = -\\sum_{c=1}^{m} y_c \\log \\operatorname{softmax}(z)_c,
       \\qquad \\nabla_z \\ell = \\operatorname{softmax}(z) - y
       \\quad \\text{when } \\textstyle\\sum_c y_c = 1.

    The gradient stays :math:`\\hat y - y` however wrong and confident the logits are, where
    squared error on a softmax output would saturate. ``log_softmax`` keeps the value
    finite at logits of :math:`\\pm 1000` (``log(softmax(z))`` would give
    :math:`\\log 0 = -\\infty`).

    The target is either class indices (an integer tensor, the input's shape without the
    class dimension) or class probabilities / one-hot rows (a floating tensor shaped like
    the input). ``label_smoothing`` :math:`\\varepsilon` replaces the target by
    :math:`(1 - \\varepsilon) y + \\varepsilon / m` (PyTorch's convention; see
    :func:`smooth_labels` for the lecture's).

    Args:
        input: logits of shape ``(m,)``, ``(N, m)`` or ``(N, m, d1, ...)``: classes on
            dimension 1 (dimension 0 for a single sample).
        target: class indices or probabilities, as above.
        reduction: ``'mean'`` (default: over samples), ``'sum'`` or ``'none'``.
        label_smoothing: :math:`\\varepsilon \\in [0, 1]` (default 0.0).

    Example:
        >>> cross_entropy(torch.tensor([[1000.0, -1000.0]]), torch.tensor([1]))
        tensor(2000.)
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    if input.dim() == 0:
        raise ValueError("cross_entropy: input must have a class dimension, got a scalar")
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    log_p = log_softmax(input, dim=class_dim)
    if target.is_floating_point():
        _check_same_shape("cross_entropy with probability targets", input, target)
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / num_classes
        loss = -(target * log_p).sum(dim=class_dim)
    else:
        expected = input.shape[:class_dim] + input.shape[class_dim + 1 :]
        if target.shape != expected:
            raise ValueError(
                f"cross_entropy: class-index target must have shape {tuple(expected)} "
                f"(the input's without the class dimension), got {tuple(target.shape)}"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
            raise ValueError(
                f"cross_entropy: class indices must lie in [0, {num_classes}), got values "
                f"in [{int(target.min())}, {int(target.max())}]"
            )
        nll = -log_p.gather(class_dim, target.unsqueeze(class_dim)).squeeze(class_dim)
        loss = nll
        if label_smoothing > 0:
            uniform = -log_p.sum(dim=class_dim) / num_classes
            loss = (1 - label_smoothing) * nll + label_smoothing * uniform
    return _reduce(loss, reduction)


def kl_div(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "batchmean",
    log_target: bool = False,
) -> torch.Tensor:
    """Kullback-Leibler divergence :math:`D(P \\| Q)` with :math:`\\log Q` as the input.

    .. math::  D(P \\| Q) = \\sum_i p_i \\left(\\log p_i - \\log q_i\\right),
       \\qquad \\text{with } 0 \\log 0 = 0.

    As in PyTorch, ``input`` holds log-probabilities :math:`\\log q` (e.g. the output of
    ``log_softmax``) and ``target`` holds :math:`p` (or :math:`\\log p` if ``log_target``).
    With ``'batchmean'`` the summed divergence is divided by the batch size
    ``input.size(0)``: the average KL divergence per sample.

    Note:
        PyTorch's default is ``reduction='mean'``, which divides by the number of elements
        (batch size times classes) and is not the KL divergence; it warns about it. Here the
        default is ``'batchmean'``, the mathematically meaningful choice; ``'mean'`` is
        still available.

    Args:
        input: log-probabilities :math:`\\log q`, shape ``(N, *)``.
        target: probabilities :math:`p` (or :math:`\\log p`), the same shape.
        reduction: ``'batchmean'`` (default), ``'sum'``, ``'mean'`` or ``'none'``.
        log_target: whether ``target`` is given as log-probabilities (default False).

    Example:
        >>> kl_div(torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[1.0, 0.0]]))
        tensor(0.6931)
    """
    _check_reduction(reduction, (*_REDUCTIONS, "batchmean"))
    _check_same_shape("kl_div", input, target)
    if log_target:
        loss = torch.exp(target) * (target - input)
    else:
        loss = torch.xlogy(target, target) - target * input
    if reduction == "batchmean":
        return loss.sum() / (input.size(0) if input.dim() else 1)
    return _reduce(loss, reduction)


__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "one_hot",
    "smooth_labels",
]
