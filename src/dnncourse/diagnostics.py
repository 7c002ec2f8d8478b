"""Looking inside a deep network: per-layer statistics, dead units, gradient norms.

Lecture sections: "Three design choices" (which activation at the hidden nodes: saturation,
dead ReLUs) and "Where to start" (initialization keeps activations and gradients at a
steady scale across layers; Glorot and Bengio, 2010; He et al., 2015), and "When to stop"
(the full and the stochastic gradient along training). The experiments of the activation,
initialization and early-stopping chapters measure networks built by
:func:`dnncourse.models.mlp` with these pieces:

- :func:`layer_statistics`: for every ``nn.Linear`` layer, the spread of its output
  :math:`z_l = W_l a_{l-1} + b_l`, of the activation :math:`a_l = \\sigma(z_l)` and of the
  gradients :math:`\\partial \\ell / \\partial z_l` and :math:`\\partial \\ell / \\partial W_l`,
  collected with forward hooks in one forward/backward pass;
- :func:`dead_units`: the share of ReLU units that output zero on every input (a dead
  unit gets no gradient, so it stays dead);
- :func:`gradient_norm`: the norm of the full or of a mini-batch gradient.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerStatistics:
    """Per-layer statistics of one forward/backward pass; lists are indexed by linear layer.

    ``preact_std[l]`` is the standard deviation of :math:`z_l` over all entries,
    ``act_std[l]`` that of the module output following layer ``l`` (the activation; for
    the last layer, the network output), ``preact_grad_std[l]`` that of
    :math:`\\partial \\ell / \\partial z_l`, and ``weight_grad_norm[l]`` the Frobenius norm
    of :math:`\\partial \\ell / \\partial W_l`. Gradient lists are empty without a loss.
    """

    preact_std: list[float] = field(default_factory=list)
    act_std: list[float] = field(default_factory=list)
    preact_grad_std: list[float] = field(default_factory=list)
    weight_grad_norm: list[float] = field(default_factory=list)

    def to_dataframe(self):
        """One row per linear layer (needs pandas)."""
        import pandas as pd

        columns = {k: v for k, v in vars(self).items() if v}
        frame = pd.DataFrame(columns)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="layer")
        return frame


def layer_statistics(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> LayerStatistics:
    """Run ``model`` on ``X`` (and backpropagate ``loss_fn(model(X), y)``) and record, for
    every ``nn.Linear`` in ``model.modules()`` order, the spread of its output, of the next
    module's output and of the gradients (see :class:`LayerStatistics`).

    The model's ``.grad`` fields are left as they were (the pass does not accumulate into
    them), so this can be called in the middle of training.

    Args:
        model: the network; for ``act_std`` the activation must be the module right after
            each linear layer in ``model.modules()`` order (true for
            :func:`dnncourse.models.mlp` without ``norm``).
        X: a batch of inputs.
        y: targets; with ``loss_fn`` it turns on the gradient statistics.
        loss_fn: e.g. ``nn.functional.cross_entropy``.

    Example:
        >>> stats = layer_statistics(mlp([64, 32, 10]), torch.randn(8, 64))
        >>> len(stats.preact_std)
        2
    """
    if (y is None) != (loss_fn is None):
        raise ValueError("pass both y and loss_fn for gradient statistics, or neither")
    modules = [m for m in model.modules() if not list(m.children())]
    linears = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear layer to inspect")
    stats = LayerStatistics()
    preacts: list[torch.Tensor] = []
    handles = []

    def record_preact(module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
        preacts.append(output)
        stats.preact_std.append(output.detach().float().std().item())

    def record_act(module, inputs, output):
        stats.act_std.append(output.detach().float().std().item())

    for i in linears:
        handles.append(modules[i].register_forward_hook(record_preact))
        following = modules[i + 1] if i + 1 < len(modules) else None
        if following is not None and not isinstance(following, nn.Linear):
            handles.append(following.register_forward_hook(record_act))
    saved = {p: p.grad for p in model.parameters()}
    try:
        with torch.enable_grad() if loss_fn is not None else torch.no_grad():
            y_hat = model(X)
            if len(stats.act_std) < len(stats.preact_std):  # the last layer has no activation
                stats.act_std.append(y_hat.detach().float().std().item())
            if loss_fn is not None:
                for p in model.parameters():
                    p.grad = None
                loss_fn(y_hat, y).backward()
                for z in preacts:
                    stats.preact_grad_std.append(z.grad.float().std().item())
                for i in linears:
                    stats.weight_grad_norm.append(modules[i].weight.grad.norm().item())
    finally:
        for h in handles:
            h.remove()
        for p, g in saved.items():
            p.grad = g
    return stats


@torch.no_grad()
def dead_units(
    model: nn.Module, X: torch.Tensor, kinds: tuple[type[nn.Module], ...] = (nn.ReLU,)
) -> list[float]:
    """Share of units that output exactly zero on *every* row of ``X``, per ReLU layer.

    Such a unit has :math:`z < 0` on all inputs, so :math:`\\sigma'(z) = 0` and its incoming
    weights receive no gradient from this data: once dead, it stays dead.

    Args:
        model: the network (put in eval mode for the pass, then restored).
        X: inputs, e.g. the whole training set.
        kinds: module types whose outputs are inspected (default ``nn.ReLU``).

    Example:
        >>> len(dead_units(mlp([64, 32, 32, 10]), torch.rand(100, 64)))
        2
    """
    fractions: list[float] = []

    def record(module, inputs, output):
        flat = output.reshape(len(output), -1)
        fractions.append((flat == 0).all(dim=0).float().mean().item())

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kinds)]
    if not handles:
        raise ValueError(f"model has no module of type {[k.__name__ for k in kinds]}")
    was_training = model.training
    model.eval()
    try:
        model(X)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return fractions


def gradient_norm(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Euclidean norm of :math:`\\nabla_W \\ell(\\text{model}(X), y)` over all parameters.

    With the whole training set this is the full gradient :math:`\\|\\nabla f(W)\\|`; with a
    mini-batch it is the norm of a stochastic gradient. Leaves ``.grad`` untouched.

    Example:
        >>> gradient_norm(model, nn.CrossEntropyLoss(), X, y)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(X), y), params)
    return float(torch.sqrt(sum((g**2).sum() for g in grads)))
