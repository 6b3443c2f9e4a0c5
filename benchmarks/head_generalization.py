"""What the default model's head can gain out of domain: targets and shifted-copy augmentation (issue 18).

The default model's EfficientNet-Lite0 features stay as they are; only how the ridge head is fitted
changes. Every variant is measured by leave-one-category-out on SAVOIAS (the split of
``pyica.data.splits.leave_one_category_out``, 10 % of the training categories carved off to choose the
ridge penalty by within-category SRCC, as ``pyica.evaluation.run_protocol`` does) and by the same LOCO on
shifted copies of the held-out category (``pyica.data.suites``: greyscale, line art, binarised, 64 px):

* ``targets``: ``score`` (the human score / 100, today's default) or ``category_rank`` (the mid-rank
  inside the image's category, :func:`pyica.models.effnet_ridge.training_targets`);
* ``augment``: none, or the training images' shifted copies added with their originals' targets (each copy
  ranked inside its own (category, shift) group). Only training images are shifted: the held-out category
  and the validation part stay original.

Features are extracted once per image (``--cache``, default ``~/.cache/pyica/bench``) and the ridge path is
closed form, so after the first run every variant takes seconds. Writes
``benchmarks/results/head_generalization.csv`` (tidy: variant, protocol, category, srcc) and the
``head-generalization`` table of docs/benchmarks.md::

    python -m benchmarks.head_generalization --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, default_savoias_root, machine_description, update_doc_section
from pyica.data import load_dataset
from pyica.data.dataset import label_range
from pyica.data.splits import leave_one_category_out
from pyica.data.suites import DEFAULT_SHIFTS, shifted_copies
from pyica.metrics import srcc
from pyica.models.effnet_ridge import TARGETS, build_preset, training_targets
from pyica.models.ridge import ridge_path, select_alpha
from pyica.reports import write_results_csv

MODEL = "effnet_lite0_ridge.savoias"  # whose features (the head is refitted)


def features(model, ds, cache: Path, tag: str, workers: int | None) -> np.ndarray:
    """The model's pooled features of every image of ``ds`` (cached in ``cache/<tag>.npy``)."""
    path = cache / f"{MODEL}_{tag}.npy"
    if path.is_file():
        x = np.load(path)
        if len(x) == len(ds):
            return x
    x, errors = model.extract_features(ds.full_paths(), num_workers=workers, progress=True)
    if errors:
        raise RuntimeError(f"{len(errors)} images failed, e.g. {next(iter(errors.values()))}")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


def fit_head(xs: list[np.ndarray], ys: list[np.ndarray], val_x, val_y, val_c):
    x, y = np.concatenate(xs), np.concatenate(ys)
    alpha, _ = select_alpha(x, y, val_x, val_y, val_c)
    return ridge_path(np.concatenate([x, val_x]), np.concatenate([y, val_y]), [alpha])[0]


def evaluate(ds, feats: dict[str, np.ndarray], targets: str, augment: tuple[str, ...], seed: int) -> list[dict]:
    low, high = label_range([ds])
    rows = []
    for split in leave_one_category_out(ds, val_fraction=0.1, seed=seed):
        held = ds.categories[split.test[0]]

        def part(idx, shift="original", group_suffix=""):
            return feats[shift][idx], training_targets(ds.scores[idx], np.char.add(ds.categories[idx].astype(str),
                                                                                    group_suffix), low, high, targets)

        xs, ys = zip(*[part(split.train)] + [part(split.train, s, "|" + s) for s in augment])
        val_x, val_y = part(split.val)
        head = fit_head(list(xs), list(ys), val_x, val_y, ds.categories[split.val])
        for shift, x in feats.items():
            protocol = "loco" if shift == "original" else f"loco_{shift}"
            pred = head.predict(x[split.test])
            rows.append({"protocol": protocol, "category": held, "n": len(split.test),
                         "srcc": srcc(pred, ds.scores[split.test])})
    return rows


def variant_name(targets: str, augment: tuple[str, ...]) -> str:
    return f"targets={targets}, augment={'+'.join(augment) if augment else 'none'}"


def summary_table(rows: list[dict]) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    head = "| head variant | " + " | ".join(protocols) + " | worst loco category |"
    lines = [head, "|" + "---|" * (len(protocols) + 2)]
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        means = [np.mean([r["srcc"] for r in mine if r["protocol"] == p]) for p in protocols]
        worst = min((r for r in mine if r["protocol"] == "loco"), key=lambda r: r["srcc"])
        lines.append(f"| {v} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {worst['category']} {worst['srcc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, default=default_savoias_root(), help="the SAVOIAS folder")
    parser.add_argument("--shifts", nargs="*", default=list(DEFAULT_SHIFTS), help="shifted copies to measure and "
                        "to augment with (pyica.data.suites.SHIFTS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation parts")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pyica" / "bench",
                        help="where features are kept between runs (outside the repository)")
    parser.add_argument("--suites-cache", type=Path, default=None, help="where the shifted copies are written")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for feature extraction")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "head_generalization.csv")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ds = load_dataset("savoias", root=str(args.root))
    model = build_preset(MODEL, fitted=False)
    copies = shifted_copies(ds, args.shifts, cache_dir=args.suites_cache)
    feats = {"original": features(model, ds, args.cache, "original", args.workers)}
    for shift, copy in copies.items():
        feats[shift] = features(model, copy, args.cache, shift, args.workers)
    rows = []
    for targets in TARGETS:
        for augment in ((), tuple(args.shifts)):
            name = variant_name(targets, augment)
            for row in evaluate(ds, feats, targets, augment, args.seed):
                rows.append({"variant": name, **row})
            print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    write_results_csv(rows, args.out)
    table = summary_table(rows)
    print(table)
    if not args.no_doc:
        update_doc_section("head-generalization", (
            f"Mean SRCC over the 7 held-out SAVOIAS categories (`loco`) and over the same categories re-rendered "
            f"(`loco_<shift>`), the default model's features with the ridge head fitted each way; the penalty "
            f"chosen on 10 % of the training categories (seed {args.seed}). Measured on {machine_description()}."
            f"\n\n{table}"))
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
