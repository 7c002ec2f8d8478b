"""Normalization layers and dropout, written out with tensor operations.

Lecture sections: "Data normalization" (batch normalization, the normalization zoo,
weight normalization) and "Regularization" (dropout). References: Ioffe and Szegedy
(2015) for batch normalization; Ba, Kiros and Hinton (2016) for layer normalization;
Ulyanov, Vedaldi and Lempitsky (2016) for instance normalization; Wu and He (2018) for
group normalization; Salimans and Kingma (2016) for weight normalization; Srivastava et
al. (2014) for dropout.

Every layer computes the same thing as its ``torch.nn`` namesake (same parameter and
buffer names, so ``state_dict``\\ s are interchangeable) but only with elementary tensor
operations, so the gradients come from autograd of the forward pass written here.

All the normalizations share one formula and differ only in the axes the statistics
are taken over (:func:`normalize`): for a set of entries :math:`z_1, \\dots, z_n`,

.. math::  \\hat z_i = \\frac{z_i - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
   \\mu = \\frac1n \\sum_i z_i, \\qquad \\sigma^2 = \\frac1n \\sum_i (z_i - \\mu)^2,

followed by a learnable per-feature scale :math:`\\gamma` and shift :math:`\\beta`.
For an ``(N, C, H, W)`` tensor: batch norm pools over ``(N, H, W)``, layer norm over
``(C, H, W)``, instance norm over ``(H, W)``, group norm over ``(C/G, H, W)``
(:func:`shared_statistics_mask` marks those entries, for Wu and He's figure).

Dropout at test time: eval mode scales (nothing to do with inverted dropout);
:func:`mc_dropout_predict` averages the softmax over random masks instead, the Monte
Carlo estimate of the ensemble that eval mode approximates in one pass.
"""

from collections.abc import Sequence

import torch
from torch import nn

NORM_KINDS = ("batch", "layer", "instance", "group")


def normalize(x: torch.Tensor, dim: int | Sequence[int], eps: float = 1e-5) -> torch.Tensor:
    """Subtract the mean and divide by the standard deviation taken over ``dim``.

    .. math::  \\hat x = (x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}

    with the *biased* variance :math:`\\sigma^2` (divide by the number of entries), as
    every normalization layer uses for the forward pass.

    Args:
        x: any floating point tensor.
        dim: the axis or axes the statistics pool over.
        eps: added to the variance for numerical safety (default 1e-5).

    Example:
        >>> z = normalize(torch.randn(8, 3, 4, 4), dim=(0, 2, 3))   # batch norm without affine
        >>> z.mean(dim=(0, 2, 3)).abs().max() < 1e-6
    """
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


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


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector ``(C,)`` to broadcast against ``(N, C, *)``."""
    return t.view(1, -1, *([1] * (ndim - 2)))


class _ChannelAffine(nn.Module):
    """Shared by batch, group and instance norm: a per-channel :math:`\\gamma, \\beta`.

    Registers ``weight`` (ones) and ``bias`` (zeros) of shape ``(C,)`` when ``affine``,
    else both as ``None``, on ``device`` with ``dtype`` (PyTorch's factory arguments).
    """

    def __init__(self, num_channels: int, eps: float, affine: bool, device=None, dtype=None):
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.eps, self.affine = eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _scale_shift(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`\\gamma_c\\, y + \\beta_c` on channel axis 1 (identity without affine)."""
        if not self.affine:
            return y
        return y * _channel_view(self.weight, y.dim()) + _channel_view(self.bias, y.dim())


class _BatchNorm(_ChannelAffine):
    """Batch normalization over all axes but the channel axis 1 (shared by 1d and 2d)."""

    _input_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ):
        if num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        super().__init__(num_features, eps, affine, device, dtype)
        self.num_features, self.momentum = num_features, momentum
        self.track_running_stats = track_running_stats
        factory = {"device": device, "dtype": dtype}
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set :math:`\\gamma = 1`, :math:`\\beta = 0`."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in self._input_dims:
            shapes = " or ".join(f"{d}D" for d in self._input_dims)
            raise ValueError(
                f"{type(self).__name__} expected {shapes} input, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected {self.num_features} "
                f"channels on axis 1, got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        dims = [0, *range(2, x.dim())]  # every axis except the channels
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            n = x.numel() // self.num_features  # entries per channel
            if self.training and n == 1:
                raise ValueError(
                    "Expected more than 1 value per channel when training, "
                    f"got input size {tuple(x.shape)}"
                )
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)  # biased: used to normalize
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - _channel_view(mean, x.dim())) / torch.sqrt(
            _channel_view(var, x.dim()) + self.eps
        )
        return self._scale_shift(x_hat)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:  # cumulative moving average: the plain mean of all batches
            eta = 1.0 / float(self.num_batches_tracked)
        else:
            eta = self.momentum
        self.running_mean.mul_(1 - eta).add_(eta * mean)
        self.running_var.mul_(1 - eta).add_(eta * unbiased_var)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` inputs, as ``torch.nn.BatchNorm1d``.

    In training mode each channel :math:`j` is normalized with the mean and the
    (biased) variance of the current mini-batch, pooled over ``N`` (and ``L``):

    .. math::  \\mathrm{BN}_{\\gamma_j,\\beta_j}(Z_j)
       = \\gamma_j \\frac{Z_j - \\mu_{Z_j}}{\\sqrt{\\sigma^2_{Z_j} + \\epsilon}} + \\beta_j,

    and the running averages are updated with :math:`\\eta` = ``momentum``:

    .. math::  \\bar\\mu \\leftarrow (1-\\eta)\\bar\\mu + \\eta\\,\\mu_{\\text{batch}}, \\qquad
       \\bar\\sigma^2 \\leftarrow (1-\\eta)\\bar\\sigma^2
       + \\eta\\,\\tfrac{n}{n-1}\\sigma^2_{\\text{batch}}.

    In eval mode (``model.eval()``) the running averages replace the batch statistics,
    so the output of a sample no longer depends on the rest of the batch.

    Args:
        num_features: the number of channels C.
        eps: added to the variance (default 1e-5).
        momentum: :math:`\\eta` of the running averages (default 0.1); ``None`` for the
            cumulative average :math:`\\eta_t = 1/t` over all batches seen.
        affine: learn :math:`\\gamma` (``weight``, init 1) and :math:`\\beta` (``bias``,
            init 0) (default True).
        track_running_stats: keep ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` (default True); if False, batch statistics are used
            in eval mode too.

    Example:
        >>> bn = BatchNorm1d(3)
        >>> bn(torch.randn(16, 3)).mean(dim=0)   # about 0 for every channel

    Note:
        The lecture averages the standard deviation :math:`\\bar\\sigma`; PyTorch (and
        this class) averages the *unbiased* variance :math:`\\frac{n}{n-1}\\sigma^2` of
        each batch of :math:`n` entries per channel, while normalizing with the biased
        one. The lecture's :math:`\\eta` is PyTorch's ``momentum``.
    """

    _input_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` images, as ``torch.nn.BatchNorm2d``.

    Same formulas as :class:`BatchNorm1d`, the statistics pooled over ``(N, H, W)``.

    Example:
        >>> bn = BatchNorm2d(3)
        >>> bn(torch.randn(4, 3, 8, 8)).shape
    """

    _input_dims = (4,)


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


class LayerNorm(nn.Module):
    """Layer normalization over the last dimensions, as ``torch.nn.LayerNorm``.

    Each sample is normalized with its own mean and variance over the trailing
    ``normalized_shape`` entries, then scaled and shifted elementwise:

    .. math::  y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} \\odot \\gamma + \\beta.

    No batch statistics, so training and evaluation compute the same function and a
    batch of one is fine (the lecture's argument for layer and group normalization).

    Args:
        normalized_shape: the trailing shape to normalize over (an int or a tuple).
        eps: added to the variance (default 1e-5).
        elementwise_affine: learn ``weight`` (init 1) and ``bias`` (init 0) of shape
            ``normalized_shape`` (default True).
        bias: learn the shift too (default True; needs ``elementwise_affine``).

    Example:
        >>> ln = LayerNorm(10)
        >>> ln(torch.randn(4, 10)).mean(dim=-1)   # about 0 for every sample
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(
                f"LayerNorm expected input ending in shape {self.normalized_shape}, "
                f"got shape {tuple(x.shape)}"
            )
        y = normalize(x, dim=tuple(range(-k, 0)), eps=self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(_ChannelAffine):
    """Group normalization (Wu and He, 2018), as ``torch.nn.GroupNorm``.

    The C channels of each sample are split into ``num_groups`` groups of C/G
    consecutive channels; each group is normalized over its channels and spatial
    positions, then a per-channel :math:`\\gamma, \\beta` is applied. ``num_groups=1``
    is layer normalization over ``(C, *)``; ``num_groups=C`` is instance normalization.

    Args:
        num_groups: G, must divide ``num_channels``.
        num_channels: C.
        eps: added to the variance (default 1e-5).
        affine: learn per-channel ``weight`` and ``bias`` (default True).
        device, dtype: where the parameters live and their type (as in PyTorch).

    Example:
        >>> gn = GroupNorm(2, 6)
        >>> gn(torch.randn(4, 6, 5, 5)).shape
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"num_groups must be a positive divisor of num_channels={num_channels}, "
                f"got {num_groups}"
            )
        super().__init__(num_channels, eps, affine, device, dtype)
        self.num_groups, self.num_channels = num_groups, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm expected input (N, {self.num_channels}, *), got shape {tuple(x.shape)}"
            )
        grouped = x.reshape(x.shape[0], self.num_groups, -1)  # (N, G, C/G * spatial)
        return self._scale_shift(normalize(grouped, dim=-1, eps=self.eps).reshape(x.shape))


class InstanceNorm(_ChannelAffine):
    """Instance normalization: each sample and channel over its own spatial positions.

    Equals ``torch.nn.InstanceNorm1d/2d/3d`` with ``track_running_stats=False`` (their
    default) for inputs ``(N, C, *spatial)``; the same as :class:`GroupNorm` with
    ``num_groups = C``.

    Args:
        num_features: C.
        eps: added to the variance (default 1e-5).
        affine: learn per-channel ``weight`` and ``bias`` (default False, as PyTorch).
        device, dtype: where the parameters live and their type (as in PyTorch).

    Example:
        >>> inorm = InstanceNorm(3)
        >>> inorm(torch.randn(2, 3, 8, 8)).mean(dim=(2, 3))   # about 0 everywhere
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, affine: bool = False, device=None, dtype=None
    ):
        super().__init__(num_features, eps, affine, device, dtype)
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(
                f"InstanceNorm expected input (N, {self.num_features}, *spatial), "
                f"got shape {tuple(x.shape)}"
            )
        return self._scale_shift(normalize(x, dim=tuple(range(2, x.dim())), eps=self.eps))


class WeightNormLinear(nn.Module):
    """A linear layer with weight normalization (Salimans and Kingma, 2016).

    Each output unit's weight row is written as magnitude times direction,

    .. math::  w_i = g_i \\frac{v_i}{\\|v_i\\|_2}, \\qquad y = W x + b,

    and the optimizer works on :math:`(g, v)`. Parameter names follow
    ``torch.nn.utils.weight_norm``: ``weight_g`` of shape ``(out, 1)`` and ``weight_v``
    of shape ``(out, in)``. At initialization :math:`g_i = \\|v_i\\|`, so the layer
    starts as the plain ``nn.Linear`` it was built from.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: learn a bias (default True).

    Example:
        >>> layer = WeightNormLinear(4, 3)
        >>> layer.weight.norm(dim=1)   # equals layer.weight_g.squeeze(1).abs()
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(linear.weight.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(linear.bias.detach().clone()) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "WeightNormLinear":
        """Reparametrize an existing ``nn.Linear`` (same function at the start)."""
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            layer.weight_v.copy_(linear.weight)
            layer.weight_g.copy_(linear.weight.norm(dim=1, keepdim=True))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight :math:`W = g \\, v / \\|v\\|` (row-wise)."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Dropout(nn.Module):
    """Inverted dropout, as ``torch.nn.Dropout``: zero each entry with probability ``p``.

    In training mode draw a fresh mask :math:`u_i \\sim \\text{Bernoulli}(1-p)` on every
    call and return

    .. math::  y_i = \\frac{u_i\\, x_i}{1 - p},

    so that :math:`\\mathbb E[y_i] = x_i`: the expected output is unchanged and nothing
    needs rescaling at test time. In eval mode the layer is the identity. ``p = 0`` is
    the identity in both modes; ``p = 1`` returns zeros (``x * 0``) in training mode.

    Args:
        p: the probability of **zeroing** an entry (default 0.5), in [0, 1].
        generator: optional ``torch.Generator`` for the masks; default the global
            generator. The mask is drawn on the generator's device and moved to the input's.

    Example:
        >>> drop = Dropout(p=0.5)
        >>> drop(torch.ones(8))   # entries 0 or 2, a fresh pattern each call

    Note:
        The lecture (CS231n's code) writes ``p`` for the probability of **keeping** a
        unit and scales by ``1/p``; PyTorch and this class write ``p`` for the
        probability of **dropping** it and scale by ``1/(1-p)``. Lecture ``p = 0.8`` is
        ``Dropout(p=0.2)`` here.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        # draw where the generator lives (a CPU generator also seeds a CUDA batch)
        device = self.generator.device if self.generator is not None else x.device
        u = torch.rand(x.shape, generator=self.generator, device=device, dtype=x.dtype)
        u = u.to(x.device)
        mask = (u >= self.p).to(x.dtype)  # kept with probability 1 - p
        return x * mask / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


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


__all__ = [
    "NORM_KINDS",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "WeightNormLinear",
    "mc_dropout_predict",
    "normalize",
    "shared_statistics_mask",
]
