"""What `pyica tiles` costs next to `pyica score` on 12-megapixel JPEGs (issue 26: goal <= 3x for the default model).

Generates synthetic photo-like 4000 x 3000 JPEGs (quality 90) in a temp folder, never in the repository:
smooth colour gradients, random filled shapes and sensor-like grain, so that tiles differ in complexity.
Then times, as subprocesses (start-up and model build included, as a user sees them):

* ``pyica score DIR -o scores.csv`` (whole images: JPEGs decoded reduced, one forward each);
* ``pyica tiles DIR --size 512 --top 8 --to CROPS`` (full decode, 48 tiles scored per image, 8 PNG crops
  written per image).

The ratio of the two wall clocks is the cost figure. Writes ``benchmarks/results/tiles_speed.csv``
(machine, command, seconds, images/s, ratio) and the docs/benchmarks.md section between the
``tiles-speed`` markers.

    python -m benchmarks.tiles_speed                 # 20 photos
    python -m benchmarks.tiles_speed --photos 6 --no-doc
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import REPO, RESULTS, machine_description, update_doc_section
from pyica.registry import DEFAULT_MODEL

OUT = RESULTS / "tiles_speed.csv"
SIZE = (4000, 3000)


def make_photo(path: Path, seed: int) -> None:
    """A photo-like 12 MP JPEG: gradients, shapes, grain."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    small = np.stack(np.meshgrid(np.linspace(0, 1, 200), np.linspace(0, 1, 150)), -1)
    colours = rng.uniform(0, 255, (2, 3))
    base = (small[..., :1] * colours[0] + small[..., 1:] * colours[1]) / 2
    image = Image.fromarray(base.astype(np.uint8)).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(20, 120))):  # shapes of every size, some regions busy, some empty
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(10, 600))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    grain = rng.normal(0, 5, (h, w, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def timed(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})")
    parser.add_argument("--photos", type=int, default=20, help="12 MP photos (default: 20)")
    parser.add_argument("--size", type=int, default=512, help="tile size (default: 512)")
    parser.add_argument("--top", type=int, default=8, help="tiles kept per image (default: 8)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"results CSV (default: {OUT})")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the docs/benchmarks.md section")
    args = parser.parse_args(argv)

    pyica = [sys.executable, "-m", "pyica"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pyica-tiles-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i in range(args.photos):
            make_photo(photos / f"photo{i:03d}.jpg", i)
        timed(pyica + ["score", str(photos / "photo000.jpg"), "-m", args.model, "-q"])  # warm file caches
        score_cmd = ["score", "PHOTOS", "-m", args.model, "-o", "scores.csv", "-q"]
        tiles_cmd = ["tiles", "PHOTOS", "-m", args.model, "--size", str(args.size), "--top", str(args.top),
                     "--to", "CROPS", "-q"]
        whole = timed(pyica + [str(photos) if a == "PHOTOS" else str(Path(tmp) / a) if a == "scores.csv" else a
                               for a in score_cmd])
        tiled = timed(pyica + [str(photos) if a == "PHOTOS" else str(Path(tmp) / "crops") if a == "CROPS" else a
                               for a in tiles_cmd])
        crops = sum(1 for _ in (Path(tmp) / "crops").glob("*.png"))
    machine = machine_description()
    rows.append((machine, "pyica " + " ".join(score_cmd), whole, args.photos / whole, 1.0))
    rows.append((machine, "pyica " + " ".join(tiles_cmd), tiled, args.photos / tiled, tiled / whole))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["machine", "model", "photos", "command", "seconds", "images_per_s", "ratio_to_score"])
        for machine, command, seconds, ips, ratio in rows:
            writer.writerow([machine, args.model, args.photos, command, f"{seconds:.2f}", f"{ips:.3f}", f"{ratio:.2f}"])
    table = ["| command | seconds | images/s | x score |", "|---|---|---|---|"]
    table += [f"| `{c}` | {s:.1f} | {ips:.2f} | {r:.1f} |" for _, c, s, ips, r in rows]
    text = (f"`python -m benchmarks.tiles_speed --photos {args.photos}` ({args.photos} synthetic 4000 x 3000 JPEGs, "
            f"quality 90; model `{args.model}`; {crops} crops written; wall clock of each command as a subprocess, "
            f"start-up included; {machine}). Results: [tiles_speed.csv](../benchmarks/results/tiles_speed.csv).\n\n"
            + "\n".join(table))
    print(text)
    if not args.no_doc:
        update_doc_section("tiles-speed", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
