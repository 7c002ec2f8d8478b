"""The generic training loop used by every chapter after "SGD, mini-batches and epochs".

Lecture section: "Training algorithms" (practical SGD: shuffle, split into batches of
size B, one pass is an epoch; Bottou and Bousquet, 2008). The loop is written out once in
the SGD chapter; later chapters call :func:`train`, or :func:`fit_classifier` (train a
classifier with cross-entropy from an optimizer factory, an optional scheduler factory and
a generator, then score it), or :func:`fit_mlp` (the same for a fresh :func:`mlp` whose
weights and batch order both come from one seed: the chapters' controlled comparisons).

One epoch with *shuffle-then-split* sampling (without replacement):

1. permute the indices :math:`\\{0, \\dots, m-1\\}` and cut them into batches of size ``B``;
2. for each batch :math:`J`: :math:`\\hat g = \\frac{1}{|J|}\\sum_{j\\in J} \\nabla \\ell_j`,
   then ``optimizer.step()``;
3. evaluate on the validation set (``model.eval()`` and ``torch.no_grad()``), call the
   scheduler and the callbacks.

With ``sampling="replacement"`` each batch is drawn independently and uniformly
(canonical SGD); an "epoch" is then ``ceil(m / B)`` such draws.
"""

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from dnncourse.devices import default_device
from dnncourse.models import mlp

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]


def shuffled_batches(
    num_samples: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches of one epoch of practical SGD: a random permutation cut into pieces.

    Every index appears exactly once per epoch; the last batch may be smaller.
    """
    _check_batching(num_samples, batch_size)
    perm = torch.randperm(num_samples, generator=generator)
    yield from perm.split(batch_size)


def sampled_batches(
    num_samples: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches of canonical SGD: each batch drawn uniformly *with* replacement.

    Yields ``ceil(num_samples / batch_size)`` batches so that one "epoch" costs as many
    gradient evaluations as a pass of :func:`shuffled_batches`.
    """
    _check_batching(num_samples, batch_size)
    for _ in range(math.ceil(num_samples / batch_size)):
        yield torch.randint(num_samples, (batch_size,), generator=generator)


def _check_batching(num_samples: int, batch_size: int) -> None:
    if num_samples < 1:
        raise ValueError(f"need at least one sample, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of rows where the largest logit sits at the label."""
    return (y_hat.argmax(dim=-1) == y).float().mean()


@dataclass
class History:
    """What :func:`train` records. Lists are indexed by epoch unless named ``batch_*``.

    ``val_metrics[name]`` holds one value per epoch for each metric passed to
    :func:`train`; ``stopped_epoch`` is set when a callback ended training early.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metrics: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    stopped_epoch: int | None = None

    @property
    def num_epochs(self) -> int:
        return len(self.train_loss)

    def to_dataframe(self):
        """One row per epoch (needs pandas)."""
        import pandas as pd

        columns = {"epoch": range(1, self.num_epochs + 1), "train_loss": self.train_loss}
        if self.val_loss:
            columns["val_loss"] = self.val_loss
        columns |= {f"val_{k}": v for k, v in self.val_metrics.items()}
        columns["lr"] = self.lr
        return pd.DataFrame(columns).set_index("epoch")


class Callback:
    """Hooks into :func:`train`. Subclass and override what you need.

    ``on_epoch_end`` returns ``True`` to stop training (early stopping does this).
    """

    def on_train_begin(self, model: nn.Module, history: History) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, epoch: int, model: nn.Module, history: History) -> bool | None:
        """Called after each epoch's validation; ``epoch`` counts from 0."""

    def on_train_end(self, model: nn.Module, history: History) -> None:
        """Called once after the last epoch (also after an early stop)."""


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    metrics: dict[str, Metric] | None = None,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean loss (and metrics) of ``model`` on ``(X, y)`` in eval mode; restores the mode.

    Returns a dict with ``"loss"`` and one entry per metric.
    """
    was_training = model.training
    model.eval()
    try:
        y_hat = torch.cat([model(xb) for xb in X.split(batch_size)])
        results = {"loss": float(loss_fn(y_hat, y))}
        for name, metric in (metrics or {}).items():
            results[name] = float(metric(y_hat, y))
    finally:
        model.train(was_training)
    return results


def train(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    num_epochs: int,
    batch_size: int,
    sampling: str = "shuffle",
    scheduler=None,
    scheduler_interval: str = "epoch",
    callbacks: Sequence[Callback] = (),
    metrics: dict[str, Metric] | None = None,
    penalty: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` with mini-batch stochastic optimization; return the :class:`History`.

    Each step minimizes ``loss_fn(model(X_batch), y_batch) + penalty(model, X_batch)``
    (the lecture's :math:`\\ell + \\lambda\\Omega`; scale the penalty yourself).

    Args:
        model: the network; moved to ``device``.
        loss_fn: mean loss over a batch, e.g. ``nn.CrossEntropyLoss()``.
        optimizer: any ``torch.optim.Optimizer`` (PyTorch's or :mod:`dnncourse.optim`).
        train_data: ``(X, y)`` tensors; moved to ``device`` once.
        val_data: optional ``(X, y)`` evaluated after every epoch.
        num_epochs: passes over the training data.
        batch_size: samples per step (B).
        sampling: ``"shuffle"`` (practical SGD, without replacement) or ``"replacement"``.
        scheduler: a ``torch.optim.lr_scheduler`` object; ``ReduceLROnPlateau`` is stepped
            with the validation loss (training loss without validation data).
        scheduler_interval: ``"epoch"`` (default) or ``"batch"``: when ``scheduler.step()`` runs.
        callbacks: :class:`Callback` objects, e.g. early stopping.
        metrics: name -> ``metric(y_hat, y)`` evaluated on the validation data.
        penalty: optional regularizer ``penalty(model, X_batch)`` added to the loss.
        transform: optional batch transform (data augmentation), applied on the device.
        device: default :func:`dnncourse.default_device`.
        generator: ``torch.Generator`` (on the CPU) for the batch order; seeds the run.
        progress: show a tqdm progress bar over epochs.

    Example:
        >>> history = train(model, nn.CrossEntropyLoss(), opt, (X, y), num_epochs=5, batch_size=32)
        >>> history.train_loss[-1]
    """
    if num_epochs < 0:
        raise ValueError(f"num_epochs must be non-negative, got {num_epochs}")
    batches = {"shuffle": shuffled_batches, "replacement": sampled_batches}.get(sampling)
    if batches is None:
        raise ValueError(f"sampling must be 'shuffle' or 'replacement', got {sampling!r}")
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(
            f"scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}"
        )
    if metrics and "loss" in metrics:
        raise ValueError(
            "metrics may not be named 'loss': the validation loss is History.val_loss"
        )
    X, y = train_data
    if len(X) != len(y):
        raise ValueError(f"train_data: X has {len(X)} rows but y has {len(y)}")
    _check_batching(len(X), batch_size)
    device = torch.device(default_device() if device is None else device)
    model.to(device)
    X, y = X.to(device), y.to(device)
    if val_data is not None:
        val_data = tuple(t.to(device) for t in val_data)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    history = History(val_metrics={name: [] for name in metrics or {}})
    for cb in callbacks:
        cb.on_train_begin(model, history)
    bar = tqdm(range(num_epochs), desc="epochs", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        history.lr.append(optimizer.param_groups[0]["lr"])  # the rate this epoch starts with
        total, count = 0.0, 0
        for idx in batches(len(X), batch_size, generator):
            idx = idx.to(device)
            xb, yb = X[idx], y[idx]
            if transform is not None:
                xb = transform(xb)
            loss = loss_fn(model(xb), yb)
            objective = loss + penalty(model, xb) if penalty is not None else loss
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            if scheduler is not None and scheduler_interval == "batch" and not plateau:
                scheduler.step()
            batch_loss = loss.item()  # the one device sync of the step
            history.batch_loss.append(batch_loss)
            total, count = total + batch_loss * len(idx), count + len(idx)
        history.train_loss.append(total / count)
        if val_data is not None:
            results = evaluate(model, loss_fn, *val_data, metrics=metrics)
            history.val_loss.append(results.pop("loss"))
            for name, value in results.items():
                history.val_metrics[name].append(value)
        if scheduler is not None and plateau:
            watched = history.val_loss if val_data is not None else history.train_loss
            scheduler.step(watched[-1])
        elif scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}")
        stop = [bool(cb.on_epoch_end(epoch, model, history)) for cb in callbacks]
        if any(stop):
            history.stopped_epoch = epoch
            break
    for cb in callbacks:
        cb.on_train_end(model, history)
    return history


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of ``model.state_dict()``, to restore later with ``load_state_dict``."""
    return copy.deepcopy(model.state_dict())


@dataclass
class Score:
    """Accuracies and losses of a trained classifier, and the generalization gap."""

    train_accuracy: float
    val_accuracy: float
    train_loss: float
    val_loss: float
    history: History

    @property
    def gap(self) -> float:
        """Generalization gap in accuracy: train minus validation."""
        return self.train_accuracy - self.val_accuracy


def fit_classifier(
    model: nn.Module,
    make_optimizer: OptimizerFactory,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    num_epochs: int,
    generator: torch.Generator,
    batch_size: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    make_scheduler: SchedulerFactory | None = None,
    **train_kwargs,
) -> Score:
    """Train a classifier with :func:`train` and score it on both data sets.

    The optimizer comes from a factory, as in :func:`dnncourse.problems.run_optimizer`, so
    any ``torch.optim`` or :mod:`dnncourse.optim` class with any settings fits; validation
    accuracy is recorded every epoch (``history.val_metrics["accuracy"]``).

    Args:
        model: the network (its initialization is the caller's, e.g.
            :func:`dnncourse.models.mlp` with a generator).
        make_optimizer: builds the optimizer from the parameters, e.g.
            ``lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)``.
        train_data, val_data: ``(X, y)`` pairs.
        num_epochs: passes over the training data.
        generator: a CPU ``torch.Generator`` for the batch order: same generator state,
            same batches. Other randomness (``nn.Dropout`` masks, augmentations without a
            generator of their own) comes from the global RNG, which this never seeds.
        batch_size: default: the whole training set (full batch).
        loss_fn: default ``nn.CrossEntropyLoss()``.
        make_scheduler: builds the learning-rate scheduler from the optimizer, e.g.
            ``lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)``;
            stepped per epoch, or per batch with ``scheduler_interval="batch"``.
            Default ``None``: a constant learning rate.
        **train_kwargs: go to :func:`train` (``penalty``, ``transform``, ``callbacks``,
            ``scheduler_interval``, ``device`` ...).

    Example:
        >>> score = fit_classifier(model, lambda p: torch.optim.Adam(p, lr=1e-3), (X, y),
        ...                        (X_val, y_val), num_epochs=50, generator=torch.Generator())
        >>> score.val_accuracy, score.gap
    """
    if "scheduler" in train_kwargs:
        raise TypeError("fit_classifier takes make_scheduler (a factory), not scheduler")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    metrics = {"accuracy": accuracy}
    train_kwargs.setdefault("progress", False)
    optimizer = make_optimizer(model.parameters())
    history = train(
        model,
        loss_fn,
        optimizer,
        train_data,
        val_data,
        num_epochs=num_epochs,
        batch_size=len(train_data[0]) if batch_size is None else batch_size,
        metrics=metrics,
        generator=generator,
        scheduler=None if make_scheduler is None else make_scheduler(optimizer),
        **train_kwargs,
    )
    device = next(model.parameters()).device
    X, y = (t.to(device) for t in train_data)
    X_val, y_val = (t.to(device) for t in val_data)
    on_train = evaluate(model, loss_fn, X, y, metrics=metrics)
    on_val = evaluate(model, loss_fn, X_val, y_val, metrics=metrics)
    return Score(
        on_train["accuracy"], on_val["accuracy"], on_train["loss"], on_val["loss"], history
    )


def fit_mlp(
    sizes: Sequence[int],
    make_optimizer: OptimizerFactory,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    num_epochs: int,
    seed: int = 0,
    batch_size: int | None = None,
    activation: str | Callable[[], nn.Module] = "relu",
    mlp_options: dict | None = None,
    device: torch.device | str | None = None,
    **fit_kwargs,
) -> tuple[nn.Sequential, Score]:
    """A fresh :func:`dnncourse.models.mlp` trained by :func:`fit_classifier`, all from a seed.

    The controlled comparison of the chapters: the weights are drawn with
    ``torch.Generator().manual_seed(seed)`` and the batch order comes from a second
    generator with the same seed, so two calls that differ only in ``make_optimizer`` (or
    the loss, the schedule, the activation) start from the same network and see the same
    batches. The global RNG is never touched.

    Args:
        sizes, activation: as for :func:`dnncourse.models.mlp`.
        mlp_options: more arguments of :func:`dnncourse.models.mlp` (``init``, ``norm``,
            ``norm_position``, ``dropout`` ...).
        make_optimizer, train_data, val_data, num_epochs, batch_size: as for
            :func:`fit_classifier`.
        seed: seeds both the initialization and the batch order.
        device: where the network is built and trained (default
            :func:`dnncourse.default_device`).
        **fit_kwargs: go to :func:`fit_classifier` (``loss_fn``, ``make_scheduler``,
            ``callbacks``, ``penalty``, ``transform`` ...).

    Returns:
        The trained network and its :class:`Score`.

    Example:
        >>> model, score = fit_mlp([64, 64, 10], lambda p: torch.optim.SGD(p, lr=0.1),
        ...                        (X, y), (X_val, y_val), num_epochs=20, batch_size=32)
    """
    device = torch.device(default_device() if device is None else device)
    model = mlp(
        sizes,
        activation=activation,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        **(mlp_options or {}),
    )
    score = fit_classifier(
        model,
        make_optimizer,
        train_data,
        val_data,
        num_epochs=num_epochs,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        device=device,
        **fit_kwargs,
    )
    return model, score
