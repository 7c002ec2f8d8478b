"""Tests of dnncourse.plotting: the data each figure shows, read back from the axes.

Each check takes what was drawn (contour vertices, voxel colours, image pixels) and
compares it with what should be drawn, computed independently; each test also shows that
its check fails for a figure drawn from the wrong data.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.contour import ContourSet

from dnncourse.nn import shared_statistics_mask
from dnncourse.plotting import image_grid, least_squares_contours, plot_shared_statistics
from dnncourse.problems import LeastSquares, run_optimizer


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def least_squares_data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, dtype=torch.float64, generator=gen) * torch.tensor([1.0, 0.5])
    y = X @ torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.1 * torch.randn(
        40, dtype=torch.float64, generator=gen
    )
    return X, y


def check_contours(ax, X, y, path):
    """Every drawn contour is a level set of (1/m)||y - Xw||^2; the path and w* are drawn."""
    problem = LeastSquares.from_data(X, y)
    (contours,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    spread = max(float(problem.loss(torch.as_tensor(v))) for v in ax.dataLim.corners())
    drawn_levels = [
        (level, drawn)
        for level, drawn in zip(contours.levels, contours.get_paths(), strict=True)
        if len(drawn.vertices)  # the top level touches the window only at a corner
    ]
    assert len(drawn_levels) >= len(contours.levels) - 1
    for level, drawn in drawn_levels:
        w = torch.as_tensor(drawn.vertices)
        values = ((y - w @ X.T) ** 2).mean(dim=1)
        # linear interpolation on a 201-point grid: error far below 1e-3 of the range
        assert float((values - level).abs().max()) < 1e-3 * spread
    lines = {len(line.get_xdata()): line for line in ax.lines}
    star = lines[1]
    np.testing.assert_allclose([star.get_xdata()[0], star.get_ydata()[0]], problem.w_star)
    drawn_path = np.column_stack([lines[len(path)].get_xdata(), lines[len(path)].get_ydata()])
    np.testing.assert_allclose(drawn_path, path.numpy())


def test_least_squares_contours_draw_level_sets_and_the_path(ax):
    X, y = least_squares_data()
    problem = LeastSquares.from_data(X, y)
    gd = run_optimizer(problem.loss, lambda p: torch.optim.SGD(p, lr=0.2), [0.0, 0.0], 15)
    least_squares_contours(ax, X, y, gd)
    check_contours(ax, X, y, gd)
    fig, wrong = plt.subplots()
    least_squares_contours(wrong, X.flip(1), y, gd)  # the contours of another problem
    with pytest.raises(AssertionError):
        check_contours(wrong, X, y, gd)
    plt.close(fig)
    with pytest.raises(ValueError):
        least_squares_contours(ax, torch.randn(5, 3), torch.randn(5))


def voxel_colors(mask, color):
    """Draw ``mask`` and return the facecolors handed to ``ax.voxels``, shape (N, HW, C, 4)."""
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    calls, voxels = [], ax.voxels
    ax.voxels = lambda *args, **kwargs: calls.append((args, kwargs)) or voxels(*args, **kwargs)
    plot_shared_statistics(ax, mask, "GN", color=color)
    assert ax.get_title() == "GN"
    plt.close(fig)
    ((args, kwargs),) = calls
    assert args[0].all(), "every entry of the tensor is a drawn cube"
    return kwargs["facecolors"]


def check_cube(colors, mask, color):
    """Entry (n, c, h, w) is shaded ``color`` iff it is in the mask, white otherwise."""
    N, C, H, W = mask.shape
    expected = np.empty((N, H * W, C, 4))
    for n, c, h, w in np.ndindex(N, C, H, W):
        expected[n, h * W + w, c] = to_rgba(color if mask[n, c, h, w] else "white")
    np.testing.assert_array_equal(colors, expected)


def test_plot_shared_statistics_shades_exactly_the_mask():
    mask = shared_statistics_mask("group", (3, 4, 2, 2), (1, 2), num_groups=2)
    check_cube(voxel_colors(mask, "tab:red"), mask, "tab:red")
    with pytest.raises(AssertionError):  # a cube drawn from another mask
        other = shared_statistics_mask("instance", (3, 4, 2, 2), (1, 2))
        check_cube(voxel_colors(other, "tab:red"), mask, "tab:red")


def check_grid(ax, images, nrow, pad):
    """Image i sits at row i // nrow, column i % nrow; the padding is drawn as 'bad' (NaN)."""
    canvas = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    N, H, W = images.shape
    covered = np.zeros(canvas.shape, dtype=bool)
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        np.testing.assert_array_equal(canvas[top : top + H, left : left + W], images[i].numpy())
        covered[top : top + H, left : left + W] = True
    assert np.isnan(canvas[~covered]).all()


def test_image_grid_places_each_image_in_its_cell(ax):
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    image_grid(ax, images, nrow=3, pad=1)
    assert ax.images[0].get_array().shape == (2 * 9 + 1, 3 * 9 + 1)
    check_grid(ax, images[:, 0], nrow=3, pad=1)
    fig, wrong = plt.subplots()
    image_grid(wrong, images.flip(0), nrow=3, pad=1)  # the same images in another order
    with pytest.raises(AssertionError):
        check_grid(wrong, images[:, 0], nrow=3, pad=1)
    plt.close(fig)
    with pytest.raises(ValueError):
        image_grid(ax, torch.rand(5, 3, 8, 8), nrow=3)
