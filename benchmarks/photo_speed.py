"""Scoring speed on camera-sized photos: does the cost of a score grow with megapixels? (issue 21)

Generates synthetic photos from the example images (no downloads; written to a temp folder, never
into the repository): each example, flipped and cropped four ways, upscaled to 12 megapixels
(4000 x 3000) with fine sensor-like grain added, saved as a quality-90 JPEG (a third of them
progressive, some greyscale and CMYK), plus the same pictures at 0.1 MP (365 x 274). Then, for one
model (default: the default model), in one run:

* ``wall_12mp`` / ``wall_01mp``: seconds to score each set (``pyica.scoring.score_paths``, the CLI's
  loop: DataLoader workers, batch 32), model built beforehand; ``ratio_12mp_to_01mp`` (goal <= 1.2);
* agreement of the reduced JPEG decoding (``decode_size``, libjpeg's DCT scaling) with a full decode of
  the same 12 MP files: Spearman (goal >= 0.99) and mean absolute difference as % of the score range
  (goal <= 1%);
* ``loop_ips`` vs ``forward_ips``: end-to-end images/s on the 12 MP set vs the model's forward alone on a
  preprocessed batch of 32 (goal: ratio >= 0.8), for 0, 1 and 2 workers;
* ``decode_ms``: decoding one 12 MP JPEG in full, reduced by Pillow, and reduced by simplejpeg when it is
  installed (a faster libjpeg-turbo binding; pyica uses Pillow).

Writes ``benchmarks/results/photo_speed.csv`` (metric, value, goal, met) and the docs/benchmarks.md
section between the ``photo-speed`` markers.

    python -m benchmarks.photo_speed                       # 48 photos per set, the default model
    python -m benchmarks.photo_speed --photos 16 --no-doc  # quicker
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from benchmarks.common import REPO, RESULTS, machine_description, update_doc_section
from pyica.registry import DEFAULT_MODEL, create_model, get_entry
from pyica.scoring import score_paths

OUT = RESULTS / "photo_speed.csv"
BIG, SMALL = (4000, 3000), (365, 274)


class FullDecode:
    """A model transform without ``decode_size``: every JPEG decoded at full resolution (the reference)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


def make_photos(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """``n`` 12 MP JPEGs and the same pictures at 0.1 MP, from the example images."""
    rng = np.random.default_rng(seed)
    examples = sorted((REPO / "examples" / "images").glob("*.jpg"))
    big_dir, small_dir = folder / "12mp", folder / "0.1mp"
    big_dir.mkdir(parents=True)
    small_dir.mkdir()
    big, small = [], []
    for i in range(n):
        with Image.open(examples[i % len(examples)]) as source:
            picture = source.convert("RGB")
        variant = (i // len(examples)) % 4
        if variant & 1:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if variant & 2:
            w, h = picture.size
            picture = picture.crop((w // 8, h // 8, w - w // 8, h - h // 8))
        photo = picture.resize(BIG, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 4, (BIG[1], BIG[0], 1)).astype(np.float32)  # luminance grain, as a sensor adds
        photo = Image.fromarray(np.clip(np.asarray(photo, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
        mode = ("L", "CMYK", "RGB", "RGB")[i % 4] if i % 5 == 0 else "RGB"
        options = {"quality": 90, "progressive": i % 3 == 0}
        name = f"photo{i:03d}.jpg"
        photo.convert(mode).save(big_dir / name, **options)
        photo.resize(SMALL, Image.Resampling.BOX).convert(mode).save(small_dir / name, **options)
        big.append(big_dir / name)
        small.append(small_dir / name)
    return big, small


def timed_scores(paths, model, workers: int, batch_size: int = 32) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    records = list(score_paths([str(p) for p in paths], model, batch_size=batch_size, num_workers=workers))
    seconds = time.perf_counter() - t0
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} photos failed, e.g. {failed[0]}")
    return np.array([r.score for r in records]), seconds


def forward_ips(model, paths, batch_size: int = 32, repeats: int = 5) -> float:
    """Images/s of the model's forward alone on one preprocessed batch."""
    images = []
    for p in paths[:batch_size]:
        with Image.open(p) as img:
            images.append(img.convert("RGB"))
    while len(images) < batch_size:
        images += images[: batch_size - len(images)]
    batch = model.collate([model.transform(im) for im in images])
    model.score_batch(batch)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.score_batch(batch)
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def decode_ms(path: Path, request: tuple[int, int], repeats: int = 5) -> dict[str, float | None]:
    from pyica.loading import load_image

    def median_ms(fn) -> float:
        fn()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(runs), 1)

    out = {"full": median_ms(lambda: load_image(path)),
           "pillow_reduced": median_ms(lambda: load_image(path, decode_size=request)), "simplejpeg_reduced": None}
    try:
        import simplejpeg
    except ImportError:
        return out
    data = path.read_bytes()
    out["simplejpeg_reduced"] = median_ms(
        lambda: simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=request[0], min_height=request[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})")
    parser.add_argument("--photos", type=int, default=48, help="photos per set (default: 48)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to try (default: 0 1 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"results CSV (default: {OUT})")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the docs/benchmarks.md section")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = create_model(args.model, device="cpu")
    low, high = get_entry(args.model).score_range or (0.0, 1.0)
    rows: list[tuple[str, float, str, bool | None]] = []
    with tempfile.TemporaryDirectory(prefix="pyica-photos-") as tmp:
        big, small = make_photos(Path(tmp), args.photos)
        workers = max(args.workers)
        timed_scores(small[:4], model, 0)  # warm-up: first forward, thread pools
        fast_big, wall_big = timed_scores(big, model, workers)
        _, wall_small = timed_scores(small, model, workers)
        ratio = wall_big / wall_small
        rows += [(f"wall_12mp_s (workers {workers})", wall_big, "", None),
                 (f"wall_01mp_s (workers {workers})", wall_small, "", None),
                 ("ratio_12mp_to_01mp", ratio, "<= 1.2", ratio <= 1.2)]

        reference_transform = model.transform
        model.transform = FullDecode(reference_transform)
        full_big, wall_full = timed_scores(big, model, workers)
        model.transform = reference_transform
        rho = float(spearmanr(fast_big, full_big)[0])
        mad = float(np.mean(np.abs(fast_big - full_big)) / (high - low) * 100)
        rows += [(f"wall_12mp_full_decode_s (workers {workers})", wall_full, "", None),
                 ("spearman_reduced_vs_full", rho, ">= 0.99", rho >= 0.99),
                 ("mean_abs_diff_percent_of_range", mad, "<= 1", mad <= 1.0)]

        forward = forward_ips(model, big)
        rows.append(("forward_only_ips (batch 32)", forward, "", None))
        for w in args.workers:
            _, seconds = timed_scores(big, model, w)
            ips = len(big) / seconds
            rows += [(f"loop_ips_12mp (workers {w})", ips, "", None),
                     (f"loop_to_forward (workers {w})", ips / forward, ">= 0.8", ips / forward >= 0.8)]
        request = model.transform.decode_size(*BIG) if hasattr(model.transform, "decode_size") else None
        if request:
            for name, ms in decode_ms(big[1], request).items():
                rows.append((f"decode_ms_12mp_{name}", ms if ms is not None else float("nan"), "", None))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "photos", "metric", "value", "goal", "met"])
        for metric, value, goal, met in rows:
            writer.writerow([args.model, args.photos, metric, f"{value:.4g}", goal, "" if met is None else met])
    table = ["| metric | value | goal | met |", "|---|---|---|---|"]
    table += [f"| {m} | {v:.4g} | {g} | {'' if ok is None else ('yes' if ok else 'NO')} |" for m, v, g, ok in rows]
    text = (f"`python -m benchmarks.photo_speed` ({args.photos} synthetic 12 MP JPEGs and the same at 0.1 MP, "
            f"model `{args.model}`, batch 32; {machine_description()}; torch threads {torch.get_num_threads()}). "
            f"Results: [photo_speed.csv](../benchmarks/results/photo_speed.csv).\n\n" + "\n".join(table))
    print(text)
    if not args.no_doc:
        update_doc_section("photo-speed", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
