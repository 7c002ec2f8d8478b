"""The bundled digits split: sizes, ranges, disjointness and determinism."""

import pytest
import torch

from dnncourse.datasets import load_digits


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
