"""Standardization, PCA and whitening: moments on the training data, train statistics on
new data, agreement with scikit-learn, errors."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SkPCA
from sklearn.preprocessing import StandardScaler

from dnncourse.preprocessing import PCA, Standardizer, Whitening

DTYPE = torch.float64


def _correlated(m=500, seed=0):
    """Features with different scales and strong correlations (a random linear map)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 4, generator=gen, dtype=DTYPE) * torch.tensor([5.0, 1.0, 0.2, 3.0])
    return torch.randn(m, 4, generator=gen, dtype=DTYPE) @ A + torch.tensor([1.0, -2, 3, 10])


def test_standardizer_zero_mean_unit_variance_and_matches_sklearn():
    X = _correlated()
    scaler = Standardizer()
    Z = scaler.fit_transform(X)
    torch.testing.assert_close(Z.mean(dim=0), torch.zeros(4, dtype=DTYPE))
    torch.testing.assert_close(Z.std(dim=0, unbiased=False), torch.ones(4, dtype=DTYPE))
    sk = StandardScaler().fit(X.numpy())
    torch.testing.assert_close(Z, torch.from_numpy(sk.transform(X.numpy())))
    torch.testing.assert_close(scaler.inverse_transform(Z), X)


def test_transform_uses_the_training_statistics():
    X_train, X_new = _correlated(seed=0), _correlated(m=7, seed=1) + 100.0
    scaler = Standardizer().fit(X_train)
    expected = (X_new - X_train.mean(0)) / X_train.std(0, unbiased=False)
    torch.testing.assert_close(scaler.transform(X_new), expected)
    white = Whitening(eps=0.0).fit(X_train)
    centered = X_new - X_train.mean(0)
    torch.testing.assert_close(
        white.transform(X_new), centered @ white.components_.T / white.scale_
    )
    assert white.transform(X_new).mean(0).abs().min() > 1.0, "not re-centered on new data"


def test_constant_feature_is_only_centered():
    X = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], dtype=DTYPE)
    Z = Standardizer().fit_transform(X)
    torch.testing.assert_close(Z[:, 1], torch.zeros(3, dtype=DTYPE))


def test_pca_rotation_decorrelates_and_matches_sklearn_up_to_sign():
    X = _correlated()
    pca = PCA().fit(X)
    X_rot = pca.transform(X)
    cov = torch.cov(X_rot.T)
    torch.testing.assert_close(cov, torch.diag(pca.explained_variance_))
    assert bool((pca.explained_variance_.diff() <= 0).all()), "variances in decreasing order"
    sk = SkPCA().fit(X.numpy())
    torch.testing.assert_close(pca.explained_variance_, torch.from_numpy(sk.explained_variance_))
    # same directions up to sign: |<v_ours, v_sk>| = 1
    overlap = (pca.components_ * torch.from_numpy(sk.components_)).sum(1).abs()
    torch.testing.assert_close(overlap, torch.ones(4, dtype=DTYPE))
    torch.testing.assert_close(pca.inverse_transform(X_rot), X)
    # the lecture's formula: Xrot = X V = U S
    U, S, _ = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    torch.testing.assert_close(X_rot.abs(), (U * S).abs())


def test_pca_dimension_reduction_keeps_the_largest_variances():
    X = _correlated()
    pca = PCA(n_components=2).fit(X)
    assert pca.transform(X).shape == (500, 2)
    full = PCA().fit(X)
    torch.testing.assert_close(pca.explained_variance_, full.explained_variance_[:2])
    with pytest.raises(ValueError, match="n_components"):
        PCA(n_components=9).fit(X)


@pytest.mark.parametrize("zca", [False, True])
def test_whitening_gives_identity_covariance(zca):
    X = _correlated()
    white = Whitening(eps=0.0, zca=zca)
    X_white = white.fit_transform(X)
    torch.testing.assert_close(X_white.mean(0), torch.zeros(4, dtype=DTYPE))
    torch.testing.assert_close(torch.cov(X_white.T), torch.eye(4, dtype=DTYPE))
    torch.testing.assert_close(white.inverse_transform(X_white), X)


def test_whitening_with_eps_shrinks_the_variances_by_lambda_over_lambda_plus_eps():
    X = _correlated()
    white = Whitening(eps=1e-2).fit(X)
    lam = white.explained_variance_
    torch.testing.assert_close(torch.cov(white.transform(X).T), torch.diag(lam / (lam + 1e-2)))


def test_lecture_scaling_gives_u_with_unit_norm_columns():
    X = _correlated(m=50)
    white = Whitening(eps=0.0).fit(X)
    U = white.transform(X) / np.sqrt(50 - 1)  # the lecture's Xrot / S
    torch.testing.assert_close(U.T @ U, torch.eye(4, dtype=DTYPE))


def test_errors_when_not_fitted_or_shapes_differ():
    for transform in (Standardizer(), PCA(), Whitening()):
        with pytest.raises(RuntimeError, match="not fitted"):
            transform.transform(torch.zeros(3, 4))
        transform.fit(_correlated())
        with pytest.raises(ValueError, match=r"\(n, 4\)"):
            transform.transform(torch.zeros(3, 5, dtype=DTYPE))
    with pytest.raises(ValueError, match="2D"):
        Standardizer().fit(torch.zeros(5))
    with pytest.raises(ValueError, match="zero variance"):
        Whitening(eps=0.0).fit(torch.ones(5, 2, dtype=DTYPE))
    with pytest.raises(TypeError, match="floating point"):
        PCA().fit(torch.ones(5, 2, dtype=torch.long))


def test_float32_and_device_preserved():
    X = _correlated().float()
    for transform in (Standardizer(), PCA(), Whitening()):
        Z = transform.fit_transform(X)
        assert Z.dtype == torch.float32 and Z.device == X.device
