"""How well each model generalises beyond the images it was fitted on (issue 18).

SAVOIAS is the only labelled dataset here, so models are compared by protocols that leave a domain out,
never by random splits alone. In one run, for every model given with ``-m`` (default: both EfficientNet
presets and every classic measure; any registered name works, so a new default model is measured the
same way):

* ``loco``: leave one SAVOIAS category out (``pyica.evaluation.run_protocol``): learned models refit on
  the other six categories (10% of them for validation), SRCC/PLCC on the held-out one; the mean over
  categories and the worst category;
* ``random``: ``--splits`` seeded random 8:2 splits, category-mean SRCC mean ± std (the in-domain number);
* ``loco_<shift>``: the held-out category's images in another domain (``pyica.data.suites.shifted_copy``:
  greyscale, line art from Canny edges, Otsu-binarised, 64 px thumbnails, ...), scored by the head fitted
  on the *original* images of the other categories (the same heads as ``loco``), against the human scores
  of the originals. Classic measures score the copies as they are;
* ``suite_<name>``: constructed-order suites (``pyica.data.suites.make_suite``: binary grids, masked grids,
  strokes, pasted objects, degraded photos) scored by the model fitted on all of the dataset (learned) or
  as it is (classic); the mean within-group SRCC (each group is one picture at increasing complexity).

Learned models keep one instance across protocols, so each image's features are extracted once (the
ridge head is refitted per split). Classic measures are computed together (``classic_features``, every
measure of an image at once; checked against the registered model on two images). ICNet runs only with
``--icnet-weights``. Shifted copies and suites are written to ``--suites-cache`` (default
``~/.cache/pyica/suites``), never into the repository, and reused by later runs.

Outputs: ``--out`` (tidy rows: model, protocol, split, category, n, srcc, plcc; ``category_mean`` rows
summarise a protocol, for ``random`` with the std over splits; rerunning some models replaces only their
rows) and the docs/benchmarks.md section between ``<!-- generalization:start -->`` and
``<!-- generalization:end -->``, which is also printed.

    python -m benchmarks.generalization --threads 2                      # defaults, about 25 min on 2 cores
    python -m benchmarks.generalization -m effnet_lite0_ridge.savoias entropy --shifts edges --no-doc
    python -m benchmarks.generalization --quick --out /tmp/gen.csv --no-doc  # smoke test
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks import compare_models
from benchmarks.common import DOC, RESULTS, default_savoias_root, machine_description, update_doc_section

from pyica.data import load_dataset
from pyica.data.suites import DEFAULT_SHIFTS, SHIFTS, SUITES, make_suites, shifted_copies
from pyica.evaluation import make_splits, metric_rows, predict_dataset, run_protocol
from pyica.registry import create_model, get_entry, list_models
from pyica.reports import CATEGORY_MEAN, POOLED, format_markdown_table, read_results_csv, write_results_csv

DEFAULT_MODELS = ("effnet_lite0_within.savoias", "effnet_lite0_ridge.savoias", "effnet_lite2_lite0_ridge.savoias")
COLUMNS = ("model", "kind", "protocol", "split", "category", "n", "srcc", "plcc", "srcc_std", "plcc_std", "seconds")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", default=None,
                   help="registered names or shell patterns (default: both EfficientNet presets and every classic "
                        "measure)")
    p.add_argument("--dataset", default="savoias", help="dataset name or manifest CSV (default savoias)")
    p.add_argument("--root", type=Path, default=None,
                   help="dataset folder (SAVOIAS default: $PYICA_SAVOIAS or ../shared/data/savoias)")
    p.add_argument("--shifts", nargs="*", choices=tuple(SHIFTS), default=list(DEFAULT_SHIFTS),
                   help=f"domain shifts of the held-out category (default: {' '.join(DEFAULT_SHIFTS)})")
    p.add_argument("--suites", nargs="*", choices=tuple(SUITES), default=list(SUITES),
                   help="constructed-order suites (default: all)")
    p.add_argument("--suite-groups", type=int, default=8, help="groups per suite (default 8)")
    p.add_argument("--suite-levels", type=int, default=6, help="images per group (default 6)")
    p.add_argument("--suite-size", type=int, default=256, help="suite image side in px (default 256)")
    p.add_argument("--splits", type=int, default=10, help="random 8:2 splits (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits and suites (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 categories of at most 20 images, 2 splits, suites of 2 groups x 4 levels at 96 px")
    p.add_argument("--icnet-weights", type=Path, default=None, help="ICNet weights for icnet.* models")
    p.add_argument("--suites-cache", type=Path, default=None,
                   help="where shifted copies and suites are written (default $PYICA_SUITES_CACHE or "
                        "~/.cache/pyica/suites; never inside the repository)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per spare core)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS / "generalization.csv", help="tidy results CSV")
    p.add_argument("--doc", type=Path, default=DOC, help="Markdown file whose generalization section is rewritten")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite the docs section")
    p.add_argument("--doc-only", action="store_true", help="only rewrite the docs section from --out (run nothing)")
    args = p.parse_args(argv)
    if args.quick:
        args.splits, args.suite_groups, args.suite_levels, args.suite_size = min(args.splits, 2), 2, 4, 96
    args.command = " ".join(["python -m benchmarks.generalization", *(sys.argv[1:] if argv is None else argv)])
    return args


def selected_names(patterns) -> list[str]:
    """The models ``-m`` names (shell patterns as compare_models takes them), else the defaults."""
    if not patterns:
        return [*DEFAULT_MODELS, *list_models(kind="classic")]
    return compare_models.selected_names(argparse.Namespace(models=patterns))


# --- models ------------------------------------------------------------------------------------------------


class ClassicTable:
    """Every classic measure of every image, computed once (``classic_features``) for all classic models."""

    def __init__(self):
        self.rows: dict[str, np.ndarray] = {}
        self.errors: dict[str, str] = {}

    def scores(self, name: str, paths, num_workers=None) -> tuple[np.ndarray, dict[str, str]]:
        from pyica.inputs import iter_batches
        from pyica.models.base import list_collate
        from pyica.models.classic import FEATURE_NAMES, ClassicTransform, classic_feature_vector

        todo = [p for p in dict.fromkeys(paths) if p not in self.rows and p not in self.errors]
        for indices, batch, failed in iter_batches(todo, ClassicTransform(), list_collate, batch_size=16,
                                                   num_workers=num_workers):
            self.errors.update((todo[j], message) for j, message in failed)
            self.rows.update((todo[j], classic_feature_vector(rgb)) for j, rgb in zip(indices, batch or []))
        column = FEATURE_NAMES.index(name)
        return (np.array([self.rows[p][column] if p in self.rows else np.nan for p in paths], dtype=np.float64),
                {p: self.errors[p] for p in paths if p in self.errors})


class TableMeasure:
    """A classic measure read from a :class:`ClassicTable` (``predict_dataset`` calls ``score_files``)."""

    def __init__(self, name: str, table: ClassicTable):
        self.name, self.table = name, table

    def score_files(self, paths, *, num_workers=None, **_):
        return self.table.scores(self.name, paths, num_workers)


def build_model(name: str, args, table: ClassicTable, probe):
    """``(model, note)``; ``model`` is None when it cannot run here (``note`` says why)."""
    from pyica.models.classic import FEATURE_NAMES

    entry = get_entry(name)
    if entry.kind == "classic" and name in FEATURE_NAMES:
        fast = TableMeasure(name, table)
        # the shared table must give the registered model's numbers: score two images both ways
        reference, _ = predict_dataset(create_model(name), probe, num_workers=0)
        if np.allclose(predict_dataset(fast, probe, num_workers=0)[0], reference, rtol=1e-5, atol=1e-6, equal_nan=True):
            return fast, ""
        print(f"  {name}: classic_features differ from the model; scoring with the model", flush=True)
        return create_model(name, device=args.device), ""
    if name.startswith("icnet."):
        if args.icnet_weights is None:
            return None, "not run: pass --icnet-weights"
        return create_model(name, device=args.device, weights=str(args.icnet_weights)), f"weights {args.icnet_weights.name}"
    kwargs = {"fitted": False} if "fitted" in inspect.signature(entry.builder).parameters else {}
    try:
        model = create_model(name, device=args.device, **kwargs)
    except Exception as err:  # e.g. weights that are not on this machine
        return None, f"not run: {err}"
    if callable(getattr(model, "fit_dataset", None)):
        return model, "refit per split"
    return model, "" if not entry.needs_weights else "shipped weights, not refitted"


# --- protocols ----------------------------------------------------------------------------------------------


def per_category(pred: np.ndarray, ds, *, model: str, protocol: str) -> list[dict]:
    """One row per category of ``ds`` and the ``category_mean`` row (SRCC/PLCC of raw predictions)."""
    rows = metric_rows(pred, ds.scores, ds.categories, per_category_scale=ds.per_category_scale, model=model,
                       dataset=ds.name, protocol=protocol, split="all")
    if len(rows) == 1:  # one category: its row is the pooled one
        rows = [{**rows[0], "category": ds.category_names()[0]}, {**rows[0], "category": CATEGORY_MEAN}]
    return [r for r in rows if r["category"] != POOLED]


def category_mean(rows: list[dict], **labels) -> dict:
    return {**labels, "category": CATEGORY_MEAN, "n": int(sum(r["n"] for r in rows)),
            **{m: float(np.mean([r[m] for r in rows])) for m in ("srcc", "plcc")},
            **{f"{m}_std": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else math.nan
               for m in ("srcc", "plcc")}}


def run_loco(name, model, ds, args) -> list[dict]:
    result = run_protocol(name, ds, model=model, protocol="loco", seed=args.seed, val_fraction=0.1,
                          device=args.device, num_workers=args.workers)
    rows = [{**r, "category": r["split"].removeprefix("loco_")} for r in result.rows if r["category"] == POOLED]
    return rows + [category_mean(rows, model=name, protocol="loco", split="all")]


def run_random(name, model, ds, args) -> list[dict]:
    result = run_protocol(name, ds, model=model, protocol="random", n_splits=args.splits, seed=args.seed,
                          test_fraction=0.2, val_fraction=0.1, device=args.device, num_workers=args.workers)
    rows = [r for r in result.rows if r["category"] == CATEGORY_MEAN]
    return rows + [category_mean(rows, model=name, protocol="random", split="mean")]


def run_shifts(name, model, ds, copies: dict, args) -> list[dict]:
    """LOCO on shifted copies: the head fitted on the originals of the other categories scores the
    copies of the held-out one (the splits, and so the heads, of :func:`run_loco`)."""
    if callable(getattr(model, "fit_dataset", None)):
        preds = {shift: np.full(len(ds), np.nan) for shift in copies}
        for split in make_splits(ds, "loco", 1, args.seed, 0.2, 0.1):
            model.fit_dataset(ds.subset(split.train), ds.subset(split.val) if len(split.val) else None)
            for shift, copy in copies.items():
                preds[shift][split.test] = predict_dataset(model, copy.subset(split.test), num_workers=args.workers)[0]
    else:
        preds = {shift: predict_dataset(model, copy, num_workers=args.workers)[0] for shift, copy in copies.items()}
    return [row for shift, copy in copies.items()
            for row in per_category(preds[shift], copy, model=name, protocol=f"loco_{shift}")]


def run_suites(name, model, ds, suites: dict, args) -> list[dict]:
    if callable(getattr(model, "fit_dataset", None)):
        model.fit_dataset(ds, None)
    return [row for suite_name, suite in suites.items()
            for row in per_category(predict_dataset(model, suite, num_workers=args.workers)[0], suite, model=name,
                                    protocol=f"suite_{suite_name}")]


# --- docs ---------------------------------------------------------------------------------------------------


def protocol_order(rows) -> list[str]:
    present = list(dict.fromkeys(r["protocol"] for r in rows))
    rank = {p: i for i, p in enumerate(["loco", "random", *(f"loco_{s}" for s in SHIFTS),
                                        *(f"suite_{s}" for s in SUITES)])}
    return sorted(present, key=lambda p: rank.get(p, len(rank)))


def is_summary(row: dict) -> bool:
    """The row that summarises a protocol: its category mean (for random, the mean over splits)."""
    return row["category"] == CATEGORY_MEAN and (row["protocol"] != "random" or row["split"] == "mean")


def summary_table(rows: list[dict]) -> list[dict]:
    """One row per model: the category-mean SRCC of each protocol, the worst LOCO category."""
    means = {(r["model"], r["protocol"]): r for r in rows if is_summary(r)}
    protocols = protocol_order(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for model in models:
        line = {"model": f"`{model}`"}
        for protocol in protocols:
            r = means.get((model, protocol))
            value = math.nan if r is None else float(r["srcc"])
            std = math.nan if r is None or protocol != "random" else float(r.get("srcc_std") or math.nan)
            line[protocol.replace("_", " ")] = ("—" if r is None else "const" if math.isnan(value) else
                                                f"{value:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}"))
            if protocol == "loco":
                loco = [x for x in rows if x["model"] == model and x["protocol"] == "loco"
                        and x["category"] != CATEGORY_MEAN]
                worst = min(loco, key=lambda x: float(x["srcc"]), default=None)
                line["worst loco category"] = "—" if worst is None else f"{worst['category']} {float(worst['srcc']):.3f}"
        out.append(line)
    return sorted(out, key=lambda line: -_number(line.get("loco")))


def _number(text) -> float:
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return -math.inf


def per_category_table(rows: list[dict], kinds=("learned",)) -> list[dict]:
    """SRCC per held-out category under LOCO and each shifted LOCO, for the learned models."""
    categories = sorted({r["category"] for r in rows if r["protocol"] == "loco"} - {CATEGORY_MEAN})
    out = []
    for model in dict.fromkeys(r["model"] for r in rows if r.get("kind") in kinds):
        for protocol in [p for p in protocol_order(rows) if p == "loco" or p.startswith("loco_")]:
            found = {r["category"]: r for r in rows if r["model"] == model and r["protocol"] == protocol}
            if not found:
                continue
            line = {"model": f"`{model}`", "protocol": protocol}
            for c in [*categories, CATEGORY_MEAN]:
                line["mean" if c == CATEGORY_MEAN else c] = f"{float(found[c]['srcc']):.3f}" if c in found else "—"
            out.append(line)
    return out


def doc_text(rows: list[dict], meta: str) -> str:
    lines = [
        "Category-mean SRCC per protocol (`loco`: leave one category out, learned models refitted on the other "
        "six; `random`: mean ± std over the random 8:2 splits; `loco <shift>`: the held-out category re-rendered in "
        "another domain, scored by the head fitted on the other categories' original images, against the "
        "original's human scores; `suite <name>`: mean within-group SRCC on a constructed-order suite, learned "
        "models fitted on all of the dataset; `const`: the model scores every image of some category or group "
        f"alike, so that SRCC is undefined). {meta}", "",
        format_markdown_table(summary_table(rows)), ""]
    table = per_category_table(rows)
    if table:
        lines += ["SRCC per held-out category, learned models (original images and each shifted copy):", "",
                  format_markdown_table(table)]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------------


def load_data(args):
    is_savoias = str(args.dataset).lower() == "savoias"
    root = args.root or (default_savoias_root() if is_savoias else None)
    if is_savoias and not Path(root).exists():
        raise SystemExit(f"SAVOIAS not found at {root}; pass --root or set PYICA_SAVOIAS")
    ds = load_dataset(args.dataset, root=root)
    if args.quick:
        keep = [np.flatnonzero(ds.categories == c)[:20] for c in ds.category_names()[:2]]
        ds = ds.subset(np.sort(np.concatenate(keep)))
    if len(ds.category_names()) < 2:
        raise SystemExit(f"{ds.name}: leave-one-category-out needs at least 2 categories")
    return ds


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.doc_only:
        rows = read_results_csv(args.out)
        dates = ", ".join(sorted({str(r["date"]) for r in rows if r.get("date")}))
        write_doc(rows, f"Measured on {machine_description()} ({dates}); `—`: not run for that model.", args)
        return
    t_start = time.perf_counter()
    ds = load_data(args)
    names = selected_names(args.models)
    print(f"{ds.name}: {len(ds)} images, {len(ds.category_names())} categories; models: {', '.join(names)}",
          flush=True)
    t0 = time.perf_counter()
    copies = shifted_copies(ds, args.shifts, cache_dir=args.suites_cache)
    suites = make_suites(args.suites, groups=args.suite_groups, levels=args.suite_levels, size=args.suite_size,
                         seed=args.seed, cache_dir=args.suites_cache)
    print(f"shifted copies ({', '.join(args.shifts) or 'none'}) and suites ({', '.join(args.suites) or 'none'}) "
          f"ready in {time.perf_counter() - t0:.0f} s", flush=True)

    previous = read_results_csv(args.out) if args.out.exists() else []
    kept = [r for r in previous if r["model"] not in names]
    new: list[dict] = []
    table, probe = ClassicTable(), ds.subset(np.arange(min(2, len(ds))))
    stamp = {"date": date.today().isoformat(), "torch_threads": torch.get_num_threads()}
    for name in names:
        t_model = time.perf_counter()
        model, note = build_model(name, args, table, probe)
        print(f"\n== {name}" + (f" ({note})" if note else ""), flush=True)
        kind = get_entry(name).kind
        if model is None:
            new.append({"model": name, "kind": kind, "protocol": "loco", "split": "all", "category": CATEGORY_MEAN,
                        "note": note, **stamp})
            continue
        steps = [("loco", lambda: run_loco(name, model, ds, args)),
                 ("random", lambda: run_random(name, model, ds, args))]
        if copies:
            steps.append(("shifts", lambda: run_shifts(name, model, ds, copies, args)))
        if suites:
            steps.append(("suites", lambda: run_suites(name, model, ds, suites, args)))
        for step, run in steps:
            t0 = time.perf_counter()
            rows = run()
            seconds = round(time.perf_counter() - t0, 1)
            for row in rows:
                row.update(model=name, kind=kind, seconds=seconds)
            new += [{**{c: row.get(c, "") for c in COLUMNS}, "note": note, **stamp} for row in rows]
            shown = ", ".join(f"{r['protocol']} {r['srcc']:.3f}" for r in rows if is_summary(r))
            print(f"  {step} ({seconds:.0f} s): {shown}", flush=True)
        print(f"  ({time.perf_counter() - t_model:.0f} s)", flush=True)
        write_results_csv(kept + new, args.out)  # after every model, so an interrupted run keeps its numbers

    minutes = (time.perf_counter() - t_start) / 60
    meta = (f"{ds.name}, {len(ds)} images; suites of {args.suite_groups} groups x {args.suite_levels} levels at "
            f"{args.suite_size} px; {args.splits} random splits. Measured on {machine_description()}, torch threads "
            f"{torch.get_num_threads()} ({date.today().isoformat()}). Last command: `{args.command}` ({minutes:.0f} "
            "min); rows of models not in it are kept from earlier runs; `—`: not run for that model.")
    write_doc(read_results_csv(args.out), meta, args)
    print(f"wrote {args.out} ({minutes:.1f} min)")


def write_doc(rows: list[dict], meta: str, args) -> None:
    text = doc_text(rows, meta)
    print("\n" + text)
    if not args.no_doc:
        update_doc_section("generalization", text, doc=args.doc)
        print(f"\nupdated {args.doc}")


if __name__ == "__main__":
    main()
