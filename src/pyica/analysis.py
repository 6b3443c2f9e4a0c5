"""Analyses of complexity representations: per-category agreement and t-SNE pictures.

* :func:`per_category_correlations` gives the PCC and SRCC inside each category, with their mean and
  variance across categories. This is the statistic of CLICv2's Fig. 5: the variance of the
  per-category PCC, where a low variance means "content invariance", an encoder that scores every
  semantic category equally well.
* :func:`tsne_plot` is CLICv2's Fig. 7: a 2-D t-SNE of image features in two panels, one coloured
  by complexity and one by category.

It uses scikit-learn's TSNE and matplotlib (Agg). Both are optional; without them the function
raises an ImportError that says what to install.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .metrics import MetricWarning, plcc, srcc

__all__ = ["per_category_correlations", "tsne_embedding", "tsne_plot"]


def per_category_correlations(pred, target, categories, *, ddof: int = 0) -> dict:
    """PCC (Pearson) and SRCC (Spearman) of ``pred`` vs ``target`` inside each category.

    Returns::

        {"per_category": {name: {"n": int, "pcc": float, "srcc": float}, ...},   # sorted by name
         "pcc_mean": ..., "pcc_var": ..., "srcc_mean": ..., "srcc_var": ...,
         "n_categories": int}

    Pairs with NaN/inf are dropped (as :mod:`pyica.metrics` does). A category with fewer than 3
    valid pairs, or a constant prediction, gets NaN correlations; the means and variances are over
    the categories whose value is finite. The variance is the population variance (``ddof=0``).
    The paper does not say which one it uses; ``ddof=1`` gives the sample variance.
    Rows with an empty category name are ignored.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    categories = np.asarray(categories, dtype=str).reshape(-1)
    if not len(pred) == len(target) == len(categories):
        raise ValueError(f"pred, target and categories differ in length ({len(pred)}, {len(target)}, "
                         f"{len(categories)})")
    per: dict[str, dict] = {}
    for name in sorted(set(categories.tolist()) - {""}):
        m = categories == name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            per[name] = {"n": int((m & np.isfinite(pred) & np.isfinite(target)).sum()),
                         "pcc": plcc(pred[m], target[m]), "srcc": srcc(pred[m], target[m])}
    out: dict = {"per_category": per, "n_categories": len(per)}
    for key in ("pcc", "srcc"):
        values = np.array([v[key] for v in per.values()], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[f"{key}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{key}_var"] = float(values.var(ddof=ddof)) if len(values) > ddof else float("nan")
    return out


def _require_plotting():
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError("t-SNE needs scikit-learn: pip install scikit-learn "
                          "(with pyica's 'train' extra for matplotlib: pip install 'pyica[train]' scikit-learn)") from err
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("tsne_plot needs matplotlib: pip install 'pyica[train]' (or 'pyica[plot]')") from err
    return TSNE, plt


def tsne_embedding(features, *, perplexity: float = 30.0, seed: int = 0, standardise: bool = True) -> np.ndarray:
    """``(n, d)`` features -> ``(n, 2)`` t-SNE coordinates (PCA init, seeded). The perplexity is
    capped at ``(n - 1) / 3`` so small sets work; ``standardise`` z-scores every feature first."""
    TSNE, _ = _require_plotting()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"t-SNE needs an (n >= 3, d) feature array, got shape {x.shape}")
    if standardise:
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_plot(features, complexity, categories, path: str | os.PathLike, *, perplexity: float = 30.0,
              seed: int = 0, complexity_bins: int | None = 10, title: str | None = None,
              standardise: bool = True) -> np.ndarray:
    """Write a two-panel t-SNE PNG of ``features`` and return the ``(n, 2)`` embedding.

    The left panel is coloured by ``complexity``. With ``complexity_bins`` (10, as in CLICv2's Fig. 7)
    the scores are cut into that many equal-width segments; ``None`` uses a continuous colour map.
    The right panel is coloured by ``categories``. Needs scikit-learn and matplotlib; see
    :func:`_require_plotting` for the ImportError.
    """
    _, plt = _require_plotting()
    complexity = np.asarray(complexity, dtype=np.float64).reshape(-1)
    categories = np.asarray(categories, dtype=str).reshape(-1)
    x = np.asarray(features)
    if not len(x) == len(complexity) == len(categories):
        raise ValueError(f"features, complexity and categories differ in length ({len(x)}, {len(complexity)}, "
                         f"{len(categories)})")
    xy = tsne_embedding(x, perplexity=perplexity, seed=seed, standardise=standardise)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    colour = complexity
    if complexity_bins:
        finite = complexity[np.isfinite(complexity)]
        lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
        edges = np.linspace(lo, hi, complexity_bins + 1)
        colour = np.clip(np.digitize(complexity, edges[1:-1]), 0, complexity_bins - 1)
    sc = axes[0].scatter(xy[:, 0], xy[:, 1], c=colour, cmap="viridis", s=8, linewidths=0)
    bar = fig.colorbar(sc, ax=axes[0])
    bar.set_label(f"complexity segment (of {complexity_bins})" if complexity_bins else "complexity")
    axes[0].set_title("coloured by complexity")
    names = sorted(set(categories.tolist()))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for k, name in enumerate(names):
        m = categories == name
        axes[1].scatter(xy[m, 0], xy[m, 1], s=8, linewidths=0, color=cmap(k % cmap.N), label=name or "(none)")
    axes[1].legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    axes[1].set_title("coloured by category")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return xy
