"""Explicit regularizers: L2 (weight decay), L1, the Jacobian penalty, max-norm constraints.

Lecture section: "Regularization". Training minimizes
:math:`\\frac1m\\sum_i \\ell(y_i, \\mathrm{DNN}_W(x_i)) + \\lambda\\,\\Omega(W)` with

- :math:`\\Omega = \\sum_k \\|W_k\\|_F^2` (penalizes large weights, hence steep changes;
  ``weight_decay`` in ``torch.optim``),
- :math:`\\Omega = \\sum_k \\|W_k\\|_1` (promotes sparse weights),
- :math:`\\Omega = \\|J_{\\mathrm{DNN}_W}(x)\\|_F^2` (promotes a slowly changing function;
  Varga et al., 2017; Hoffman et al., 2019; Chan et al., 2019),
- constraints :math:`\\delta_C(W)`, e.g. a norm bound, enforced by projection.

The penalties return scalar tensors that autograd differentiates; pass them to
:func:`dnncourse.train` as ``penalty=lambda model, X: l2_penalty(model, 1e-4)``.
"""

from collections.abc import Iterable

import torch
from torch import nn

Params = nn.Module | Iterable[torch.Tensor]


def _parameters(params: Params, weights_only: bool) -> list[torch.Tensor]:
    ps = list(params.parameters() if isinstance(params, nn.Module) else params)
    return [p for p in ps if p.dim() >= 2] if weights_only else ps


def l2_penalty(params: Params, weight_decay: float, weights_only: bool = False) -> torch.Tensor:
    """The L2 penalty :math:`\\frac{\\lambda}{2}\\sum_k \\|W_k\\|_F^2`.

    Its gradient is :math:`\\lambda W_k`, exactly what ``weight_decay=λ`` adds to the
    gradient in ``torch.optim.SGD``: with plain SGD both give the same trajectory.

    Args:
        params: a model or an iterable of tensors.
        weight_decay: :math:`\\lambda \\ge 0`.
        weights_only: skip vectors (biases, normalization parameters) and penalize only
            tensors with two or more dimensions (default False: all, like ``weight_decay``).

    Example:
        >>> loss = loss_fn(model(X), y) + l2_penalty(model, 1e-4)
        >>> loss.backward()   # adds 1e-4 * W to each gradient

    Note:
        The lecture writes :math:`\\lambda\\sum_k\\|W_k\\|_F^2`, whose gradient is
        :math:`2\\lambda W_k`; the factor 1/2 here makes :math:`\\lambda` equal to
        PyTorch's ``weight_decay``. For Adam, ``weight_decay`` is this same L2 penalty,
        but ``AdamW``'s decoupled decay is not (Loshchilov and Hutter, 2019).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    ps = _parameters(params, weights_only)
    if not ps:
        raise ValueError("no parameters to penalize")
    return 0.5 * weight_decay * sum(p.square().sum() for p in ps)


def l1_penalty(params: Params, lam: float, weights_only: bool = False) -> torch.Tensor:
    """The L1 penalty :math:`\\lambda\\sum_k \\|W_k\\|_1` (sum of absolute values).

    Its (sub)gradient :math:`\\lambda\\,\\mathrm{sign}(W)` pulls every weight toward 0 at
    the same speed, however small it is, so many weights end near zero. Plain
    (sub)gradient steps make them oscillate around 0; :func:`soft_threshold_` (the
    proximal step) makes them exactly 0.

    Args:
        params: a model or an iterable of tensors.
        lam: :math:`\\lambda \\ge 0`.
        weights_only: penalize only tensors with two or more dimensions (default False).

    Example:
        >>> loss = loss_fn(model(X), y) + l1_penalty(model, 1e-3)
    """
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    ps = _parameters(params, weights_only)
    if not ps:
        raise ValueError("no parameters to penalize")
    return lam * sum(p.abs().sum() for p in ps)


@torch.no_grad()
def soft_threshold_(params: Params, threshold: float, weights_only: bool = False) -> None:
    """In place: :math:`w \\leftarrow \\mathrm{sign}(w)\\max(|w| - \\tau, 0)` for every entry.

    The proximal operator of :math:`\\tau\\|w\\|_1`. After an SGD step with learning rate
    ``lr`` on the *unpenalized* loss, ``soft_threshold_(model, lr * lam)`` completes one
    proximal-gradient (ISTA) step for the L1 penalty ``lam``: weights with
    :math:`|w| \\le \\tau` become exactly zero.

    Example:
        >>> optimizer.step()
        >>> soft_threshold_(model, lr * lam)
    """
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    for p in _parameters(params, weights_only):
        p.copy_(torch.sign(p) * torch.clamp(p.abs() - threshold, min=0.0))


@torch.no_grad()
def max_norm_(weight: torch.Tensor | nn.Linear, max_norm: float) -> torch.Tensor:
    """In place: project each row (a unit's incoming weights) into the ball of radius c.

    :math:`w_i \\leftarrow w_i \\min(1, c / \\|w_i\\|_2)`, the Euclidean projection onto
    :math:`C = \\{W : \\|w_i\\|_2 \\le c\\ \\forall i\\}` (the max-norm constraint used with
    dropout by Srivastava et al., 2014). Call it after each ``optimizer.step()``
    (projected gradient descent). Returns the weight.

    Example:
        >>> optimizer.step()
        >>> max_norm_(model[0], 3.0)   # or max_norm_(model[0].weight, 3.0)
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    W = weight.weight if isinstance(weight, nn.Module) else weight
    if W.dim() < 2:
        raise ValueError(f"max_norm_ expects a weight matrix, got shape {tuple(W.shape)}")
    norms = W.flatten(1).norm(dim=1).view(-1, *([1] * (W.dim() - 1)))
    W.mul_(torch.clamp(max_norm / norms.clamp(min=torch.finfo(W.dtype).tiny), max=1.0))
    return W


def jacobian_penalty(
    model: nn.Module,
    X: torch.Tensor,
    num_projections: int | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    """The batch mean of :math:`\\|J(x_i)\\|_F^2`, :math:`J(x) = \\partial f(x) / \\partial x`.

    Samples must be processed independently (no batch statistics: use ``model.eval()``
    semantics for batch norm), so the gradient of :math:`\\sum_i f_k(x_i)` with respect
    to the batch holds row :math:`k` of every :math:`J(x_i)` at once.

    - ``num_projections=None`` (exact): one backward pass per output dimension
      :math:`k = 1..C`: :math:`\\|J\\|_F^2 = \\sum_k \\|\\nabla_x f_k\\|^2`.
    - ``num_projections=n`` (Hoffman et al., 2019): :math:`n` random directions
      :math:`v` uniform on the unit sphere of :math:`\\mathbb R^C`, and the unbiased
      estimate :math:`\\|J\\|_F^2 = C\\,\\mathbb E_v \\|v^\\top J\\|^2`, one backward pass each.

    Args:
        model: maps ``(N, *)`` to ``(N, C)``.
        X: a batch ``(N, *)``.
        num_projections: ``None`` for the exact value, else the number of random projections.
        generator: for the random directions (on ``X``'s device).
        create_graph: keep the graph so the penalty can be differentiated with respect
            to the weights (default True: needed for training).

    Example:
        >>> loss = loss_fn(model(X), y) + 0.01 * jacobian_penalty(model, X)
    """
    X = X.detach().requires_grad_(True)
    y_hat = model(X)
    if y_hat.dim() != 2 or y_hat.shape[0] != X.shape[0]:
        raise ValueError(f"model must map (N, *) to (N, C), got output {tuple(y_hat.shape)}")
    num_outputs = y_hat.shape[1]
    if num_projections is None:
        directions = torch.eye(num_outputs, dtype=y_hat.dtype, device=y_hat.device)
        factor = 1.0
    else:
        if num_projections < 1:
            raise ValueError(f"num_projections must be positive, got {num_projections}")
        v = torch.randn(
            num_projections, num_outputs, generator=generator, dtype=y_hat.dtype, device=X.device
        )
        directions = v / v.norm(dim=1, keepdim=True)
        factor = num_outputs / num_projections
    total = y_hat.new_zeros(())
    for v in directions:
        # row v^T J(x_i) for all i at once: the gradient of sum_i <v, f(x_i)>
        (rows,) = torch.autograd.grad(
            (y_hat @ v).sum(), X, create_graph=create_graph, retain_graph=True
        )
        total = total + rows.square().sum()
    return factor * total / X.shape[0]


def jacobian_penalty_reference(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The same quantity from full per-sample Jacobians (``torch.autograd.functional``).

    Slow (one Jacobian per sample); for tests and for small illustrations. The result
    is differentiable with respect to the weights.
    """
    total = 0.0
    for x in X:
        J = torch.autograd.functional.jacobian(
            lambda x: model(x.unsqueeze(0)).squeeze(0), x, create_graph=True
        )
        total = total + J.square().sum()
    return total / X.shape[0]


__all__ = [
    "jacobian_penalty",
    "jacobian_penalty_reference",
    "l1_penalty",
    "l2_penalty",
    "max_norm_",
    "soft_threshold_",
]
