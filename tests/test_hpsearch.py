"""Grid and random search: the product, the budget, seeds, distributions, best first."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dnncourse.hpsearch import (
    Choice,
    IntUniform,
    LogUniform,
    Uniform,
    grid_points,
    grid_search,
    make_grid,
    random_search,
)


def _bowl(lr, width, act="relu"):
    """Smallest at lr = 0.1, width = 64, act = relu."""
    return (math.log10(lr) + 1) ** 2 + ((width - 64) / 64) ** 2 + (act != "relu")


def test_grid_search_enumerates_the_product_and_sorts_best_first():
    grid = {"lr": [0.01, 0.1, 1.0], "width": [32, 64], "act": ["relu", "tanh"]}
    calls = []

    def objective(**params):
        calls.append(params)
        return _bowl(**params)

    table = grid_search(objective, grid, progress=False)
    assert isinstance(table, pd.DataFrame) and len(table) == len(calls) == 12
    combos = {(c["lr"], c["width"], c["act"]) for c in calls}
    assert len(combos) == 12, "each point once"
    assert list(table.columns) == ["trial", "lr", "width", "act", "score"]
    assert table.score.is_monotonic_increasing
    best = table.iloc[0]
    assert (best.lr, best.width, best.act, best.score) == (0.1, 64, "relu", 0.0)
    assert sorted(table.trial) == list(range(12))


def test_grid_points_and_validation():
    assert grid_points({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ValueError, match="non-empty list"):
        grid_points({"a": []})
    points = grid_points({"lr": np.logspace(-2, 0, 3), "w": torch.tensor([1, 2])})
    assert len(points) == 6 and points[0] == {"lr": pytest.approx(0.01), "w": 1}
    assert isinstance(points[0]["lr"], float) and isinstance(points[0]["w"], int)
    with pytest.raises(ValueError, match="non-empty list"):
        grid_points({"a": "relu"})


def test_random_search_honours_the_budget_and_the_seed():
    space = {"lr": LogUniform(1e-3, 1.0), "width": IntUniform(16, 128), "act": ["relu", "tanh"]}
    calls = []

    def objective(**params):
        calls.append(params)
        return _bowl(**params)

    a = random_search(objective, space, num_trials=25, seed=3, progress=False)
    assert len(a) == len(calls) == 25
    b = random_search(_bowl, space, num_trials=25, seed=3, progress=False)
    pd.testing.assert_frame_equal(a, b)
    c = random_search(_bowl, space, num_trials=25, seed=4, progress=False)
    assert not a.lr.equals(c.lr)
    assert a.score.is_monotonic_increasing
    assert a.lr.between(1e-3, 1.0).all() and a.width.between(16, 128).all()
    assert set(a.act) <= {"relu", "tanh"}
    assert a.lr.nunique() == 25, "random search tries a new value of every axis each trial"


def test_best_found_with_mode_max_and_extra_columns():
    def objective(x):
        return {"score": -((x - 0.3) ** 2), "x_squared": x**2}

    table = random_search(
        objective, {"x": Uniform(0.0, 1.0)}, 200, seed=0, mode="max", progress=False
    )
    assert table.score.is_monotonic_decreasing
    assert abs(table.x.iloc[0] - 0.3) < 0.02  # 200 uniform draws: the nearest is ~1/400 away
    assert (table.x_squared == table.x**2).all()


def test_log_uniform_spreads_evenly_over_decades():
    gen = torch.Generator().manual_seed(0)
    dist = LogUniform(1e-4, 1.0)
    logs = torch.tensor([math.log10(dist.sample(gen)) for _ in range(4000)])
    # log10 x ~ U(-4, 0): mean -2, std 4/sqrt(12) ~ 1.155; the sample mean's standard
    # error is 1.155/sqrt(4000) ~ 0.018 -> allow 5 of them; each decade gets ~1/4
    assert abs(logs.mean().item() + 2.0) < 5 * (4 / math.sqrt(12)) / math.sqrt(4000)
    shares = torch.histc(logs, bins=4, min=-4, max=0) / 4000
    # each share is Binomial(4000, 1/4)/4000: standard error sqrt(3/16/4000) ~ 0.0068
    assert (shares - 0.25).abs().max() < 5 * math.sqrt(3 / 16 / 4000)


def test_distribution_grids_and_make_grid():
    assert LogUniform(1e-3, 1e-1).grid(3) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert Uniform(0.0, 1.0).grid(3) == [0.0, 0.5, 1.0]
    assert IntUniform(1, 3).grid(5) == [1, 2, 3]
    grid = make_grid({"lr": LogUniform(1e-2, 1.0), "act": ["relu", "tanh"], "depth": 2}, 3)
    assert grid == {"lr": pytest.approx([1e-2, 1e-1, 1.0]), "act": ["relu", "tanh"], "depth": [2]}
    assert len(grid_points(grid)) == 6


def test_choice_samples_every_option_and_validation():
    gen = torch.Generator().manual_seed(0)
    draws = {Choice(["a", "b", "c"]).sample(gen) for _ in range(100)}
    assert draws == {"a", "b", "c"}
    with pytest.raises(ValueError):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError):
        Uniform(1.0, 1.0)
    with pytest.raises(ValueError):
        Choice([])
    with pytest.raises(ValueError, match="num_trials"):
        random_search(_bowl, {"lr": LogUniform(0.1, 1)}, 0)
    with pytest.raises(ValueError, match="mode"):
        grid_search(_bowl, {"lr": [0.1], "width": [64]}, mode="best", progress=False)
    with pytest.raises(KeyError, match="score"):
        grid_search(lambda x: {"loss": x}, {"x": [1]}, progress=False)
