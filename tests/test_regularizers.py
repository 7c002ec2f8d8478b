"""Regularizers: L2 = weight decay for SGD, L1 and its proximal step, the Jacobian penalty
against full Jacobians, the max-norm projection."""

import copy
import math

import pytest
import torch
from torch import nn

import dnncourse
from dnncourse.regularizers import (
    jacobian_penalty,
    jacobian_penalty_reference,
    l1_penalty,
    l2_penalty,
    max_norm_,
    soft_threshold_,
)

DTYPE = torch.float64


def _mlp(seed=0, d_in=3, width=8, d_out=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, d_out)).to(DTYPE)


def _data(seed=1, m=32, d_in=3, d_out=4):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(m, d_in, generator=gen, dtype=DTYPE),
        torch.randn(m, d_out, generator=gen, dtype=DTYPE),
    )


def test_l2_penalty_value_and_gradient():
    model = _mlp()
    expected = 0.5 * 0.1 * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    penalty = l2_penalty(model, 0.1)
    assert math.isclose(penalty.item(), expected, rel_tol=1e-12)
    penalty.backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, 0.1 * p.detach())
    weights = l2_penalty(model, 1.0, weights_only=True).item()
    assert math.isclose(
        weights,
        0.5 * sum(float((m.weight.detach() ** 2).sum()) for m in model if hasattr(m, "weight")),
    )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_penalty_gives_the_same_trajectory_as_sgd_weight_decay(momentum):
    lam, lr = 0.05, 0.1
    model_a, X, y = _mlp(), *_data()
    model_b = copy.deepcopy(model_a)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=lr, momentum=momentum, weight_decay=lam)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.MSELoss()
    for _ in range(20):
        opt_a.zero_grad()
        loss_fn(model_a(X), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        (loss_fn(model_b(X), y) + l2_penalty(model_b, lam)).backward()
        opt_b.step()
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b)
    moved = sum(
        float((p - q).detach().abs().sum())
        for p, q in zip(model_a.parameters(), _mlp().parameters(), strict=True)
    )
    assert moved > 0.1, "the trajectory must actually move"


def test_l1_penalty_value_and_subgradient():
    w = torch.tensor([-2.0, 0.5, 3.0], dtype=DTYPE, requires_grad=True)
    penalty = l1_penalty([w], 0.3)
    assert math.isclose(penalty.item(), 0.3 * 5.5)
    penalty.backward()
    torch.testing.assert_close(w.grad, 0.3 * torch.tensor([-1.0, 1.0, 1.0], dtype=DTYPE))


def test_soft_threshold_is_the_l1_proximal_operator():
    w = torch.tensor([-2.0, -0.1, 0.0, 0.05, 0.7], dtype=DTYPE)
    soft_threshold_([w], 0.2)
    torch.testing.assert_close(w, torch.tensor([-1.8, 0.0, 0.0, 0.0, 0.5], dtype=DTYPE))


def test_proximal_gradient_lasso_reaches_the_exact_sparse_solution():
    # min_w 1/2 ||w - b||^2 + lam ||w||_1 (orthonormal design) has solution soft(b, lam):
    # ISTA with lr = 1 reaches it in one step; with lr = 0.5 it converges geometrically.
    b = torch.tensor([3.0, -0.2, 0.1, -1.5, 0.4], dtype=DTYPE)
    lam = 0.5
    w = torch.zeros(5, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        (0.5 * (w - b).square().sum()).backward()
        opt.step()
        soft_threshold_([w], 0.5 * lam)
    expected = torch.sign(b) * torch.clamp(b.abs() - lam, min=0)
    torch.testing.assert_close(w.detach(), expected)
    assert int((w == 0).sum()) == 3, "exact zeros where |b| <= lam"


def test_max_norm_projects_rows_onto_the_ball():
    W = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=DTYPE)
    max_norm_(W, 1.0)
    torch.testing.assert_close(W, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], dtype=DTYPE))
    layer = nn.Linear(5, 6).to(DTYPE)
    expected = torch.renorm(layer.weight.detach(), p=2, dim=0, maxnorm=0.2)
    max_norm_(layer, 0.2)
    torch.testing.assert_close(layer.weight.detach(), expected)
    with pytest.raises(ValueError, match="weight matrix"):
        max_norm_(torch.ones(3), 1.0)


def test_exact_jacobian_penalty_matches_full_jacobians_value_and_weight_gradients():
    model_a, (X, _) = _mlp(), _data(m=6)
    model_b = copy.deepcopy(model_a)
    ours = jacobian_penalty(model_a, X)
    ref = jacobian_penalty_reference(model_b, X)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p_a.grad, p_b.grad)


def test_jacobian_penalty_of_a_linear_map_is_the_frobenius_norm_of_its_matrix():
    layer = nn.Linear(3, 4).to(DTYPE)
    X, _ = _data(m=5)
    torch.testing.assert_close(jacobian_penalty(layer, X), layer.weight.detach().square().sum())


def test_random_projection_estimate_is_unbiased():
    model, (X, _) = _mlp(), _data(m=10)
    exact = jacobian_penalty(model, X, create_graph=False).item()
    # n independent one-projection estimates; their mean is within a few standard errors
    n = 300
    estimates = torch.tensor(
        [
            jacobian_penalty(
                model, X, 1, generator=torch.Generator().manual_seed(s), create_graph=False
            ).item()
            for s in range(n)
        ]
    )
    se = estimates.std().item() / math.sqrt(n)
    assert abs(estimates.mean().item() - exact) < 4 * se
    batched = jacobian_penalty(
        model, X, n, generator=torch.Generator().manual_seed(0), create_graph=False
    ).item()
    assert abs(batched - exact) < 4 * se
    assert se < 0.2 * exact, "the test must be able to fail"


def test_penalties_validate_arguments():
    model = _mlp()
    with pytest.raises(ValueError, match="non-negative"):
        l2_penalty(model, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        l1_penalty(model, -1.0)
    with pytest.raises(ValueError, match="num_projections"):
        jacobian_penalty(model, _data()[0], 0)


def test_l2_penalty_in_train_matches_weight_decay_in_train():
    X, y = _data(m=40)
    models = [_mlp(), _mlp()]
    common = dict(num_epochs=3, batch_size=8, device="cpu", progress=False)
    dnncourse.train(
        models[0],
        nn.MSELoss(),
        torch.optim.SGD(models[0].parameters(), lr=0.1, weight_decay=0.01),
        (X, y),
        generator=torch.Generator().manual_seed(0),
        **common,
    )
    dnncourse.train(
        models[1],
        nn.MSELoss(),
        torch.optim.SGD(models[1].parameters(), lr=0.1),
        (X, y),
        penalty=lambda model, X: l2_penalty(model, 0.01),
        generator=torch.Generator().manual_seed(0),
        **common,
    )
    for p_a, p_b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b)
