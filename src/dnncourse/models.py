"""The course's one model builder: a multilayer perceptron with every knob the lecture turns.

Lecture sections: "Three design choices" (which activation at the hidden nodes), "Where to
start" (initialization; Glorot and Bengio, 2010; He et al., 2015), "Data normalization"
(batch normalization before or after the activation; Ioffe and Szegedy, 2015) and
"Regularization" (dropout; Srivastava et al., 2014). Every chapter builds its networks
with :func:`mlp`: ``Linear`` layers with ``[norm] -> activation -> [dropout]`` between
them and logits at the end.

With a ``generator`` the weights come from it and the global RNG is left alone, so the
same generator state gives the same network whatever ran before (DESIGN convention 8).
"""

import inspect
import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "mlp"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}

Init = Callable[..., torch.Tensor]


def mlp(
    sizes: Sequence[int],
    *,
    activation: str | Callable[[], nn.Module] = "relu",
    init: Init | None = None,
    norm: Callable[[int], nn.Module] | None = None,
    norm_position: str = "before",
    dropout: float = 0.0,
    dropout_layer: Callable[[float], nn.Module] = nn.Dropout,
    bias: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (logits, no final activation).

    Each hidden block is ``Linear -> [norm] -> activation -> [dropout]`` with
    ``norm_position="before"`` (Ioffe and Szegedy's :math:`\\sigma(BN(Wx))`) and
    ``Linear -> activation -> [norm] -> [dropout]`` with ``"after"``
    (:math:`BN(\\sigma(Wx))`); the output layer is a plain ``Linear``.

    Args:
        sizes: layer widths ``[d_0, d_1, ..., d_L]``, inputs first, at least two entries.
        activation: a name in :data:`ACTIVATIONS` (``"relu"``, ``"tanh"``, ...) or a
            zero-argument factory returning an ``nn.Module`` (e.g. ``nn.GELU``).
        init: in-place initializer of every weight matrix, called as
            ``init(weight, generator=generator)`` when a generator is given (so it must
            accept ``generator=``, as every function of :mod:`dnncourse.init` and
            ``torch.nn.init`` does) and ``init(weight)`` otherwise; biases are then zero.
            Default ``None``: PyTorch's ``nn.Linear`` initialization.
        norm: factory ``norm(num_features)`` of a normalization layer, e.g.
            ``nn.BatchNorm1d``; ``None`` (default) for none.
        norm_position: ``"before"`` (default) or ``"after"`` the activation.
        dropout: drop probability after each hidden block (PyTorch's meaning; default 0).
        dropout_layer: factory ``dropout_layer(p)`` (default ``nn.Dropout``).
        bias: whether the linear layers have biases (default True).
        generator: a CPU ``torch.Generator`` for the weights. With ``init=None`` it draws
            exactly what ``nn.Linear`` draws, so ``generator=torch.Generator().manual_seed(s)``
            gives the network that ``torch.manual_seed(s)`` before the build would give.
            Default ``None``: the global RNG.
        device, dtype: where the parameters live and their type (default: PyTorch's,
            CPU and float32). The weights are drawn on the CPU, then moved.

    Example:
        >>> model = mlp([64, 128, 10], activation="tanh", generator=torch.Generator())
        >>> model(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must hold at least two positive widths, got {list(sizes)}")
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
    make_activation = _activation(activation)
    if init is not None and generator is not None:
        _check_accepts_generator(init)
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[], enabled=generator is not None):
        for i, (d_in, d_out) in enumerate(pairwise(sizes)):
            linear = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)
            _initialize(linear, init, generator)
            layers.append(linear)
            if i == len(sizes) - 2:
                break
            block = [make_activation()]
            if norm is not None:
                block.insert(0 if norm_position == "before" else 1, norm(d_out))
            layers += block
            if dropout > 0:
                layers.append(dropout_layer(dropout))
    model = nn.Sequential(*layers)
    return model if device is None else model.to(device)


def _activation(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if not isinstance(activation, str):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} "
            "or a factory returning an nn.Module"
        )
    return ACTIVATIONS[activation]


def _check_accepts_generator(init: Init) -> None:
    """Refuse an ``init`` that cannot take ``generator=`` rather than drop the generator."""
    try:
        parameters = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        return
    if not any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise TypeError(
            f"init {init!r} takes no generator= argument, so the generator would be ignored; "
            "write it as e.g. lambda w, generator: w.normal_(0, 0.01, generator=generator)"
        )


@torch.no_grad()
def _initialize(linear: nn.Linear, init: Init | None, generator: torch.Generator | None):
    """``init`` on the weight and zero bias; or, with only a generator, nn.Linear's draws."""
    if init is not None:
        if generator is None:
            init(linear.weight)
        else:
            init(linear.weight, generator=generator)
        if linear.bias is not None:
            linear.bias.zero_()
    elif generator is not None:  # nn.Linear.reset_parameters, drawn from the generator
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        if linear.bias is not None:
            bound = 1 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
