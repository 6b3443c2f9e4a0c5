"""How the default (``effnet_lite0_within.savoias``) and its fused variant were chosen: feature sets and
head fits by nested leave-one-category-out (issue 18).

Every variant is a ridge head on frozen features, measured the same way: each SAVOIAS category is held
out in turn; the ridge penalty is chosen *inside* the other six by leaving each of them out in turn
(``pyica.models.ridge.select_alpha_by_group``), so neither the test category nor random splits pick
anything; the head refitted on the six scores the held-out category's originals (``loco``) and its
shifted copies (``loco_<shift>``: greyscale, line art, binarised, 64 px, from ``pyica.data.suites``),
against the originals' human scores; the same recipe fitted on all seven categories scores the
constructed-order suites (``suite_<name>``, mean within-group SRCC, the suites of
``benchmarks.generalization``). The variants:

* ``features``: ``deep`` (EfficientNet-Lite0 at 192 px, mean and std of its 8 maps: 7 stages and the
  head, 4,128 values; ``maps N`` keeps the first N), ``classic`` (:func:`fusion_features`:
  23 log measures at 256/128/64 px) or both, the classic block weighted ``k`` times a deep feature after
  standardisation; ``at 224 px`` / ``at 288 px``: the first 6 maps of Lite0 at that input size; ``at 192 +
  288 px``: both sizes concatenated;
* ``targets``: the human score / 100 or the mid-rank within the category;
* ``fit``: ``pooled`` ridge or ``within`` categories (features and targets centred per category);
* ``augment``: the training categories' shifted copies added (each copy its own group). These fits have
  five times the images, so their penalty is five times the one the same variant without copies chose
  (five copies multiply the data term by five; an inner selection would cost 49 eigendecompositions of
  6,000 x 6,000 per variant). The suites are not scored for them.

Features are cached (``--cache``, default ``~/.cache/pyica/bench``; the deep ones are shared with
``benchmarks.head_generalization``). Writes ``benchmarks/results/generalization_selection.csv`` and the
``generalization-selection`` table of docs/benchmarks.md::

    python -m benchmarks.generalization_selection --threads 2        # about 10 min on 2 cores once features are cached
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import RESULTS, default_savoias_root, machine_description, update_doc_section
from benchmarks.head_generalization import features as deep_features
from pyica.data import load_dataset
from pyica.data.dataset import label_range
from pyica.data.suites import DEFAULT_SHIFTS, SUITES, make_suites, shifted_copies
from pyica.metrics import srcc
from pyica.models.classic import (FEATURE_NAMES, ClassicTransform, classic_features, compression_ratio_jpeg,
                                  compression_ratio_png)
from pyica.models.effnet_ridge import EffNetRidge, EffNetRidgeConfig, View, build_preset, training_targets
from pyica.models.ridge import ALPHAS, ridge_path, select_alpha_by_group
from pyica.reports import write_results_csv

DEEP_MODEL = "effnet_lite0_ridge.savoias"  # all 8 maps of the default's Lite0 view (the default keeps 6)


#: Longest sides of the working scales of :func:`fusion_features`: every feature at the first,
#: the two compression ratios again at the smaller ones (coarse structure).
FUSION_SIDES = (256, 128, 64)

#: Names of :func:`fusion_features`, in order.
FUSION_FEATURE_NAMES: tuple[str, ...] = (
    *(f"{name}@{FUSION_SIDES[0]}" for name in FEATURE_NAMES),
    *(f"{name}@{side}" for side in FUSION_SIDES[1:] for name in ("compression_ratio_jpeg", "compression_ratio_png")),
)


def fusion_features(image: Image.Image) -> np.ndarray:
    """Hand-crafted features for a learned model, as float32 ``log(max(value, 0) + 0.001)``.

    Every :func:`classic_features` value with the image's longest side at 256 px, plus the JPEG and
    PNG compression ratios at 128 and 64 px (each scale box-shrunk from the previous one, so the cost
    does not grow with megapixels beyond the first shrink). Logs because these measures are ratios
    and densities spanning decades between a flat chart and a cluttered photo.
    """
    rgb = ClassicTransform(FUSION_SIDES[0])(image)
    values = list(classic_features(rgb).values())
    for side in FUSION_SIDES[1:]:
        rgb = ClassicTransform(side)(Image.fromarray(rgb))
        values += [compression_ratio_jpeg(rgb), compression_ratio_png(rgb)]
    return np.log(np.maximum(np.asarray(values, dtype=np.float64), 0.0) + 1e-3).astype(np.float32)


def _fusion_transform(image):
    return torch.from_numpy(fusion_features(image))


def cached_fusion_features(ds, cache: Path, tag: str, workers: int | None) -> np.ndarray:
    """``fusion_features`` of every image of ``ds`` (cached in ``cache/fusion_<tag>.npy``)."""
    from pyica.inputs import iter_batches
    from pyica.models.base import stack_collate
    from pyica.progress import progress_bar

    path = cache / f"fusion_{tag}.npy"
    if path.is_file():
        x = np.load(path)
        if x.shape == (len(ds), len(FUSION_FEATURE_NAMES)):
            return x
    paths = ds.full_paths()
    x = np.full((len(paths), len(FUSION_FEATURE_NAMES)), np.nan, np.float32)
    bar = progress_bar(len(paths), True)
    for indices, batch, failed in iter_batches(paths, _fusion_transform, stack_collate, batch_size=16,
                                               num_workers=workers):
        if failed:
            raise RuntimeError(f"{len(failed)} images failed, e.g. {failed[0][1]}")
        x[indices] = batch.numpy()
        bar.update(len(indices))
    bar.close()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


#: name -> (features, pooled maps, classic weight k, targets, fit, augment). Deep features are the mean and
#: std of 8 maps (7 stages and the 1280-channel head); "maps 6" keeps the first 6 stages only.
VARIANTS = {
    "deep, score, pooled": ("deep", 8, 1.0, "score", "pooled", False),
    "deep, rank, pooled": ("deep", 8, 1.0, "category_rank", "pooled", False),
    "deep, score, within": ("deep", 8, 1.0, "score", "within", False),
    "deep, rank, within": ("deep", 8, 1.0, "category_rank", "within", False),
    "classic, rank, within": ("classic", 8, 1.0, "category_rank", "within", False),
    "deep+classic k=10, rank, within": ("both", 8, 10.0, "category_rank", "within", False),
    "deep maps 7, rank, within": ("deep", 7, 1.0, "category_rank", "within", False),
    "deep maps 6, rank, within (default: effnet_lite0_within)": ("deep", 6, 1.0, "category_rank", "within", False),
    "deep maps 5, rank, within": ("deep", 5, 1.0, "category_rank", "within", False),
    "deep maps 6+classic k=3, rank, within": ("both", 6, 3.0, "category_rank", "within", False),
    "deep maps 6+classic k=10, rank, within": ("both", 6, 10.0, "category_rank", "within", False),
    "deep maps 6+classic k=30, rank, within": ("both", 6, 30.0, "category_rank", "within", False),
    "deep maps 6, rank, within, + shifted copies": ("deep", 6, 1.0, "category_rank", "within", True),
    "deep maps 6 at 224 px, rank, within": ("deep224", 6, 1.0, "category_rank",
                                                                          "within", False),
    "deep maps 6 at 288 px, rank, within": ("deep288", 6, 1.0, "category_rank", "within", False),
    "deep maps 6 at 192 + 288 px, rank, within (effnet_lite0_ms_within)": ("multiscale", 6, 1.0, "category_rank",
                                                                           "within", False),
}

#: Lite0's channels per map (7 stages, then the head); features are [mean, std] per map in this order.
LITE0_CHANNELS = (16, 24, 40, 80, 112, 192, 320, 1280)


def first_maps(deep: np.ndarray, maps: int) -> np.ndarray:
    """The columns of the first ``maps`` maps' mean and std pools."""
    return deep[:, :2 * sum(LITE0_CHANNELS[:maps])]


def variant_features(f: dict[str, np.ndarray], kind: str, maps: int) -> np.ndarray:
    """One image set's features for a variant: ``f`` holds ``deep`` (192 px, 8 maps), ``deep224`` and
    ``deep288`` (224 and 288 px, 6 maps) and ``classic``."""
    if kind == "deep":
        return first_maps(f["deep"], maps)
    if kind == "classic":
        return f["classic"]
    if kind in ("deep224", "deep288"):
        return f[kind]
    extra = f["classic"] if kind == "both" else f["deep288"]
    return np.concatenate([first_maps(f["deep"], maps), extra], 1)


def evaluate(ds, feats: dict[str, dict[str, np.ndarray]], variant: tuple, chosen: dict[str, float],
             suites: dict | None = None) -> list[dict]:
    kind, maps, k, targets, fit, augment = variant
    low, high = label_range([ds])
    cats = ds.categories.astype(str)
    xs = {shift: variant_features(f, kind, maps) for shift, f in feats.items()}
    scale = None
    if kind == "both":
        scale = np.ones(xs["original"].shape[1])
        scale[-len(FUSION_FEATURE_NAMES):] = k
    rows = []
    for held in np.unique(cats):
        train = np.flatnonzero(cats != held)
        test = np.flatnonzero(cats == held)
        y = training_targets(ds.scores[train], cats[train], low, high, targets)
        if augment:
            # k copies of every image multiply the data term by k: the same relative penalty is k alpha
            alpha = chosen[held] * len(xs)
            x = np.concatenate([xs[s][train] for s in xs])
            groups = np.concatenate([np.char.add(cats[train], "|" + s) for s in xs])
            y = np.tile(y, len(xs))
        else:
            x, groups = xs["original"][train], cats[train]
            alpha, _ = select_alpha_by_group(x, y, groups, ALPHAS, within_groups=fit == "within",
                                             feature_scale=scale)
            chosen[held] = alpha
        head = ridge_path(x, y, [alpha], groups=groups if fit == "within" else None, feature_scale=scale)[0]
        for shift, xt in xs.items():
            rows.append({"protocol": "loco" if shift == "original" else f"loco_{shift}", "category": held,
                         "n": len(test), "srcc": srcc(head.predict(xt[test]), ds.scores[test]), "alpha": alpha})
    # constructed-order suites: the head fitted on every category, penalty chosen as above
    if suites and not augment:
        y = training_targets(ds.scores, cats, low, high, targets)
        alpha, _ = select_alpha_by_group(xs["original"], y, cats, ALPHAS, within_groups=fit == "within",
                                         feature_scale=scale)
        head = ridge_path(xs["original"], y, [alpha], groups=cats if fit == "within" else None,
                          feature_scale=scale)[0]
        for name, (suite, f) in suites.items():
            pred = head.predict(variant_features(f, kind, maps))
            groups = suite.categories.astype(str)
            rhos = [srcc(pred[groups == g], suite.scores[groups == g]) for g in np.unique(groups)]
            rows.append({"protocol": f"suite_{name}", "category": "group_mean", "n": len(suite),
                         "srcc": float(np.mean(rhos)), "alpha": alpha})
    return rows


def summary_table(rows: list[dict]) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    categories = list(dict.fromkeys(r["category"] for r in rows if r["protocol"] == "loco"))
    lines = ["| head variant | " + " | ".join(c.replace("_", " ") for c in categories) + " | "
             + " | ".join(f"**{p}**" if p == "loco" else p for p in protocols) + " |",
             "|" + "---|" * (len(categories) + len(protocols) + 1)]
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        per_cat = [next(r["srcc"] for r in mine if r["protocol"] == "loco" and r["category"] == c) for c in categories]
        means = [np.mean([r["srcc"] for r in mine if r["protocol"] == p]) if any(r["protocol"] == p for r in mine)
                 else np.nan for p in protocols]
        lines.append(f"| {v} | " + " | ".join(f"{x:.3f}" for x in per_cat) + " | "
                     + " | ".join("—" if np.isnan(m) else f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, default=default_savoias_root(), help="the SAVOIAS folder")
    parser.add_argument("--shifts", nargs="*", default=list(DEFAULT_SHIFTS),
                        help="shifted copies to measure and to augment with (pyica.data.suites.SHIFTS)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help="which head variants (default: all; one with copies needs the same without first)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pyica" / "bench",
                        help="where features are kept between runs (outside the repository)")
    parser.add_argument("--suites-cache", type=Path, default=None,
                        help="where the shifted copies and constructed suites are written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the constructed suites (as benchmarks.generalization)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for feature extraction")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "generalization_selection.csv")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ds = load_dataset("savoias", root=str(args.root))
    model = build_preset(DEEP_MODEL, fitted=False)
    sets = {"original": ds, **shifted_copies(ds, args.shifts, cache_dir=args.suites_cache)}
    larger = {size: EffNetRidge(EffNetRidgeConfig((View("lite0", "square", size),), pooled_maps=6))
              for size in (224, 288)}

    def all_features(d, tag):
        return {"deep": deep_features(model, d, args.cache, tag, args.workers).astype(np.float64),
                **{f"deep{size}": deep_features(m, d, args.cache, f"{tag}_{size}px_6maps", args.workers).astype(np.float64)
                   for size, m in larger.items()},
                "classic": cached_fusion_features(d, args.cache, tag, args.workers).astype(np.float64)}

    feats = {tag: all_features(d, tag) for tag, d in sets.items()}
    suites = {}
    for name, suite in make_suites(tuple(SUITES), seed=args.seed, cache_dir=args.suites_cache).items():
        tag = f"suite_{name}_seed{args.seed}"
        suites[name] = (suite, all_features(suite, tag))
    rows, chosen = [], {}
    for name in args.variants:
        variant = VARIANTS[name]
        key = variant[:5]
        if variant[5] and key not in chosen:
            raise SystemExit(f"variant {name!r} reuses the penalty of the same variant without copies: run that too")
        chosen.setdefault(key, {})
        for row in evaluate(ds, feats, variant, chosen[key], suites):
            rows.append({"variant": name, **row})
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    write_results_csv(rows, args.out)
    table = summary_table(rows)
    print(table)
    if not args.no_doc:
        update_doc_section("generalization-selection", (
            f"SRCC of each SAVOIAS category held out (`loco`), and the mean over categories of `loco` and of the "
            f"held-out categories re-rendered (`loco_<shift>`); the ridge penalty chosen by leave-one-category-out "
            f"inside the six training categories. `suite_<name>`: mean within-group SRCC on the constructed suites "
            f"of the recipe fitted on all seven categories. Measured on {machine_description()}, "
            f"{time.perf_counter() - started:.0f} s: `python -m benchmarks.generalization_selection`.\n\n{table}"))
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
