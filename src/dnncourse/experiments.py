"""Small, reusable experiment pieces for the "When to stop" and "Tricks" chapters.

Lecture sections: "When to stop" (early stopping), "Data normalization" (scaling, PCA and
whitening, batch normalization and its zoo), "Regularization" (explicit and implicit,
dropout as an ensemble) and "Hyperparameter search, data augmentation". References:
Bishop (1995) and Sjöberg and Ljung (1995) for early stopping as regularization, Ioffe and
Szegedy (2015) and Wu and He (2018) for normalization layers, Srivastava et al. (2014) for
dropout, Bergstra and Bengio (2012) for random search.

What lives here is what several chapters use and what would otherwise be copied between
them: a configurable MLP, a class-balanced small training set and label noise (to make
overfitting visible), a full-batch "train and score" wrapper around :func:`dnncourse.train`,
the norm of a (full or mini-batch) gradient, gradient descent on least squares with its
contour plot, the entry masks of the normalization zoo and their drawing, Monte Carlo
averaging over dropout masks, and an image grid.
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dnncourse.training import History, accuracy, evaluate, train

NORM_KINDS = ("batch", "layer", "instance", "group")


def mlp(
    sizes: Sequence[int],
    *,
    activation: Callable[[], nn.Module] = nn.ReLU,
    norm: Callable[[int], nn.Module] | None = None,
    norm_position: str = "before",
    dropout: float = 0.0,
    dropout_layer: Callable[[float], nn.Module] = nn.Dropout,
) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` with optional norm and dropout.

    Each hidden block is ``Linear -> [norm] -> activation -> [dropout]`` when
    ``norm_position="before"`` (Ioffe and Szegedy's placement, :math:`\\sigma(BN(Wx))`) and
    ``Linear -> activation -> [norm] -> [dropout]`` when ``"after"``
    (:math:`BN(\\sigma(Wx))`). The output layer is a plain ``Linear`` (logits).

    Args:
        sizes: layer widths, input first, output last (at least two entries).
        activation: factory of the activation module (default ``nn.ReLU``).
        norm: factory ``norm(num_features)`` of a normalization layer, e.g.
            ``nn.BatchNorm1d``; ``None`` (default) for none.
        norm_position: ``"before"`` (default) or ``"after"`` the activation.
        dropout: drop probability after each hidden block (PyTorch's meaning; default 0).
        dropout_layer: factory ``dropout_layer(p)`` (default ``nn.Dropout``).

    Example:
        >>> model = mlp([64, 128, 10], norm=nn.BatchNorm1d, dropout=0.2)
        >>> model(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output width, got {list(sizes)}")
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
        layers.append(nn.Linear(fan_in, fan_out))
        block = [activation()]
        if norm is not None:
            block.insert(0 if norm_position == "before" else 1, norm(fan_out))
        layers += block
        if dropout > 0:
            layers.append(dropout_layer(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def balanced_subset(
    X: torch.Tensor, y: torch.Tensor, per_class: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random rows of each class of ``(X, y)``, shuffled: a small training set.

    Small training sets make overfitting (and the value of regularization) visible on the
    digits. The draw is reproducible: same ``seed``, same rows.

    Example:
        >>> X_small, y_small = balanced_subset(data.X_train, data.y_train, per_class=10)
        >>> torch.bincount(y_small)  # ten of each digit
    """
    if per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    chosen = []
    for label in torch.unique(y_cpu):
        rows = torch.nonzero(y_cpu == label).flatten()
        if len(rows) < per_class:
            raise ValueError(f"class {int(label)} has {len(rows)} rows, fewer than {per_class}")
        chosen.append(rows[torch.randperm(len(rows), generator=gen)[:per_class]])
    idx = torch.cat(chosen)
    idx = idx[torch.randperm(len(idx), generator=gen)].to(X.device)
    return X[idx], y[idx]


def noisy_labels(
    y: torch.Tensor, fraction: float, num_classes: int, *, seed: int = 0
) -> torch.Tensor:
    """A copy of ``y`` where a random ``fraction`` of the labels is redrawn uniformly.

    A redrawn label equals the true one with probability ``1 / num_classes``, so the share
    of *wrong* labels is about ``fraction * (1 - 1 / num_classes)``. Corrupting only the
    training labels makes overfitting unmistakable: a network that drives its training
    loss to zero must memorize the wrong labels, which costs accuracy on clean test data.

    Example:
        >>> y_noisy = noisy_labels(y_train, 0.2, num_classes=10)
        >>> (y_noisy != y_train).float().mean()   # about 0.18
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    redraw = torch.rand(y.shape, generator=gen) < fraction
    random_labels = torch.randint(num_classes, y.shape, generator=gen)
    return torch.where(redraw, random_labels, y.cpu()).to(y.device)


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
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    *,
    lr: float = 1e-3,
    num_epochs: int = 100,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    momentum: float = 0.9,
    seed: int = 0,
    **train_kwargs,
) -> Score:
    """Train a classifier with cross-entropy through :func:`dnncourse.train`; score it.

    The default is full-batch training (``batch_size=None``), which is fast and
    deterministic on small data sets. Extra keywords (``penalty``, ``transform``,
    ``callbacks``, ``device`` ...) go to :func:`dnncourse.train`.

    Args:
        model: the network (its initialization is the caller's; seed it before building).
        train_data, val_data: ``(X, y)`` pairs.
        lr: learning rate (default 1e-3).
        num_epochs: passes over the training data (default 100).
        batch_size: default: the whole training set.
        weight_decay: the optimizer's ``weight_decay`` (L2, default 0).
        optimizer: ``"adam"`` (default) or ``"sgd"``.
        momentum: SGD's momentum (default 0.9; ignored by Adam).
        seed: seeds the batch order (and, through ``torch.manual_seed``, dropout masks).

    Example:
        >>> score = fit_classifier(mlp([64, 128, 10]), (X, y), (X_val, y_val), num_epochs=50)
        >>> score.val_accuracy, score.gap
    """
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    X, y = train_data
    loss_fn = nn.CrossEntropyLoss()
    torch.manual_seed(seed)
    history = train(
        model,
        loss_fn,
        opt,
        train_data,
        val_data,
        num_epochs=num_epochs,
        batch_size=len(X) if batch_size is None else batch_size,
        metrics={"accuracy": accuracy},
        generator=torch.Generator().manual_seed(seed),
        progress=False,
        **train_kwargs,
    )
    on_train = evaluate(model, loss_fn, X, y, metrics={"accuracy": accuracy})
    on_val = evaluate(model, loss_fn, *val_data, metrics={"accuracy": accuracy})
    return Score(
        on_train["accuracy"], on_val["accuracy"], on_train["loss"], on_val["loss"], history
    )


def gradient_norm(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Euclidean norm of :math:`\\nabla_W \\ell(\\text{model}(X), y)` over all parameters.

    With the whole training set this is the full gradient :math:`\\|\\nabla f(W)\\|`; with a
    mini-batch it is the norm of a stochastic gradient. Leaves ``.grad`` untouched.

    Example:
        >>> gradient_norm(model, nn.CrossEntropyLoss(), X, y)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(X), y), params)
    return float(torch.sqrt(sum((g**2).sum() for g in grads)))


def gd_least_squares(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    num_steps: int,
    w0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Iterates of gradient descent on :math:`f(w) = \\frac1m\\|y - Xw\\|_2^2`.

    The gradient is :math:`\\nabla f(w) = \\frac2m X^\\top(Xw - y)` and the Hessian
    :math:`\\frac2m X^\\top X`; GD converges for ``lr < 2 / L`` with ``L`` its largest
    eigenvalue.

    Returns:
        A ``(num_steps + 1, d)`` tensor whose row ``k`` is :math:`w_k` (row 0 is ``w0``,
        default zeros).

    Example:
        >>> path = gd_least_squares(X, y, lr=0.1, num_steps=50)
        >>> path[-1]  # close to the least-squares solution
    """
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(
            f"expected X of shape (m, d) and y of shape (m,), got {X.shape}, {y.shape}"
        )
    m, d = X.shape
    w = torch.zeros(d, dtype=X.dtype, device=X.device) if w0 is None else w0.clone()
    path = [w.clone()]
    for _ in range(num_steps):
        w = w - lr * (2 / m) * X.T @ (X @ w - y)
        path.append(w.clone())
    return torch.stack(path)


def least_squares_contours(ax, X, y, path=None, *, num_levels: int = 12, span: float = 1.6):
    """Contours of :math:`\\frac1m\\|y - Xw\\|^2` over 2-D ``w``, optionally with a GD path.

    The window is centred on the least-squares solution and scaled to hold it and the path.

    Example:
        >>> least_squares_contours(ax, X, y, gd_least_squares(X, y, lr=0.1, num_steps=20))
    """
    import numpy as np

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


def shared_statistics_mask(
    kind: str, shape: tuple[int, int, int, int], index: tuple[int, int], num_groups: int = 2
) -> torch.Tensor:
    """Which entries of an ``(N, C, H, W)`` tensor share mean and variance with ``index``.

    ``index = (n, c)`` picks a sample and a channel; the answer is a boolean ``(N, C, H, W)``
    mask (Wu and He, 2018, Figure 2):

    - ``"batch"``: channel ``c`` of every sample (statistics over N, H, W);
    - ``"layer"``: every channel of sample ``n`` (over C, H, W);
    - ``"instance"``: channel ``c`` of sample ``n`` (over H, W);
    - ``"group"``: the ``C / num_groups`` channels of ``c``'s group, of sample ``n``.

    Example:
        >>> shared_statistics_mask("layer", (4, 6, 2, 2), (0, 0)).sum()
        tensor(24)
    """
    C = shape[1]
    n, c = index
    if kind not in NORM_KINDS:
        raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
    if kind == "group" and C % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {C} channels")
    mask = torch.zeros(shape, dtype=torch.bool)
    size = C // num_groups
    samples = slice(None) if kind == "batch" else slice(n, n + 1)
    channels = {
        "batch": slice(c, c + 1),
        "layer": slice(None),
        "instance": slice(c, c + 1),
        "group": slice(c // size * size, (c // size + 1) * size),
    }[kind]
    mask[samples, channels] = True
    return mask


def normalize_over(x: torch.Tensor, kind: str, num_groups: int = 2, eps: float = 1e-5):
    """Normalize an ``(N, C, H, W)`` tensor the ``kind`` way, without affine parameters.

    Each entry has the mean and (biased) variance of the entries in its
    :func:`shared_statistics_mask` subtracted and divided out:
    :math:`\\hat x = (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}`.

    Example:
        >>> normalize_over(torch.randn(4, 6, 3, 3), "instance").mean(dim=(2, 3))  # ~ 0
    """
    if x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    if kind == "batch":
        dims, view = (0, 2, 3), x
    elif kind == "layer":
        dims, view = (1, 2, 3), x
    elif kind == "instance":
        dims, view = (2, 3), x
    elif kind == "group":
        if C % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide the {C} channels")
        dims, view = (2, 3, 4), x.reshape(N, num_groups, C // num_groups, H, W)
    else:
        raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
    mean = view.mean(dim=dims, keepdim=True)
    var = view.var(dim=dims, keepdim=True, unbiased=False)
    return ((view - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def plot_shared_statistics(ax, mask: torch.Tensor, title: str = "", color: str = "tab:blue"):
    """Draw an ``(N, C, H, W)`` mask as Wu and He's cube: N, C and H·W on the three axes.

    Entries in the mask are shaded ``color``; the rest are white. ``ax`` must be a 3-D axis
    (``fig.add_subplot(..., projection="3d")``).

    Example:
        >>> ax = fig.add_subplot(1, 4, 1, projection="3d")
        >>> plot_shared_statistics(ax, shared_statistics_mask("batch", (4, 6, 2, 2), (0, 0)))
    """
    import numpy as np

    N, C, H, W = mask.shape
    cube = mask.reshape(N, C, H * W).permute(0, 2, 1).numpy()  # axes: N, H·W, C
    filled = np.ones_like(cube, dtype=bool)
    colors = np.where(cube[..., None], np.array(_rgba(color)), np.array(_rgba("white")))
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


def _rgba(color):
    from matplotlib.colors import to_rgba

    return to_rgba(color)


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, X: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Average of the softmax over ``num_samples`` random dropout masks (train mode).

    The dropout network defines an ensemble of :math:`2^n` sub-networks; this Monte Carlo
    estimate of :math:`\\mathbb{E}_{SN}[\\text{softmax}(SN(x))]` is what eval mode's weight
    scaling approximates in one pass. Use it only with dropout, not with batch
    normalization (train mode would switch BN to batch statistics). Restores the mode.

    Example:
        >>> probs = mc_dropout_predict(model, X_val, num_samples=50)
        >>> (probs.argmax(1) == y_val).float().mean()
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    was_training = model.training
    model.train()
    try:
        total = sum(torch.softmax(model(X), dim=-1) for _ in range(num_samples))
    finally:
        model.train(was_training)
    return total / num_samples


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
    import math

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
    import matplotlib.pyplot as plt

    colormap = plt.get_cmap(cmap).with_extremes(bad=pad_color)
    ax.imshow(canvas.numpy(), cmap=colormap, interpolation="nearest")
    ax.set_axis_off()
    return ax
