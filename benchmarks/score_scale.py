"""Scoring at scale: peak memory of `pyica score` against the number of inputs, and loader throughput.

(a) memory: for each N (default 1,000, 10,000, 100,000) a tree of N *distinct* paths is made (folders
    of 1,000 files, hard links to a few hundred small generated PNGs, so making 100k inputs takes
    seconds and almost no disk). Distinct paths matter: the output has N rows and a resumed run keeps
    the set of N written paths. Two runs of ``python -m pyica score TREE -m MODEL --workers 0`` are
    measured as subprocesses, their peak resident memory (``ru_maxrss`` from ``os.wait4``, the process
    alone; ``--workers 0`` keeps all the work in that process):
    * ``fresh``: scores all N inputs into a new file (streaming: should not grow with N);
    * ``resume``: ``--resume`` on the finished file, so every input is skipped; its memory is the
      start-up plus the set of N done paths, the one thing that has to grow with N.
(b) throughput: the default model (or ``--model``) over a few hundred 512-px JPEGs (the images
    ``benchmarks/speed.py`` makes) with ``--workers`` 1, 2 and 4; images/s as the CLI reports it for
    its scoring loop (loading, preprocessing and forward) and end to end (whole command).

Prints a table and writes ``benchmarks/results/score_scale.csv`` (one row per run).

    python -m benchmarks.score_scale                                  # the full run (minutes)
    python -m benchmarks.score_scale --n 200 --throughput-images 16 --workers 1 --out /tmp/s.csv   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import REPO, RESULTS, machine_description
from benchmarks.speed import make_images

import pyica
from pyica.reports import format_table, read_results_csv, write_results_csv

COLUMNS = ["part", "model", "inputs", "run", "workers", "batch_size", "peak_rss_mib", "seconds",
           "e2e_images_per_s", "scoring_loop_images_per_s", "output_mib", "omp_num_threads", "machine", "pyica_version", "date"]
PER_FOLDER = 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="*", default=[1_000, 10_000, 100_000],
                   help="input counts for the memory part (default: 1000 10000 100000; none: skip it)")
    p.add_argument("--memory-model", default="entropy",
                   help="model of the memory part: the cheapest classic measure by default, so 100k inputs take minutes")
    p.add_argument("--distinct", type=int, default=256,
                   help="distinct 32x32 PNGs the memory part's paths link to (default 256)")
    p.add_argument("--model", default=pyica.DEFAULT_MODEL, help=f"model of the throughput part (default: {pyica.DEFAULT_MODEL})")
    p.add_argument("--throughput-images", type=int, default=256,
                   help="512-px JPEGs scored in the throughput part (default 256; 0: skip it)")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4],
                   help="DataLoader workers of the throughput part (default: 1 2 4)")
    p.add_argument("--batch-size", type=int, default=32, help="`pyica score --batch-size` (default 32)")
    p.add_argument("--device", default="cpu", help="device of the throughput part (default: cpu)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pyica-score-scale",
                   help="where inputs are made and cached (default: $TMPDIR/pyica-score-scale; not in the repo)")
    p.add_argument("--out", type=Path, default=RESULTS / "score_scale.csv", help="results CSV")
    return p.parse_args(argv)


def make_tree(work: Path, n: int, distinct: int) -> Path:
    """N distinct paths in folders of PER_FOLDER: hard links (symlinks if linking fails) to small PNGs."""
    root = work / f"links-n{n}-d{distinct}"
    if (root / ".complete").exists():
        return root
    sources = work / f"sources-d{distinct}"
    sources.mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        f = sources / f"{i:04d}.png"
        if not f.exists():
            rng = np.random.default_rng(i)  # noise of random strength over a gradient: scores differ
            base = np.linspace(0, 255, 32)[None, :, None] * rng.random(3)
            Image.fromarray(np.clip(base + rng.normal(0, 60 * rng.random(), (32, 32, 3)), 0, 255).astype(np.uint8)).save(f)
    for k in range(n):
        folder = root / f"d{k // PER_FOLDER:04d}"
        if k % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        target, link = sources / f"{k % distinct:04d}.png", folder / f"{k:07d}.png"
        if not link.exists():
            try:
                os.link(target, link)
            except OSError:
                link.symlink_to(target)
    (root / ".complete").write_text(str(n))  # hidden: the folder walk skips it
    return root


def run_score(args: list[str]) -> tuple[float, int, dict]:
    """Seconds, peak RSS (KiB, this process alone) and meta.json of one `python -m pyica score` run."""
    out = Path(args[args.index("-o") + 1])
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "pyica", "score", *args, "-q"], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"`pyica score {' '.join(args)}` failed ({proc.returncode}):\n{err.read().decode()}")
    return seconds, usage.ru_maxrss, json.loads(out.with_name(out.name + ".meta.json").read_text())


def memory_rows(args, common: dict) -> list[dict]:
    rows = []
    for n in args.n:
        tree = make_tree(args.work_dir, n, args.distinct)
        out = args.work_dir / "out" / f"scores-n{n}.csv"
        base = [str(tree), "-m", args.memory_model, "-o", str(out), "--workers", "0", "--batch-size", str(args.batch_size)]
        for run, extra in (("fresh", ["--overwrite"]), ("resume", ["--resume"])):
            seconds, rss, meta = run_score(base + extra)
            if meta["inputs"] != n or meta["scored"] + meta["errors"] + meta["skipped_already_done"] != n:
                raise SystemExit(f"N={n} {run}: the CLI saw {meta['inputs']} inputs")
            rows.append({"part": "memory", "model": args.memory_model, "inputs": n, "run": run, "workers": 0,
                         "batch_size": args.batch_size, "peak_rss_mib": round(rss / 1024, 1), "seconds": round(seconds, 2),
                         "e2e_images_per_s": round(n / seconds, 1) if run == "fresh" else "",
                         "scoring_loop_images_per_s": meta["images_per_second"] or "",
                         "output_mib": round(out.stat().st_size / 2**20, 2), **common})
            print(f"memory N={n} {run}: peak RSS {rows[-1]['peak_rss_mib']} MiB, {seconds:.1f} s", flush=True)
    return rows


def throughput_rows(args, common: dict) -> list[dict]:
    folder = make_images(args.work_dir, args.throughput_images, seed=0)
    out = args.work_dir / "out" / "throughput.csv"
    base = [str(folder), "-m", args.model, "-o", str(out), "--overwrite", "--device", args.device,
            "--batch-size", str(args.batch_size)]
    warmup = sorted(str(f) for f in folder.glob("*.jpg"))[:8]  # first start-up of a model: disk caches
    run_score([*warmup, *base[1:]])
    rows = []
    for w in args.workers:
        seconds, rss, meta = run_score(base + ["--workers", str(w)])
        n = meta["inputs"]
        rows.append({"part": "throughput", "model": args.model, "inputs": n, "run": "fresh", "workers": w,
                     "batch_size": args.batch_size, "peak_rss_mib": round(rss / 1024, 1), "seconds": round(seconds, 2),
                     "e2e_images_per_s": round(n / seconds, 2), "scoring_loop_images_per_s": meta["images_per_second"],
                     "output_mib": round(out.stat().st_size / 2**20, 3), **common})
        print(f"throughput workers={w}: {meta['images_per_second']} images/s (scoring loop)", flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    if args.work_dir.is_relative_to(REPO):
        raise SystemExit(f"--work-dir {args.work_dir} is inside the repository; pick a folder outside it")
    (args.work_dir / "out").mkdir(parents=True, exist_ok=True)
    common = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "machine": machine_description(), "pyica_version": pyica.__version__, "date": date.today().isoformat()}
    print(f"machine: {common['machine']}; work dir {args.work_dir}", flush=True)
    rows = memory_rows(args, common)
    if args.throughput_images:
        rows += throughput_rows(args, common)
    print("\n" + format_table(rows, columns=COLUMNS[:11], floatfmt=".2f"))
    rerun = {r["part"] for r in rows}  # a part skipped this time keeps its earlier rows
    kept = [r for r in (read_results_csv(args.out) if args.out.exists() else []) if r.get("part") not in rerun]
    write_results_csv([{c: r.get(c, "") for c in COLUMNS} for r in kept + rows], args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
