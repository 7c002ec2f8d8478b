"""Tests of dnncourse.models.mlp, the one model builder (PyTorch's own layers as the oracle)."""

import functools

import pytest
import torch
from torch import nn

from dnncourse import init
from dnncourse.models import mlp


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


def test_layout_with_norm_before_and_after_and_dropout():
    before = mlp([4, 8, 8, 3], norm=nn.BatchNorm1d, dropout=0.5)
    assert [type(m) for m in before] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2 + [
        nn.Linear
    ]
    after = mlp([4, 8, 3], norm=nn.BatchNorm1d, norm_position="after")
    assert [type(m) for m in after] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    plain = mlp([5, 7, 7, 3], activation="tanh")
    assert [type(m) for m in plain] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert [m.weight.shape for m in plain[::2]] == [(7, 5), (7, 7), (3, 7)]
    assert isinstance(mlp([4, 4, 2], activation=nn.GELU)[1], nn.GELU)
    assert mlp([4, 3])(torch.randn(2, 4)).shape == (2, 3)


def test_generator_gives_exactly_what_torch_manual_seed_gives_and_leaves_global_rng_alone():
    """With init=None the generator draws nn.Linear's numbers: the oracle is PyTorch itself."""
    torch.manual_seed(7)
    reference = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    state = torch.get_rng_state()
    model = mlp([6, 5, 3], generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state), "mlp(generator=...) moved the global RNG"
    assert same_parameters(model, reference)
    assert not same_parameters(model, mlp([6, 5, 3], generator=torch.Generator().manual_seed(8)))


def test_init_draws_from_the_generator_and_zeroes_biases():
    model = mlp([5, 7, 3], init=init.xavier_normal_, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    expected = [nn.init.xavier_normal_(torch.empty(7, 5), generator=gen)]
    expected.append(nn.init.xavier_normal_(torch.empty(3, 7), generator=gen))
    for layer, weight in zip(model[::2], expected, strict=True):
        torch.testing.assert_close(layer.weight.detach(), weight, rtol=0, atol=0)
        assert torch.all(layer.bias == 0)


def test_init_that_cannot_take_the_generator_is_refused_not_silently_unseeded():
    with pytest.raises(TypeError, match="generator"):
        mlp([4, 4, 2], init=lambda w: w.fill_(0.5), generator=torch.Generator())
    # without a generator such an init is fine
    assert torch.all(mlp([4, 4, 2], init=lambda w: w.fill_(0.5))[0].weight == 0.5)


def test_a_type_error_inside_init_propagates():
    """A TypeError raised inside the init is a bug to report, not a cue to drop the generator."""

    def buggy(w, generator=None):
        if generator is not None:
            raise TypeError("a bug inside the init")
        return w.fill_(1.0)  # what a retry without the generator would silently give

    with pytest.raises(TypeError, match="a bug inside the init"):
        mlp([4, 4, 2], init=buggy, generator=torch.Generator())
    partial_init = functools.partial(init.kaiming_normal_, nonlinearity="relu")
    assert mlp([4, 4, 2], init=partial_init, generator=torch.Generator())[0].weight.std() > 0


def test_device_and_dtype():
    model = mlp([4, 3], device="cpu", dtype=torch.float64)
    assert model[0].weight.dtype == torch.float64 and model[0].weight.device.type == "cpu"
    meta = mlp([4, 3], device="meta")
    assert meta[0].weight.device.type == "meta"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sizes": [4]},
        {"sizes": [3, 0, 2]},
        {"sizes": [4, 3], "norm_position": "middle"},
        {"sizes": [4, 3], "dropout": 1.0},
        {"sizes": [4, 3], "activation": "swishy"},
    ],
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        mlp(**kwargs)
