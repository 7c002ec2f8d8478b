"""Tests of the experiment helpers in dnncourse.experiments (PyTorch and theory as oracles)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnncourse.experiments import (
    balanced_subset,
    fit_classifier,
    gd_least_squares,
    gradient_norm,
    image_grid,
    least_squares_contours,
    mc_dropout_predict,
    mlp,
    noisy_labels,
    normalize_over,
    plot_shared_statistics,
    shared_statistics_mask,
)


def test_mlp_layout_before_and_after():
    before = mlp([4, 8, 8, 3], norm=nn.BatchNorm1d, dropout=0.5)
    kinds = [type(m) for m in before]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    after = mlp([4, 8, 3], norm=nn.BatchNorm1d, norm_position="after")
    assert [type(m) for m in after] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert mlp([4, 3])(torch.randn(2, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sizes": [4]},
        {"sizes": [4, 3], "norm_position": "middle"},
        {"sizes": [4, 3], "dropout": 1.0},
    ],
)
def test_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        mlp(**kwargs)


def test_balanced_subset_counts_and_reproducible():
    X = torch.arange(60.0)[:, None]
    y = torch.arange(60) % 3
    Xs, ys = balanced_subset(X, y, per_class=4, seed=1)
    assert torch.bincount(ys).tolist() == [4, 4, 4]
    assert torch.equal(ys, (Xs[:, 0].long() % 3))  # rows stay paired with their labels
    Xs2, _ = balanced_subset(X, y, per_class=4, seed=1)
    assert torch.equal(Xs, Xs2)
    with pytest.raises(ValueError):
        balanced_subset(X, y, per_class=21)


def test_fit_classifier_learns_separable_data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 2, generator=gen)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    score = fit_classifier(mlp([2, 16, 2]), (X[:100], y[:100]), (X[100:], y[100:]), lr=0.05)
    # a linear boundary through the origin: a 16-unit MLP gets (nearly) all of it
    assert score.train_accuracy >= 0.97 and score.val_accuracy >= 0.9
    assert score.gap == pytest.approx(score.train_accuracy - score.val_accuracy)
    assert score.history.num_epochs == 100
    with pytest.raises(ValueError):
        fit_classifier(mlp([2, 2]), (X, y), (X, y), optimizer="lbfgs")


def test_gradient_norm_matches_backward():
    torch.manual_seed(0)
    model = mlp([3, 5, 2])
    X, y = torch.randn(7, 3), torch.randint(2, (7,))
    value = gradient_norm(model, nn.CrossEntropyLoss(), X, y)
    nn.CrossEntropyLoss()(model(X), y).backward()
    expected = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert value == pytest.approx(float(expected), rel=1e-5)


def test_gd_least_squares_matches_autograd_and_converges():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 2, dtype=torch.float64, generator=gen)
    y = X @ torch.tensor([1.0, -2.0], dtype=torch.float64)
    path = gd_least_squares(X, y, lr=0.1, num_steps=3)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    for k in range(3):
        opt.zero_grad()
        ((y - X @ w) ** 2).mean().backward()
        opt.step()
        torch.testing.assert_close(path[k + 1], w.detach())
    long = gd_least_squares(X, y, lr=0.2, num_steps=500)
    torch.testing.assert_close(long[-1], torch.tensor([1.0, -2.0], dtype=torch.float64))


def test_least_squares_contours_draws():
    X = torch.randn(20, 2)
    fig, ax = plt.subplots()
    least_squares_contours(ax, X, X[:, 0], gd_least_squares(X, X[:, 0], lr=0.1, num_steps=5))
    assert ax.lines
    plt.close(fig)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("batch", 4 * 1 * 9), ("layer", 6 * 9), ("instance", 9), ("group", 3 * 9)],
)
def test_shared_statistics_mask_sizes(kind, expected):
    mask = shared_statistics_mask(kind, (4, 6, 3, 3), (1, 4), num_groups=2)
    assert int(mask.sum()) == expected
    assert mask[1, 4].all()  # the chosen entry's own slice is always in


def test_normalize_over_matches_torch_functional():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(
        normalize_over(x, "batch"), F.batch_norm(x, None, None, training=True)
    )
    torch.testing.assert_close(normalize_over(x, "layer"), F.layer_norm(x, x.shape[1:]))
    torch.testing.assert_close(normalize_over(x, "instance"), F.instance_norm(x))
    torch.testing.assert_close(normalize_over(x, "group", num_groups=3), F.group_norm(x, 3))
    with pytest.raises(ValueError):
        normalize_over(x, "group", num_groups=4)
    with pytest.raises(ValueError):
        normalize_over(x[0], "batch")


def test_plot_shared_statistics_draws():
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    plot_shared_statistics(ax, shared_statistics_mask("group", (3, 4, 2, 2), (0, 0)), "GN")
    assert ax.get_title() == "GN"
    plt.close(fig)


def test_mc_dropout_predict_averages_masks_and_restores_mode():
    torch.manual_seed(0)
    model = mlp([4, 32, 3], dropout=0.5).eval()
    X = torch.randn(10, 4)
    probs = mc_dropout_predict(model, X, num_samples=20)
    torch.testing.assert_close(probs.sum(1), torch.ones(10))
    assert not model.training
    # with p = 0 every "mask" is the full network: MC average equals one eval pass
    plain = mlp([4, 8, 3]).eval()
    torch.testing.assert_close(
        mc_dropout_predict(plain, X, num_samples=3), torch.softmax(plain(X), dim=-1)
    )


def test_image_grid_layout():
    fig, ax = plt.subplots()
    image_grid(ax, torch.rand(5, 1, 8, 8), nrow=3, pad=1)
    canvas = ax.images[0].get_array()
    assert canvas.shape == (2 * 9 + 1, 3 * 9 + 1)
    plt.close(fig)
    with pytest.raises(ValueError):
        image_grid(ax, torch.rand(5, 3, 8, 8), nrow=3)


def test_noisy_labels_fraction_and_reproducible():
    y = torch.arange(20000) % 10
    noisy = noisy_labels(y, 0.3, num_classes=10, seed=3)
    wrong = float((noisy != y).float().mean())
    # expected share 0.3 * 0.9 = 0.27; the standard error is sqrt(0.27 * 0.73 / 20000) ~ 0.003
    assert abs(wrong - 0.27) < 0.015
    assert torch.equal(noisy, noisy_labels(y, 0.3, num_classes=10, seed=3))
    assert torch.equal(noisy_labels(y, 0.0, num_classes=10), y)
    assert int(noisy.max()) <= 9 and int(noisy.min()) >= 0
    with pytest.raises(ValueError):
        noisy_labels(y, 1.5, num_classes=10)


def test_fit_classifier_plain_sgd_matches_torch_loop():
    """Full batch, momentum 0: fit_classifier takes exactly torch.optim.SGD's steps."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(3, (30,), generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    reference = nn.Linear(4, 3).double()
    reference.load_state_dict(model.state_dict())
    fit_classifier(model, (X, y), (X, y), lr=0.3, optimizer="sgd", momentum=0.0, num_epochs=5)
    opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    for _ in range(5):
        opt.zero_grad()
        nn.CrossEntropyLoss()(reference(X), y).backward()
        opt.step()
    torch.testing.assert_close(model.weight.cpu(), reference.weight)
    torch.testing.assert_close(model.bias.cpu(), reference.bias)
