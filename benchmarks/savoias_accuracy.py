"""Accuracy on SAVOIAS under the project's protocol, for any registered models.

Protocol: 10 seeded random 8:2 train:test splits (seeds fixed by ``--seed``), stratified by category,
duplicate groups kept on one side, 10% of each training part carved off as validation for model
selection. Trainable models (``fit_dataset``) are refit on every split; fixed models (classic
measures) are scored once and each split reads its test part. Also reports ``all`` (every image as
test) for fixed models. SAVOIAS scores are per category, so the headline is the per-category mean.

Writes ``benchmarks/results/savoias_accuracy.csv`` (tidy: one row per model, protocol, split and
category; rerunning some models replaces only their rows), ``savoias_accuracy_summary.csv`` (mean and
std over splits) and the docs/benchmarks.md table between the ``savoias-accuracy`` markers.

    python -m benchmarks.savoias_accuracy                         # every classic measure + default model
    python -m benchmarks.savoias_accuracy -m edge_density entropy --no-doc
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


from benchmarks.common import RESULTS, default_savoias_root, machine_description, update_doc_section

import pyica
from pyica.data import load_dataset
from pyica.evaluation import make_splits, predict_dataset, run_protocol, split_rows, stamp_rows
from pyica.registry import create_model, get_entry
from pyica.reports import format_table, read_results_csv, summarise, write_results_csv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="*", default=None,
                   help="registered model names (default: every classic measure and the default model)")
    p.add_argument("--root", type=Path, default=default_savoias_root(),
                   help="SAVOIAS folder (default: $PYICA_SAVOIAS or ../shared/data/savoias)")
    p.add_argument("--splits", type=int, default=10, help="number of random 8:2 splits (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first split; split k uses seed+k")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for scoring")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--out", type=Path, default=RESULTS / "savoias_accuracy.csv", help="tidy results CSV")
    p.add_argument("--no-doc", "--no-readme", action="store_true",
                   help="do not rewrite the table in docs/benchmarks.md")
    return p.parse_args(argv)


def evaluate_model(name: str, ds, args) -> list[dict]:
    learned = get_entry(name).kind == "learned"
    # a learned model is evaluated as a recipe: its head is refitted on every split's training part
    model = create_model(name, device=args.device, **({"fitted": False} if learned else {}))
    if callable(getattr(model, "fit_dataset", None)):
        result = run_protocol(name, ds, model=model, protocol="random", n_splits=args.splits, seed=args.seed,
                              val_fraction=0.1, device=args.device, num_workers=args.workers)
        return result.rows
    t0 = time.perf_counter()
    pred, errors = predict_dataset(model, ds, num_workers=args.workers)
    seconds = time.perf_counter() - t0
    rows = []
    for protocol in ("all", "random"):
        splits = make_splits(ds, protocol, args.splits, args.seed, 0.2, 0.1)
        rows += split_rows(pred, ds, splits, model=name, protocol=protocol)
    stamp_rows(rows, seconds, errors)
    return rows


def doc_table(summary: list[dict], per_split_rows: list[dict]) -> str:
    """Headline table (10 random splits) plus per-category SRCC on all images."""
    def fmt(row, metric):
        return f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f}"

    random_rows = [r for r in summary if r["protocol"] == "random"]
    by_model: dict[str, dict] = {}
    for r in random_rows:
        by_model.setdefault(r["model"], {})[r["category"]] = r
    lines = ["Mean ± std over 10 seeded random 8:2 splits of SAVOIAS (stratified by category; test parts only).",
             "`category mean` is the mean of the seven per-category correlations (the headline, as SAVOIAS",
             "scores are per category); `pooled` mixes the categories' scales.", "",
             "| model | category mean SRCC | category mean PLCC | pooled SRCC | pooled PLCC |",
             "|---|---|---|---|---|"]
    order = sorted(by_model, key=lambda m: -by_model[m]["category_mean"]["srcc_mean"])
    for m in order:
        cm, po = by_model[m]["category_mean"], by_model[m]["pooled"]
        lines.append(f"| `{m}` | {fmt(cm, 'srcc')} | {fmt(cm, 'plcc')} | {fmt(po, 'srcc')} | {fmt(po, 'plcc')} |")
    all_rows = [r for r in per_split_rows if r["protocol"] == "all"]
    if all_rows:
        categories = [c for c in dict.fromkeys(r["category"] for r in all_rows) if c not in ("pooled", "category_mean")]
        lines += ["", "SRCC per category on all 1,416 images (fixed measures only):", "",
                  "| model | " + " | ".join(categories) + " | mean |", "|---" * (len(categories) + 2) + "|"]
        cell = {(r["model"], r["category"]): r["srcc"] for r in all_rows}
        for m in [m for m in order if (m, "category_mean") in cell]:
            lines.append(f"| `{m}` | " + " | ".join(f"{cell[(m, c)]:.3f}" for c in categories)
                         + f" | {cell[(m, 'category_mean')]:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.root.exists():
        raise SystemExit(f"SAVOIAS not found at {args.root}; pass --root or set PYICA_SAVOIAS")
    ds = load_dataset("savoias", root=args.root)
    names = args.models or sorted(set(pyica.list_models(kind="classic")) | {pyica.DEFAULT_MODEL})
    print(f"SAVOIAS: {len(ds)} images; models: {', '.join(names)}; machine: {machine_description()}", flush=True)

    previous = read_results_csv(args.out) if args.out.exists() else []
    rows = [r for r in previous if r["model"] not in names]
    for name in names:
        t0 = time.perf_counter()
        new = evaluate_model(name, ds, args)
        rows += new
        summary = [s for s in summarise(new) if s["category"] in ("category_mean", "pooled")]
        print(f"\n{name} ({time.perf_counter() - t0:.0f} s)")
        print(format_table(summary, columns=["protocol", "category", "n_splits", "srcc_mean", "srcc_std",
                                             "plcc_mean", "plcc_std"]), flush=True)
        write_results_csv(rows, args.out)  # after every model, so an interrupted run keeps what it measured

    summary = summarise(rows)
    write_results_csv(summary, args.out.with_name(args.out.stem + "_summary.csv"))
    table = doc_table(summary, rows)
    print("\n" + table)
    if not args.no_doc:
        update_doc_section("savoias-accuracy", table)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
