"""Augmentation: identities, exact pixel moves, rotations vs rot90, seeds, shapes, devices."""

import pytest
import torch

import dnncourse
from dnncourse.augment import (
    Compose,
    FlatImages,
    GaussianNoise,
    RandomCrop,
    RandomRotation,
    RandomShift,
    rotate,
    shift,
)


def _images(n=6, c=2, h=8, w=8, dtype=torch.float64, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_zero_shift_and_zero_rotation_are_the_identity():
    x = _images()
    assert torch.equal(shift(x, 0, 0), x)
    assert torch.equal(RandomShift(0, generator=_gen())(x), x)
    torch.testing.assert_close(rotate(x, 0.0), x)
    torch.testing.assert_close(RandomRotation(0.0, generator=_gen())(x), x)
    assert torch.equal(GaussianNoise(0.0)(x), x)


def test_shift_moves_pixels_exactly():
    x = torch.zeros(2, 1, 5, 5)
    x[:, 0, 1, 2] = 1.0
    y = shift(x, torch.tensor([2, -1]), torch.tensor([1, 0]), fill=0.0)
    assert y[0, 0, 3, 3] == 1.0 and y[0].sum() == 1.0  # (1,2) + (2,1)
    assert y[1, 0, 0, 2] == 1.0 and y[1].sum() == 1.0  # (1,2) + (-1,0)
    z = shift(x, 0, 4, fill=0.5)  # moved out of the image; fill enters on the left
    assert z[0, 0, 1, 2] == 0.5 and (z[0, 0, :, :4] == 0.5).all() and (z[0, 0, :, 4] == 0).all()


def test_random_shift_is_a_shift_of_at_most_max_shift():
    x = _images(n=50)
    y = RandomShift(2, generator=_gen())(x)
    candidates = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    seen = set()
    for i in range(50):
        matches = [s for s in candidates if torch.equal(shift(x[i : i + 1], *s), y[i : i + 1])]
        assert matches, f"image {i} is not a shift within 2 pixels"
        seen.add(matches[0])
    assert len(seen) > 5, "shifts are drawn per sample"


def test_rotation_by_90_degrees_is_rot90_counterclockwise():
    x = _images(h=7, w=7)
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)))
    torch.testing.assert_close(rotate(x, -90.0), torch.rot90(x, -1, dims=(2, 3)))


def test_small_rotation_keeps_the_center_and_changes_the_rest():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    y = rotate(x, 10.0)
    # the center is the rotation's fixed point: output center samples the input center
    torch.testing.assert_close(y[0, 0, 4, 4], x[0, 0, 4, 4])
    x = _images(h=9, w=9)
    assert (rotate(x, 10.0) - x).abs().max() > 0.01


def test_random_crop_shapes_and_pad_crop_as_shift():
    x = _images()
    assert RandomCrop(5, generator=_gen())(x).shape == (6, 2, 5, 5)
    y = RandomCrop(8, padding=1, generator=_gen())(x)
    for i in range(6):
        assert any(
            torch.equal(shift(x[i : i + 1], dy, dx), y[i : i + 1])
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )
    with pytest.raises(ValueError, match="larger"):
        RandomCrop(10)(x)


def test_gaussian_noise_statistics():
    x = torch.zeros(100, 1, 10, 10, dtype=torch.float64)
    noise = GaussianNoise(0.5, generator=_gen())(x)
    # 10^4 draws: the sample std is within a few multiples of 0.5/sqrt(2*10^4) = 0.0035
    assert abs(noise.std().item() - 0.5) < 5 * 0.5 / (2 * 10**4) ** 0.5
    assert abs(noise.mean().item()) < 5 * 0.5 / 100
    clipped = GaussianNoise(0.5, clip=(0.0, 1.0), generator=_gen())(x)
    assert clipped.min() >= 0 and clipped.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_reproducible_by_seed(dtype):
    x = _images(dtype=dtype)

    def make(seed):
        g = _gen(seed)
        return Compose(
            [
                RandomRotation(15, generator=g),
                RandomShift(1, generator=g),
                RandomCrop(8, padding=2, generator=g),
                GaussianNoise(0.1, generator=g),
            ]
        )

    a, b, c = make(1)(x), make(1)(x), make(2)(x)
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    aug = make(3)
    assert not torch.equal(aug(x), aug(x)), "fresh randomness on every call"


def test_flat_images_for_the_digits_rows():
    x = _images(c=1).reshape(6, 64)
    y = FlatImages(RandomShift(0), (1, 8, 8))(x)
    assert torch.equal(y, x)
    y = FlatImages(lambda im: shift(im, 1, 0), (1, 8, 8))(x)
    torch.testing.assert_close(y.view(6, 8, 8)[:, 1:], x.view(6, 8, 8)[:, :-1])
    with pytest.raises(ValueError, match="64"):
        FlatImages(RandomShift(1), (1, 8, 8))(torch.zeros(2, 63))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomShift(1)(x)


@pytest.mark.gpu
def test_runs_on_cuda_with_a_cpu_generator():
    x = _images().cuda()
    g = _gen(0)
    aug = Compose(
        [
            RandomRotation(10, generator=g),
            RandomShift(1, generator=g),
            RandomCrop(8, padding=1, generator=g),
            GaussianNoise(0.1, generator=g),
        ]
    )
    y = aug(x)
    assert y.device == x.device and y.shape == x.shape
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)))


def test_augmentation_as_a_train_transform_on_flat_digits():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(32, 64, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    seen = []

    def recording(batch):
        seen.append(batch.clone())
        return batch

    aug = FlatImages(
        Compose([RandomShift(1, generator=gen), GaussianNoise(0.05, generator=gen)]), (1, 8, 8)
    )
    model = torch.nn.Linear(64, 10)
    history = dnncourse.train(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        (X, y),
        num_epochs=2,
        batch_size=8,
        transform=Compose([aug, recording]),
        device="cpu",
        progress=False,
    )
    assert history.num_epochs == 2 and len(seen) == 8
    assert all(b.shape == (8, 64) for b in seen)
    # without the transform every row of every batch would be a row of X
    rows = torch.cat(seen)
    assert not (rows[:, None, :] == X[None]).all(-1).any(), "batches must be augmented"


def test_random_shift_needs_whole_pixels_and_reprs_name_their_limit():
    with pytest.raises(ValueError, match="whole number"):
        RandomShift(1.5)
    with pytest.raises(ValueError, match="max_degrees"):
        RandomRotation(-1)
    assert repr(RandomShift(2)) == "RandomShift(max_shift=2)"
    assert repr(RandomRotation(15)) == "RandomRotation(max_degrees=15.0)"
