"""Scoring speed of registered models on this machine: end to end through the CLI, and model-only.

For each model it measures, on a folder of N distinct 512-px JPEGs made from the photos scikit-image
ships (no dataset needed; cached in a temp folder, never in the repository):

* end to end: wall clock of ``python -m pyica score FOLDER -m MODEL -o scores.csv`` as a subprocess
  (includes interpreter start-up and model build), and the scoring-loop rate the CLI itself writes to
  ``scores.csv.meta.json`` (``images_per_second``: loading, preprocessing and forward only);
* model-only: ``model.score_batch(batch)`` repeated on one batch preprocessed beforehand (the CLI's
  batch size), i.e. the forward alone; ``ratio_loop_to_model`` = scoring loop / model-only (>= 0.8 means
  the data pipeline keeps the model busy);
* size: parameter count (``model.parameters()`` only, buffers not counted) and GFLOPs of one forward on
  one image from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs).
  Classic measures compute in numpy, which the counter cannot see, so their FLOPs are left empty.

Writes ``benchmarks/results/speed.csv`` (one row per model; rerunning some models replaces only their
rows) and the docs/benchmarks.md table between the ``speed`` markers (skipped with a warning if they are missing).

Start-up (``--startup-only``, or after the rates unless ``--no-startup``): the wall clock of short commands
as subprocesses, the median of ``--startup-runs`` runs taken in turns after one untimed run of each:
``python -c "import numpy, PIL"`` (the yardstick), ``pyica --version``, ``pyica list``, ``pyica info
DEFAULT`` and, per model, ``pyica score ONE.jpg -m MODEL`` (time to the first score: start-up, model
build, loading and one forward). ``--src`` picks the pyica sources the subprocesses import, so another
checkout is measured by the same script. Writes ``benchmarks/results/startup.csv`` (rows of the same
``--label`` and command are replaced) and the table between the ``startup`` markers of docs/benchmarks.md.

    python -m benchmarks.speed                                    # default model + every learned model
    python -m benchmarks.speed -m compression_ratio_jpeg edge_density --images 64
    python -m benchmarks.speed --startup-only                     # start-up and time to the first score
    python -m benchmarks.speed --startup-only --src ../main/src --label before --no-doc
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from PIL import Image

from benchmarks.common import DOC, REPO, RESULTS, machine_description, update_doc_section

import pyica
from pyica.loading import load_image
from pyica.registry import create_model, get_entry
from pyica.reports import format_markdown_table, format_table, write_results_csv
from pyica.runtime import default_num_workers

COLUMNS = ["model", "images", "image_seed", "batch_size", "workers", "e2e_images_per_s",
           "scoring_loop_images_per_s", "model_only_images_per_s", "ratio_loop_to_model", "params",
           "gflops_per_image", "torch_threads", "machine", "pyica_version", "date", "note"]
STARTUP_COLUMNS = ["command", "model", "runs", "median_s", "min_s", "max_s", "x_numpy_pil", "label", "code",
                   "machine", "pyica_version", "date"]
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="*", default=None,
                   help="registered model names (default: the default model and every learned model that ships weights)")
    p.add_argument("--all", action="store_true", help="also benchmark every classic measure")
    p.add_argument("--images", type=int, default=256, help="number of generated test images N (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random crops/flips that make the images differ")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pyica-speed",
                   help="where the generated images are cached (default: $TMPDIR/pyica-speed; not in the repo)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="passed to `pyica score --batch-size`, also the model-only batch (default: the CLI's, 32)")
    p.add_argument("--workers", type=int, default=None,
                   help="passed to `pyica score --workers` (default: the CLI's, one per spare core)")
    p.add_argument("--device", default="cpu", help="device for the CLI run and the model-only run (default: cpu)")
    p.add_argument("--repeats", type=int, default=1,
                   help="end-to-end runs per model; the median rates are reported (default 1)")
    p.add_argument("--min-seconds", type=float, default=5.0,
                   help="model-only timing repeats the forward until at least this long (default 5)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the CLI warm-up run on a few images (it fills the OS file cache)")
    p.add_argument("--out", type=Path, default=RESULTS / "speed.csv", help="tidy results CSV")
    p.add_argument("--startup-only", action="store_true", help="measure only start-up and time to the first score")
    p.add_argument("--no-startup", action="store_true", help="measure only the scoring rates")
    p.add_argument("--startup-runs", type=int, default=7, help="timed runs of each start-up command (default 7)")
    p.add_argument("--src", type=Path, default=Path(pyica.__file__).resolve().parents[1],
                   help="the folder holding the pyica package the start-up subprocesses import "
                        "(default: the one this script imports)")
    p.add_argument("--label", default="", help="a word for the start-up rows, e.g. before/after")
    p.add_argument("--startup-out", type=Path, default=RESULTS / "startup.csv", help="start-up results CSV")
    p.add_argument("--no-doc", "--no-readme", action="store_true",
                   help="do not rewrite the table in docs/benchmarks.md")
    return p.parse_args(argv)


def make_images(work_dir: Path, n: int, seed: int) -> Path:
    """N distinct JPEGs (longest side 512, quality 90): random crops/flips of scikit-image's photos."""
    folder = work_dir.resolve() / f"images-n{n}-seed{seed}"
    if folder.is_relative_to(REPO):
        raise SystemExit(f"--work-dir {work_dir} is inside the repository; pick a folder outside it")
    done = folder / ".complete"  # hidden: the CLI's folder walk skips it
    if done.exists():
        return folder
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("generating the test images needs scikit-image: pip install pyica[dev]") from None
    photos = [getattr(skimage.data, name)() for name in SOURCES]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(photo[y:y + ch, x:x + cw])
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = 512 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img.save(folder / f"img_{i:04d}.jpg", quality=90)
    done.write_text(json.dumps({"images": n, "seed": seed, "sources": SOURCES}))
    return folder


def run_cli(inputs: list[str], name: str, args, out_dir: Path) -> tuple[float, dict]:
    """Wall-clock seconds of one `pyica score` subprocess, and the meta.json it wrote."""
    out = out_dir / "scores.csv"
    cmd = [sys.executable, "-m", "pyica", "score", *inputs, "-m", name, "-o", str(out), "--overwrite", "-q",
           "--device", args.device]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
    return seconds, json.loads(out.with_name(out.name + ".meta.json").read_text())


def model_only(name: str, paths: list[str], batch_size: int, args) -> dict:
    """Forward throughput on one preprocessed batch, parameter count and FLOPs of one image."""
    model = create_model(name, device=args.device)
    items = [model.transform(load_image(paths[i % len(paths)])) for i in range(batch_size)]
    batch = model.collate(items)
    model.score_batch(batch)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.min_seconds or reps == 0:
        model.score_batch(batch)
        reps += 1
    with FlopCounterMode(display=False) as counter:
        model.score_batch(model.collate(items[:1]))
    flops = counter.get_total_flops()
    note = "" if flops else ("classic measure: computed in numpy, FLOPs not countable by torch"
                             if get_entry(name).kind == "classic" else "no torch FLOPs counted")
    return {"model_only_images_per_s": round(reps * batch_size / elapsed, 2),
            "params": sum(p.numel() for p in model.parameters()),
            "gflops_per_image": round(flops / 1e9, 4) if flops else "", "note": note}


def benchmark(name: str, folder: Path, args, machine: str) -> dict:
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="pyica-speed-") as tmp:
        if not args.no_warmup:
            run_cli(paths[:8], name, args, Path(tmp))
        runs = [run_cli([str(folder)], name, args, Path(tmp)) for _ in range(args.repeats)]
    meta = runs[-1][1]
    if meta["scored"] != len(paths):
        raise SystemExit(f"{name}: the CLI scored {meta['scored']} of {len(paths)} images ({meta['errors']} errors)")
    row = {"model": name, "images": len(paths), "image_seed": args.seed, "batch_size": meta["batch_size"],
           "workers": default_num_workers() if meta["workers"] is None else meta["workers"],
           "e2e_images_per_s": round(statistics.median(len(paths) / s for s, _ in runs), 2),
           "scoring_loop_images_per_s": round(statistics.median(m["images_per_second"] for _, m in runs), 2)}
    row.update(model_only(name, paths, meta["batch_size"], args))
    row["ratio_loop_to_model"] = round(row["scoring_loop_images_per_s"] / row["model_only_images_per_s"], 3)
    row.update(torch_threads=torch.get_num_threads(), machine=machine, pyica_version=pyica.__version__,
               date=date.today().isoformat())
    return {c: row[c] for c in COLUMNS}


def _code_of(src: Path) -> str:
    """The git commit of the checkout holding ``src`` (``+`` when it has uncommitted changes), or the folder."""
    def git(*cmd):
        return subprocess.run(["git", "-C", str(src), *cmd], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return f"{commit}{'+' if git('status', '--porcelain', '--', '.') else ''}" if commit else str(src)


def startup_commands(models: list[str], image: str, device: str) -> list[tuple[str, str, list[str]]]:
    """``(command as shown, model, argv)`` of every start-up measurement; the first is the yardstick."""
    py = [sys.executable]
    commands = [("python -c 'import numpy, PIL'", "", py + ["-c", "import numpy, PIL"]),
                ("pyica --version", "", py + ["-m", "pyica", "--version"]),
                ("pyica list", "", py + ["-m", "pyica", "list"]),
                ("pyica info MODEL", pyica.DEFAULT_MODEL, py + ["-m", "pyica", "info", pyica.DEFAULT_MODEL])]
    for name in models:
        commands.append(("pyica score ONE.jpg -m MODEL", name,
                         py + ["-m", "pyica", "score", image, "-m", name, "--device", device]))
    return commands


def measure_startup(models: list[str], image: str, args, machine: str) -> list[dict]:
    """Median wall clock of each start-up command, as subprocesses importing pyica from ``args.src``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.src.resolve()),
                                                                     os.environ.get("PYTHONPATH")]))}
    commands = startup_commands(models, image, args.device)
    where = subprocess.run([sys.executable, "-c", "import pyica; print(pyica.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tempfile.gettempdir()).stdout.strip()
    if not Path(where).resolve().is_relative_to(args.src.resolve()):
        raise SystemExit(f"the subprocesses import pyica from {where or '(nowhere)'}, not from --src {args.src}")

    def run(argv: list[str]) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr}")
        return seconds

    for _, _, argv in commands:  # untimed: fills the OS file cache
        run(argv)
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(args.startup_runs):  # in turns, so a noisy minute spreads over every command
        for i, (_, _, argv) in enumerate(commands):
            times[i].append(run(argv))
    yardstick = statistics.median(times[0])
    code, today = _code_of(args.src), date.today().isoformat()
    return [{"command": shown, "model": model, "runs": len(t), "median_s": round(statistics.median(t), 3),
             "min_s": round(min(t), 3), "max_s": round(max(t), 3),
             "x_numpy_pil": round(statistics.median(t) / yardstick, 2), "label": args.label, "code": code,
             "machine": machine, "pyica_version": pyica.__version__, "date": today}
            for (shown, model, _), t in zip(commands, times)]


def startup_table(rows: list[dict]) -> str:
    machines = "; ".join(dict.fromkeys(r["machine"] for r in rows))
    shown = [{**r, "code": f"{r['code']} ({r['label']})" if r["label"] else r["code"]} for r in rows]
    return "\n".join([
        f"Wall clock of each command as a subprocess, median of {', '.join(sorted({str(r['runs']) for r in rows}))} "
        f"runs taken in turns, on {machines}; `x_numpy_pil` = the median over that of "
        "`python -c 'import numpy, PIL'` in the same run. `pyica score ONE.jpg` is the time to the first score "
        "(one 512-px JPEG: start-up, model build, loading, one forward, the CSV row).", "",
        format_markdown_table(shown, columns=["command", "model", "median_s", "min_s", "max_s", "x_numpy_pil", "code"],
                              floatfmt=".2f")])


def run_startup(names: list[str], args, machine: str) -> None:
    folder = make_images(args.work_dir, 8, args.seed)
    image = str(sorted(folder.glob("*.jpg"))[0])
    print(f"start-up of pyica from {args.src} ({_code_of(args.src)}); first score of {image}", flush=True)
    new = measure_startup(names, image, args, machine)
    keep = [r for r in (read_rows(args.startup_out) if args.startup_out.exists() else [])
            if (r["label"], r["command"], r["model"]) not in {(n["label"], n["command"], n["model"]) for n in new}]
    rows = keep + new
    write_results_csv(rows, args.startup_out)
    print("\n" + format_table(new, columns=STARTUP_COLUMNS[:8], floatfmt=".3f"))
    if not args.no_doc:
        if "<!-- startup:start -->" in DOC.read_text():
            update_doc_section("startup", startup_table(rows))
        else:
            print(f"warning: no <!-- startup:start/end --> markers in {DOC}; not updated", file=sys.stderr)
    print(f"\nwrote {args.startup_out}")


def read_rows(path: Path) -> list[dict]:
    def number(text: str):
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
        return text

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def doc_table(rows: list[dict]) -> str:
    cols = ["model", "e2e_images_per_s", "scoring_loop_images_per_s", "model_only_images_per_s",
            "ratio_loop_to_model", "params", "gflops_per_image"]
    machines = "; ".join(dict.fromkeys(f"{r['machine']} ({r['torch_threads']} torch threads)" for r in rows))
    setup = "; ".join(dict.fromkeys(f"{r['images']} images, batch {r['batch_size']}, DataLoader workers {r['workers']}"
                                    for r in rows))
    shown = [{**r, "gflops_per_image": r["gflops_per_image"] if r["gflops_per_image"] != "" else "n/a"}
             for r in sorted(rows, key=lambda r: r["model"])]
    return "\n".join([
        f"Images per second on {machines}; {setup}. `e2e` is the whole `pyica score` command (start-up "
        "and model build included), `scoring_loop` the rate the CLI reports, `model_only` the forward "
        "alone on a preprocessed batch. Classic measures compute in numpy, so torch counts no FLOPs.", "",
        format_markdown_table(shown, columns=cols, floatfmt=".2f")])


def main(argv=None) -> None:
    args = parse_args(argv)
    shipped = [n for n in pyica.list_models(kind="learned") if not get_entry(n).needs_weights]
    names = args.models or sorted({pyica.DEFAULT_MODEL, *shipped}
                                  | (set(pyica.list_models(kind="classic")) if args.all else set()))
    for name in names:
        try:
            get_entry(name)
        except KeyError as err:
            raise SystemExit(err.args[0]) from None
    machine = machine_description()
    if args.startup_only:
        run_startup(args.models or [pyica.DEFAULT_MODEL], args, machine)
        return
    folder = make_images(args.work_dir, args.images, args.seed)
    print(f"{args.images} images (seed {args.seed}) in {folder}; models: {', '.join(names)}\n"
          f"machine: {machine}; torch threads: {torch.get_num_threads()}", flush=True)

    rows = [r for r in (read_rows(args.out) if args.out.exists() else []) if r["model"] not in names]
    new = []
    for name in names:
        new.append(benchmark(name, folder, args, machine))
        r = new[-1]
        print(f"{name}: e2e {r['e2e_images_per_s']}, scoring loop {r['scoring_loop_images_per_s']}, "
              f"model-only {r['model_only_images_per_s']} images/s", flush=True)
        write_results_csv(rows + new, args.out)  # after every model, so an interrupted run keeps what it measured
    rows += new
    print("\n" + format_table(new, columns=COLUMNS[:12], floatfmt=".2f"))

    table = doc_table(rows)
    print("\n" + table)
    if not args.no_doc:
        text = DOC.read_text()
        if "<!-- speed:start -->" in text and "<!-- speed:end -->" in text:
            update_doc_section("speed", table)
        else:
            print(f"warning: no <!-- speed:start/end --> markers in {DOC}; not updated", file=sys.stderr)
    print(f"\nwrote {args.out}")
    if not args.no_startup:
        run_startup(args.models or [pyica.DEFAULT_MODEL], args, machine)


if __name__ == "__main__":
    main()
