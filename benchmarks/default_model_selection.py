"""How the default model and the accurate preset were chosen: candidate features, judged on validation.

For each candidate (one or more EfficientNet-Lite *views* — backbone, resize rule, size — optionally
plus the classic measures as extra features), a ridge head is fitted on each of the 10 SAVOIAS
splits exactly as the shipped models are: penalty chosen on the split's validation part, refitted on
train + validation, scored on the test part. The **choice is made on the validation column**; the
test columns are reported beside it, never used to choose. Extraction time per image (2-core CPU,
whatever else runs) says what each candidate costs.

    python -m benchmarks.default_model_selection                        # the candidates of the record
    python -m benchmarks.default_model_selection --candidates lite0:square:192 --classic

Features are cached per view in ``--cache-dir`` (outside the repo) so reruns only fit heads.
Writes ``benchmarks/results/default_model_selection.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, default_savoias_root, machine_description

from pyica.data import load_dataset
from pyica.data.splits import repeated_random_splits
from pyica.loading import load_image
from pyica.metrics import plcc, srcc
from pyica.models.classic import ClassicTransform, classic_feature_vector
from pyica.models.effnet_ridge import EffNetRidge, EffNetRidgeConfig, View
from pyica.models.ridge import ridge_path, select_alpha
from pyica.reports import format_table, write_results_csv

CANDIDATES = ["lite0:square:224", "lite0:square:192", "lite0:longest:320", "lite2:square:260", "lite2:longest:384",
              "lite2:longest:384+lite0:square:224", "lite2:longest:384+lite0:longest:320"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", nargs="+", default=CANDIDATES,
                   help="views 'variant:resize:size' joined by '+' (features concatenated); default: the record's")
    p.add_argument("--classic", action="store_true",
                   help="also try every candidate with the classic measures appended (21 features)")
    p.add_argument("--root", type=Path, default=default_savoias_root(), help="SAVOIAS folder")
    p.add_argument("--splits", type=int, default=10, help="random 8:2 splits (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first split")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for extraction")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-features"), help="feature cache folder")
    p.add_argument("--out", type=Path, default=RESULTS / "default_model_selection.csv", help="results CSV")
    return p.parse_args(argv)


def view_features(view: str, ds, args) -> tuple[np.ndarray, float]:
    """Pooled features of every image for one view, and the extraction time per image (ms)."""
    cache = args.cache_dir / f"savoias_{view.replace(':', '_')}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["x"], float(data["ms"])
    variant, resize, size = view.split(":")
    model = EffNetRidge(EffNetRidgeConfig((View(variant, resize, int(size)),)))
    t0 = time.perf_counter()
    x, errors = model.extract_features(ds.full_paths(), num_workers=args.workers, progress=True)
    ms = 1000 * (time.perf_counter() - t0) / len(ds)
    if errors:
        raise SystemExit(f"{len(errors)} images failed to load, e.g. {next(iter(errors.values()))}")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, ms=ms)
    return x, ms


def classic_features(ds, args) -> tuple[np.ndarray, float]:
    cache = args.cache_dir / "savoias_classic.npz"
    if cache.exists():
        data = np.load(cache)
        return data["x"], float(data["ms"])
    transform = ClassicTransform()
    t0 = time.perf_counter()
    x = np.stack([classic_feature_vector(transform(load_image(p))) for p in ds.full_paths()])
    ms = 1000 * (time.perf_counter() - t0) / len(ds)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, ms=ms)
    return x, ms


def category_mean(pred, target, categories, metric) -> float:
    return float(np.mean([metric(pred[categories == c], target[categories == c]) for c in np.unique(categories)]))


def evaluate(x: np.ndarray, ds, splits) -> dict[str, float]:
    y, cats = ds.scores / 100.0, ds.categories
    rows = []
    for split in splits:
        alpha, scores = select_alpha(x[split.train], y[split.train], x[split.val], y[split.val], cats[split.val])
        fit = np.concatenate([split.train, split.val])
        pred = ridge_path(x[fit], y[fit], [alpha])[0].predict(x[split.test])
        t, c = y[split.test], cats[split.test]
        rows.append([max(scores), category_mean(pred, t, c, srcc), category_mean(pred, t, c, plcc),
                     srcc(pred, t), plcc(pred, t), np.log10(alpha)])
    r = np.array(rows)
    names = ["val_category_mean_srcc", "category_mean_srcc", "category_mean_plcc", "pooled_srcc", "pooled_plcc"]
    out = {}
    for j, name in enumerate(names):
        out[f"{name}_mean"] = round(float(r[:, j].mean()), 4)
        if name != names[0]:
            out[f"{name}_std"] = round(float(r[:, j].std(ddof=1)), 4)
    out["median_log10_alpha"] = float(np.median(r[:, -1]))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    ds = load_dataset("savoias", root=args.root)
    splits = repeated_random_splits(ds, n_splits=args.splits, seed=args.seed, test_fraction=0.2, val_fraction=0.1)
    print(f"SAVOIAS: {len(ds)} images, {len(splits)} splits; machine: {machine_description()}", flush=True)
    views: dict[str, tuple[np.ndarray, float]] = {}
    results = []
    for candidate in args.candidates:
        parts = candidate.split("+")
        for view in parts:
            if view not in views:
                views[view] = view_features(view, ds, args)
        variants = [([], "")] + ([(["classic"], "+classic")] if args.classic else [])
        for extra, suffix in variants:
            blocks = [views[v][0] for v in parts] + [classic_features(ds, args)[0] for _ in extra]
            ms = sum(views[v][1] for v in parts) + sum(classic_features(ds, args)[1] for _ in extra)
            x = np.hstack(blocks).astype(np.float64)
            row = {"candidate": candidate + suffix, "dim": x.shape[1], "extract_ms_per_image": round(ms, 1),
                   **evaluate(x, ds, splits)}
            results.append(row)
            print(format_table([row]), flush=True)
    results.sort(key=lambda r: -r["val_category_mean_srcc_mean"])
    print("\nranked by validation (the choice); test columns for the record:\n")
    print(format_table(results, columns=["candidate", "dim", "extract_ms_per_image", "val_category_mean_srcc_mean",
                                         "category_mean_srcc_mean", "category_mean_plcc_mean", "pooled_srcc_mean",
                                         "pooled_plcc_mean"]))
    write_results_csv(results, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
