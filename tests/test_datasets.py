"""The bundled digits split: sizes, ranges, disjointness and determinism."""

import pytest
import torch

from dnncourse.datasets import balanced_subset, load_digits, noisy_labels


def test_split_is_a_seeded_partition_of_all_1797_images():
    a, b = load_digits(seed=3, device="cpu"), load_digits(seed=3, device="cpu")
    sizes = (len(a.y_train), len(a.y_val), len(a.y_test))
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == round(0.2 * 1797)
    assert torch.equal(a.X_train, b.X_train), "same seed, same split"
    assert a.num_features == 64 and a.num_classes == 10
    assert 0 <= float(a.X_train.min()) and float(a.X_train.max()) <= 1
    other = load_digits(seed=4, device="cpu")
    assert not torch.equal(a.y_train, other.y_train), "another seed, another split"


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to less than 1"):
        load_digits(val_fraction=0.6, test_fraction=0.5)


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
