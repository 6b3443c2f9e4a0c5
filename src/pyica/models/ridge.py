"""Ridge regression heads on frozen features: fitting, regularisation choice, prediction.

Why ridge: with ~1,400 labelled images and thousands of pooled backbone features, a linear head with
an L2 penalty is the estimator that generalises best per millisecond (the penalty is chosen on held
out data, never on the test part). Features are standardised with the training statistics, which
travel with the weights.

The solver works in the dual (``n x n`` Gram matrix) because the datasets have fewer images than
features; one eigendecomposition gives the whole regularisation path, and closed-form leave-one-out
predictions when no validation part is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import selection_score

__all__ = ["ALPHAS", "RidgeHead", "ridge_path", "leave_one_out_path", "select_alpha"]

#: Regularisation strengths searched (on standardised features): 10^-1 ... 10^5, half-decade steps.
ALPHAS: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(-2, 11))


@dataclass
class RidgeHead:
    """``score = ((x - mean) / std) @ weight + bias``; all float64 numpy."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    alpha: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float64) - self.mean) / self.std) @ self.weight + self.bias


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    # a feature that never varies in training carries no information; a unit std keeps it at 0
    std = x.std(0)
    std[std < 1e-8] = 1.0
    return (x - mean) / std, mean, std


def _gram_eigen(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eigenvalues, eigenvectors = np.linalg.eigh(z @ z.T)
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def ridge_path(features: np.ndarray, targets: np.ndarray, alphas=ALPHAS) -> list[RidgeHead]:
    """One fitted head per ``alpha`` (intercept unpenalised)."""
    z, mean, std = _standardise(features)
    y = np.asarray(targets, np.float64)
    bias = float(y.mean())
    eigenvalues, u = _gram_eigen(z)
    uty = u.T @ (y - bias)
    # w = Z^T (Z Z^T + a I)^-1 y, the dual form of (Z^T Z + a I)^-1 Z^T y
    return [RidgeHead(mean, std, z.T @ (u @ (uty / (eigenvalues + a))), bias, float(a)) for a in alphas]


def leave_one_out_path(features: np.ndarray, targets: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Closed-form leave-one-out predictions, ``(n, len(alphas))``.

    Exact for ridge with a fixed standardisation: ``y_i - e_i / (1 - h_ii)`` with the hat matrix
    ``H = 1/n + U diag(l / (l + a)) U^T``. (The standardisation itself uses all ``n`` images; the
    effect on the choice of ``alpha`` is negligible at these sizes.)
    """
    z, _, _ = _standardise(features)
    y = np.asarray(targets, np.float64)
    n = len(y)
    centred = y - y.mean()
    eigenvalues, u = _gram_eigen(z)
    uty = u.T @ centred
    out = np.empty((n, len(alphas)))
    for j, a in enumerate(alphas):
        shrink = eigenvalues / (eigenvalues + a)
        fitted = u @ (shrink * uty)
        hat_diag = 1.0 / n + np.einsum("ij,j,ij->i", u, shrink, u)
        out[:, j] = y - (centred - fitted) / (1.0 - hat_diag)
    return out


def select_alpha(train_x, train_y, val_x=None, val_y=None, val_categories=None, alphas=ALPHAS) -> tuple[float, list[float]]:
    """The ``alpha`` that predicts held-out images best, and the score of every ``alpha`` (higher = better).

    With a validation part: :func:`selection_score` (within-category SRCC) on it. Without one:
    minus the mean squared error of the leave-one-out predictions of the training set. Not SRCC
    there: leave-one-out predictions carry a rank artefact (under a strong penalty each prediction
    is the mean of the *other* targets, perfectly anti-correlated with the target), so rank
    correlations would be biased; the squared error is not. Ties go to the stronger penalty.
    """
    if val_x is not None and len(val_x):
        heads = ridge_path(train_x, train_y, alphas)
        scores = [selection_score(h.predict(val_x), np.asarray(val_y, np.float64), val_categories) for h in heads]
    else:
        loo = leave_one_out_path(train_x, train_y, alphas)
        y = np.asarray(train_y, np.float64)
        scores = [-float(np.mean((loo[:, j] - y) ** 2)) for j in range(len(alphas))]
    # a constant prediction has no rank correlation (nan): never the best
    ranked = [round(s, 12) if np.isfinite(s) else -np.inf for s in scores]
    best = max(range(len(alphas)), key=lambda j: (ranked[j], alphas[j]))
    return float(alphas[best]), scores
