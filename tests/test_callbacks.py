"""EarlyStopping on scripted validation curves and inside dnncourse.train."""

import math

import pytest
import torch
from torch import nn

import dnncourse
from dnncourse.callbacks import EarlyStopping
from dnncourse.training import Callback, History, snapshot


def _replay(curve, stopper, metric=None):
    """Drive the callback like dnncourse.train; the model's weight stores the epoch number.

    Returns (epochs run, final weight) so restoring can be read off the weight.
    """
    model = nn.Linear(1, 1, bias=False)
    history = History(val_metrics={metric: []} if metric else {})
    stopper.on_train_begin(model, history)
    epochs_run = 0
    for epoch, value in enumerate(curve):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        history.train_loss.append(0.0)
        if metric:
            history.val_metrics[metric].append(value)
        else:
            history.val_loss.append(value)
        epochs_run += 1
        if stopper.on_epoch_end(epoch, model, history):
            break
    stopper.on_train_end(model, history)
    return epochs_run, model.weight.item()


def test_stops_exactly_patience_epochs_after_the_best():
    curve = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.0, 2.9, 1.0]
    stopper = EarlyStopping(patience=3)
    epochs_run, weight = _replay(curve, stopper)
    # best 3.0 at epoch 2; epochs 3, 4, 5 do not beat it -> stop at the end of epoch 5
    assert (stopper.best_epoch, stopper.best_value) == (2, 3.0)
    assert stopper.stopped_epoch == 5 and epochs_run == 6
    assert weight == 2.0, "the weights of the best epoch are restored"


def test_equal_value_is_not_an_improvement_and_a_new_best_resets_the_count():
    # epoch 3 ties the best (no improvement); epoch 4 improves and resets the count
    curve = [3.0, 2.0, 2.5, 2.0, 1.9, 2.0, 2.0, 2.0, 2.0]
    stopper = EarlyStopping(patience=3)
    epochs_run, weight = _replay(curve, stopper)
    assert stopper.best_epoch == 4
    assert stopper.stopped_epoch == 7 and epochs_run == 8
    assert weight == 4.0


def test_min_delta_requires_a_large_enough_improvement():
    curve = [1.0, 0.95, 0.92, 0.5, 0.45]
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    # 0.95 and 0.92 are within 0.1 of 1.0: two epochs without improvement -> stop at 2
    epochs_run, weight = _replay(curve, stopper)
    assert (stopper.best_epoch, stopper.stopped_epoch, epochs_run, weight) == (0, 2, 3, 0.0)
    # with min_delta=0 the same curve improves every epoch and never stops
    stopper = EarlyStopping(patience=2)
    epochs_run, weight = _replay(curve, stopper)
    assert stopper.stopped_epoch is None and epochs_run == 5
    assert weight == 4.0


def test_max_mode_on_a_metric_and_nan_is_never_an_improvement():
    curve = [0.5, 0.7, math.nan, 0.69, 0.71, 0.6]
    stopper = EarlyStopping(patience=2, monitor="val_accuracy", mode="max")
    epochs_run, weight = _replay(curve, stopper, metric="accuracy")
    assert (stopper.best_epoch, stopper.best_value, stopper.stopped_epoch) == (1, 0.7, 3)
    assert epochs_run == 4 and weight == 1.0


def test_without_restoring_the_last_weights_stay():
    stopper = EarlyStopping(patience=1, restore_best_weights=False)
    epochs_run, weight = _replay([1.0, 2.0, 3.0], stopper)
    assert stopper.stopped_epoch == 1 and epochs_run == 2 and weight == 1.0


def test_restores_the_best_even_without_an_early_stop_and_resets_between_runs():
    stopper = EarlyStopping(patience=10)
    _, weight = _replay([3.0, 1.0, 2.0], stopper)
    assert stopper.stopped_epoch is None and weight == 1.0
    _, weight = _replay([9.0, 8.0], stopper)  # a second run starts from scratch
    assert stopper.best_epoch == 1 and stopper.best_value == 8.0 and weight == 1.0


def test_bad_arguments_and_missing_quantities():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1)
    with pytest.raises(KeyError, match="f1"):
        _replay([1.0], EarlyStopping(monitor="f1"), metric="accuracy")


class _Recorder(Callback):
    """Keeps a copy of the weights after every epoch."""

    def on_train_begin(self, model, history):
        self.states = []

    def on_epoch_end(self, epoch, model, history):
        self.states.append(snapshot(model))


def test_early_stopping_inside_train_restores_the_argmin_of_the_validation_curve():
    # Train on y = x from w = -2; validate on y = -x, whose loss (w + 1)^2 E[x^2] is
    # smallest where gradient descent crosses w = -1 and grows after it.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(1, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.fill_(-2.0)
    stopper, recorder = EarlyStopping(patience=4), _Recorder()
    history = dnncourse.train(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        (X, X),
        (X, -X),
        num_epochs=100,
        batch_size=64,
        callbacks=[recorder, stopper],
        device="cpu",
        progress=False,
    )
    best = min(range(history.num_epochs), key=history.val_loss.__getitem__)
    assert 0 < best < history.num_epochs - 1, "the curve must have an interior minimum"
    assert stopper.best_epoch == best
    assert history.stopped_epoch == stopper.stopped_epoch == best + 4
    assert history.num_epochs == best + 5
    torch.testing.assert_close(model.state_dict(), recorder.states[best])
