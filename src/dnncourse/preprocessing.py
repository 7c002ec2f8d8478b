"""Data preprocessing: standardization, PCA rotation and whitening.

Lecture section: "Data normalization" (fix the scaling: first idea, normalize each
feature; second idea, PCA and whitening; CS231n's notes). For least squares the Hessian
is :math:`\\frac1m X^\\top X`: features on different scales, or strongly correlated ones,
make it ill-conditioned and gradient descent zig-zags. Standardization fixes the scales;
whitening also removes the correlations, so the Hessian becomes the identity.

With the training data centered, :math:`X - \\bar x = U S V^\\top` (thin SVD):

- PCA rotation: :math:`X_{\\text{rot}} = (X - \\bar x) V = U S` (uncorrelated columns);
- whitening: divide each rotated coordinate by its standard deviation
  :math:`s_j / \\sqrt{m-1}`, so the sample covariance is the identity.

Every transform is *fitted on the training data only* (``fit``) and then applied with
those statistics to any data (``transform``): validation and test data must never leak
into the mean, the scales or the rotation. All work on ``(m, d)`` torch tensors and keep
their device and dtype.
"""

import torch


class _Transform:
    """Common checks: fitted before use, and the same number of features as in ``fit``."""

    num_features_: int | None = None

    def _check_fit_input(self, X: torch.Tensor, min_rows: int = 2) -> None:
        if not isinstance(X, torch.Tensor) or X.dim() != 2:
            shape = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
            raise ValueError(f"{type(self).__name__}.fit expects a 2D tensor (m, d), got {shape}")
        if X.shape[0] < min_rows:
            raise ValueError(
                f"{type(self).__name__}.fit needs at least {min_rows} rows, got {X.shape[0]}"
            )
        if not X.is_floating_point():
            raise TypeError(f"X must be a floating point tensor, got dtype {X.dtype}")

    def _check_input(self, X: torch.Tensor, d: int | None = None) -> None:
        if self.num_features_ is None:
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call fit(X_train) first"
            )
        d = self.num_features_ if d is None else d
        if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.shape[1] != d:
            shape = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
            raise ValueError(f"{type(self).__name__} expected a tensor (n, {d}), got {shape}")

    def fit_transform(self, X: torch.Tensor) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)


class Standardizer(_Transform):
    """Zero mean and unit variance per feature: :math:`(x - \\mu) / \\sigma`.

    :math:`\\mu` and :math:`\\sigma` (the population standard deviation, dividing by
    :math:`m`, as ``sklearn.preprocessing.StandardScaler``) come from the training data.
    A constant feature gets :math:`\\sigma = 1` (it is only centered).

    Example:
        >>> scaler = Standardizer().fit(X_train)
        >>> X_test_std = scaler.transform(X_test)   # uses the training mean and std
    """

    def fit(self, X: torch.Tensor) -> "Standardizer":
        """Learn ``mean_`` and ``scale_`` (shape ``(d,)``) from the training data."""
        self._check_fit_input(X)
        self.mean_ = X.mean(dim=0)
        std = X.std(dim=0, unbiased=False)
        self.scale_ = torch.where(std > 0, std, torch.ones_like(std))
        self.num_features_ = X.shape[1]
        return self

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_input(X)
        return (X - self.mean_) / self.scale_

    def inverse_transform(self, Z: torch.Tensor) -> torch.Tensor:
        self._check_input(Z)
        return Z * self.scale_ + self.mean_


class PCA(_Transform):
    """Center and rotate onto the principal directions: :math:`X_{\\text{rot}} = (X-\\bar x)V`.

    From the thin SVD :math:`X - \\bar x = U S V^\\top` of the training data; the rotated
    coordinates :math:`US` are uncorrelated, with variances
    :math:`\\lambda_j = s_j^2/(m-1)` in decreasing order. Keeping the first ``k``
    columns of :math:`V` is dimension reduction.

    Args:
        n_components: k, the number of directions kept (default all, :math:`\\min(m, d)`).

    Attributes:
        mean_: the training mean, ``(d,)``.
        components_: :math:`V_k^\\top`, ``(k, d)``, rows are the principal directions
            (each signed so its largest entry in absolute value is positive).
        singular_values_: :math:`s_1 \\ge \\dots \\ge s_k`.
        explained_variance_: :math:`\\lambda_j = s_j^2 / (m-1)`.

    Example:
        >>> pca = PCA().fit(X_train)
        >>> X_rot = pca.transform(X_test)
    """

    def __init__(self, n_components: int | None = None):
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components}")
        self.n_components = n_components

    def fit(self, X: torch.Tensor) -> "PCA":
        self._check_fit_input(X)
        m, d = X.shape
        k = min(m, d) if self.n_components is None else self.n_components
        if k > min(m, d):
            raise ValueError(f"n_components={k} exceeds min(m, d) = {min(m, d)}")
        self.mean_ = X.mean(dim=0)
        _, S, VT = torch.linalg.svd(X - self.mean_, full_matrices=False)
        VT = VT[:k]
        largest = VT.gather(1, VT.abs().argmax(dim=1, keepdim=True))
        self.components_ = VT * torch.sign(largest)  # deterministic signs
        self.singular_values_ = S[:k]
        self.explained_variance_ = S[:k] ** 2 / (m - 1)
        self.num_features_ = d
        return self

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        self._check_input(X)
        return (X - self.mean_) @ self.components_.T

    def inverse_transform(self, Z: torch.Tensor) -> torch.Tensor:
        """Back to the input space (exact when all components are kept)."""
        self._check_input(Z, d=self.components_.shape[0])
        return Z @ self.components_ + self.mean_


class Whitening(PCA):
    """PCA whitening: rotate, then give every principal coordinate unit variance.

    .. math::  X_{\\text{white}} = \\frac{(X - \\bar x) V}{\\sqrt{\\lambda + \\epsilon}},
       \\qquad \\lambda_j = \\frac{s_j^2}{m-1},

    so that on the training data (with :math:`\\epsilon = 0`)
    :math:`\\frac{1}{m-1} X_{\\text{white}}^\\top X_{\\text{white}} = I`. With
    ``zca=True`` the result is rotated back, :math:`X_{\\text{white}} V^\\top` (ZCA
    whitening: still identity covariance, and closest to the original data).

    Args:
        eps: added to the variances :math:`\\lambda_j`, so that directions with
            (almost) no variance are not blown up (default 1e-5).
        n_components: keep only the first k directions (default all).
        zca: rotate back to the input coordinates (default False).

    Example:
        >>> white = Whitening(eps=1e-5).fit(X_train)
        >>> torch.cov(white.transform(X_train).T)   # about the identity

    Note:
        The lecture (CS231n) writes ``Xrot / (S + eps)`` with the singular values
        ``S``: that is :math:`U`, whose *columns have unit norm*, so its covariance is
        :math:`I/(m-1)`. We scale by the standard deviations
        :math:`s_j/\\sqrt{m-1}` instead, which differs by the constant
        :math:`\\sqrt{m-1}` (and where eps sits) and gives identity covariance.
    """

    def __init__(self, eps: float = 1e-5, n_components: int | None = None, zca: bool = False):
        super().__init__(n_components)
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.eps, self.zca = eps, zca

    def fit(self, X: torch.Tensor) -> "Whitening":
        super().fit(X)
        self.scale_ = torch.sqrt(self.explained_variance_ + self.eps)
        if bool((self.scale_ == 0).any()):
            raise ValueError(
                "a principal direction has zero variance and eps=0: use eps > 0 "
                "or fewer n_components"
            )
        return self

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        Z = super().transform(X) / self.scale_
        return Z @ self.components_ if self.zca else Z

    def inverse_transform(self, Z: torch.Tensor) -> torch.Tensor:
        if self.zca:
            self._check_input(Z)
            Z = Z @ self.components_.T
        return super().inverse_transform(Z * self.scale_)


__all__ = ["PCA", "Standardizer", "Whitening"]
