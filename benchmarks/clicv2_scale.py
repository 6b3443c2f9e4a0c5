"""CLICv2 pretrained on a real unlabeled corpus, probed on SAVOIAS, compared with random init and ImageNet features.

The question (issue 25): does CLICv2's representation learn complexity when it sees more and more
varied images than SAVOIAS itself (benchmarks/clicv2_savoias.py pretrains on SAVOIAS's own training
part)? And does it add signal to ImageNet EfficientNet-Lite0 features that transfers to categories
the probe never saw?

Steps
-----
1. **Corpus.** The tar shards that ``benchmarks/build_corpus.py`` wrote (``--corpus``: the folder with
   ``summary.json``). SAVOIAS is not in it; this script checks that too: every SAVOIAS image's
   difference hash is compared with the corpus's, and near-duplicates (within 3 bits) are counted
   and reported (``savoias_near_duplicates_in_corpus``).
2. **Pretraining** (``pyica.training.pretrain``, the recipe of clicv2_savoias: ViT-Ti/32, AdamW
   0.003 x batch/2048, cosine with 40/300 warm-up, mask 0.6, lambda 2, tau 0.2, key momentum 0.99)
   for ``--minutes`` (turned into a step count after timing a few steps) or ``--steps``.
3. **Features of the 1,416 SAVOIAS images**, each computed once: the pretrained and the randomly
   initialised encoder (same architecture and seed as clicv2_savoias) give the cls token and the mean
   patch token; EfficientNet-Lite0 gives the default model's features (``effnet_lite0_within``'s
   extractor); *fused* is EfficientNet's features with the CLICv2 mean patch token appended.
4. **Probes, two protocols.** ``random``: 10 seeded 8:2 splits stratified by category (the project's
   ``repeated_random_splits``, 10 % of each training part for validation); ``loco``: each of the 7
   categories held out in turn. Two probes:
   * ``ridge``: closed-form ridge on standardised features (:mod:`pyica.models.ridge`), the penalty
     chosen on the validation part (random) or by leaving each training category out in turn
     (loco: nothing of the held-out category is used to choose it). The same probe for every
     feature set, so the features are what is compared.
   * ``sgd``: the CLICv2 paper's linear probe (``pyica.training.probe.ProbeTrainer``, the recipe of
     clicv2_savoias: SGD, momentum 0.9, 30 epochs, step schedule, lr from {1e-3, 1e-2, 1e-1} chosen on
     validation), on the mean patch token of the two CLICv2 encoders, through
     ``pyica.evaluation.run_protocol``: the code that evaluates every pyica model.
   Reported per row: the category-mean SRCC (random: mean over splits of the mean of within-category
   SRCCs; loco: mean over held-out categories of the SRCC inside it) and every category's SRCC.

Rows go to ``--out`` (benchmarks/results/clicv2_scale.csv) with the corpus, steps, images seen,
minutes, device and the command; the table to docs/benchmarks.md (section ``clicv2-scale``).

    python -m benchmarks.clicv2_scale --corpus /tmp/pyica-corpus --minutes 50
    python -m benchmarks.clicv2_scale --corpus /tmp/small --steps 3 --splits 2 --limit 140 --no-doc \\
        --out /tmp/scale-smoke.csv                                         # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.build_corpus import NearDuplicates, dhash, thumbnail
from benchmarks.clicv2_savoias import (ARCH, MAIN, PATCH, make_builder, pretrain_encoder, probe_recipe,
                                       stratified_limit)
from benchmarks.common import RESULTS, default_savoias_root, machine_description, update_doc_section

from pyica.data import load_dataset
from pyica.data.splits import leave_one_category_out, repeated_random_splits
from pyica.evaluation import run_protocol
from pyica.loading import load_image
from pyica.metrics import srcc
from pyica.models.clicv2 import CLICv2Config
from pyica.models.clicv2_probe import load_encoder, random_encoder
from pyica.models.ridge import ridge_path, select_alpha, select_alpha_by_group
from pyica.registry import DEFAULT_MODEL, create_model
from pyica.reports import format_table, read_results_csv, summarise, write_results_csv
from pyica.training.probe import ProbeTrainer, TokenCache


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--corpus", type=Path, required=True, help="folder written by benchmarks/build_corpus.py")
    g.add_argument("--root", type=Path, default=default_savoias_root(), help="SAVOIAS folder (the probe's data)")
    g.add_argument("--limit", type=int, default=None, help="use only this many SAVOIAS images: for smoke tests")
    g.add_argument("--out", type=Path, default=RESULTS / "clicv2_scale.csv", help="results CSV")
    g.add_argument("--cache-dir", type=Path, default=Path("/tmp/pyica-clicv2-scale"),
                   help="pretraining runs (reused when their settings match) and features; outside the repo")
    g.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone")
    g.add_argument("--doc-only", action="store_true", help="only rewrite the docs section from --out's rows")
    g.add_argument("--ship", metavar="RUN", help="only copy RUN's encoder (a pretraining run folder) into "
                   "src/pyica/assets/encoders with a card holding --out's probe rows of that run")
    g = p.add_argument_group("pretraining (CLICv2, ViT-Ti/32; clicv2_savoias's recipe)")
    g.add_argument("--minutes", type=float, default=50.0, help="pretraining budget (default 50)")
    g.add_argument("--steps", type=int, default=None, help="exactly this many steps instead of --minutes")
    g.add_argument("--image-size", type=int, choices=(128, 224), default=128, help="input size (default 128)")
    g.add_argument("--batch-size", type=int, default=64, help="pretraining batch (default 64)")
    g.add_argument("--momentum", type=float, default=0.99, help="key-encoder momentum (default 0.99)")
    g.add_argument("--lr", type=float, default=None, help="peak lr (default 0.003 x batch / 2048)")
    g.add_argument("--warmup-fraction", type=float, default=40 / 300, help="warm-up share (default 40/300)")
    g.add_argument("--timing-steps", type=int, default=4, help="steps timed to turn --minutes into steps")
    g.add_argument("--fresh", action="store_true", help="retrain even when a matching run is cached")
    g = p.add_argument_group("probing")
    g.add_argument("--splits", type=int, default=10, help="random 8:2 splits (default 10)")
    g.add_argument("--probes", default="ridge,sgd", help="ridge, sgd or both (default)")
    g.add_argument("--probe-epochs", type=int, default=30, help="SGD probe epochs (paper: 30)")
    g.add_argument("--probe-lr", type=float, default=1e-3, help=argparse.SUPPRESS)
    g.add_argument("--probe-lrs", default="0.001,0.01,0.1", help="SGD probe lrs chosen among on validation")
    g.add_argument("--probe-batch", type=int, default=64, help=argparse.SUPPRESS)
    g.add_argument("--probe-schedule", default="step", help=argparse.SUPPRESS)
    g = p.add_argument_group("machine")
    g.add_argument("--seed", type=int, default=0, help="pretraining seed, random encoder seed, split seed")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m benchmarks.clicv2_scale", *(sys.argv[1:] if argv is None else argv)])
    args.probes = [x.strip() for x in args.probes.split(",") if x.strip()]
    args.probe_lrs = tuple(float(v) for v in args.probe_lrs.split(",") if v.strip())
    return args


# --- corpus ----------------------------------------------------------------------------------------------

def corpus_info(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    if not summary.get("pattern"):
        raise SystemExit(f"{folder}: the corpus has no shards")
    return {"source": folder / summary["pattern"], "images": summary["images"], "summary": summary,
            "label": f"debian-{summary['images']}-max{summary['max_side']}"}


def savoias_near_duplicates(ds, corpus: Path) -> int:
    """How many SAVOIAS images have a near-duplicate in the corpus (should be none): build_corpus's
    test (dHash within 3 bits, then 16x16 thumbnails), SAVOIAS scaled as the corpus was."""
    import csv
    import tarfile

    max_side = json.loads((corpus / "summary.json").read_text())["max_side"]
    index = NearDuplicates(3)
    for path in ds.full_paths():
        image = load_image(path, decode_size=(max_side, max_side))
        image.thumbnail((max_side, max_side))
        index.add(dhash(image), thumbnail(image))
    by_shard: dict[str, list[tuple[str, int]]] = {}
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            h = int(row["dhash"], 16)
            if index.find(h) is not None:  # hash candidates only; confirmed on the pixels below
                by_shard.setdefault(row["shard"], []).append((row["member"], h))
    matched: set[int] = set()
    for shard, members in by_shard.items():
        with tarfile.open(corpus / shard) as tar:
            for member, h in members:
                image = load_image(io.BytesIO(tar.extractfile(member).read()))
                hit = index.find(h, thumbnail(image))
                if hit is not None:
                    matched.add(hit)
    return len(matched)


# --- features ----------------------------------------------------------------------------------------------

def clicv2_features(encoder, info, ds, args) -> dict[str, np.ndarray]:
    """cls and mean-patch tokens of every SAVOIAS image (the frozen encoder, the probe's transform)."""
    trainer = ProbeTrainer(make_builder(encoder, info, "linear_mean", args), probe_recipe(args), cache=TokenCache())
    tokens, ok = trainer.encoder_tokens(ds.full_paths(), num_workers=args.workers, progress=True)
    if not ok.all():
        raise SystemExit(f"{(~ok).sum()} SAVOIAS images failed to load")
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(axis=1)}


def effnet_features(ds, args) -> np.ndarray:
    model = create_model(DEFAULT_MODEL)
    x, errors = model.extract_features(ds.full_paths(), num_workers=args.workers, progress=True)
    if errors:
        raise SystemExit(f"{len(errors)} SAVOIAS images failed to load, e.g. {next(iter(errors.values()))}")
    return x


# --- probes ------------------------------------------------------------------------------------------------

def category_srccs(pred, target, cats) -> dict[str, float]:
    return {c: float(srcc(pred[cats == c], target[cats == c])) for c in np.unique(cats)}


def ridge_probe(x: np.ndarray, ds, protocol: str, args) -> dict:
    """Mean within-category SRCC (random) or held-out-category SRCCs (loco), ridge as documented above."""
    y, cats = ds.scores / 100.0, ds.categories
    per_cat: dict[str, list[float]] = {}
    split_means = []
    if protocol == "random":
        for split in repeated_random_splits(ds, args.splits, seed=args.seed, test_fraction=0.2, val_fraction=0.1):
            alpha, _ = select_alpha(x[split.train], y[split.train], x[split.val], y[split.val], cats[split.val])
            fit = np.concatenate([split.train, split.val])
            pred = ridge_path(x[fit], y[fit], [alpha])[0].predict(x[split.test])
            s = category_srccs(pred, y[split.test], cats[split.test])
            split_means.append(np.mean(list(s.values())))
            for c, v in s.items():
                per_cat.setdefault(c, []).append(v)
    else:
        for split in leave_one_category_out(ds):
            alpha = select_alpha_by_group(x[split.train], y[split.train], cats[split.train])[0]
            pred = ridge_path(x[split.train], y[split.train], [alpha])[0].predict(x[split.test])
            held = str(np.unique(cats[split.test])[0])
            per_cat[held] = [float(srcc(pred, y[split.test]))]
        split_means = [np.mean([v[0] for v in per_cat.values()])]
    return {"category_mean_srcc": round(float(np.mean(split_means)), 4),
            "category_mean_srcc_std": round(float(np.std(split_means, ddof=1)), 4) if len(split_means) > 1 else "",
            "per_category_srcc": json.dumps({c: round(float(np.mean(v)), 4) for c, v in sorted(per_cat.items())})}


def sgd_probe(encoder, info, ds, protocol: str, cache: TokenCache, args) -> dict:
    """The paper's linear probe on the mean patch token, through run_protocol."""
    trainer = ProbeTrainer(make_builder(encoder, info, "linear_mean", args), probe_recipe(args), cache=cache)
    result = run_protocol("clicv2_probe.vit_tiny", ds, model=trainer, protocol=protocol, n_splits=args.splits,
                          seed=args.seed, test_fraction=0.2, val_fraction=0.1, num_workers=args.workers)
    if protocol == "loco":
        # a held-out category is the whole test part: its SRCC is the split's "pooled" row
        held = {r["split"].removeprefix("loco_"): r["srcc"] for r in result.rows if r["category"] == "pooled"}
        mean = float(np.mean(list(held.values())))
        return {"category_mean_srcc": round(mean, 4), "category_mean_srcc_std": "",
                "per_category_srcc": json.dumps({c: round(float(v), 4) for c, v in sorted(held.items())})}
    by_cat = {r["category"]: r for r in summarise(result.rows)}
    return {"category_mean_srcc": round(float(by_cat["category_mean"]["srcc_mean"]), 4),
            "category_mean_srcc_std": round(float(by_cat["category_mean"]["srcc_std"]), 4),
            "per_category_srcc": json.dumps({c: round(float(r["srcc_mean"]), 4) for c, r in sorted(by_cat.items())
                                             if c not in ("pooled", "category_mean")})}


def standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-8)


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.doc_only:
        return rewrite_doc(args)
    if args.ship:
        return ship_encoder(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    corpus = corpus_info(args.corpus)
    ds = load_dataset("savoias", root=args.root)
    if args.limit:
        ds = stratified_limit(ds, args.limit, args.seed)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    near = savoias_near_duplicates(ds, args.corpus)
    print(f"corpus {corpus['label']}: {corpus['images']} images; SAVOIAS images with a near-duplicate in it: {near}",
          flush=True)

    print(f"\n== pretraining CLICv2 {ARCH}/{PATCH} at {args.image_size} px on {corpus['source']}", flush=True)
    run, pre = pretrain_encoder("scale", MAIN, args.minutes, corpus["source"], None, corpus["images"], args,
                                fixed_steps=args.steps)
    encoders = {"clicv2_pretrained": load_encoder(run),
                "clicv2_random": random_encoder(CLICv2Config(arch=ARCH, patch_size=PATCH, image_size=args.image_size)
                                                .encoder_config(), seed=args.seed, arch=ARCH)}
    features: dict[str, np.ndarray] = {}
    for name, (encoder, info) in encoders.items():
        t = clicv2_features(encoder, info, ds, args)
        features[f"{name}:mean"], features[f"{name}:cls"] = t["mean"], t["cls"]
    features["effnet_lite0"] = effnet_features(ds, args)
    features["effnet_lite0+clicv2_pretrained"] = np.hstack([standardise(features["effnet_lite0"]),
                                                             standardise(features["clicv2_pretrained:mean"])])
    features["effnet_lite0+clicv2_random"] = np.hstack([standardise(features["effnet_lite0"]),
                                                         standardise(features["clicv2_random:mean"])])

    base = {"corpus": corpus["label"], "corpus_images": corpus["images"], "arch": ARCH, "patch": PATCH,
            "image_size": args.image_size, "pretrain_steps": pre["steps"],
            "images_seen": pre["steps"] * args.batch_size, "pretrain_minutes": pre["minutes"],
            "pretrain_final_loss": round(pre["final_loss"], 4), "device": device,
            "savoias_near_duplicates_in_corpus": near, "savoias_images": len(ds)}
    rows = []

    def key(row) -> tuple:
        return tuple(str(row[k]) for k in ("corpus", "image_size", "pretrain_steps", "features", "probe", "protocol"))

    def record(features_name, probe, protocol, result):
        row = {"features": features_name, "probe": probe, "protocol": protocol, **result, **base,
               "machine": machine, "command": args.command}
        rows.append(row)
        print(format_table([{k: row[k] for k in ("features", "probe", "protocol", "category_mean_srcc")}]), flush=True)
        mine = {key(r) for r in rows}  # rows of other runs (corpus, size, steps) are kept
        old = [r for r in (read_results_csv(args.out) if args.out.exists() else []) if key(r) not in mine]
        write_results_csv(old + rows, args.out)

    for protocol in ("random", "loco"):
        if "ridge" in args.probes:
            for name, x in features.items():
                record(name, "ridge", protocol, ridge_probe(x.astype(np.float64), ds, protocol, args))
        if "sgd" in args.probes:
            for name, (encoder, info) in encoders.items():
                t0 = time.perf_counter()
                result = sgd_probe(encoder, info, ds, protocol, TokenCache(), args)
                print(f"  sgd probe {name} {protocol}: {time.perf_counter() - t0:.0f} s", flush=True)
                record(f"{name}:mean", "sgd", protocol, result)

    print("\n" + format_table([{k: r[k] for k in ("features", "probe", "protocol", "category_mean_srcc")}
                               for r in rows]))
    print(f"wrote {args.out}")
    if not args.no_doc:
        update_doc_section("clicv2-scale", doc_text(read_results_csv(args.out), corpus, machine))
    return 0


def doc_text(rows: list[dict], corpus: dict, machine: str) -> str:
    """The docs/benchmarks.md section: one table over every run in the CSV (by steps), and the held-out
    categories of the longest run."""
    if not rows:
        return "No rows yet."
    runs = sorted({int(r["pretrain_steps"]) for r in rows})
    longest = [r for r in rows if int(r["pretrain_steps"]) == runs[-1]]
    r0 = longest[0]
    kinds = ", ".join(f"{k} {v}" for k, v in corpus["summary"]["kinds"].items())
    run_notes = "; ".join(
        f"{r['pretrain_steps']} steps: {r['images_seen']} images seen, {r['pretrain_minutes']} min of training on "
        f"{r['device']}, `{r['command']}`"
        for r in ({int(x["pretrain_steps"]): x for x in rows}[n] for n in runs))
    lines = [f"CLICv2 ViT-Ti/32 at {r0['image_size']} px, batch 64, pretrained on the Debian-package corpus "
             f"({r0['corpus_images']} images: {kinds}; stored at most 160 px; `benchmarks/build_corpus.py "
             f"--max-side 160`, counts in [corpus_counts.csv](../benchmarks/results/corpus_counts.csv)). Runs: "
             f"{run_notes}. SAVOIAS images with a near-duplicate in the corpus: "
             f"{r0['savoias_near_duplicates_in_corpus']}. Category-mean SRCC on SAVOIAS: `random` = mean over 10 "
             f"splits 8:2 of the mean within-category SRCC; `loco` = mean over the 7 categories, each held out in "
             f"turn, of the SRCC inside it. Machine: {machine}. Rows in "
             f"[clicv2_scale.csv](../benchmarks/results/clicv2_scale.csv).", "",
             "| steps | features | probe | random | loco |", "|---|---|---|---|---|"]
    table: dict[tuple[int, str, str], dict[str, str]] = {}
    for r in rows:
        table.setdefault((int(r["pretrain_steps"]), r["features"], r["probe"]), {})[r["protocol"]] = r["category_mean_srcc"]
    for (steps, feat, probe), v in sorted(table.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        lines.append(f"| {steps} | {feat} | {probe} | {_fmt(v.get('random'))} | {_fmt(v.get('loco'))} |")
    cats = sorted(json.loads(r0["per_category_srcc"]))
    lines += ["", f"Per category under `loco` ({runs[-1]} steps; the probe never saw the category it is tested on):", "",
              "| features | probe | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    for r in longest:
        if r["protocol"] == "loco":
            per = json.loads(r["per_category_srcc"])
            lines.append(f"| {r['features']} | {r['probe']} | " + " | ".join(_fmt(per.get(c)) for c in cats) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return ""


SHIPPED = "clicv2_vit_tiny.debian_corpus"


def ship_encoder(args) -> int:
    """``--ship RUN``: copy a pretraining run's encoder into the package's weights with a card that
    says what it is, the corpus it saw, the licences of that corpus, and the probes measured above."""
    from pyica.models.clicv2_probe import load_encoder as load
    from pyica.weights import load_weights, save_weights

    from benchmarks.common import REPO

    run = Path(args.ship)
    state, card = load_weights(run / "encoder.safetensors")
    steps = card["training"]["steps"]
    rows = [r for r in read_results_csv(args.out) if int(r["pretrain_steps"]) == steps]
    if not rows:
        raise SystemExit(f"{args.out} has no probe rows of a {steps}-step run: run the benchmark first")
    corpus = corpus_info(args.corpus)["summary"]
    metrics = {f"{r['features']}|{r['probe']}|{r['protocol']}": {
        "category_mean_srcc": float(r["category_mean_srcc"]),
        "per_category_srcc": json.loads(r["per_category_srcc"])} for r in rows}
    licences = sorted({lic for src in corpus["sources"].values() for lic in src.get("licences", {})})
    training = {k: v for k, v in card["training"].items() if k not in ("data", "config", "log", "checkpoint")}
    training["data"] = {
        "corpus": f"Debian-package corpus, {corpus['images']} images at most {corpus['max_side']} px "
                  "(benchmarks/build_corpus.py; no SAVOIAS image, checked by near-duplicate search)",
        "sources": {p: {"version": v["version"], "kind": v["kind"], "kept": v.get("kept", 0)}
                    for p, v in corpus["sources"].items()},
        "command": corpus["command"]}
    training["recipe"] = card["training"]["config"]
    new_card = {
        "name": SHIPPED, "architecture": card["architecture"], "preprocessing": card.get("preprocessing") or {},
        "description": ("CLICv2 ViT-Ti/32 encoder (128 px) pretrained without labels on the Debian-package corpus: "
                        "a research starting point for probes (pyica.training.probe), not a complexity scorer. "
                        "The frozen mean patch token ranks SAVOIAS complexity better than a randomly initialised "
                        "encoder but far below ImageNet EfficientNet features (see evaluation)."),
        "training": training,
        "evaluation": {"dataset": "savoias", "command": rows[0]["command"],
                       "protocols": "random: 10 splits 8:2, mean within-category SRCC; loco: each category held "
                                    "out, SRCC inside it, averaged",
                       "probes": "ridge: closed form, penalty on validation (loco: by leaving training categories "
                                 "out); sgd: the paper's linear probe",
                       "metrics": metrics},
        "licence": ("pyica's code is Apache-2.0. These weights were learned from images whose Debian packages "
                    "state these licences: " + "; ".join(licences) + ". Whether weights trained on them are a "
                    "derived work is not settled; use them for research, and see the corpus manifest for each "
                    "image's licence."),
        "use": "pyica.models.clicv2_probe.load_encoder(path) -> (frozen ViT, info); probe it with "
               "pyica.training.probe.ProbeTrainer (benchmarks/clicv2_scale.py shows how)"}
    dest = REPO / "src" / "pyica" / "assets" / "encoders" / f"{SHIPPED}.safetensors"  # not a scorer: beside the heads
    written = save_weights(state, new_card, dest)
    load(dest)  # loads as an encoder, sha256 checked
    print(f"shipped {dest} ({written['weights']['sha256'][:12]}...), {steps} steps")
    return 0


def rewrite_doc(args) -> int:
    """``--doc-only``: the docs section from the CSV as it stands."""
    update_doc_section("clicv2-scale", doc_text(read_results_csv(args.out), corpus_info(args.corpus),
                                                machine_description()))
    print(f"rewrote the clicv2-scale section of docs/benchmarks.md from {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
