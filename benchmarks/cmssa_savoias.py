"""Offline CM-SSA on SAVOIAS under the default model's protocol, with the paper's ablations.

CM-SSA runs here on the offline encoder pair (EfficientNet-Lite2 + MiniLM from PyPI wheels, frozen)
with captions from the offline ImageNet-label captioner, trained with the paper's recipe (Adam 1e-4,
batch 64, up to 50 epochs; epoch chosen on each split's validation part, early stop after 15 epochs
without gain). Every setting is evaluated by ``pyica.evaluation.run_protocol``, the code that
evaluates every other model: 10 seeded random 8:2 splits stratified by category, duplicate groups
kept together, 10% of each training part held out for validation.

Settings: the main one (both branches, 5 levels, alpha/beta 0.1/0.9) on ``--splits`` splits; the
ablations of Table 3 (branches), Table 4 (3/7 levels) and Table 6 (alpha/beta) on the first
``--ablation-splits`` splits (each costs a full training per split).

    python -m benchmarks.cmssa_savoias                      # main on 10 splits, ablations on 3
    python -m benchmarks.cmssa_savoias --only main --splits 3 --tag "first 3 splits"   # beside the ablations

The frozen trunk's outputs (4 training crops and up to 9 test patches per image) are cached in
``--cache-dir``. Writes ``benchmarks/results/cmssa_savoias.csv`` and the ``cmssa`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, default_savoias_root, machine_description, update_doc_section

from pyica.data import load_dataset
from pyica.evaluation import run_protocol
from pyica.models.cmssa import CMSSA, CMSSAConfig, build_encoders
from pyica.reports import format_table, read_results_csv, summarise, write_results_csv
from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe

MAIN = {"branches": "both", "levels": 5, "alpha": 0.1, "beta": 0.9}
#: (table, label, changes to MAIN)
ABLATIONS = [
    ("Table 3", "complexity branch only", {"branches": "complexity"}),
    ("Table 3", "alignment branch only", {"branches": "alignment"}),
    ("Table 4", "3 levels", {"levels": 3}),
    ("Table 4", "7 levels", {"levels": 7}),
    ("Table 6", "alpha/beta 0.3/0.7", {"alpha": 0.3, "beta": 0.7}),
    ("Table 6", "alpha/beta 0.5/0.5", {"alpha": 0.5, "beta": 0.5}),
    ("Table 6", "alpha/beta 0.7/0.3", {"alpha": 0.7, "beta": 0.3}),
    ("Table 6", "alpha/beta 0.9/0.1", {"alpha": 0.9, "beta": 0.1}),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=default_savoias_root(), help="SAVOIAS folder")
    p.add_argument("--splits", type=int, default=10, help="splits for the main setting (default 10)")
    p.add_argument("--ablation-splits", type=int, default=3, help="splits per ablation setting (default 3)")
    p.add_argument("--only", choices=("all", "main", "ablations"), default="all", help="which settings to run")
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs (paper: 50)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-cmssa-cache"),
                   help="trunk-feature and caption cache (outside the repo)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for feature extraction")
    p.add_argument("--out", type=Path, default=RESULTS / "cmssa_savoias.csv", help="results CSV")
    p.add_argument("--no-doc", "--no-readme", action="store_true",
                   help="do not update the table in docs/benchmarks.md")
    p.add_argument("--tag", default="", help="appended to the setting names of this run (e.g. 'first 3 splits'), "
                                              "so its rows are kept beside those of other runs")
    return p.parse_args(argv)


def run_setting(label: str, table: str, changes: dict, n_splits: int, trainer: CMSSATrainer, encoders, ds,
                args) -> dict:
    config = CMSSAConfig(**{**MAIN, **changes})
    trainer.build_model = lambda: CMSSA(copy.deepcopy(encoders), config)
    epochs_seen, t0 = [], time.perf_counter()
    fit = trainer.fit_dataset

    def fit_and_record(train, val=None, **kw):
        info = fit(train, val)
        epochs_seen.append((info["best_epoch"], info["epochs_run"], np.mean([h["seconds"] for h in info["history"]])))
        return info

    trainer.fit_dataset = fit_and_record
    try:
        result = run_protocol("cmssa_offline.lite2_minilm", ds, model=trainer, protocol="random", n_splits=n_splits,
                              seed=0, test_fraction=0.2, val_fraction=0.1, num_workers=args.workers, progress=False)
    finally:
        trainer.fit_dataset = fit
    summary = {row["category"]: row for row in summarise(result.rows)}
    cat, pooled = summary["category_mean"], summary["pooled"]
    best, run, seconds = (np.array([e[i] for e in epochs_seen]) for i in range(3))
    return {"table": table, "setting": label, "branches": config.branches, "levels": config.levels,
            "alpha": config.alpha, "beta": config.beta, "splits": n_splits,
            "category_mean_srcc_mean": round(cat["srcc_mean"], 4), "category_mean_srcc_std": round(cat["srcc_std"], 4),
            "category_mean_plcc_mean": round(cat["plcc_mean"], 4), "category_mean_plcc_std": round(cat["plcc_std"], 4),
            "pooled_srcc_mean": round(pooled["srcc_mean"], 4), "pooled_srcc_std": round(pooled["srcc_std"], 4),
            "pooled_plcc_mean": round(pooled["plcc_mean"], 4), "pooled_plcc_std": round(pooled["plcc_std"], 4),
            "median_best_epoch": float(np.median(best)), "mean_epochs_run": round(float(run.mean()), 1),
            "seconds_per_epoch": round(float(seconds.mean()), 2),
            "minutes_total": round((time.perf_counter() - t0) / 60, 1)}


def main(argv=None) -> None:
    args = parse_args(argv)
    from pyica.captions import caption_dataset, create_captioner, load_captions

    ds = load_dataset("savoias", root=args.root)
    print(f"SAVOIAS: {len(ds)} images; machine: {machine_description()}", flush=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    captions_file = args.cache_dir / "savoias_captions_imagenet-labels.jsonl"
    if not captions_file.exists():
        caption_dataset(ds.full_paths(), create_captioner("imagenet-labels", top_k=3), captions_file)
    captions = load_captions(captions_file)
    torch.manual_seed(0)
    encoders = build_encoders({"kind": "offline", "image_variant": "lite2", "embed_dim": 256})
    recipe = TrainRecipe(epochs=args.epochs, cache_dir=str(args.cache_dir), num_workers=args.workers)
    trainer = CMSSATrainer(lambda: None, recipe, captions)
    settings = []
    if args.only in ("all", "main"):
        settings.append(("main (paper defaults)", "Table 1", {}, args.splits))
    if args.only in ("all", "ablations"):
        settings += [(label, table, changes, args.ablation_splits) for table, label, changes in ABLATIONS]
    # rows of settings not rerun now are kept, so main and ablations can be run separately
    if args.tag:
        settings = [(f"{label} ({args.tag})", table, changes, n) for label, table, changes, n in settings]
    labels = {label for label, *_ in settings}
    rows = [r for r in (read_results_csv(args.out) if args.out.exists() else []) if r["setting"] not in labels]
    for label, table, changes, n_splits in settings:
        print(f"\n== {label}: {n_splits} splits", flush=True)
        rows.append(run_setting(label, table, changes, n_splits, trainer, encoders, ds, args))
        print(format_table([rows[-1]]), flush=True)
        write_results_csv(rows, args.out)
    print("\n" + format_table(rows))
    print(f"wrote {args.out}")
    if not args.no_doc:
        columns = ["table", "setting", "splits", "category_mean_srcc_mean", "category_mean_plcc_mean",
                   "pooled_srcc_mean", "pooled_plcc_mean", "median_best_epoch", "seconds_per_epoch"]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
        update_doc_section("cmssa", "\n".join(lines))


if __name__ == "__main__":
    main()
