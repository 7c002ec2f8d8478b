"""Figures that several chapters draw: loss contours, the normalization zoo, image grids.

Each function draws on a matplotlib ``ax`` it is given and returns it, so a chapter
composes the figure and adds its own labels:

- :func:`least_squares_contours`: the level sets of :math:`\\frac1m\\|y - Xw\\|^2` over a
  2-D ``w`` with an optimizer's path (lecture, "When to stop" and "Data normalization");
- :func:`plot_shared_statistics`: which entries of an ``(N, C, H, W)`` tensor share their
  statistics, as Wu and He's (2018) cube (see :func:`dnncourse.nn.shared_statistics_mask`);
- :func:`image_grid`: a batch of small grayscale images tiled into one picture.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import to_rgba

__all__ = ["image_grid", "least_squares_contours", "plot_shared_statistics"]


def least_squares_contours(ax, X, y, path=None, *, num_levels: int = 12, span: float = 1.6):
    """Contours of :math:`\\frac1m\\|y - Xw\\|^2` over 2-D ``w``, with an optional path.

    The window is centred on the least-squares solution and scaled to hold it and the path.

    Example:
        >>> problem = LeastSquares.from_data(X, y)
        >>> gd = lambda params: torch.optim.SGD(params, lr=0.1)
        >>> path = run_optimizer(problem.loss, gd, [0.0, 0.0], num_steps=20)
        >>> least_squares_contours(ax, X, y, path)
    """
    X, y = X.double().cpu(), y.double().cpu()
    if X.shape[1] != 2:
        raise ValueError(f"contours need exactly two features, got {X.shape[1]}")
    w_star = torch.linalg.lstsq(X, y[:, None]).solution.flatten().numpy()
    points = [np.zeros(2), w_star] + ([] if path is None else list(path.double().cpu().numpy()))
    radius = span * max(np.abs(np.array(points) - w_star).max(), 1e-12)
    grid = np.linspace(-radius, radius, 201)
    W1, W2 = np.meshgrid(w_star[0] + grid, w_star[1] + grid)
    Xn, yn = X.numpy(), y.numpy()
    G, b, c = Xn.T @ Xn / len(yn), Xn.T @ yn / len(yn), yn @ yn / len(yn)
    F = G[0, 0] * W1**2 + 2 * G[0, 1] * W1 * W2 + G[1, 1] * W2**2 - 2 * (b[0] * W1 + b[1] * W2) + c
    f_star = F.min()
    levels = f_star + (F.max() - f_star) * np.linspace(0, 1, num_levels + 1)[1:] ** 2
    ax.contour(W1, W2, F, levels=levels, cmap="viridis", linewidths=0.8)
    ax.plot(*w_star, "k*", markersize=10)
    if path is not None:
        p = path.double().cpu().numpy()
        ax.plot(p[:, 0], p[:, 1], "o-", color="tab:red", markersize=2.5, linewidth=1)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_aspect("equal")
    return ax


def plot_shared_statistics(ax, mask: torch.Tensor, title: str = "", color: str = "tab:blue"):
    """Draw an ``(N, C, H, W)`` mask as Wu and He's cube: N, C and H·W on the three axes.

    Entries in the mask are shaded ``color``; the rest are white. ``ax`` must be a 3-D axis
    (``fig.add_subplot(..., projection="3d")``).

    Example:
        >>> ax = fig.add_subplot(1, 4, 1, projection="3d")
        >>> plot_shared_statistics(ax, shared_statistics_mask("batch", (4, 6, 2, 2), (0, 0)))
    """
    N, C, H, W = mask.shape
    cube = mask.reshape(N, C, H * W).permute(0, 2, 1).numpy()  # axes: N, H·W, C
    filled = np.ones_like(cube, dtype=bool)
    colors = np.where(cube[..., None], np.array(to_rgba(color)), np.array(to_rgba("white")))
    ax.voxels(filled, facecolors=colors, edgecolors="0.3", linewidth=0.4, shade=False)
    ax.set_xlabel("N", labelpad=-12)
    ax.set_ylabel("H, W", labelpad=-12)
    ax.set_zlabel("C", labelpad=-12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_box_aspect((N, H * W, C))
    ax.view_init(elev=20, azim=-60)
    ax.set_title(title)
    return ax


def image_grid(
    ax,
    images: torch.Tensor,
    nrow: int,
    *,
    pad: int = 1,
    cmap: str = "gray_r",
    pad_color: str = "#c9d6e3",
):
    """Tile ``(N, 1, H, W)`` (or ``(N, H, W)``) images into one picture on ``ax``.

    ``nrow`` images per row; ``pad`` pixels of ``pad_color`` between them. Returns ``ax``.

    Example:
        >>> image_grid(ax, data.X_train[:32].view(-1, 1, 8, 8), nrow=8)
    """
    x = images.detach().cpu().float()
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected (N, 1, H, W) or (N, H, W) images, got {tuple(images.shape)}")
    N, H, W = x.shape
    rows = math.ceil(N / nrow)
    canvas = torch.full((rows * (H + pad) + pad, nrow * (W + pad) + pad), float("nan"))
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[top : top + H, left : left + W] = x[i]
    colormap = plt.get_cmap(cmap).with_extremes(bad=pad_color)
    ax.imshow(canvas.numpy(), cmap=colormap, interpolation="nearest")
    ax.set_axis_off()
    return ax
