"""Data augmentation for image batches ``(N, C, H, W)``, with torch operations only.

Lecture section: "Hyperparameter search, data augmentation". More relevant data always
helps; when there is no more, generate it from the data we have, by transformations the
model *should be robust to*: translations, rotations, noise, crops (flips, blurs,
occlusions, ...). The label stays the same.

Each transform is a callable object that draws fresh random parameters *per sample* on
every call, runs on the batch's device (so it can be passed to
``dnncourse.train(..., transform=...)`` and applied on the GPU), and takes an optional
``torch.Generator`` for reproducibility. The random numbers are drawn on the generator's
device and moved to the batch's, so a CPU generator also seeds a CUDA batch.

Rotations use ``affine_grid``/``grid_sample`` (bilinear interpolation, zeros outside
the image); shifts and crops are exact pixel moves by padding and indexing.
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{name} expects images (N, C, H, W), got shape {tuple(x.shape)}; "
            "wrap flat rows with FlatImages(transform, (C, H, W))"
        )


def _uniform(
    n: int, low: float, high: float, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` draws from U[low, high), made on the generator's device, returned on x's."""
    device = generator.device if generator is not None else x.device
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return (low + (high - low) * u).to(device=x.device)


def _randint(
    n: int, low: int, high: int, x: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``n`` integers uniform in [low, high] (inclusive), on x's device."""
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high + 1, (n,), generator=generator, device=device).to(x.device)


def crop(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Cut an ``(h, w)`` window at ``(top[n], left[n])`` out of each image ``n``."""
    h, w = size
    n = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return x[n, c, rows, cols]


def shift(
    x: torch.Tensor, dy: torch.Tensor | int, dx: torch.Tensor | int, fill: float = 0.0
) -> torch.Tensor:
    """Translate image ``n`` by ``dy[n]`` rows down and ``dx[n]`` columns right (exact).

    Pixel ``(i, j)`` moves to ``(i + dy, j + dx)``; what enters is ``fill``, what
    leaves is lost. ``dy`` and ``dx`` are integers or integer tensors of shape ``(N,)``.

    Example:
        >>> shift(torch.eye(3).view(1, 1, 3, 3), 1, 0)   # the diagonal moves one row down
    """
    _check_images(x, "shift")
    N, _, H, W = x.shape
    dy = torch.as_tensor(dy, device=x.device).long().expand(N)
    dx = torch.as_tensor(dx, device=x.device).long().expand(N)
    s = int(max(dy.abs().max().item(), dx.abs().max().item(), 0))
    padded = F.pad(x, (s, s, s, s), value=fill)
    return crop(padded, s - dy, s - dx, (H, W))


class _RandomAmount:
    """Shared by :class:`RandomShift` and :class:`RandomRotation`: a per-image amount in
    ``[-limit, limit]`` (``limit`` stored under the subclass's argument name), the ``fill``
    value that enters from outside the image, and the optional generator.
    """

    _limit_name = "limit"

    def __init__(self, limit: float, fill: float, generator: torch.Generator | None):
        if limit < 0:
            raise ValueError(f"{self._limit_name} must be non-negative, got {limit}")
        self.fill, self.generator = fill, generator

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._limit_name}={getattr(self, self._limit_name)})"


class RandomShift(_RandomAmount):
    """Shift each image by integers drawn uniformly from ``[-max_shift, max_shift]``.

    Args:
        max_shift: the largest shift in pixels, in each direction.
        fill: the value that enters at the border (default 0, a black background).
        generator: optional ``torch.Generator``.

    Example:
        >>> aug = RandomShift(1, generator=torch.Generator().manual_seed(0))
        >>> aug(torch.rand(16, 1, 8, 8)).shape
    """

    _limit_name = "max_shift"

    def __init__(
        self, max_shift: int, fill: float = 0.0, generator: torch.Generator | None = None
    ):
        if int(max_shift) != max_shift:
            raise ValueError(f"max_shift must be a whole number of pixels, got {max_shift}")
        super().__init__(max_shift, fill, generator)
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "RandomShift")
        s = self.max_shift
        dy = _randint(x.shape[0], -s, s, x, self.generator)
        dx = _randint(x.shape[0], -s, s, x, self.generator)
        return shift(x, dy, dx, self.fill)


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then cut a random ``size`` window.

    With ``size`` equal to the image size this is a random shift of up to ``padding``
    pixels (the CIFAR-style "pad 4 and crop 32").

    Args:
        size: the output ``(h, w)`` (an int for a square).
        padding: pixels added on each side first (default 0).
        fill: the padding value (default 0).
        generator: optional ``torch.Generator``.

    Example:
        >>> RandomCrop(8, padding=2)(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        padding: int = 0,
        fill: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        self.padding, self.fill, self.generator = int(padding), fill, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "RandomCrop")
        p = self.padding
        padded = F.pad(x, (p, p, p, p), value=self.fill) if p else x
        H, W = padded.shape[-2:]
        h, w = self.size
        if h > H or w > W:
            raise ValueError(f"crop size {self.size} larger than the padded image {(H, W)}")
        top = _randint(x.shape[0], 0, H - h, x, self.generator)
        left = _randint(x.shape[0], 0, W - w, x, self.generator)
        return crop(padded, top, left, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


def rotate(x: torch.Tensor, degrees: torch.Tensor | float, fill: float = 0.0) -> torch.Tensor:
    """Rotate image ``n`` by ``degrees[n]`` counter-clockwise about its center.

    Sampling with ``affine_grid``/``grid_sample`` (bilinear, ``align_corners=False``):
    output pixel :math:`p` takes the input value at :math:`R_{-\\theta}\\,p` in
    normalized coordinates (for a square image); outside the image it is ``fill``.
    A zero angle returns the input (up to rounding).

    Example:
        >>> rotate(torch.rand(2, 1, 8, 8), torch.tensor([10.0, -10.0])).shape
    """
    _check_images(x, "rotate")
    N = x.shape[0]
    theta = torch.as_tensor(degrees, device=x.device, dtype=x.dtype).expand(N) * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    # grid (x right, y down): rotating the image by +theta samples the input at R(-theta) p
    affine = torch.stack(
        [torch.stack([cos, -sin, zero], dim=1), torch.stack([sin, cos, zero], dim=1)], dim=1
    )
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    if fill == 0.0:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sample (x - fill) with zero padding, add fill back: fill enters from outside
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


class RandomRotation(_RandomAmount):
    """Rotate each image by an angle uniform in ``[-max_degrees, max_degrees]``.

    Args:
        max_degrees: the largest angle in degrees (small: 10 to 15 for digits).
        fill: the value outside the rotated image (default 0).
        generator: optional ``torch.Generator``.

    Example:
        >>> RandomRotation(15)(torch.rand(4, 1, 8, 8)).shape
    """

    _limit_name = "max_degrees"

    def __init__(
        self, max_degrees: float, fill: float = 0.0, generator: torch.Generator | None = None
    ):
        super().__init__(max_degrees, fill, generator)
        self.max_degrees = float(max_degrees)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, "RandomRotation")
        a = self.max_degrees
        return rotate(x, _uniform(x.shape[0], -a, a, x, self.generator).to(x.dtype), self.fill)


class GaussianNoise:
    """Add i.i.d. :math:`\\mathcal N(0, \\sigma^2)` noise to every entry.

    Works on any shape (flat rows too). Optionally clamp the result to ``clip``.

    Example:
        >>> GaussianNoise(0.1, clip=(0.0, 1.0))(torch.rand(4, 1, 8, 8)).shape
    """

    def __init__(
        self,
        std: float,
        clip: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ):
        if std < 0:
            raise ValueError(f"std must be non-negative, got {std}")
        self.std, self.clip, self.generator = std, clip, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else x.device
        noise = torch.randn(x.shape, generator=self.generator, device=device, dtype=x.dtype)
        y = x + self.std * noise.to(x.device)
        return y.clamp(*self.clip) if self.clip is not None else y

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class Compose:
    """Apply transforms one after the other: ``Compose([t1, t2])(x) == t2(t1(x))``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> aug = Compose([RandomRotation(10, generator=g), RandomShift(1, generator=g)])
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class FlatImages:
    """Apply an image transform to flattened rows ``(N, C*H*W)`` and flatten back.

    The bundled digits come as 64 features per row: ``FlatImages(aug, (1, 8, 8))``
    makes ``aug`` usable as ``dnncourse.train(..., transform=...)`` on them.

    Example:
        >>> aug = FlatImages(RandomShift(1), (1, 8, 8))
        >>> aug(torch.rand(5, 64)).shape
        torch.Size([5, 64])
    """

    def __init__(self, transform: Transform, image_shape: tuple[int, int, int]):
        self.transform, self.image_shape = transform, tuple(image_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != math.prod(self.image_shape):
            raise ValueError(
                f"FlatImages expects rows of {math.prod(self.image_shape)} = "
                f"{'x'.join(map(str, self.image_shape))} features, got shape {tuple(x.shape)}"
            )
        return self.transform(x.view(-1, *self.image_shape)).reshape(x.shape[0], -1)

    def __repr__(self) -> str:
        return f"FlatImages({self.transform!r}, {self.image_shape})"


__all__ = [
    "Compose",
    "FlatImages",
    "GaussianNoise",
    "RandomCrop",
    "RandomRotation",
    "RandomShift",
    "crop",
    "rotate",
    "shift",
]
