"""Learning-rate schedules from the lecture, for any ``torch.optim`` optimizer.

Lecture section: "Step size (learning rate) for SGD". Classical theory for SGD on convex
problems (Robbins and Monro, 1951) asks for step sizes :math:`t_k` with

.. math::

    \\sum_k t_k = \\infty, \\qquad \\sum_k t_k^2 < \\infty,

and practice uses a diminishing learning rate. The lecture's three schedules, with
:math:`a` the optimizer's initial learning rate (``initial_lr`` of each param group) and
:math:`k` the number of ``scheduler.step()`` calls so far:

- :class:`InverseTimeDecay` ("1/k decay"): :math:`t_k = a / (1 + b k)`;
- :class:`ExponentialDecay`: :math:`t_k = a\\, e^{-b k}`;
- :class:`StaircaseDecay`: divide by ``factor`` every ``step_size`` steps,
  :math:`t_k = a / \\text{factor}^{\\lfloor k / L \\rfloor}` (popular in practice).

Beyond the lecture, the schedule of much current practice: :class:`CosineDecay`, half a
cosine from :math:`a` down to a floor over a fixed number of steps (Loshchilov and Hutter,
2017), optionally after a linear *warmup* from a small rate (Goyal et al., 2017), which
keeps the first steps of a fresh network, or of Adam's not yet averaged moments, short.

Each class subclasses ``torch.optim.lr_scheduler.LRScheduler`` and computes the rate in
closed form from ``base_lrs`` and ``last_epoch``, so it works with PyTorch's optimizers,
with :mod:`dnncourse.optim`, with several param groups, with ``state_dict`` and with
:func:`dnncourse.train` (``scheduler_interval="epoch"`` makes :math:`k` count epochs,
``"batch"`` counts iterations). The heuristic variant that watches a validation metric
is PyTorch's ``ReduceLROnPlateau``.

References: Robbins and Monro (1951); Bottou and Bousquet (2008); Loshchilov and Hutter,
"SGDR: Stochastic Gradient Descent with Warm Restarts" (2017); Goyal et al., "Accurate,
Large Minibatch SGD" (2017).
"""

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["CosineDecay", "ExponentialDecay", "InverseTimeDecay", "StaircaseDecay"]


def _check_rate(decay_rate: float) -> float:
    if not (isinstance(decay_rate, int | float) and math.isfinite(decay_rate)) or decay_rate < 0:
        raise ValueError(f"decay_rate must be a finite number >= 0, got {decay_rate!r}")
    return float(decay_rate)


class _ClosedFormSchedule(LRScheduler):
    """Shared machinery: ``get_lr`` evaluates ``base_lr * self._multiplier(k)``."""

    def _multiplier(self, k: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """The learning rate of every param group at step ``k = last_epoch``."""
        scale = self._multiplier(self.last_epoch)
        return [base_lr * scale for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class _RateSchedule(_ClosedFormSchedule):
    """A schedule with one decay rate :math:`b \\ge 0` (the 1/k and exponential decays)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, decay_rate: float, last_epoch: int = -1
    ) -> None:
        self.decay_rate = _check_rate(decay_rate)
        super().__init__(optimizer, last_epoch)


class InverseTimeDecay(_RateSchedule):
    """The lecture's "1/k decay": :math:`t_k = \\dfrac{a}{1 + b k}`.

    It meets the Robbins-Monro conditions (:math:`\\sum 1/k = \\infty`,
    :math:`\\sum 1/k^2 < \\infty`) for every :math:`b > 0`.

    Args:
        optimizer: any ``torch.optim.Optimizer``; :math:`a` is each group's initial ``lr``.
        decay_rate: :math:`b \\ge 0` (``0`` keeps the rate constant).
        last_epoch: index of the last step, ``-1`` to start (as in PyTorch).

    Example:
        >>> scheduler = InverseTimeDecay(torch.optim.SGD(params, lr=0.1), decay_rate=0.5)
        >>> scheduler.step()  # lr = 0.1 / 1.5

    Note:
        PyTorch has no class of its own for this schedule; it equals
        ``LambdaLR(optimizer, lambda k: 1 / (1 + b * k))``.
    """

    def _multiplier(self, k: int) -> float:
        return 1.0 / (1.0 + self.decay_rate * k)


class ExponentialDecay(_RateSchedule):
    """The lecture's exponential decay: :math:`t_k = a\\, e^{-b k}`.

    Args:
        optimizer: any ``torch.optim.Optimizer``; :math:`a` is each group's initial ``lr``.
        decay_rate: :math:`b \\ge 0`.
        last_epoch: index of the last step, ``-1`` to start (as in PyTorch).

    Example:
        >>> scheduler = ExponentialDecay(torch.optim.SGD(params, lr=0.1), decay_rate=0.1)
        >>> scheduler.step()  # lr = 0.1 * exp(-0.1)

    Note:
        Same rates as ``torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=exp(-b))``,
        which multiplies by ``gamma`` at each step instead of using the closed form.
        The sum :math:`\\sum_k t_k` is finite, so this schedule does *not* meet the
        Robbins-Monro conditions: it freezes the iterate after a while.
    """

    def _multiplier(self, k: int) -> float:
        return math.exp(-self.decay_rate * k)


class StaircaseDecay(_ClosedFormSchedule):
    """The lecture's staircase decay: divide the rate by ``factor`` every ``step_size`` steps.

    .. math::  t_k = \\frac{a}{\\text{factor}^{\\lfloor k / L \\rfloor}}

    Args:
        optimizer: any ``torch.optim.Optimizer``; :math:`a` is each group's initial ``lr``.
        step_size: :math:`L`, steps (usually epochs) between two drops; positive integer.
        factor: divisor at each drop, ``>= 1`` (the lecture suggests 5 or 10). Default 10.
        last_epoch: index of the last step, ``-1`` to start (as in PyTorch).

    Example:
        >>> scheduler = StaircaseDecay(torch.optim.SGD(params, lr=0.1), step_size=10, factor=10)
        >>> # epochs 0-9: 0.1, epochs 10-19: 0.01, ...

    Note:
        Same rates as ``torch.optim.lr_scheduler.StepLR(optimizer, step_size=L,
        gamma=1 / factor)``; the lecture's *factor* divides, PyTorch's *gamma* multiplies.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        step_size: int,
        factor: float = 10.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        if not (isinstance(factor, int | float) and math.isfinite(factor)) or factor < 1:
            raise ValueError(f"factor must be a finite number >= 1 (it divides), got {factor!r}")
        self.step_size = step_size
        self.factor = float(factor)
        super().__init__(optimizer, last_epoch)

    def _multiplier(self, k: int) -> float:
        return self.factor ** -(k // self.step_size)


class CosineDecay(_ClosedFormSchedule):
    """Cosine decay over ``total_steps``, after an optional linear warmup.

    With :math:`w` warmup steps, :math:`T` total steps and floor :math:`a_{\\min} =
    a \\cdot` ``final_factor``:

    .. math::

        t_k = \\begin{cases}
        a \\bigl(s + (1 - s)\\, k / w\\bigr), & k < w \\quad (s = 1/w), \\\\
        a_{\\min} + \\tfrac12 (a - a_{\\min})
        \\bigl(1 + \\cos\\bigl(\\pi \\tfrac{k - w}{T - w}\\bigr)\\bigr), & w \\le k \\le T,
        \\end{cases}

    and :math:`t_k = a_{\\min}` after :math:`T`. The warmup climbs linearly from
    :math:`a/w` to :math:`a`; the cosine falls slowly at first, fastest half-way and
    slowly again at the end. Its sum is finite, so like the exponential decay it does not
    meet the Robbins-Monro conditions: it is meant for a training run of known length.

    Args:
        optimizer: any ``torch.optim.Optimizer``; :math:`a` is each group's initial ``lr``.
        total_steps: :math:`T`, the step (usually the epoch) at which the floor is reached;
            integer ``> warmup_steps``.
        warmup_steps: :math:`w \\ge 0` (default 0: no warmup).
        final_factor: :math:`a_{\\min} / a \\in [0, 1]` (default 0).
        last_epoch: index of the last step, ``-1`` to start (as in PyTorch).

    Example:
        >>> scheduler = CosineDecay(torch.optim.SGD(params, lr=0.1), total_steps=30,
        ...                         warmup_steps=3)

    Note:
        Without warmup the rates equal ``CosineAnnealingLR(optimizer, T_max=T,
        eta_min=a_min)`` for :math:`k \\le T` (PyTorch's class computes them recursively
        and keeps oscillating after :math:`T`). With warmup they equal ``SequentialLR`` of
        ``LinearLR(start_factor=1/w, total_iters=w)`` and ``CosineAnnealingLR(T_max=T - w,
        eta_min=a_min)`` with ``milestones=[w]``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        final_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        checks = (("warmup_steps", warmup_steps, 0), ("total_steps", total_steps, 1))
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"
            )
        if not (isinstance(final_factor, int | float) and 0.0 <= final_factor <= 1.0):
            raise ValueError(f"final_factor must be a number in [0, 1], got {final_factor!r}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_factor = float(final_factor)
        super().__init__(optimizer, last_epoch)

    def _multiplier(self, k: int) -> float:
        w, T, floor = self.warmup_steps, self.total_steps, self.final_factor
        if k < w:
            start = 1.0 / w
            return start + (1.0 - start) * k / w
        progress = min(k - w, T - w) / (T - w)
        return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))
