"""Agreement between predicted and human complexity scores, as the ICA literature reports it.

Metrics (all take ``pred`` and ``target`` of equal length):

* ``srcc``: Spearman rank correlation (monotonicity; scale-free).
* ``plcc``: Pearson linear correlation.
* ``krcc``: Kendall rank correlation (tau-b, scipy's default).
* ``rmse``: ``sqrt(mean((pred - target)**2))``.
* ``mae``: ``mean(|pred - target|)``.
* ``rmae_icnet``: ``sqrt(mean(|pred - target|))``, the "RMAE" (root mean absolute error) of ICNet/IC9600
  (``tinglyfeng/IC9600`` ``utils.py``) and DReX (``jskaza/DReX`` ``eval.py``).
* ``rmae_cmssa``: ``mean(|pred - target|)``, what the CM-SSA code calls "RMAE"; it equals ``mae``.

The two "RMAE"s are different numbers under the same name (0.25 absolute error everywhere gives
``rmae_icnet`` 0.5 and ``rmae_cmssa`` 0.25), so pyica never reports a bare "rmae": compare a paper's
RMAE with the column named after the code that produced it.

**Units.** Correlations are scale-free, errors are not: a model's scores (pyica's are in [0, 1]) are
rarely on the label's scale (SAVOIAS: 0-100), and an RMSE between the two measures the scales, not the
model. So :func:`evaluate` reports every error *after a mapping into the label's units*: the VQEG
4-parameter logistic (:func:`fit_logistic4`, image-quality practice) fitted on the evaluated predictions
themselves (per category when labels are on a per-category scale). Those metrics carry the mapping in
their name (``rmse_logistic4``, ``mae_logistic4``, ``rmae_icnet_logistic4``, ``rmae_cmssa_logistic4``,
and ``plcc_logistic4``); ``mapping`` says what was fitted (``logistic4``, or its fallback ``linear`` or
``constant``). SRCC, KRCC and ``plcc`` are on the raw predictions, as in the ICA papers (ranks do not
change under a monotone mapping; ``plcc`` is before it). The raw errors (``rmse``, ``mae``, ...) are
in the result of :func:`evaluate` too, for predictions already on the label's scale, but results files
and tables report only the mapped ones (:data:`METRIC_NAMES`).

Bad input is handled rather than propagated: pairs with NaN/inf are dropped and counted, fewer than
``MIN_PAIRS`` valid pairs give NaN metrics with a :class:`MetricWarning`, and a constant prediction
or target gives NaN correlations (the error metrics are still computed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "MAPPED_METRIC_NAMES",
    "MAPPING",
    "METRIC_NAMES",
    "RAW_METRIC_NAMES",
    "selection_score",
    "MIN_PAIRS",
    "FittedMapping",
    "MetricWarning",
    "evaluate",
    "fit_logistic4",
    "krcc",
    "logistic4",
    "mae",
    "plcc",
    "rmae_cmssa",
    "rmae_icnet",
    "rmse",
    "srcc",
]

#: Every metric on the raw predictions (correlations, and errors in the predictions' own units).
RAW_METRIC_NAMES = ("srcc", "plcc", "krcc", "rmse", "mae", "rmae_icnet", "rmae_cmssa")
#: The mapping every ``*_<mapping>`` metric is computed after (:func:`fit_logistic4`).
MAPPING = "logistic4"
#: Metrics after the mapping into the label's units: PLCC and every error metric.
MAPPED_METRIC_NAMES = tuple(f"{name}_{MAPPING}" for name in ("plcc", "rmse", "mae", "rmae_icnet", "rmae_cmssa"))
#: What results files and tables report, in their order: raw correlations, then the mapped metrics.
#: Raw errors are left out on purpose (on another scale than the labels they mean nothing).
METRIC_NAMES = ("srcc", "plcc", "krcc", *MAPPED_METRIC_NAMES)

#: Fewest valid (finite) pairs for which metrics are computed; below it they are NaN.
MIN_PAIRS = 3


class MetricWarning(UserWarning):
    """Input was not usable as given (too few valid pairs, or NaN/inf pairs dropped); filter it like any warning."""


# ---------------------------------------------------------------------------------------------------
# Input handling


def _as_vector(values, name: str) -> np.ndarray:
    """``values`` (sequence, numpy array or torch tensor) as a flat float64 array."""
    if hasattr(values, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numbers: {err}") from None


def _check_same_length(pred: np.ndarray, target: np.ndarray, categories=None) -> None:
    if len(pred) != len(target):
        raise ValueError(f"pred has {len(pred)} values but target has {len(target)}")
    if categories is not None and len(categories) != len(pred):
        raise ValueError(f"categories has {len(categories)} values but pred and target have {len(pred)}")


def _finite_pairs(pred, target) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated ``(pred, target)`` without the pairs where either is NaN/inf, and how many were dropped."""
    p, t = _as_vector(pred, "pred"), _as_vector(target, "target")
    _check_same_length(p, t)
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep], int(len(p) - keep.sum())


def _is_constant(values: np.ndarray) -> bool:
    return len(values) == 0 or bool(np.all(values == values[0]))


def _warn_too_few(scope: str, n: int) -> None:
    warnings.warn(
        f"{scope}: {n} valid (finite) prediction/target pairs, at least {MIN_PAIRS} are needed; metrics are NaN",
        MetricWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------------
# Metrics on clean arrays (finite, same length); the public functions below validate first.


def _correlation(statistic, p: np.ndarray, t: np.ndarray) -> float:
    # A correlation with a constant has no value; checking here keeps scipy from warning about it.
    if len(p) < MIN_PAIRS or _is_constant(p) or _is_constant(t):
        return float("nan")
    return float(statistic(p, t).statistic)


def _srcc(p, t) -> float:
    return _correlation(stats.spearmanr, p, t)


def _plcc(p, t) -> float:
    return _correlation(stats.pearsonr, p, t)


def _krcc(p, t) -> float:
    return _correlation(stats.kendalltau, p, t)


def _rmse(p, t) -> float:
    return float(np.sqrt(np.mean((p - t) ** 2))) if len(p) >= MIN_PAIRS else float("nan")


def _mae(p, t) -> float:
    return float(np.mean(np.abs(p - t))) if len(p) >= MIN_PAIRS else float("nan")


def _rmae_icnet(p, t) -> float:
    return float(np.sqrt(_mae(p, t)))


_METRIC_FUNCTIONS = {
    "srcc": _srcc,
    "plcc": _plcc,
    "krcc": _krcc,
    "rmse": _rmse,
    "mae": _mae,
    "rmae_icnet": _rmae_icnet,
    "rmae_cmssa": _mae,
}


def _validated_pairs(pred, target, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite pairs for a single-metric call, warning about dropped pairs and too few valid ones."""
    p, t, n_dropped = _finite_pairs(pred, target)
    if n_dropped:
        warnings.warn(f"{name}: dropped {n_dropped} pairs with NaN/inf", MetricWarning, stacklevel=3)
    if len(p) < MIN_PAIRS:
        _warn_too_few(name, len(p))
    return p, t


# The public metrics drop NaN/inf pairs (with a MetricWarning), are NaN below MIN_PAIRS valid pairs,
# and raise ValueError when the lengths differ.


def srcc(pred, target) -> float:
    """Spearman rank correlation of ``pred`` with ``target``; NaN if either is constant."""
    return _srcc(*_validated_pairs(pred, target, "srcc"))


def plcc(pred, target) -> float:
    """Pearson linear correlation of raw ``pred`` with ``target``; NaN if either is constant."""
    return _plcc(*_validated_pairs(pred, target, "plcc"))


def krcc(pred, target) -> float:
    """Kendall rank correlation (tau-b) of ``pred`` with ``target``; NaN if either is constant."""
    return _krcc(*_validated_pairs(pred, target, "krcc"))


def rmse(pred, target) -> float:
    """Root mean squared error ``sqrt(mean((pred - target)**2))``."""
    return _rmse(*_validated_pairs(pred, target, "rmse"))


def mae(pred, target) -> float:
    """Mean absolute error ``mean(|pred - target|)``."""
    return _mae(*_validated_pairs(pred, target, "mae"))


def rmae_icnet(pred, target) -> float:
    """ICNet/IC9600 and DReX "RMAE": ``sqrt(mean(|pred - target|))``, the square root of :func:`mae`.

    Not the CM-SSA code's "RMAE", which is :func:`rmae_cmssa`.
    """
    return _rmae_icnet(*_validated_pairs(pred, target, "rmae_icnet"))


def rmae_cmssa(pred, target) -> float:
    """CM-SSA code's "RMAE": ``mean(|pred - target|)``, which is plain :func:`mae`.

    Not ICNet's/DReX's "RMAE", which is :func:`rmae_icnet` (its square root).
    """
    return _mae(*_validated_pairs(pred, target, "rmae_cmssa"))


# ---------------------------------------------------------------------------------------------------
# Logistic mapping


def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.asarray(x, dtype=np.float64) - b3) / abs(b4)
    return (b1 - b2) * special.expit(z) + b2  # expit: no overflow for large |z|


@dataclass(frozen=True)
class FittedMapping:
    """A monotone map from predictions to the target scale; call it on predictions.

    ``method`` records what was fitted: ``"logistic4"`` (``params`` = b1, b2, b3, |b4|),
    ``"linear"`` (``params`` = slope, intercept; the fallback when the logistic fit does not
    converge or there are fewer than 4 points) or ``"constant"`` (``params`` = the target mean; the
    fallback when the predictions are constant).
    """

    method: str
    params: tuple[float, ...]

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.method == "logistic4":
            return logistic4(x, *self.params)
        if self.method == "linear":
            slope, intercept = self.params
            return slope * x + intercept
        return np.full_like(x, self.params[0])


def fit_logistic4(pred, target, maxfev: int = 20000) -> FittedMapping:
    """Fit the VQEG 4-parameter logistic (:func:`logistic4`) from ``pred`` to ``target``.

    The initial guess is b1 = max target, b2 = min target, b3 = mean pred, b4 = std pred (1 if 0),
    with b1 and b2 swapped when pred and target are negatively correlated so that the start already
    bends the right way. ``scipy.optimize.curve_fit`` runs for at most ``maxfev`` evaluations; when
    it fails to converge, gives non-finite values, or there are fewer than 4 points for its 4
    parameters, a least-squares line is fitted instead, and a constant (the target mean) when the
    predictions are constant. The returned :class:`FittedMapping` says which in ``method``.

    Pairs where either value is NaN/inf are ignored.
    """
    x, y, _ = _finite_pairs(pred, target)
    if len(x) >= 4 and not _is_constant(x) and not _is_constant(y):
        increasing = np.corrcoef(x, y)[0, 1] >= 0
        low, high = float(y.min()), float(y.max())
        spread = float(x.std()) or 1.0
        initial = (high, low, float(x.mean()), spread) if increasing else (low, high, float(x.mean()), spread)
        try:
            with warnings.catch_warnings():
                # An uncertain covariance (OptimizeWarning) is no failure: only the parameters are used.
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                params, _ = optimize.curve_fit(logistic4, x, y, p0=initial, maxfev=maxfev)
            b1, b2, b3, b4 = (float(v) for v in params)
            mapping = FittedMapping("logistic4", (b1, b2, b3, abs(b4)))
            if np.all(np.isfinite(mapping.params)) and np.all(np.isfinite(mapping(x))):
                return mapping
        except (RuntimeError, ValueError):  # maxfev reached, or the optimiser met non-finite values
            pass
    if len(x) >= 2 and not _is_constant(x):
        slope, intercept = np.polyfit(x, y, 1)
        return FittedMapping("linear", (float(slope), float(intercept)))
    return FittedMapping("constant", (float(y.mean()) if len(y) else float("nan"),))


# ---------------------------------------------------------------------------------------------------
# Everything at once


def _metric_dict(raw: np.ndarray, mapped: np.ndarray, target: np.ndarray, *, n_dropped: int, mapping: str,
                 scope: str) -> dict:
    """All metrics of one (clean) set: :data:`RAW_METRIC_NAMES` on ``raw``, :data:`MAPPED_METRIC_NAMES` on ``mapped``."""
    if len(raw) < MIN_PAIRS:
        _warn_too_few(scope, len(raw))
    values = {"n": int(len(raw))}
    for name in RAW_METRIC_NAMES:
        values[name] = _METRIC_FUNCTIONS[name](raw, target)
        if f"{name}_{MAPPING}" in MAPPED_METRIC_NAMES:
            values[f"{name}_{MAPPING}"] = _METRIC_FUNCTIONS[name](mapped, target)
    values.update(mapping=mapping, n_dropped=n_dropped)
    return values


def _describe_methods(methods: list[str]) -> str:
    """``"logistic4"`` when every fit used it, else e.g. ``"linear=1,logistic4=6"``."""
    counts = {m: methods.count(m) for m in sorted(set(methods))}
    return methods[0] if len(counts) == 1 else ",".join(f"{m}={c}" for m, c in counts.items())


#: Every metric key of an :func:`evaluate` result (and of its per-category dicts).
ALL_METRIC_NAMES = (*RAW_METRIC_NAMES, *MAPPED_METRIC_NAMES)


def evaluate(pred, target, categories=None, *, fit_per_category: bool = False) -> dict:
    """Every metric of ``pred`` against ``target``, pooled and (with ``categories``) per category.

    Args:
        pred, target: scores of the same images, equal length (sequences, arrays or tensors).
        categories: optional category label of every image. Each distinct label is one category.
        fit_per_category: with ``categories``: fit one logistic mapping per category (for labels on
            a per-category scale, like SAVOIAS) and use it for that category's metrics and for the
            pooled ones. Otherwise one mapping is fitted on all images and used everywhere.

    Returns:
        ``{"n", <RAW_METRIC_NAMES>, <MAPPED_METRIC_NAMES>, "mapping", "n_dropped"}``: ``n`` counts the
        valid pairs, ``n_dropped`` the pairs dropped for NaN/inf. ``srcc``, ``krcc`` and ``plcc`` are
        on the raw predictions (as the ICA papers); ``rmse``, ``mae``, ``rmae_*`` are raw too, in the
        predictions' units (meaningful only when those are the label's); every ``*_logistic4`` metric
        is computed after :func:`fit_logistic4` maps the predictions into the label's units, and
        ``mapping`` names what was fitted: ``"logistic4"`` or its fallback ``"linear"``/``"constant"``;
        per-category fitting gives ``"per_category:<methods>"`` pooled. With ``categories`` also
        ``"per_category"`` (``{category: {same keys}}``, sorted by name), ``"category_mean"`` and
        ``"category_var"`` (``{metric: value}``: mean and population variance over categories; NaN
        when any category's metric is NaN, so that a mean is never over fewer categories than it says).

    Raises:
        ValueError: lengths differ.
    """
    p, t = _as_vector(pred, "pred"), _as_vector(target, "target")
    labels = None if categories is None else np.asarray(categories).astype(str).reshape(-1)
    _check_same_length(p, t, labels)

    valid = np.isfinite(p) & np.isfinite(t)
    names = sorted(set(labels.tolist())) if labels is not None else []
    mapped = p.copy()
    category_methods: dict[str, str] = {}
    if labels is not None and fit_per_category:
        for name in names:
            rows = valid & (labels == name)
            if not rows.any():
                category_methods[name] = "none"  # nothing to fit: every pair of it was dropped
                continue
            mapping = fit_logistic4(p[rows], t[rows])
            mapped[rows] = mapping(p[rows])
            category_methods[name] = mapping.method
        fitted = [m for m in category_methods.values() if m != "none"]
        pooled_method = ("per_category:" + _describe_methods(fitted)) if fitted else "none"
    elif valid.any():
        mapping = fit_logistic4(p[valid], t[valid])
        mapped[valid] = mapping(p[valid])
        pooled_method = mapping.method
    else:
        pooled_method = "none"

    result = _metric_dict(p[valid], mapped[valid], t[valid], n_dropped=int((~valid).sum()), mapping=pooled_method,
                          scope="pooled")
    if labels is None:
        return result

    result["per_category"] = {}
    for name in names:
        in_category = labels == name
        rows = valid & in_category
        result["per_category"][name] = _metric_dict(
            p[rows], mapped[rows], t[rows], n_dropped=int((in_category & ~valid).sum()),
            mapping=category_methods.get(name, pooled_method), scope=f"category {name!r}")
    per_metric = {m: np.array([values[m] for values in result["per_category"].values()]) for m in ALL_METRIC_NAMES}
    result["category_mean"] = {m: float(np.mean(v)) if len(v) else float("nan") for m, v in per_metric.items()}
    result["category_var"] = {m: float(np.var(v)) if len(v) else float("nan") for m, v in per_metric.items()}
    return result


def selection_score(pred: np.ndarray, targets: np.ndarray, categories: np.ndarray | None = None) -> float:
    """What every trainer selects by (ridge ``alpha``, epochs, a probe's lr): the mean within-category
    SRCC when there are categories, else the SRCC.

    Within-category because on SAVOIAS scores are only comparable inside a category. Pairs with a
    non-finite prediction or target (an image that failed to load) are left out.
    """
    pred, targets = np.asarray(pred, np.float64), np.asarray(targets, np.float64)
    ok = np.isfinite(pred) & np.isfinite(targets)
    pred, targets = pred[ok], targets[ok]
    if categories is not None:
        categories = np.asarray(categories, dtype=str)[ok]
        names = [c for c in np.unique(categories) if c != ""]
        if len(names) > 1:
            return float(np.mean([srcc(pred[categories == c], targets[categories == c]) for c in names]))
    return srcc(pred, targets)
