"""Hyperparameter search: grid search and random search under a budget.

Lecture section: "Hyperparameter search, data augmentation". Hyperparameters are the
*tunable* parameters (architecture, optimizer, initialization, learning rate and its
schedule, regularization) as opposed to the *learnable* ones the optimizer changes.

Bergstra and Bengio (2012): with a budget of :math:`n` trainings, a grid with
:math:`k` values per axis in :math:`d` dimensions (:math:`n = k^d`) tries only
:math:`k = n^{1/d}` distinct values of each hyperparameter, whereas random search tries
:math:`n` distinct values of every one of them. When only a few hyperparameters matter
(low effective dimension), random search explores those few much more finely for the
same cost. Scale-like hyperparameters (learning rate, weight decay) are drawn
log-uniformly.

An *objective* is a function ``objective(**params) -> score`` (e.g. the validation
error after training with ``params``), or returning a dict with a ``"score"`` key and any
other columns to record. Results come back as a pandas DataFrame, best first.
"""

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Uniform:
    """Uniform on ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got {self.low} and {self.high}")

    def sample(self, generator: torch.Generator) -> float:
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return self.low + (self.high - self.low) * u

    def grid(self, num: int) -> list[float]:
        """``num`` evenly spaced values from ``low`` to ``high``."""
        return torch.linspace(self.low, self.high, num, dtype=torch.float64).tolist()


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform on ``[low, high]``: :math:`\\log x` is uniform, for scales like lr.

    Each factor of 10 gets the same share of the samples.

    Example:
        >>> LogUniform(1e-4, 1e-1).sample(torch.Generator().manual_seed(0))
    """

    low: float
    high: float

    def __post_init__(self):
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low} and {self.high}")

    def sample(self, generator: torch.Generator) -> float:
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        return math.exp(math.log(self.low) + (math.log(self.high) - math.log(self.low)) * u)

    def grid(self, num: int) -> list[float]:
        """``num`` geometrically spaced values from ``low`` to ``high``."""
        logs = torch.linspace(math.log(self.low), math.log(self.high), num, dtype=torch.float64)
        return logs.exp().tolist()


@dataclass(frozen=True)
class IntUniform:
    """Integers uniform in ``{low, ..., high}`` (both included), e.g. a width or depth."""

    low: int
    high: int

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"IntUniform needs low <= high, got {self.low} and {self.high}")

    def sample(self, generator: torch.Generator) -> int:
        return int(torch.randint(self.low, self.high + 1, (), generator=generator))

    def grid(self, num: int) -> list[int]:
        """Up to ``num`` evenly spaced distinct integers."""
        values = torch.linspace(self.low, self.high, num, dtype=torch.float64).round()
        return sorted({int(v) for v in values})


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each with the same probability (a categorical choice)."""

    options: tuple

    def __init__(self, options: Sequence):
        if len(options) == 0:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(options))

    def sample(self, generator: torch.Generator):
        return self.options[int(torch.randint(len(self.options), (), generator=generator))]

    def grid(self, num: int | None = None) -> list:
        """All the options (``num`` is ignored)."""
        return list(self.options)


Distribution = Uniform | LogUniform | IntUniform | Choice


def _as_distribution(value) -> Distribution:
    if isinstance(value, Distribution):
        return value
    if isinstance(value, list | tuple):
        return Choice(value)
    return Choice([value])  # a constant


def make_grid(space: Mapping[str, Any], num: int) -> dict[str, list]:
    """A grid from a search space: ``num`` values per continuous axis, all options of a
    :class:`Choice`. Use it to compare grid and random search on the same space.

    Example:
        >>> make_grid({"lr": LogUniform(1e-3, 1.0), "act": ["relu", "tanh"]}, 3)
        {'lr': [0.001, 0.0316..., 1.0], 'act': ['relu', 'tanh']}
    """
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    return {name: _as_distribution(d).grid(num) for name, d in space.items()}


def _values(name: str, values) -> list:
    if hasattr(values, "tolist"):  # numpy arrays and tensors, e.g. np.logspace(-4, -1, 4)
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got []")
    return values


def grid_points(grid: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the grid's values (the Cartesian product), as dicts."""
    axes = {name: _values(name, values) for name, values in grid.items()}
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _evaluate(
    objective: Callable[..., Any],
    points: Sequence[dict],
    mode: str,
    progress: bool,
    desc: str,
):
    import pandas as pd

    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    rows = []
    for trial, params in enumerate(tqdm(points, desc=desc, disable=not progress, leave=False)):
        result = objective(**params)
        extra = dict(result) if isinstance(result, Mapping) else {"score": result}
        if "score" not in extra:
            raise KeyError(f"the objective returned a dict without a 'score' key: {extra}")
        extra["score"] = float(extra["score"])
        rows.append({"trial": trial, **params, **extra})
    table = pd.DataFrame(rows)
    table = table.sort_values("score", ascending=mode == "min", kind="stable", na_position="last")
    return table.reset_index(drop=True)


def grid_search(
    objective: Callable[..., Any],
    grid: Mapping[str, Sequence],
    mode: str = "min",
    progress: bool = True,
):
    """Evaluate ``objective`` at every point of the grid; return a DataFrame, best first.

    Args:
        objective: ``objective(**params)`` returns a score, or a dict with ``"score"``.
        grid: name -> list of values; the budget is the product of the list lengths.
        mode: ``"min"`` (default; errors, losses) or ``"max"`` (accuracies).
        progress: show a tqdm bar.

    Returns:
        One row per point: ``trial`` (evaluation order), the parameters, ``score`` and
        any extra columns, sorted by score (best in row 0).

    Example:
        >>> grid = {"lr": [0.01, 0.1], "wd": [0, 1]}
        >>> grid_search(lambda lr, wd: (lr - 0.1) ** 2 + wd, grid).iloc[0]   # lr 0.1, wd 0
    """
    return _evaluate(objective, grid_points(grid), mode, progress, "grid search")


def random_search(
    objective: Callable[..., Any],
    space: Mapping[str, Any],
    num_trials: int,
    seed: int = 0,
    mode: str = "min",
    progress: bool = True,
):
    """Evaluate ``objective`` at ``num_trials`` independent random points of ``space``.

    Args:
        objective: ``objective(**params)`` returns a score, or a dict with ``"score"``.
        space: name -> a distribution (:class:`LogUniform`, :class:`Uniform`,
            :class:`IntUniform`, :class:`Choice`), a list (a choice) or a constant.
        num_trials: the budget, the number of evaluations.
        seed: seeds the ``torch.Generator`` that draws the points (same seed, same points).
        mode: ``"min"`` (default) or ``"max"``.
        progress: show a tqdm bar.

    Returns:
        As :func:`grid_search`.

    Example:
        >>> space = {"lr": LogUniform(1e-4, 1.0), "width": IntUniform(16, 256)}
        >>> table = random_search(objective, space, num_trials=20, seed=0)
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be a positive integer, got {num_trials}")
    generator = torch.Generator().manual_seed(seed)
    dists = {name: _as_distribution(d) for name, d in space.items()}
    points = [{name: d.sample(generator) for name, d in dists.items()} for _ in range(num_trials)]
    return _evaluate(objective, points, mode, progress, "random search")


__all__ = [
    "Choice",
    "IntUniform",
    "LogUniform",
    "Uniform",
    "grid_points",
    "grid_search",
    "make_grid",
    "random_search",
]
