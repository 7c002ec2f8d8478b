"""dnncourse.nn against torch.nn: outputs, gradients, running statistics, train/eval."""

import math

import pytest
import torch
from torch import nn

from dnncourse import nn as dnn
from dnncourse.models import mlp

DTYPE = torch.float64


def _pair_bn(cls_ours, cls_torch, num_features, **kwargs):
    torch.manual_seed(0)
    ours = cls_ours(num_features, **kwargs).to(DTYPE)
    ref = cls_torch(num_features, **kwargs).to(DTYPE)
    if ours.affine:  # non-trivial gamma and beta
        with torch.no_grad():
            ours.weight.copy_(torch.randn(num_features, dtype=DTYPE))
            ours.bias.copy_(torch.randn(num_features, dtype=DTYPE))
            ref.weight.copy_(ours.weight)
            ref.bias.copy_(ours.bias)
    return ours, ref


def _assert_same_grads(ours, ref, x, seed=1):
    """Backpropagate the same random upstream gradient; compare input/param gradients."""
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(y1.shape, generator=gen, dtype=DTYPE).to(y1.device)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p1), (_, p2) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, msg=f"gradient of {name}")


@pytest.mark.parametrize("shape", [(16, 4), (8, 4, 5)])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_batchnorm1d_matches_torch_over_several_batches(shape, momentum):
    ours, ref = _pair_bn(dnn.BatchNorm1d, nn.BatchNorm1d, 4, momentum=momentum)
    gen = torch.Generator().manual_seed(2)
    for step in range(5):
        x = 3.0 + 2.0 * torch.randn(shape, generator=gen, dtype=DTYPE)
        _assert_same_grads(ours, ref, x, seed=step)
        ours.zero_grad()
        ref.zero_grad()
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 5
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=gen, dtype=DTYPE)
    _assert_same_grads(ours, ref, x)
    assert int(ours.num_batches_tracked) == 5, "eval mode must not update the statistics"


def test_batchnorm1d_running_var_is_unbiased():
    bn = dnn.BatchNorm1d(1, momentum=1.0).to(DTYPE)  # running stats = the last batch's
    x = torch.tensor([[1.0], [2.0], [4.0]], dtype=DTYPE)
    bn(x)
    # mean 7/3; squared deviations 16/9, 1/9, 25/9 sum to 42/9; unbiased var = 42/9/2 = 7/3
    torch.testing.assert_close(bn.running_mean, torch.tensor([7 / 3], dtype=DTYPE))
    torch.testing.assert_close(bn.running_var, torch.tensor([7 / 3], dtype=DTYPE))


def test_batchnorm1d_train_output_is_standardized_and_eval_uses_running_stats():
    bn = dnn.BatchNorm1d(3).to(DTYPE)
    x = 5.0 + 3.0 * torch.randn(64, 3, dtype=DTYPE)
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(3, dtype=DTYPE))
    # variance sigma^2 / (sigma^2 + eps) = 1 - eps / 9 roughly: within 1e-4 of 1
    torch.testing.assert_close(
        y.var(dim=0, unbiased=False), torch.ones(3, dtype=DTYPE), atol=1e-4, rtol=0
    )
    bn.eval()
    single = bn(x[:1])  # a batch of one is fine in eval mode
    expected = (x[:1] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(single, expected)


def test_batchnorm1d_without_running_stats_and_affine_matches_torch():
    ours, ref = _pair_bn(
        dnn.BatchNorm1d, nn.BatchNorm1d, 3, affine=False, track_running_stats=False
    )
    assert list(ours.state_dict()) == list(ref.state_dict()) == []
    ours.eval()
    ref.eval()  # still batch statistics
    x = torch.randn(10, 3, 7, dtype=DTYPE)
    _assert_same_grads(ours, ref, x)


def test_batchnorm_state_dict_is_interchangeable_with_torch():
    ours, ref = _pair_bn(dnn.BatchNorm1d, nn.BatchNorm1d, 4)
    ref(torch.randn(8, 4, dtype=DTYPE))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_batchnorm2d_matches_torch():
    ours, ref = _pair_bn(dnn.BatchNorm2d, nn.BatchNorm2d, 3)
    for seed in range(3):
        x = torch.randn(4, 3, 5, 6, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
        _assert_same_grads(ours, ref, x, seed=seed)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_batchnorm_errors():
    bn = dnn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(torch.randn(4, 5))
    with pytest.raises(ValueError, match="2D or 3D"):
        bn(torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="momentum"):
        dnn.BatchNorm1d(3, momentum=1.5)


@pytest.mark.parametrize("shape, normalized", [((4, 10), 10), ((2, 3, 4, 5), (4, 5))])
def test_layernorm_matches_torch(shape, normalized):
    torch.manual_seed(0)
    ours = dnn.LayerNorm(normalized).to(DTYPE)
    ref = nn.LayerNorm(normalized).to(DTYPE)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    assert list(ours.state_dict()) == list(ref.state_dict())
    _assert_same_grads(ours, ref, 2.0 + torch.randn(shape, dtype=DTYPE))
    with pytest.raises(ValueError, match="ending in shape"):
        ours(torch.randn(3, 7, dtype=DTYPE))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_groupnorm_matches_torch(groups):
    torch.manual_seed(0)
    ours, ref = dnn.GroupNorm(groups, 6).to(DTYPE), nn.GroupNorm(groups, 6).to(DTYPE)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    _assert_same_grads(ours, ref, torch.randn(3, 6, 4, 4, dtype=DTYPE))
    with pytest.raises(ValueError, match="divisor"):
        dnn.GroupNorm(4, 6)


def test_instancenorm_matches_torch():
    x = torch.randn(3, 4, 5, 5, dtype=DTYPE)
    _assert_same_grads(dnn.InstanceNorm(4), nn.InstanceNorm2d(4), x)
    ours, ref = dnn.InstanceNorm(4, affine=True).to(DTYPE), nn.InstanceNorm1d(4, affine=True)
    _assert_same_grads(ours, ref.to(DTYPE), torch.randn(3, 4, 9, dtype=DTYPE))


def test_normalize_axes_of_the_zoo():
    x = torch.randn(8, 6, 4, 4, dtype=DTYPE)
    torch.testing.assert_close(
        dnn.normalize(x, dim=(0, 2, 3)),
        nn.functional.batch_norm(x, None, None, training=True),
    )
    torch.testing.assert_close(
        dnn.normalize(x, dim=(1, 2, 3)), nn.functional.layer_norm(x, (6, 4, 4))
    )


def test_weight_norm_linear_matches_torch_parametrization():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3).to(DTYPE)
    ours = dnn.WeightNormLinear.from_linear(linear)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(5, 3).to(DTYPE))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
        ref.bias.copy_(ours.bias)
        ours.weight_g.mul_(2.0)  # change the magnitude: rows scale, directions stay
        ref.parametrizations.weight.original0.mul_(2.0)
    torch.testing.assert_close(ours.weight, 2.0 * linear.weight)
    x1 = torch.randn(7, 5, dtype=DTYPE, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ours(x1).square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight_g.grad, ref.parametrizations.weight.original0.grad)
    torch.testing.assert_close(ours.weight_v.grad, ref.parametrizations.weight.original1.grad)
    torch.testing.assert_close(
        ours.weight.norm(dim=1), ours.weight_g.squeeze(1).abs(), msg="row norms are |g|"
    )


def test_dropout_preserves_the_mean_and_drops_a_fraction_p():
    n, p = 200_000, 0.3
    drop = dnn.Dropout(p, generator=torch.Generator().manual_seed(0)).to(DTYPE)
    x = torch.full((n,), 2.0, dtype=DTYPE)
    y = drop(x)
    # Each y_i is 2/(1-p) with probability 1-p, else 0: E[y_i] = 2, Var[y_i] = 4 p/(1-p).
    # The sample mean has standard error sqrt(4 p / ((1-p) n)) ~ 0.0029; allow 5 of them.
    se_mean = math.sqrt(4 * p / ((1 - p) * n))
    assert abs(y.mean().item() - 2.0) < 5 * se_mean
    # The dropped fraction is a Binomial(n, p) / n: standard error sqrt(p(1-p)/n) ~ 0.001.
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0 / (1 - p)))


def test_dropout_fresh_mask_each_call_and_identity_in_eval():
    drop = dnn.Dropout(0.5)
    x = torch.ones(1000)
    torch.manual_seed(0)
    a, b = drop(x), drop(x)
    assert not torch.equal(a, b), "each call must draw a new mask"
    drop.eval()
    assert drop(x) is x


def test_dropout_reproducible_and_like_torch_at_the_edges():
    x = torch.randn(50, dtype=DTYPE)
    a = dnn.Dropout(0.4, generator=torch.Generator().manual_seed(3))(x)
    b = dnn.Dropout(0.4, generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)
    for p in (0.0, 1.0):
        torch.testing.assert_close(dnn.Dropout(p)(x), nn.functional.dropout(x, p, training=True))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dnn.Dropout(1.5)


def test_dropout_gradient_is_the_scaled_mask():
    drop = dnn.Dropout(0.25, generator=torch.Generator().manual_seed(0))
    x = torch.randn(100, dtype=DTYPE, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    mask = (y != 0).to(DTYPE)
    torch.testing.assert_close(x.grad, mask / 0.75)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("batch", 4 * 1 * 9), ("layer", 6 * 9), ("instance", 9), ("group", 3 * 9)],
)
def test_shared_statistics_mask_sizes(kind, expected):
    mask = dnn.shared_statistics_mask(kind, (4, 6, 3, 3), (1, 4), num_groups=2)
    assert int(mask.sum()) == expected
    assert mask[1, 4].all()  # the chosen entry's own slice is always in


def test_shared_statistics_mask_marks_the_entries_normalize_pools():
    """Perturb one entry: exactly the masked entries change their normalized value."""
    x = torch.randn(4, 6, 3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    axes = {"batch": (0, 2, 3), "layer": (1, 2, 3), "instance": (2, 3)}
    for kind in dnn.NORM_KINDS:
        n, c = 1, 4
        mask = dnn.shared_statistics_mask(kind, tuple(x.shape), (n, c), num_groups=2)
        bumped = x.clone()
        bumped[n, c, 0, 0] += 1.0
        if kind == "group":

            def norm(t):
                return dnn.normalize(t.reshape(4, 2, 3, 3, 3), dim=(2, 3, 4)).reshape(t.shape)
        else:

            def norm(t, dims=axes[kind]):
                return dnn.normalize(t, dim=dims)

        changed = (norm(bumped) - norm(x)).abs() > 1e-12
        assert torch.equal(changed, mask), kind


@pytest.mark.parametrize(("cls", "args"), [(dnn.GroupNorm, (2, 6)), (dnn.InstanceNorm, (6,))])
def test_group_and_instance_norm_take_device_and_dtype_like_torch(cls, args):
    layer = cls(*args, affine=True, device="meta", dtype=torch.float64)
    for p in (layer.weight, layer.bias):
        assert p.device.type == "meta" and p.dtype == torch.float64 and p.shape == (6,)
    assert cls(*args, affine=False).weight is None


def _dropout_net():
    return mlp([4, 32, 3], dropout=0.5, generator=torch.Generator().manual_seed(0))


def _mc_reference(model, X, num_samples, seed):
    """The Monte Carlo average written out: train mode, num_samples masks, mean softmax."""
    torch.manual_seed(seed)
    model.train()
    probs = sum(torch.softmax(model(X), dim=-1) for _ in range(num_samples)) / num_samples
    model.eval()
    return probs.detach()


def _mc_dropout_without_train_mode(model, X, num_samples):
    """The bug the test must catch: the average taken in eval mode (no masks at all)."""
    with torch.no_grad():
        return sum(torch.softmax(model(X), dim=-1) for _ in range(num_samples)) / num_samples


def _check_mc_dropout(predict):
    model = _dropout_net().eval()
    X = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    expected = _mc_reference(model, X, num_samples=20, seed=3)
    torch.manual_seed(3)
    probs = predict(model, X, num_samples=20)
    torch.testing.assert_close(probs, expected)
    assert not model.training, "the mode was not restored"
    eval_pass = torch.softmax(model(X), dim=-1).detach()
    assert (probs - eval_pass).abs().max() > 1e-3, "no dropout mask was drawn"


def test_mc_dropout_predict_averages_random_masks_and_restores_the_mode():
    _check_mc_dropout(dnn.mc_dropout_predict)
    with pytest.raises(AssertionError):  # the check catches a version without model.train()
        _check_mc_dropout(_mc_dropout_without_train_mode)
    model = _dropout_net().train()
    dnn.mc_dropout_predict(model, torch.randn(2, 4), num_samples=2)
    assert model.training, "a model in train mode must stay in train mode"
    with pytest.raises(ValueError):
        dnn.mc_dropout_predict(model, torch.randn(2, 4), num_samples=0)


@pytest.mark.gpu
def test_layers_run_on_cuda():
    x = torch.randn(8, 4, device="cuda")
    bn = dnn.BatchNorm1d(4).cuda()
    assert bn(x).device.type == "cuda"
    assert bn.running_mean.device.type == "cuda"
    assert dnn.Dropout(0.5)(x).device.type == "cuda"
    assert dnn.Dropout(0.5, generator=torch.Generator().manual_seed(0))(x).device.type == "cuda"
    x64 = torch.randn(6, 4, 5, device="cuda", dtype=DTYPE)
    ours, ref = _pair_bn(dnn.BatchNorm1d, nn.BatchNorm1d, 4)
    _assert_same_grads(ours.cuda(), ref.cuda(), x64)
