"""``pyica score --engine ray`` vs ``pyica score``: images/s on the same cores and images (issue 23).

Writes ~200 synthetic JPEGs (640 x 480, quality 90, smooth gradients plus noise of varying strength) to a
temp folder, then runs each engine as its own ``pyica score`` process, pinned to the same cores
(``taskset``, when there is one): ``local`` (this process and its DataLoader workers) and ``ray`` (a local
Ray started by the command with ``--num-cpus`` = those cores: one actor per core). Per run:

* ``wall_s``: the whole command, Python start, Ray start and model loads included;
* ``scoring_s``: the command's own ``seconds_scoring`` (OUT.meta.json): for ``local`` from the model's
  load to the last row, for ``ray`` from the dataset's start (actors' start and model loads included);
* ``ips_wall`` / ``ips_scoring``: images / those seconds; ``ratio_*``: ray / local (goal: >= 0.8 on
  ``ips_scoring``); ``max_abs_diff``: the largest score difference between the two outputs.

Needs Ray (``pip install 'pyica[ray]'``). Writes ``benchmarks/results/ray_speed.csv``.

    python -m benchmarks.ray_speed                        # 200 images, default and entropy models, 2 cores
    python -m benchmarks.ray_speed --images 50 --models entropy
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, machine_description
from pyica.registry import DEFAULT_MODEL

OUT = RESULTS / "ray_speed.csv"


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(n):
        a, b = rng.uniform(-1, 1, 2)
        base = 128 + 60 * np.sin(a * xx / 40 + b * yy / 50)[..., None] * rng.uniform(0.2, 1, 3)
        noise = rng.normal(0, rng.uniform(2, 60), (480, 640, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def run(cmd: list[str], cores: str | None) -> float:
    if cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", cores, *cmd]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(f) if r["score"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL, "entropy"],
                        help="models to time (default: the default model and entropy)")
    parser.add_argument("--cores", type=int, default=2, help="cores both engines run on (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("benchmarks.ray_speed needs Ray: pip install 'pyica[ray]'", file=sys.stderr)
        return 2
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = ",".join(map(str, available[: args.cores]))
    pyica = [sys.executable, "-m", "pyica"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pyica-ray-speed-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images)
        for model in args.models:
            results = {}
            for engine in ("local", "ray"):
                out = Path(tmp) / f"{model}.{engine}.csv"
                extra = ["--engine", "ray", "--num-cpus", str(args.cores)] if engine == "ray" else []
                wall = run([*pyica, "score", str(folder), "-m", model, "-o", str(out), "-q",
                            "--batch-size", str(args.batch_size), *extra], cores)
                meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
                results[engine] = (wall, meta["seconds_scoring"], scores(out))
                print(f"{model:>20} {engine:>5}: wall {wall:.1f} s, scoring {meta['seconds_scoring']:.1f} s, "
                      f"{args.images / meta['seconds_scoring']:.1f} images/s", file=sys.stderr)
            diff = max(abs(results["local"][2][p] - results["ray"][2][p]) for p in results["local"][2])
            for engine, (wall, scoring, _) in results.items():
                rows.append({"model": model, "engine": engine, "images": args.images, "cores": args.cores,
                             "batch_size": args.batch_size, "wall_s": round(wall, 2), "scoring_s": round(scoring, 2),
                             "ips_wall": round(args.images / wall, 2), "ips_scoring": round(args.images / scoring, 2),
                             "ratio_wall": round(results["local"][0] / wall, 3),
                             "ratio_scoring": round(results["local"][1] / scoring, 3),
                             "goal_ratio_scoring": 0.8,
                             "max_abs_diff": f"{diff:.2e}", "machine": machine_description()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
