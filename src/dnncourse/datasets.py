"""Data sets used across the course, generated or bundled, never downloaded.

- ``sine_data``: the lecture's running example, :math:`y = \\sin x` at 2000 points
  of :math:`[-\\pi, \\pi]` (lecture, "A simple example").
- ``load_digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images),
  split into train/validation/test with a fixed seed; the stand-in for MNIST here.
- ``balanced_subset`` and ``noisy_labels``: a small class-balanced training set and
  redrawn labels, which make overfitting (and the value of regularization) visible
  (lecture, "When to stop" and "Regularization").
"""

import math
from dataclasses import dataclass

import torch

from dnncourse.devices import default_device


def sine_data(
    num_points: int = 2000,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)`` with ``x`` evenly spaced on :math:`[-\\pi, \\pi]` and ``y = sin(x)``.

    Args:
        num_points: number of samples (the lecture uses 2000).
        device: where the tensors live (default: :func:`default_device`).
        dtype: floating point type (default float32, as in the lecture).

    Example:
        >>> x, y = sine_data()
        >>> x.shape, y.shape
        (torch.Size([2000]), torch.Size([2000]))
    """
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {num_points}")
    device = default_device() if device is None else device
    x = torch.linspace(-math.pi, math.pi, num_points, device=device, dtype=dtype)
    return x, torch.sin(x)


@dataclass(frozen=True)
class DataSplit:
    """Train/validation/test tensors; ``X_*`` are float features, ``y_*`` int64 labels."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val, self.y_test]).max()) + 1


def load_digits(
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> DataSplit:
    """scikit-learn's bundled digits, pixels scaled to [0, 1], split by a seeded permutation.

    The images are flattened to 64 features; reshape with ``X.view(-1, 1, 8, 8)`` to get
    (N, C, H, W) images back.

    Args:
        val_fraction: share of the samples held out for validation.
        test_fraction: share held out for the final test.
        seed: seed of the permutation (same seed, same split).
        device: where the tensors live (default: :func:`default_device`).
        dtype: type of the features.

    Example:
        >>> data = load_digits()
        >>> data.X_train.shape[1], data.num_classes
        (64, 10)
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            "val_fraction and test_fraction must lie in [0, 1) and sum to less than 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    bunch = sk_load_digits()
    X = torch.as_tensor(bunch.data, dtype=dtype) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(val_fraction * len(y)), round(test_fraction * len(y))
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    device = default_device() if device is None else device
    parts = [t.to(device) for idx in (train, val, test) for t in (X[idx], y[idx])]
    return DataSplit(*parts)


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
