"""Tests for dnncourse.diagnostics: layer statistics, dead-unit counts and gradient norms.

Oracles: hand-computed forward passes and PyTorch's autograd on the same model.
"""

import pytest
import torch
from torch import nn

from dnncourse.diagnostics import dead_units, gradient_norm, layer_statistics
from dnncourse.models import mlp


def test_layer_statistics_match_a_manual_pass():
    torch.manual_seed(0)
    model = mlp([6, 5, 4, 3]).double()
    X = torch.randn(11, 6, dtype=torch.float64)
    y = torch.randint(3, (11,))
    loss_fn = nn.functional.cross_entropy
    stats = layer_statistics(model, X, y, loss_fn)

    # the same quantities by hand, with autograd as the oracle
    z1 = model[0](X)
    a1 = torch.relu(z1)
    z2 = model[2](a1)
    a2 = torch.relu(z2)
    z3 = model[4](a2)
    for z in (z1, z2, z3):
        z.retain_grad()
    loss_fn(z3, y).backward()
    expected_pre = [z.std().item() for z in (z1, z2, z3)]
    expected_act = [a.std().item() for a in (a1, a2, z3)]
    expected_grad = [z.grad.std().item() for z in (z1, z2, z3)]
    expected_wgrad = [model[i].weight.grad.norm().item() for i in (0, 2, 4)]
    torch.testing.assert_close(stats.preact_std, expected_pre)
    torch.testing.assert_close(stats.act_std, expected_act)
    torch.testing.assert_close(stats.preact_grad_std, expected_grad)
    torch.testing.assert_close(stats.weight_grad_norm, expected_wgrad)
    assert list(stats.to_dataframe().index) == [1, 2, 3]


def test_layer_statistics_leaves_grads_alone_and_forward_only_mode():
    torch.manual_seed(1)
    model = mlp([4, 4, 2], activation="tanh")
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    layer_statistics(model, torch.randn(5, 4), torch.randint(2, (5,)), nn.functional.cross_entropy)
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    stats = layer_statistics(model, torch.randn(5, 4))
    assert len(stats.preact_std) == 2 and stats.preact_grad_std == []
    with pytest.raises(ValueError, match="both y and loss_fn"):
        layer_statistics(model, torch.randn(5, 4), y=torch.zeros(5, dtype=torch.long))


def test_dead_units_counts_units_zero_on_every_input():
    model = mlp([2, 4, 3, 1])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [-1, -1]]))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
        model[2].bias.copy_(torch.tensor([0.0, -100.0, 0.0]))
    X = torch.tensor([[1.0, 2.0], [0.5, 0.1]])  # positive inputs: units 3 and 4 never fire
    assert dead_units(model, X) == [0.5, pytest.approx(1 / 3)]
    model.train()
    dead_units(model, X)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="no module"):
        dead_units(mlp([2, 2, 1], activation="tanh"), X)


def test_gradient_norm_matches_backward_and_leaves_grad_alone():
    torch.manual_seed(0)
    model = mlp([3, 5, 2])
    X, y = torch.randn(7, 3), torch.randint(2, (7,))
    value = gradient_norm(model, nn.CrossEntropyLoss(), X, y)
    assert all(p.grad is None for p in model.parameters())
    nn.CrossEntropyLoss()(model(X), y).backward()
    expected = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert value == pytest.approx(float(expected), rel=1e-5)
