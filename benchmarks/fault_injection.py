"""Kill -9 a scoring run at random points, resume it each time, and check that nothing was lost (issue 19).

A folder of generated images is scored once without interruption (the reference). Then the same job is
started as a separate process, killed with SIGKILL after a random number of rows has reached
``OUT.part`` (``--kills`` times, seeded), and continued with ``--resume`` after each kill until a run
finishes. The finished output must hold every image exactly once, with the reference's score, and no
stray file may be left beside it. Rows are counted as they reach the disk, so kills land mid-batch
and mid-write, not only between runs.

Results go to ``--out`` (JSON: trials, kills that landed, rows per kill, the checks) and are printed.

    python -m benchmarks.fault_injection                               # 2,000 images, 3 trials of 5 kills
    python -m benchmarks.fault_injection --images 200 --trials 1 --kills 3 --out /tmp/fi.json
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pyica.writers import read_scores

RESULTS = Path(__file__).resolve().parent / "results" / "fault_injection.json"


def make_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> list[Path]:
    """``n`` small PNGs of varying detail (noise of random amplitude over a gradient)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None]
    paths = []
    for i in range(n):
        pixels = ramp + rng.normal(0, rng.uniform(0, 80), (size, size, 3))
        path = folder / f"{i // 100:03d}" / f"img{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _command(folder: Path, out: Path, model: str, batch_size: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pyica", "score", str(folder), "-o", str(out), "-m", model, "-q",
            "--workers", "0", "--batch-size", str(batch_size), *extra]


def _rows_on_disk(part: Path) -> int:
    try:
        with open(part, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def run_with_kills(folder: Path, out: Path, *, kills: int, total: int, rng: random.Random, model: str = "entropy",
                   batch_size: int = 8, timeout: float = 600) -> list[int]:
    """Score ``folder`` into ``out``, killing the run ``kills`` times; return the rows on disk at each kill.

    Each kill waits for a random number of rows in ``(rows so far, total)`` to reach ``OUT.part``; a run
    that finishes first ends the loop early. The last run resumes to completion.
    """
    part = out.with_name(out.name + ".part")
    landed = []
    for k in range(kills + 1):
        extra = ["--resume"] if k or out.exists() or part.exists() else []
        process = subprocess.Popen(_command(folder, out, model, batch_size, extra), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        if k == kills:
            _, err = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"the final resume failed ({process.returncode}): {err.strip()}")
            break
        start = _rows_on_disk(part)
        target = rng.randint(start + 1, max(start + 1, total))
        deadline = time.monotonic() + timeout
        while process.poll() is None and _rows_on_disk(part) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        if process.poll() is not None:  # finished (or failed) before the kill
            if process.returncode != 0:
                raise RuntimeError(f"run {k} failed ({process.returncode}): {process.stderr.read().strip()}")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed.append(_rows_on_disk(part))
    return landed


def check_output(out: Path, reference: dict[str, float]) -> dict:
    """Every reference path exactly once with the same score; nothing left beside the output but its sidecars."""
    rows = read_scores(out)
    paths = [r["path"] for r in rows]
    scores = {r["path"]: r["score"] for r in rows}
    leftovers = sorted(p.name for p in out.parent.iterdir()
                       if p.name.startswith(out.name) and p.name not in (out.name, out.name + ".meta.json",
                                                                        out.name + ".lock"))
    return {
        "rows": len(rows),
        "duplicates": len(paths) - len(set(paths)),
        "missing": len(set(reference) - set(paths)),
        "unexpected": len(set(paths) - set(reference)),
        "score_mismatches": sum(scores.get(p) != s for p, s in reference.items() if p in scores),
        "leftover_files": leftovers,
    }


def passed(check: dict) -> bool:
    return (check["duplicates"] == check["missing"] == check["unexpected"] == check["score_mismatches"] == 0
            and not check["leftover_files"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="generated images to score (default: 2000)")
    parser.add_argument("--trials", type=int, default=3, help="independent killed-and-resumed jobs (default: 3)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per trial (default: 5)")
    parser.add_argument("--model", default="entropy", help="model to score with (default: entropy, a classic measure)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch, i.e. per flush (default: 8)")
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl"], choices=["csv", "jsonl"],
                        help="output formats to try, one trial set each (default: csv jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default: 0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS})")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pyica-fault-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        make_images(folder, args.images)
        t0 = time.perf_counter()
        subprocess.run(_command(folder, tmp / "reference.csv", args.model, args.batch_size, []), check=True)
        reference_seconds = time.perf_counter() - t0
        reference = {r["path"]: r["score"] for r in read_scores(tmp / "reference.csv")}
        trials = []
        for fmt in args.formats:
            for trial in range(args.trials):
                out = tmp / f"{fmt}-trial{trial}" / f"scores.{fmt}"
                out.parent.mkdir()
                landed = run_with_kills(folder, out, kills=args.kills, total=args.images, rng=rng, model=args.model,
                                        batch_size=args.batch_size)
                check = check_output(out, reference)
                trials.append({"format": fmt, "trial": trial, "kills_landed": len(landed),
                               "rows_on_disk_at_each_kill": landed, **check, "passed": passed(check)})
                print(json.dumps(trials[-1]))
    summary = {"images": args.images, "model": args.model, "batch_size": args.batch_size, "seed": args.seed,
               "reference_seconds": round(reference_seconds, 2), "trials": trials,
               "kills_landed": sum(t["kills_landed"] for t in trials),
               "all_passed": all(t["passed"] for t in trials),
               "command": " ".join(["python -m benchmarks.fault_injection", *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"{summary['kills_landed']} kills landed in {len(trials)} trials of {args.images} images: "
          f"{'every image exactly once with the reference score' if summary['all_passed'] else 'FAILED'} -> {args.out}")
    return 0 if summary["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
