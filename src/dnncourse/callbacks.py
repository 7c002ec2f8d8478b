"""Early stopping: a callback for :func:`dnncourse.train`.

Lecture sections: "When to stop" and "Regularization" (implicit regularization). The
gradient-norm test :math:`\\|\\nabla f(w)\\| \\le \\varepsilon` of classical optimization
is of little use for deep networks (the full gradient is expensive, stochastic
gradients are noisy, the objective may be non-differentiable), so one *periodically
checks the validation error and stops when it doesn't improve* (early stopping; Bishop,
1995; Sjöberg and Ljung, 1995; Prechelt, 1998).

The rule, after every epoch :math:`t` with monitored value :math:`v_t` (mode ``"min"``):

.. math::  \\text{improved} \\iff v_t < v_{\\text{best}} - \\delta_{\\min}.

An improvement records :math:`v_{\\text{best}} = v_t`, the epoch and (optionally) a copy
of the weights; ``patience`` epochs in a row without one stop training, and at the end
the best weights are loaded back.
"""

import math

from torch import nn

from dnncourse.training import Callback, History, snapshot


class EarlyStopping(Callback):
    """Stop when the monitored quantity has not improved for ``patience`` epochs.

    Args:
        patience: epochs without improvement tolerated before stopping (default 5).
            Training stops at the end of epoch ``best_epoch + patience``.
        min_delta: an improvement must beat the best value by more than this
            (default 0.0: any strict improvement counts).
        monitor: ``"val_loss"`` (default), ``"train_loss"``, or a validation metric
            by name, e.g. ``"accuracy"`` (also accepted as ``"val_accuracy"``).
        mode: ``"min"`` (default; losses) or ``"max"`` (accuracies).
        restore_best_weights: copy the weights at each improvement and load the best
            ones when training ends, whether it stopped early or ran out of epochs
            (default True).

    Attributes:
        best_value: the best monitored value seen.
        best_epoch: the epoch (counted from 0, as in :func:`dnncourse.train`) where it
            was reached; ``None`` before any epoch.
        stopped_epoch: the epoch at whose end training was stopped, ``None`` if it
            was not.

    Example:
        >>> stopper = EarlyStopping(patience=3)
        >>> history = train(model, loss_fn, opt, (X, y), (X_val, y_val), num_epochs=100,
        ...                 batch_size=32, callbacks=[stopper])   # then stopper.best_epoch

    Note:
        Keeping the best weights costs one copy of the ``state_dict`` (on the model's
        device). The validation set used to stop is part of training now: report the
        final error on a separate test set.
    """

    def __init__(
        self,
        patience: int = 5,
        min_delta: float = 0.0,
        monitor: str = "val_loss",
        mode: str = "min",
        restore_best_weights: bool = True,
    ):
        if patience < 1 or int(patience) != patience:
            raise ValueError(f"patience must be a positive integer, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be non-negative, got {min_delta}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.monitor, self.mode = monitor, mode
        self.restore_best_weights = restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0  # epochs since the last improvement
        self.best_state = None

    def _current(self, history: History) -> float:
        name = self.monitor
        if name in ("val_loss", "train_loss"):
            values = getattr(history, name)
        else:
            metric = name.removeprefix("val_") if name not in history.val_metrics else name
            if metric not in history.val_metrics:
                raise KeyError(
                    f"EarlyStopping monitors {name!r}, but the history has val_loss, "
                    f"train_loss and metrics {sorted(history.val_metrics)}"
                )
            values = history.val_metrics[metric]
        if not values:
            raise ValueError(
                f"EarlyStopping monitors {name!r} but nothing was recorded "
                "(pass validation data to train)"
            )
        return float(values[-1])

    def is_improvement(self, value: float) -> bool:
        """``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_train_begin(self, model: nn.Module, history: History) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, model: nn.Module, history: History) -> bool:
        value = self._current(history)
        if self.is_improvement(value):
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = snapshot(model)
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model: nn.Module, history: History) -> None:
        if self.restore_best_weights and self.best_state is not None:
            model.load_state_dict(self.best_state)

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
            f"monitor={self.monitor!r}, mode={self.mode!r}, "
            f"restore_best_weights={self.restore_best_weights})"
        )


__all__ = ["EarlyStopping"]
