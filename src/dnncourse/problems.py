"""Test problems for optimizers: the lecture's elongated quadratic and least squares.

Lecture section: "Training algorithms" and "Which method". Two problems, from a picture
in two dimensions to ten thousand samples (the real network is
:func:`dnncourse.models.mlp` on :func:`dnncourse.datasets.load_digits`):

- :class:`Quadratic`: :math:`f(x) = \\sum_i d_i x_i^2`, the lecture's elongated
  :math:`f(x_1, x_2) = x_1^2 + 4 x_2^2` by default, with a condition number parameter; GD
  zig-zags on it, momentum and adaptive methods do not (Polyak, 1964; Nesterov, 1983;
  Duchi et al., 2011; Kingma and Ba, 2015). :func:`run_optimizer` records the trajectory
  of any ``torch.optim`` optimizer on it.
- :class:`LeastSquares`: :math:`\\min_w \\frac1m\\|y - Xw\\|_2^2` with
  :math:`X \\in \\mathbb{R}^{10000 \\times 500}` ("GD vs. SGD"), gradients of the full sum
  or of a mini-batch in closed form, and the solution from ``torch.linalg.lstsq``
  (Bottou and Bousquet, 2008). :meth:`LeastSquares.from_data` poses it for any ``X, y``.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from dnncourse.devices import default_device

__all__ = ["LeastSquares", "Quadratic", "least_squares", "run_optimizer"]


class Quadratic:
    """The separable quadratic :math:`f(x) = \\sum_i d_i x_i^2 = x^\\top D x`, :math:`d_i > 0`.

    Gradient :math:`\\nabla f(x) = 2 D x`, Hessian :math:`2D`, minimizer :math:`x^* = 0`
    with :math:`f(x^*) = 0`, condition number :math:`\\kappa = \\max_i d_i / \\min_i d_i`.

    Args:
        diag: the coefficients :math:`d_i`, all positive. Default ``(1, 4)``, the
            lecture's :math:`x_1^2 + 4x_2^2` (:math:`\\kappa = 4`).
        dtype: floating point type of the coefficients (default float64).
        device: default :func:`dnncourse.default_device`.

    Inputs may carry leading batch dimensions: ``f(x)`` of shape ``(..., n)`` has shape
    ``(...)``, which is handy for contour plots.

    Example:
        >>> f = Quadratic()  # x1^2 + 4 x2^2
        >>> f(torch.tensor([1.0, 1.0], dtype=torch.float64))
        tensor(5., dtype=torch.float64)
    """

    def __init__(
        self,
        diag: Sequence[float] | torch.Tensor = (1.0, 4.0),
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        device = default_device() if device is None else device
        d = torch.as_tensor(diag, dtype=dtype, device=device)
        if d.dim() != 1 or len(d) == 0:
            raise ValueError(f"diag must be a non-empty 1-D sequence, got shape {tuple(d.shape)}")
        if not bool(torch.isfinite(d).all() and (d > 0).all()):
            raise ValueError(f"diag must hold finite positive numbers, got {d.tolist()}")
        self.diag = d

    @classmethod
    def from_condition_number(cls, condition_number: float, dim: int = 2, **kwargs) -> "Quadratic":
        """A quadratic with :math:`d_i` log-spaced from 1 to ``condition_number``.

        Example:
            >>> Quadratic.from_condition_number(4.0).diag
            tensor([1., 4.], dtype=torch.float64)
        """
        if not condition_number >= 1:
            raise ValueError(f"condition_number must be >= 1, got {condition_number}")
        if dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        exponents = torch.linspace(0.0, 1.0, dim, dtype=torch.float64)
        if dim == 1:
            exponents = torch.zeros(1, dtype=torch.float64)
        return cls(torch.as_tensor(condition_number, dtype=torch.float64) ** exponents, **kwargs)

    @property
    def dim(self) -> int:
        return len(self.diag)

    @property
    def condition_number(self) -> float:
        return float(self.diag.max() / self.diag.min())

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`f(x) = \\sum_i d_i x_i^2`, differentiable by autograd."""
        self._check(x)
        return (self.diag.to(x.dtype) * x.square()).sum(-1)

    value = __call__

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla f(x) = 2 D x` (same shape as ``x``)."""
        self._check(x)
        return 2 * self.diag.to(x.dtype) * x

    def hessian(self) -> torch.Tensor:
        """:math:`\\nabla^2 f = 2 D`, an ``(n, n)`` matrix."""
        return torch.diag(2 * self.diag)

    def minimizer(self) -> torch.Tensor:
        """:math:`x^* = 0`."""
        return torch.zeros_like(self.diag)

    def __repr__(self) -> str:
        return f"Quadratic(diag={self.diag.tolist()})"


def run_optimizer(
    f: Callable[[torch.Tensor], torch.Tensor],
    make_optimizer: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer],
    x0: Sequence[float] | torch.Tensor,
    num_steps: int,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run an optimizer on ``f`` from ``x0``; return the iterates, shape ``(num_steps + 1, n)``.

    Every step calls ``optimizer.step(closure)`` with a closure that zeroes the gradient,
    evaluates ``f`` and back-propagates, so methods that re-evaluate (``torch.optim.LBFGS``)
    work as well as one-gradient methods.

    Args:
        f: scalar function of an ``(n,)`` tensor, differentiable by autograd.
        make_optimizer: builds the optimizer from a list of parameters, e.g.
            ``lambda params: torch.optim.SGD(params, lr=0.1)``.
        x0: start point; float64 unless given as a tensor of another floating type.
        num_steps: number of ``optimizer.step`` calls.
        noise: standard deviation of Gaussian noise added to each gradient (a stand-in
            for a stochastic gradient). Default 0.
        generator: ``torch.Generator`` for the noise.

    Example:
        >>> path = run_optimizer(Quadratic(), lambda p: torch.optim.SGD(p, lr=0.1), [2.0, 1.0], 20)
        >>> path.shape
        torch.Size([21, 2])
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be non-negative, got {num_steps}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if not (isinstance(x0, torch.Tensor) and x0.is_floating_point()):
        x0 = torch.as_tensor(x0, dtype=torch.float64)
    x = x0.detach().clone().requires_grad_(True)
    optimizer = make_optimizer([x])

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = f(x)
        loss.backward()
        if noise > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x.grad.add_(z, alpha=noise)
        return loss

    path = [x.detach().clone()]
    for _ in range(num_steps):
        optimizer.step(closure)
        path.append(x.detach().clone())
    return torch.stack(path)


@dataclass(frozen=True)
class LeastSquares:
    """The lecture's least-squares problem :math:`F(w) = \\frac1m \\|y - Xw\\|_2^2`.

    Written as an average :math:`F(w) = \\frac1m\\sum_i f_i(w)` with
    :math:`f_i(w) = (y_i - x_i^\\top w)^2`, so a mini-batch :math:`J` gives the stochastic
    gradient :math:`\\hat g = \\frac{2}{|J|} X_J^\\top (X_J w - y_J)`. Build it with
    :func:`least_squares`.

    Attributes:
        X: the ``(m, n)`` design matrix.
        y: the ``(m,)`` targets.
        w_star: a minimizer, from ``torch.linalg.lstsq``.
    """

    X: torch.Tensor
    y: torch.Tensor
    w_star: torch.Tensor

    @classmethod
    def from_data(cls, X: torch.Tensor, y: torch.Tensor) -> "LeastSquares":
        """The problem for a given ``(m, n)`` design ``X`` and targets ``y`` of shape ``(m,)``.

        Example:
            >>> problem = LeastSquares.from_data(torch.eye(2), torch.ones(2))
            >>> problem.w_star
            tensor([1., 1.])
        """
        if X.ndim != 2 or y.shape != X.shape[:1]:
            raise ValueError(
                f"expected X of shape (m, n) and y of shape (m,), got {tuple(X.shape)}, "
                f"{tuple(y.shape)}"
            )
        return cls(X, y, torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1))

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def num_features(self) -> int:
        return self.X.shape[1]

    def loss(self, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\frac{1}{|J|}\\sum_{j\\in J} (y_j - x_j^\\top w)^2`; all rows by default."""
        X, y = (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])
        return (X @ w - y).square().mean()

    def grad(self, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\frac{2}{|J|} X_J^\\top (X_J w - y_J)`; the full gradient when ``idx=None``."""
        X, y = (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])
        return X.T @ (X @ w - y) * (2.0 / len(y))

    @property
    def min_loss(self) -> float:
        """:math:`F(w^*)`, the optimal value."""
        return float(self.loss(self.w_star))

    def smoothness(self) -> float:
        """:math:`L = \\frac{2}{m}\\lambda_{\\max}(X^\\top X)`; GD converges for ``lr < 2 / L``."""
        return float(2.0 * torch.linalg.eigvalsh(self.X.T @ self.X)[-1] / self.num_samples)


def least_squares(
    num_samples: int = 10000,
    num_features: int = 500,
    *,
    noise: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> LeastSquares:
    """The lecture's GD-vs-SGD problem: Gaussian ``X`` (10000 x 500), ``y = X w_true + noise``.

    Entries of ``X`` and ``w_true`` are standard normal; the noise is
    :math:`\\mathcal N(0, \\text{noise}^2)`, so the optimal value :math:`F(w^*)` is close
    to ``noise**2 * (1 - n / m)``. Same seed, same ``X`` and ``y`` (bit for bit) on every
    device; ``w_star`` comes from LAPACK and may differ in the last bits between runs.

    Args:
        num_samples: :math:`m` (default 10000).
        num_features: :math:`n` (default 500).
        noise: standard deviation of the label noise (default 1.0).
        seed: seed of a CPU ``torch.Generator`` (default 0).
        dtype: floating point type (default float64).
        device: where the tensors live (default :func:`dnncourse.default_device`).

    Example:
        >>> problem = least_squares()
        >>> problem.X.shape, problem.w_star.shape
        (torch.Size([10000, 500]), torch.Size([500]))
    """
    if num_samples < 1 or num_features < 1:
        raise ValueError(
            f"num_samples and num_features must be positive, got {num_samples}, {num_features}"
        )
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(num_samples, num_features, generator=g, dtype=torch.float64)
    w_true = torch.randn(num_features, generator=g, dtype=torch.float64)
    y = X @ w_true + noise * torch.randn(num_samples, generator=g, dtype=torch.float64)
    problem = LeastSquares.from_data(X, y)
    device = default_device() if device is None else device
    return LeastSquares(*(t.to(device=device, dtype=dtype) for t in vars(problem).values()))
