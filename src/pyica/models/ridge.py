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

__all__ = ["ALPHAS", "RidgeHead", "ridge_path", "leave_one_out_path", "select_alpha", "select_alpha_by_group",
           "centre_within_groups"]

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


def _standardise(features: np.ndarray, feature_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    # a feature that never varies in training carries no information; a unit std keeps it at 0
    std = x.std(0)
    std[std < 1e-8] = 1.0
    if feature_scale is not None:
        # a standardised feature multiplied by k is penalised k^2 times less: how a small block of
        # hand-crafted features keeps its say beside thousands of deep ones
        std = std / np.asarray(feature_scale, np.float64)
    return (x - mean) / std, mean, std


def centre_within_groups(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` minus the mean of their group (rows of the same group value)."""
    values = np.asarray(values, np.float64)
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.bincount(index)
    sums = np.zeros((len(counts),) + values.shape[1:])
    np.add.at(sums, index, values)
    return values - (sums / counts.reshape((-1,) + (1,) * (values.ndim - 1)))[index]


def _gram_eigen(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eigenvalues, eigenvectors = np.linalg.eigh(z @ z.T)
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def ridge_path(features: np.ndarray, targets: np.ndarray, alphas=ALPHAS, *, groups: np.ndarray | None = None,
               feature_scale: np.ndarray | None = None) -> list[RidgeHead]:
    """One fitted head per ``alpha`` (intercept unpenalised).

    ``groups`` (one label per row, e.g. the dataset category): fit *within* groups. Features and
    targets are centred on their group's mean first, so the weights learn only how images differ
    inside a group; a group's offset (SAVOIAS: each category's own 0..100 scale) cannot pull on them.
    It is least squares on every within-group difference of two images, a pairwise ranking loss in
    closed form. Either way the bias is the mean target (standardised features have mean 0).
    ``feature_scale``: per-feature multipliers after standardisation (see :func:`_standardise`).
    """
    z, mean, std = _standardise(features, feature_scale)
    y = np.asarray(targets, np.float64)
    bias = float(y.mean())
    if groups is None:
        z_fit, y_fit = z, y - bias
    else:
        z_fit, y_fit = centre_within_groups(z, groups), centre_within_groups(y, groups)
    eigenvalues, u = _gram_eigen(z_fit)
    uty = u.T @ y_fit
    heads = []
    for a in alphas:
        # w = Z^T (Z Z^T + a I)^-1 y, the dual form of (Z^T Z + a I)^-1 Z^T y
        weight = z_fit.T @ (u @ (uty / (eigenvalues + a)))
        heads.append(RidgeHead(mean, std, weight, bias, float(a)))
    return heads


def leave_one_out_path(features: np.ndarray, targets: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Closed-form leave-one-out predictions, ``(n, len(alphas))``.

    Exact for ridge with a fixed standardisation: ``y_i - e_i / (1 - h_ii)`` with the hat matrix
    ``H = 1/n + U diag(l / (l + a)) U^T``. (The standardisation itself uses all ``n`` images; the
    effect on the choice of ``alpha`` is negligible at these sizes.)

    Degenerate cases: fewer than 2 images leave nothing to predict from (``ValueError``); an image
    with leverage ``h_ii`` = 1 (``alpha`` = 0 interpolating it, or rounding) has no leave-one-out
    prediction, so its entry is NaN, which :func:`select_alpha` never picks, instead of an inf or a
    division by zero.
    """
    y = np.asarray(targets, np.float64)
    n = len(y)
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 training images, got {n}")
    if any(a < 0 for a in alphas):
        raise ValueError(f"ridge penalties must be >= 0, got {min(alphas)}")
    z, _, _ = _standardise(features)
    centred = y - y.mean()
    eigenvalues, u = _gram_eigen(z)
    uty = u.T @ centred
    out = np.empty((n, len(alphas)))
    for j, a in enumerate(alphas):
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 where a = 0 and l = 0: nothing to shrink
            shrink = np.where(eigenvalues + a > 0, eigenvalues / (eigenvalues + a), 0.0)
        fitted = u @ (shrink * uty)
        hat_diag = 1.0 / n + np.einsum("ij,j,ij->i", u, shrink, u)
        residual_scale = 1.0 - hat_diag
        # relative to 1: a leverage within rounding of 1 has no leave-one-out prediction
        defined = residual_scale > 1e-10
        out[:, j] = np.nan
        out[defined, j] = y[defined] - (centred[defined] - fitted[defined]) / residual_scale[defined]
    return out


def select_alpha(train_x, train_y, val_x=None, val_y=None, val_categories=None, alphas=ALPHAS, *,
                 groups=None) -> tuple[float, list[float]]:
    """The ``alpha`` that predicts held-out images best, and the score of every ``alpha`` (higher = better).

    With a validation part: :func:`selection_score` (within-category SRCC) on it. Without one:
    minus the mean squared error of the leave-one-out predictions of the training set. Not SRCC
    there: leave-one-out predictions carry a rank artefact (under a strong penalty each prediction
    is the mean of the *other* targets, perfectly anti-correlated with the target), so rank
    correlations would be biased; the squared error is not. Ties go to the stronger penalty.
    ``groups``: the training rows' groups, for heads fitted within groups (:func:`ridge_path`).
    """
    if len(train_y) == 0:
        raise ValueError("no training images to fit the ridge head on")
    if val_x is not None and len(val_x):
        heads = ridge_path(train_x, train_y, alphas, groups=groups)
        from ..metrics import selection_score  # scipy: only when a penalty is chosen, never to score

        scores = [selection_score(h.predict(val_x), np.asarray(val_y, np.float64), val_categories) for h in heads]
    elif groups is not None:
        raise ValueError("a head fitted within groups needs a validation part (or select_alpha_by_group)")
    else:
        loo = leave_one_out_path(train_x, train_y, alphas)
        y = np.asarray(train_y, np.float64)
        # an undefined leave-one-out prediction makes that alpha's score NaN: never the best
        scores = [-float(np.mean((loo[:, j] - y) ** 2)) for j in range(len(alphas))]
    return _best_alpha(alphas, scores), scores


def _best_alpha(alphas, scores) -> float:
    """The ``alpha`` of the highest score (rounded to 12 digits); ties go to the stronger penalty, and a
    non-finite score (a constant prediction has no rank correlation) is never the best."""
    ranked = [round(s, 12) if np.isfinite(s) else -np.inf for s in scores]
    return float(alphas[max(range(len(alphas)), key=lambda j: (ranked[j], alphas[j]))])


def select_alpha_by_group(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, alphas=ALPHAS, *,
                          within_groups: bool = False,
                          feature_scale: np.ndarray | None = None) -> tuple[float, list[float]]:
    """The ``alpha`` whose heads rank a *held-out group* best: leave each group out in turn, fit on the
    others (within groups when ``within_groups``), and score the SRCC on the group left out; the score
    of an ``alpha`` is the mean over groups. This chooses the penalty for images unlike the training
    ones (SAVOIAS: a category never seen), not for more of the same. Ties go to the stronger penalty."""
    from ..metrics import selection_score  # scipy: only when a penalty is chosen, never to score

    groups = np.asarray(groups)
    names = np.unique(groups)
    if len(names) < 3:
        raise ValueError(f"leave-one-group-out needs at least 3 groups, found {len(names)}")
    totals = np.zeros(len(alphas))
    for name in names:
        held = groups == name
        heads = ridge_path(features[~held], targets[~held], alphas,
                           groups=groups[~held] if within_groups else None, feature_scale=feature_scale)
        for j, head in enumerate(heads):
            rho = selection_score(head.predict(features[held]), targets[held])
            totals[j] += rho if np.isfinite(rho) else -1.0  # a group ranked all alike counts as the worst
    scores = [float(t / len(names)) for t in totals]
    return _best_alpha(alphas, scores), scores
