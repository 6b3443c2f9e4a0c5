"""CLICv2 at toy scale on SAVOIAS: pretrain a ViT-Ti/32, probe it, ablate it (the issue's "Show").

What it does
------------
1. **Pretraining data (no test leakage in split 0).** The unlabeled pretraining set is the
   *training part* of split 0 of the protocol below (its train and validation rows, i.e. every
   image that split 0 does not test on). These images are written as a CSV manifest in
   ``--cache-dir``. Split 0's test part is written as a second manifest and passed as
   ``exclude_manifest``, so the stream refuses it even by accident. No label is used.
   SAVOIAS is small (about 1,130 images here against CLICv2's 1.5 M IC1M images), so this measures
   whether the method learns anything at toy scale, not the paper's numbers.
   **Caveat for splits 1-9.** Their test parts overlap split 0's training part, so their test images
   were seen, without labels, during pretraining. This is transductive. Split 0 is the clean number;
   its ``split0_*`` columns are reported next to the 10-split means.
2. **Pretraining** (``pyica.training.pretrain.pretrain``): CLICv2 with a ViT-Ti (dim 192, depth 12),
   32 px patches, ``--image-size`` 128 (4 x 4 patches; default, for CPU) or 224 (7 x 7, the paper's).
   The recipe is the paper's, apart from the length:
   * AdamW, betas (0.9, 0.95), weight decay 0.05;
   * lr 0.003 x batch / 2048, the linear scaling rule, unless ``--lr`` is given;
   * cosine schedule, with warm-up over 40/300 of the run;
   * mask 0.6, lambda 2, tau 0.2, m 0.999.

   ``--minutes`` is turned into a step count: a few steps are timed first (``--timing-steps``; data
   loading included), and the cosine schedule is then laid out to end exactly at that many steps.
   Finished runs are cached in ``--cache-dir/runs`` by a hash of their settings and reused
   (``--fresh`` retrains).
3. **Probing** the pretrained encoder and a randomly initialised one (same architecture, seeded),
   each under ``pyica.evaluation.run_protocol``. This is the code that evaluates every pyica model:
   ``--splits`` seeded random 8:2 splits, stratified by category, duplicate groups kept together,
   10 % of each training part held out to choose the epoch. Two heads, both trained by
   ``pyica.training.probe.ProbeTrainer``, with the paper's probe recipe (SGD lr 1e-3, momentum 0.9,
   wd 1e-4, 30 epochs, batch 64, ICNet's step schedule, hflip):
   * ``linear``: MAE's linear probe on the cls token;
   * ``icnet``: CLIC's ``ICNet_ft`` head (map and score branches, SLAM). It is scaled down for a CPU:
     ``--icnet-width`` 64 channels instead of 512, an upsampled map of ``--icnet-map-size`` 16 instead
     of 64, SLAM at ``--icnet-slam-size`` 8 instead of 32. The full-size head costs about 20 GMAC
     per image.
   The frozen encoder's tokens are computed once per image and flip and shared by both heads.
4. **Content invariance (Fig. 5 and 7).**
   * Fig. 5: the per-category PCC, and its mean and variance across the 7 categories. This is
     ``pyica.analysis.per_category_correlations`` on split 0's test part; ``pcc_var_mean`` is the
     variance averaged over splits.
   * Fig. 7: a t-SNE of the cls features of split 0's test images (never seen in pretraining), for
     both encoders, coloured by complexity (10 segments) and by category. The PNGs are written
     next to ``--out``.
5. **Table 2 ablations at this scale.** Each is pretrained for ``--ablation-minutes`` and probed with
   the linear head (``--ablation-heads``) on ``--ablation-splits`` splits:
   * (a) no SP, image-wise InfoNCE, no MEM;
   * (b) SP, image-wise, no MEM;
   * (c) no SP, patch-wise, no MEM;
   * (d) no SP, image-wise, MEM;
   * (e) SP, patch-wise, no MEM;
   * (f) the full method at the same short budget, so it can be compared with (a)-(e);
   * ``nomask``: the full method without masking, which also drops MEM (``use_mask=False``).
   "No SP" keeps masking and the per-patch augmentation (``use_shift=False``); see
   ``pyica.models.clicv2``, open point 15.

Outputs
-------
* Rows in ``--out`` (default ``benchmarks/results/clicv2_savoias.csv``), one per (setting, encoder,
  head). Rows of settings not rerun are kept.
* The t-SNE PNGs beside it.
* The docs/benchmarks.md section between ``<!-- clicv2:start -->`` and ``<!-- clicv2:end -->``, unless
  ``--no-doc``.
* With ``--save-probes``, the ICNet and linear probes of the main encoder, fitted on split 0 (train,
  with its validation part choosing the epoch), are written to ``--cache-dir/probes``. They are
  usable as ``pyica score -m clicv2_probe.vit_tiny --weights ...``.

About an hour on a free 2-core CPU with the defaults (12 + 7 x 3 minutes of pretraining, plus
probing and feature extraction). Examples::

    python -m benchmarks.clicv2_savoias                              # everything
    python -m benchmarks.clicv2_savoias --only main --minutes 30     # longer main run, no ablations
    python -m benchmarks.clicv2_savoias --minutes 0.2 --splits 1 --no-ablations --limit 140 \\
        --probe-epochs 2 --out /tmp/clicv2/smoke.csv --no-doc        # smoke test (about a minute)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (DOC, REPO, RESULTS, default_savoias_root, doc_link, machine_description,
                               update_doc_section)

from pyica.analysis import per_category_correlations, tsne_plot
from pyica.data import load_dataset
from pyica.evaluation import make_splits, run_protocol
from pyica.models.clicv2 import CLICv2Config
from pyica.models.clicv2_probe import CLICv2Probe, build_head, load_encoder, random_encoder, save_probe
from pyica.reports import format_table, read_results_csv, summarise, write_results_csv
from pyica.training.pretrain import pretrain
from pyica.training.probe import ProbeRecipe, ProbeTrainer, TokenCache

ARCH, PATCH = "vit_tiny", 32
MAIN = {}  # CLICv2Config defaults: SP + patch-wise InfoNCE + masking 0.6 + MEM (entropy, lambda 2)
#: key -> (table, label, CLICv2Config changes)
ABLATIONS = {
    "a": ("Table 2 (a)", "no SP, image-wise InfoNCE, no MEM", {"use_shift": False, "contrast": "image", "use_mem": False}),
    "b": ("Table 2 (b)", "SP, image-wise InfoNCE, no MEM", {"contrast": "image", "use_mem": False}),
    "c": ("Table 2 (c)", "no SP, patch-wise InfoNCE, no MEM", {"use_shift": False, "use_mem": False}),
    "d": ("Table 2 (d)", "no SP, image-wise InfoNCE, MEM", {"use_shift": False, "contrast": "image"}),
    "e": ("Table 2 (e)", "SP, patch-wise InfoNCE, no MEM", {"use_mem": False}),
    "f": ("Table 2 (f)", "SP, patch-wise InfoNCE, MEM (full, short budget)", {}),
    "nomask": ("masking", "full method without masking (hence no MEM)", {"use_mask": False}),
}
PROTOCOL = dict(protocol="random", seed=0, test_fraction=0.2, val_fraction=0.1)
MODEL_NAME = "clicv2_probe.vit_tiny"
#: linear: MAE's probe on the cls token; linear_mean: on the mean patch token; icnet: CLIC's ICNet_ft head
HEADS = ("linear", "linear_mean", "icnet")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--root", type=Path, default=default_savoias_root(),
                   help="SAVOIAS folder (default: $PYICA_SAVOIAS or ../shared/data/savoias)")
    g.add_argument("--limit", type=int, default=None,
                   help="use only this many SAVOIAS images (stratified by category, seeded): for smoke tests")
    g.add_argument("--out", type=Path, default=RESULTS / "clicv2_savoias.csv",
                   help="results CSV; the t-SNE PNGs are written beside it (default: benchmarks/results/)")
    g.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-clicv2-cache"),
                   help="pretraining manifests, pretraining runs (reused when their settings match) and saved "
                        "probes; outside the repo")
    g.add_argument("--no-doc", "--no-readme", action="store_true",
                   help="do not rewrite the clicv2 section of docs/benchmarks.md")
    g.add_argument("--only", choices=("all", "main", "ablations"), default="all",
                   help="run the main setting, the ablations, or both (rows of the other part are kept)")
    g.add_argument("--no-ablations", action="store_true", help="same as --only main")
    g.add_argument("--save-probes", action="store_true",
                   help="also fit both heads of the main encoder on split 0 and save them (safetensors + card) "
                        "under --cache-dir/probes")
    g = p.add_argument_group("pretraining (CLICv2, ViT-Ti/32)")
    g.add_argument("--image-size", type=int, choices=(128, 224), default=128,
                   help="pretraining and probing input size: 128 (4x4 patches, default, CPU-friendly) or 224 "
                        "(7x7 patches, the paper's)")
    g.add_argument("--minutes", type=float, default=12.0,
                   help="wall-clock budget of the main pretraining; turned into a step count after timing "
                        "--timing-steps steps (default 12)")
    g.add_argument("--ablation-minutes", type=float, default=3.0,
                   help="budget of each ablation's pretraining (default 3)")
    g.add_argument("--timing-steps", type=int, default=4,
                   help="steps run to time one step (the first, with start-up, is not counted; default 4)")
    g.add_argument("--batch-size", type=int, default=64, help="pretraining batch (default 64)")
    g.add_argument("--momentum", type=float, default=0.99,
                   help="key-encoder momentum (default 0.99, MoCo v3's: the paper's 0.999 averages over ~1,000 "
                        "steps, as long as this whole run; it is set for ~200k steps)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak pretraining lr (default: the paper's 0.003 scaled by batch/2048)")
    g.add_argument("--warmup-fraction", type=float, default=40 / 300,
                   help="share of the run spent warming up (default 40/300, the paper's)")
    g.add_argument("--fresh", action="store_true", help="retrain even when a finished run with the same settings "
                                                        "is in --cache-dir")
    g = p.add_argument_group("probing")
    g.add_argument("--splits", type=int, default=10, help="random 8:2 splits of the main probes (default 10)")
    g.add_argument("--heads", default="linear,linear_mean,icnet",
                   help="heads probed on the main and random encoders: linear (cls token), linear_mean (mean patch "
                        "token: what patch-wise InfoNCE and MEM train), icnet (default: all three)")
    g.add_argument("--probe-epochs", type=int, default=30, help="probe epochs (paper: 30)")
    g.add_argument("--probe-lr", type=float, default=1e-3, help="probe SGD lr when --probe-lrs is empty (paper: 1e-3)")
    g.add_argument("--probe-lrs", default="0.001,0.01,0.1",
                   help="peak probe lrs tried per split, the one whose best epoch validates best is kept "
                        "(default 0.001,0.01,0.1: the paper's 1e-3 first). The paper's 30 epochs of 1e-3 are "
                        "~1,700 SGD steps on IC9600 but ~480 on SAVOIAS, where they underfit; '' = --probe-lr only")
    g.add_argument("--probe-batch", type=int, default=64, help="probe batch (default 64, ICNet's)")
    g.add_argument("--probe-schedule", choices=("step", "cosine"), default="step",
                   help="probe lr schedule: ICNet's warm-up + x0.2 at 1/3 and 2/3 (step), or cosine")
    g.add_argument("--icnet-splits", type=int, default=None,
                   help="splits of the ICNet-head probes (default: --splits); its SGD costs ~50x the linear head's")
    g.add_argument("--icnet-width", type=int, default=64, help="ICNet head channels (ICNet: 512)")
    g.add_argument("--icnet-map-size", type=int, default=16, help="side of the upsampled map (ICNet: 64)")
    g.add_argument("--icnet-slam-size", type=int, default=8, help="SLAM layout side (ICNet: 32)")
    g = p.add_argument_group("ablations (Table 2)")
    g.add_argument("--ablations", default=",".join(ABLATIONS),
                   help=f"which ablations, comma-separated from {', '.join(ABLATIONS)} (default: all)")
    g.add_argument("--ablation-steps", type=int, default=None,
                   help="give every ablation exactly this many pretraining steps instead of --ablation-minutes (the "
                        "same budget for all, whatever else the machine is doing)")
    g.add_argument("--ablation-splits", type=int, default=None, help="splits per ablation (default: --splits)")
    g.add_argument("--ablation-heads", default="linear,linear_mean",
                   help="heads probed per ablation (default: linear,linear_mean)")
    g = p.add_argument_group("machine")
    g.add_argument("--seed", type=int, default=0, help="pretraining seed and the random encoder's seed")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: spare cores)")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m benchmarks.clicv2_savoias", *(sys.argv[1:] if argv is None else argv)])
    if args.no_ablations:
        args.only = "main"
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    try:
        args.probe_lrs = tuple(float(v) for v in args.probe_lrs.split(",") if v.strip())
    except ValueError:
        p.error(f"--probe-lrs must be comma-separated numbers, not {args.probe_lrs!r}")
    args.ablation_heads = [h.strip() for h in args.ablation_heads.split(",") if h.strip()]
    args.ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    for h in args.heads + args.ablation_heads:
        if h not in HEADS:
            p.error(f"unknown head {h!r} ({', '.join(HEADS)})")
    for a in args.ablations:
        if a not in ABLATIONS:
            p.error(f"unknown ablation {a!r} ({', '.join(ABLATIONS)})")
    args.ablation_splits = args.ablation_splits or args.splits
    args.icnet_splits = args.icnet_splits or args.splits
    return args


# --- data ----------------------------------------------------------------------------------------------

def stratified_limit(ds, n: int, seed: int):
    """About ``n`` images, the same share of every category (smoke tests only)."""
    rng = np.random.default_rng(seed)
    per = max(2, n // max(1, len(ds.category_names())))
    keep = []
    for c in ds.category_names():
        idx = np.flatnonzero(ds.categories == c)
        keep.extend(rng.choice(idx, size=min(per, len(idx)), replace=False).tolist())
    return ds.subset(np.sort(np.array(keep)))


def write_manifest(paths: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image"])
        for p in paths:
            w.writerow([str(Path(p).resolve())])


def pretraining_manifests(ds, cache_dir: Path) -> tuple[Path, Path, object]:
    """Split 0's training part (train + val) as the pretraining manifest, its test part as the exclusion."""
    split0 = make_splits(ds, PROTOCOL["protocol"], 1, PROTOCOL["seed"], PROTOCOL["test_fraction"],
                         PROTOCOL["val_fraction"])[0]
    paths = np.array(ds.full_paths())
    train = sorted(paths[np.concatenate([split0.train, split0.val])].tolist())
    test = sorted(paths[split0.test].tolist())
    assert not set(train) & set(test), "split 0's training and test parts overlap"
    tag = hashlib.sha256("\n".join(train).encode()).hexdigest()[:10]
    source, exclude = cache_dir / f"pretrain_{ds.name}_split0_train_{tag}.csv", cache_dir / f"{ds.name}_split0_test_{tag}.csv"
    write_manifest(train, source)
    write_manifest(test, exclude)
    return source, exclude, split0


# --- pretraining ---------------------------------------------------------------------------------------

def pretrain_config(model: dict, source: Path, exclude: Path, args, epochs: float, out: Path) -> dict:
    lr_args = ({"lr": args.lr, "base_batch": args.batch_size} if args.lr is not None
               else {"lr": 0.003, "base_batch": 2048})
    return {"method": "clicv2", "model": model, "seed": args.seed, "amp": True, "log_every": 1,
            "checkpoint_every": 10 ** 9, "output_dir": str(out),
            "data": {"sources": [str(source)], "image_size": args.image_size,
                     "exclude_manifest": str(exclude) if exclude else None},
            "optim": {**lr_args, "batch_size": args.batch_size, "weight_decay": 0.05, "betas": [0.9, 0.95],
                      "epochs": epochs, "warmup_epochs": epochs * args.warmup_fraction, "min_lr": 0.0}}


def seconds_per_step(model: dict, source: Path, exclude: Path, args, folder: Path) -> float:
    """Median wall time of a pretraining step (data loading included), start-up step excluded."""
    shutil.rmtree(folder, ignore_errors=True)
    cfg = pretrain_config(model, source, exclude, args, 1000.0, folder)
    t0 = time.perf_counter()
    summary = pretrain(cfg, max_steps=max(2, args.timing_steps), num_workers=args.workers, progress=False)
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    shutil.rmtree(folder, ignore_errors=True)
    rates = [r["images_per_s"] for r in rows[1:] if r.get("images_per_s")]
    if rates:
        return float(np.median([args.batch_size / r for r in rates]))
    return (time.perf_counter() - t0) / max(1, summary["steps"])


def pretrain_encoder(slug: str, changes: dict, minutes: float, source: Path, exclude: Path, n_images: int,
                     args, fixed_steps: int | None = None) -> tuple[Path, dict]:
    """Pretrain (or reuse) one CLICv2 encoder within ``minutes`` (or for exactly ``fixed_steps``);
    returns its run folder and a summary."""
    model = {"arch": ARCH, "patch_size": PATCH, "image_size": args.image_size, "momentum": args.momentum, **changes}
    CLICv2Config(**model)  # validate early
    budget = {"steps": fixed_steps} if fixed_steps else {"minutes": minutes}
    key = json.dumps({"model": model, **budget, "batch": args.batch_size, "lr": args.lr,
                      "warmup": args.warmup_fraction, "seed": args.seed, "data": source.name}, sort_keys=True)
    run = args.cache_dir / "runs" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    card = run / "encoder.json"
    if card.exists() and not args.fresh:
        training = json.loads(card.read_text())["training"]
        print(f"  reusing {run} ({training['steps']} steps, final loss {training['final_loss']:.3f})", flush=True)
        return run, {"steps": training["steps"], "epochs": training["epochs_done"], "final_loss": training["final_loss"],
                     "minutes": round(training["seconds_total"] / 60, 2), "reused": True}
    shutil.rmtree(run, ignore_errors=True)
    steps_per_epoch = n_images // args.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"{n_images} pretraining images are fewer than one batch of {args.batch_size}")
    if fixed_steps:
        steps = fixed_steps
        print(f"  {steps} steps ({steps / steps_per_epoch:.1f} epochs of {n_images} images)", flush=True)
    else:
        per_step = seconds_per_step(model, source, exclude, args, args.cache_dir / "runs" / f"timing-{slug}")
        steps = max(1, int(minutes * 60 / per_step))
        print(f"  {per_step:.2f} s/step -> {steps} steps ({steps / steps_per_epoch:.1f} epochs of {n_images} images) "
              f"in {minutes} min", flush=True)
    epochs = steps / steps_per_epoch
    summary = pretrain(pretrain_config(model, source, exclude, args, epochs, run), num_workers=args.workers,
                       progress=False)
    print(f"  pretrained: {summary['steps']} steps in {summary['seconds'] / 60:.1f} min, final loss "
          f"{summary['final_loss']:.3f} {summary['final_parts']}", flush=True)
    return run, {"steps": summary["steps"], "epochs": summary["epochs_done"], "final_loss": summary["final_loss"],
                 "minutes": round(summary["seconds"] / 60, 2), "reused": False}


# --- probing -------------------------------------------------------------------------------------------

def head_options(kind: str, args) -> dict:
    if kind == "linear":
        return {}
    if kind == "linear_mean":
        return {"pool": "mean"}
    return {"width": args.icnet_width, "map_size": args.icnet_map_size, "slam_size": args.icnet_slam_size,
            "slam_hidden": args.icnet_width, "score_hidden": args.icnet_width}


def probe_recipe(args) -> ProbeRecipe:
    return ProbeRecipe(epochs=args.probe_epochs, batch_size=args.probe_batch, lr=args.probe_lr,
                       lr_grid=args.probe_lrs, schedule=args.probe_schedule, seed=args.seed, num_workers=args.workers)


def make_builder(encoder, info, kind: str, args):
    base_kind = "linear" if kind.startswith("linear") else kind
    return lambda: CLICv2Probe(encoder, build_head(base_kind, encoder.num_features, **head_options(kind, args)), info)


def probe(encoder, info, kind: str, ds, n_splits: int, cache: TokenCache, args) -> tuple[dict, ProbeTrainer]:
    """``run_protocol`` with a fresh head per split; returns the summary columns and the trainer."""
    trainer = ProbeTrainer(make_builder(encoder, info, kind, args), probe_recipe(args), cache=cache)
    fits, fit = [], trainer.fit_dataset

    def fit_and_record(train, val=None, **kw):
        out = fit(train, val)
        fits.append(out)
        return out

    trainer.fit_dataset = fit_and_record
    t0 = time.perf_counter()
    try:
        result = run_protocol(MODEL_NAME, ds, model=trainer, n_splits=n_splits, num_workers=args.workers,
                              **PROTOCOL)
    finally:
        trainer.fit_dataset = fit
    summary = {row["category"]: row for row in summarise(result.rows)}
    cat, pooled = summary["category_mean"], summary["pooled"]
    split_names = list(dict.fromkeys(r["split"] for r in result.rows))
    pcc_vars = []
    for name in split_names:  # Fig. 5's statistic per split: the variance of the per-category PCCs
        pccs = [r["plcc"] for r in result.rows if r["split"] == name and r["category"] not in ("pooled", "category_mean")]
        pccs = np.array(pccs, dtype=float)
        pcc_vars.append(float(np.var(pccs[np.isfinite(pccs)])) if np.isfinite(pccs).any() else math.nan)
    pred, target, cats = result.first_split_predictions
    fig5 = per_category_correlations(pred, target, cats)
    split0 = {r["category"]: r for r in result.rows if r["split"] == split_names[0]}
    row = {"splits": n_splits,
           "category_mean_srcc_mean": cat["srcc_mean"], "category_mean_srcc_std": cat["srcc_std"],
           "category_mean_plcc_mean": cat["plcc_mean"], "category_mean_plcc_std": cat["plcc_std"],
           "pooled_srcc_mean": pooled["srcc_mean"], "pooled_srcc_std": pooled["srcc_std"],
           "pooled_plcc_mean": pooled["plcc_mean"], "pooled_plcc_std": pooled["plcc_std"],
           "pcc_var_mean": float(np.nanmean(pcc_vars)) if np.isfinite(pcc_vars).any() else math.nan,
           "split0_category_mean_srcc": split0["category_mean"]["srcc"] if "category_mean" in split0 else math.nan,
           "split0_category_mean_plcc": split0["category_mean"]["plcc"] if "category_mean" in split0 else math.nan,
           "split0_pcc_mean": fig5["pcc_mean"], "split0_pcc_var": fig5["pcc_var"],
           "median_best_epoch": float(np.median([f["best_epoch"] for f in fits])),
           "probe_lrs_chosen": " ".join(f"{f['lr']:g}" for f in fits),
           "probe_minutes": round((time.perf_counter() - t0) / 60, 2),
           "split0_per_category_pcc": json.dumps({k: round(v["pcc"], 4) for k, v in fig5["per_category"].items()})}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, trainer


def tsne_for(trainer: ProbeTrainer, ds, split0, label: str, path: Path) -> None:
    test = ds.subset(split0.test)
    feats, ok = trainer.pooled_features(test.full_paths(), num_workers=trainer.recipe.num_workers)
    tsne_plot(feats, test.scores[ok], test.categories[ok], path, perplexity=30,
              title=f"{label}: cls features of split 0's test images")
    print(f"  wrote {path}", flush=True)


def save_split0_probes(encoder, info, ds, split0, cache, args, label: str, pretrain_summary: dict) -> None:
    for kind in args.heads:
        trainer = ProbeTrainer(make_builder(encoder, info, kind, args), probe_recipe(args), cache=cache)
        fit = trainer.fit_dataset(ds.subset(split0.train), ds.subset(split0.val))
        test = ds.subset(split0.test)
        scores, _ = trainer.score_files(test.full_paths(), num_workers=args.workers)
        fig5 = per_category_correlations(scores, test.scores, test.categories)
        path = args.cache_dir / "probes" / f"clicv2_probe_{label}_{kind}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_probe(trainer.model, path, {
            "training": {"dataset": ds.name, "split": "split 0 of random 8:2 (seed 0), train part; epoch chosen on "
                                                      "its validation part", "images": fit["n_train"],
                         "best_epoch": fit["best_epoch"], "recipe": trainer.recipe.to_dict(),
                         "pretraining": pretrain_summary},
            "score": {"range": [0.0, 1.0], "higher": "more complex",
                      "meaning": f"{ds.name} score mapped from {fit['label_range']} to [0, 1]"},
            "metrics": {"split0_test": {"category_mean_pcc": fig5["pcc_mean"], "pcc_var": fig5["pcc_var"],
                                        "per_category": fig5["per_category"]}}})
        print(f"  saved {path}", flush=True)


# --- docs/benchmarks.md --------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pm(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return _fmt(row.get(f"{key}_mean")) + ("" if std in (None, "") or not math.isfinite(float(std)) else f" ± {_fmt(std)}")


def doc_text(rows: list[dict], pngs: list[Path], args, machine: str) -> str:
    main = [r for r in rows if r["table"] == "main"]
    abl = [r for r in rows if r["table"] != "main"]
    lines = [f"CLICv2 at toy scale: a ViT-Ti/{PATCH} pretrained on the {main[0]['pretrain_images'] if main else '?'} "
             "unlabeled images of split 0's training part of SAVOIAS (never its test part), then probed with "
             "the paper's recipe under the usual protocol (random 8:2 splits, epoch chosen on validation). "
             "Splits 1-9 test on images the encoder saw unlabeled; `split 0` is the clean column. "
             f"Measured on {machine}.", ""]
    if main:
        lines += ["| encoder | head | pretraining | splits | probe lr per split | category mean SRCC | "
                  "category mean PLCC | pooled SRCC | split 0 cat. mean SRCC | PCC variance across categories |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in main:
            pre = (f"{r['pretrain_steps']} steps, {_fmt(r['pretrain_epochs'], 1)} epochs, {_fmt(r['pretrain_minutes'], 1)} min"
                   if r["encoder"] == "pretrained" else "none (random init)")
            lines.append(f"| {r['encoder']} | {r['head']} | {pre} | {r['splits']} | {r.get('probe_lrs_chosen', '')} | "
                         f"{_pm(r, 'category_mean_srcc')} | "
                         f"{_pm(r, 'category_mean_plcc')} | {_pm(r, 'pooled_srcc')} | "
                         f"{_fmt(r['split0_category_mean_srcc'])} | {_fmt(r['pcc_var_mean'], 4)} |")
        lines += ["", "Per-category PCC on split 0's test part (Fig. 5; mean and variance over the categories):", ""]
        cats = sorted({c for r in main for c in json.loads(r["split0_per_category_pcc"])})
        lines += ["| encoder | head | " + " | ".join(cats) + " | mean | variance |", "|---|---|" + "---|" * (len(cats) + 2)]
        for r in main:
            per = json.loads(r["split0_per_category_pcc"])
            lines.append(f"| {r['encoder']} | {r['head']} | " + " | ".join(_fmt(per.get(c)) for c in cats)
                         + f" | {_fmt(r['split0_pcc_mean'])} | {_fmt(r['split0_pcc_var'], 4)} |")
    if abl:
        lines += ["", f"Table 2 ablations at this scale ({str(abl[0]['pretrain_steps']) + ' pretraining steps' if args.ablation_steps else 'about ' + _fmt(abl[0]['pretrain_minutes'], 1) + ' min of pretraining'} "
                      "each; (f) is the full method at the same budget, the row to compare (a)-(e) with):", "",
                  "| setting | head | pretraining steps | final loss | category mean SRCC | pooled SRCC | "
                  "split 0 cat. mean SRCC |", "|---|---|---|---|---|---|---|"]
        for r in abl:
            lines.append(f"| {r['table']}: {r['setting']} | {r['head']} | {r['pretrain_steps']} | "
                         f"{_fmt(r['pretrain_final_loss'])} | {_pm(r, 'category_mean_srcc')} | {_pm(r, 'pooled_srcc')} | "
                         f"{_fmt(r['split0_category_mean_srcc'])} |")
    if pngs:
        lines += [""]
        for png in pngs:
            lines.append(f"![t-SNE {png.stem}]({doc_link(png)})")
    commands = list(dict.fromkeys(r.get("command") or "" for r in rows)) if rows else [args.command]
    lines += ["", "Reproduce (the commands that produced these rows): "
              + "; ".join(f"`{c}`" for c in commands if c) + f". Key momentum {args.momentum}, probe lr chosen on "
              f"validation from {', '.join(f'{v:g}' for v in args.probe_lrs) or f'{args.probe_lr:g}'}, ICNet head "
              f"{args.icnet_width} ch / {args.icnet_map_size} px map."]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    ds = load_dataset("savoias", root=args.root)
    if args.limit:
        ds = stratified_limit(ds, args.limit, args.seed)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source, exclude, split0 = pretraining_manifests(ds, args.cache_dir)
    n_pre = len(split0.train) + len(split0.val)
    print(f"SAVOIAS: {len(ds)} images; pretraining on {n_pre} (split 0 train+val), never on its {len(split0.test)} "
          f"test images; machine: {machine}", flush=True)

    rows_now: list[dict] = []
    pngs: list[Path] = []
    base = {"arch": ARCH, "patch": PATCH, "image_size": args.image_size, "pretrain_images": n_pre}

    def record(table, setting, encoder_label, kind, pre, probe_row):
        row = {"table": table, "setting": setting, "encoder": encoder_label, "head": kind, **base,
               "pretrain_minutes": pre.get("minutes", 0.0), "pretrain_steps": pre.get("steps", 0),
               "pretrain_epochs": round(pre.get("epochs", 0.0), 2), "pretrain_final_loss": pre.get("final_loss"),
               **probe_row, "command": args.command}
        rows_now.append(row)
        print(format_table([{k: row[k] for k in ("table", "setting", "encoder", "head", "category_mean_srcc_mean",
                                                  "pooled_srcc_mean", "split0_category_mean_srcc", "pcc_var_mean")}]),
              flush=True)
        save_rows()

    def save_rows():
        keys = {(r["table"], r["setting"], r["encoder"], r["head"]) for r in rows_now}
        old = [r for r in (read_results_csv(args.out) if args.out.exists() else [])
               if (r["table"], r["setting"], r["encoder"], r["head"]) not in keys]
        write_results_csv(old + rows_now, args.out)

    if args.only in ("all", "main"):
        print(f"\n== main: pretraining CLICv2 {ARCH}/{PATCH} at {args.image_size} px for {args.minutes} min", flush=True)
        run, pre = pretrain_encoder("main", MAIN, args.minutes, source, exclude, n_pre, args)
        encoders = [("pretrained", *load_encoder(run), pre),
                    ("random", *random_encoder(CLICv2Config(arch=ARCH, patch_size=PATCH, image_size=args.image_size)
                                               .encoder_config(), seed=args.seed, arch=ARCH), {})]
        for label, encoder, info, pre_summary in encoders:
            cache = TokenCache()
            trainer = None
            for kind in args.heads:
                n_splits = args.icnet_splits if kind == "icnet" else args.splits
                print(f"\n== probing the {label} encoder with the {kind} head on {n_splits} splits", flush=True)
                probe_row, trainer = probe(encoder, info, kind, ds, n_splits, cache, args)
                record("main", "CLICv2 (SP + patch-wise InfoNCE + MEM)", label, kind, pre_summary, probe_row)
            if trainer is not None:
                png = args.out.parent / f"clicv2_tsne_{label}.png"
                tsne_for(trainer, ds, split0, f"{label} encoder", png)
                pngs.append(png)
            if args.save_probes and label == "pretrained":
                save_split0_probes(encoder, info, ds, split0, cache, args, label, pre_summary)
            del cache

    if args.only in ("all", "ablations"):
        for key in args.ablations:
            table, setting, changes = ABLATIONS[key]
            budget = f"{args.ablation_steps} steps" if args.ablation_steps else f"{args.ablation_minutes} min"
            print(f"\n== {table}: {setting}; pretraining {budget}", flush=True)
            run, pre = pretrain_encoder(f"ablation-{key}", changes, args.ablation_minutes, source, exclude, n_pre, args,
                                        fixed_steps=args.ablation_steps)
            encoder, info = load_encoder(run)
            cache = TokenCache()
            for kind in args.ablation_heads:
                probe_row, _ = probe(encoder, info, kind, ds, args.ablation_splits, cache, args)
                record(table, setting, "pretrained", kind, pre, probe_row)

    rows = read_results_csv(args.out)
    print("\n" + format_table([{k: r.get(k) for k in ("table", "setting", "encoder", "head", "category_mean_srcc_mean",
                                                       "pooled_srcc_mean", "split0_category_mean_srcc",
                                                       "pcc_var_mean")} for r in rows]))
    print(f"wrote {args.out}")
    if not args.no_doc:
        if not pngs:  # keep the pictures of an earlier main run
            pngs = [p for p in (args.out.parent / "clicv2_tsne_pretrained.png",
                                args.out.parent / "clicv2_tsne_random.png") if p.exists()]
        update_doc_section("clicv2", doc_text(rows, pngs, args, machine))
        print(f"updated {DOC.relative_to(REPO)} (clicv2 section)")


if __name__ == "__main__":
    main()
