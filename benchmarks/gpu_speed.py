"""Scoring speed of the default model on a GPU: model-only and end to end, and CUDA/bf16 agreement (issue 25).

On a machine with CUDA (the real measurement):

* ``model_only``: images/s of ``model.score_batch`` on one batch of uint8 192-px inputs (the default
  model's transform of the example images, repeated) already on the GPU, batch ``--model-batch``
  (default 256), in fp32 and under bf16 autocast; the median of ``--repeats`` timed forwards after a
  warm-up, with ``torch.cuda.synchronize`` around each;
* ``end_to_end``: images/s of ``pyica.scoring.score_paths`` (the CLI's loop: decode, resize, DataLoader
  workers, pinned memory, forward) over ``--images`` synthetic 640 x 480 JPEGs, for every
  ``--workers`` x ``--batch-size`` pair, in fp32 and bf16;
* ``max_abs_diff``: the largest |score difference| of the CUDA fp32 and CUDA bf16 scores against CPU
  fp32 scores on the first ``--agree-images`` images.

Without CUDA it runs a CPU mode (labelled ``device=cpu`` in every row, and "CPU mode" on screen) so the
script itself is exercised: fp32 model-only at a smaller batch, end to end for the given pairs, and CPU
bf16 autocast against CPU fp32. CPU numbers say nothing about a GPU.

The JPEGs are made from examples/images (flips, crops, resized to 640 x 480, quality 90) in a temp
folder, never in the repository; no download, no dataset: the script fits the device tool's 64 MiB tree.

Writes ``benchmarks/results/gpu_speed.csv`` (one row per measurement, with the machine); rows of an
earlier run on the same device kind (cuda or cpu) are replaced, the others kept.

    python -m benchmarks.gpu_speed                               # on a GPU: 1024 images, workers 4 8 15, batch 64 256
    python -m benchmarks.gpu_speed --quick                       # seconds: CPU smoke test (or a short GPU run)
    python -m benchmarks.gpu_speed --images 4096 --workers 8 15 --batch-size 256
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import REPO, RESULTS, machine_description

import pyica
from pyica.registry import DEFAULT_MODEL, create_model
from pyica.scoring import score_paths

OUT = RESULTS / "gpu_speed.csv"
COLUMNS = ["device", "measure", "precision", "batch_size", "workers", "images", "value", "unit", "model",
           "machine", "pyica_version", "date"]
SIZE = (640, 480)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registered model (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda when available)")
    p.add_argument("--images", type=int, default=None,
                   help="synthetic 640x480 JPEGs scored end to end (default: 1024 on CUDA, 64 on CPU; --quick: 32)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader worker counts to try end to end (default: 4 8 15 on CUDA, 2 on CPU)")
    p.add_argument("--batch-size", type=int, nargs="+", default=None,
                   help="score_paths batch sizes to try end to end (default: 64 256 on CUDA, 32 on CPU)")
    p.add_argument("--model-batch", type=int, default=None,
                   help="batch of the model-only timing (default: 256 on CUDA, 32 on CPU; --quick on CPU: 16)")
    p.add_argument("--repeats", type=int, default=None, help="timed model-only forwards (default: 20 on CUDA, 3 on CPU)")
    p.add_argument("--agree-images", type=int, default=32,
                   help="images scored on CPU fp32 as the reference of the agreement rows (default: 32; --quick: 8)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (well under a minute on a CPU): few images, one worker count and batch size")
    p.add_argument("--out", type=Path, default=OUT, help=f"results CSV (default: {OUT.relative_to(REPO)})")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    args.device = "cuda" if cuda else "cpu"
    if args.quick:
        args.images = args.images or 32
        args.workers = args.workers or ([4] if cuda else [1])
        args.batch_size = args.batch_size or ([64] if cuda else [16])
        args.model_batch = args.model_batch or (256 if cuda else 16)
        args.repeats = args.repeats or (5 if cuda else 2)
        args.agree_images = min(args.agree_images, 8)
    args.images = args.images or (1024 if cuda else 64)
    args.workers = args.workers or ([4, 8, 15] if cuda else [2])
    args.batch_size = args.batch_size or ([64, 256] if cuda else [32])
    args.model_batch = args.model_batch or (256 if cuda else 32)
    args.repeats = args.repeats or (20 if cuda else 3)
    return args


def make_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 640 x 480 quality-90 JPEGs from the example images (flips and crops)."""
    examples = sorted((REPO / "examples" / "images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    pictures = []
    for e in examples:
        with Image.open(e) as im:
            pictures.append(im.convert("RGB"))
    paths = []
    for i in range(n):
        picture = pictures[i % len(pictures)]
        w, h = picture.size
        fx, fy = rng.uniform(0.6, 1.0, 2)
        cw, ch = int(w * fx), int(h * fy)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        picture_i = picture.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            picture_i = picture_i.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img{i:05d}.jpg"
        picture_i.resize(SIZE, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_only_ips(model, paths, batch_size: int, precision: str, repeats: int) -> float:
    """Images/s of ``score_batch`` on one preprocessed batch already on the model's device."""
    images = []
    for p in paths[:batch_size]:
        with Image.open(p) as im:
            images.append(model.transform(im.convert("RGB")))
    images = (images * (batch_size // len(images) + 1))[:batch_size]
    batch = model.collate(images)
    if isinstance(batch, torch.Tensor):
        batch = batch.to(model.device)
    device = model.device.type
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    with autocast:
        model.score_batch(batch)  # warm-up (cuDNN autotuning, allocator)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.score_batch(batch)
            sync(device)
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def scores(paths, model, *, batch_size: int, workers: int, precision: str) -> tuple[np.ndarray, float]:
    sync(model.device.type)
    t0 = time.perf_counter()
    records = list(score_paths([str(p) for p in paths], model, batch_size=batch_size, num_workers=workers,
                               precision=precision))
    sync(model.device.type)
    seconds = time.perf_counter() - t0
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed, e.g. {failed[0]}")
    return np.array([r.score for r in records]), seconds


def write_rows(out: Path, rows: list[dict], device: str) -> None:
    """Replace the rows of ``device`` in ``out`` (keeping the other device's) and write it."""
    kept = []
    if out.exists():
        with open(out, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("device") != device]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept + rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    label = "CUDA" if device == "cuda" else "CPU mode (no CUDA: CPU numbers, not GPU figures)"
    machine = machine_description()
    print(f"gpu_speed: {label}; model {args.model}; {machine}", flush=True)
    model = create_model(args.model, device=device)
    precisions = ["fp32", "bf16"] if device == "cuda" else ["fp32"]
    rows: list[dict] = []

    def row(measure, precision, batch_size, workers, images, value, unit):
        rows.append({"device": device, "measure": measure, "precision": precision, "batch_size": batch_size,
                     "workers": workers, "images": images, "value": f"{value:.6g}", "unit": unit,
                     "model": args.model, "machine": machine, "pyica_version": pyica.__version__,
                     "date": date.today().isoformat()})
        print(f"  {measure:<13} {precision:<5} batch {batch_size!s:>4} workers {workers!s:>3} images {images:>5}: "
              f"{value:.4g} {unit}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pyica-gpu-speed-") as tmp:
        t0 = time.perf_counter()
        paths = make_jpegs(Path(tmp), max(args.images, args.agree_images))
        print(f"  made {len(paths)} 640x480 JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)

        for precision in precisions:
            ips = model_only_ips(model, paths, args.model_batch, precision, args.repeats)
            row("model_only", precision, args.model_batch, "", args.model_batch, ips, "images/s")

        e2e = paths[:args.images]
        scores(e2e[:8], model, batch_size=8, workers=0, precision="fp32")  # warm-up
        for precision in precisions:
            for batch_size in args.batch_size:
                for workers in args.workers:
                    _, seconds = scores(e2e, model, batch_size=batch_size, workers=workers, precision=precision)
                    row("end_to_end", precision, batch_size, workers, len(e2e), len(e2e) / seconds, "images/s")

        subset = paths[:args.agree_images]
        cpu_model = model if device == "cpu" else create_model(args.model, device="cpu")
        reference, _ = scores(subset, cpu_model, batch_size=32, workers=0, precision="fp32")
        # on CPU: bf16 autocast on the CPU against fp32 (exercises the code; CUDA's bf16 kernels differ)
        for precision in (["fp32", "bf16"] if device == "cuda" else ["bf16"]):
            got, _ = scores(subset, model, batch_size=32, workers=0, precision=precision)
            row("max_abs_diff_vs_cpu_fp32", precision, 32, 0, len(subset), float(np.abs(got - reference).max()),
                "score")

    write_rows(args.out, rows, device)
    print(f"gpu_speed: wrote {len(rows)} {device} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
