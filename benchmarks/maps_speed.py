"""What complexity maps cost next to scores alone, and where their time goes (issue 21).

Photos: ``--images`` distinct JPEGs of 1.2-2.1 MP, upscaled (and flipped) from the example images in
``examples/images`` into a temp folder (never the repository). For each ``--workers`` count it runs

    python -m pyica score FOLDER -o scores.csv -m MODEL --workers W -q                 (scores)
    python -m pyica score FOLDER -o scores.csv -m MODEL --workers W -q --maps DIR      (maps)

as subprocesses (start-up and model build included in both) with the pyica sources of ``--src``
(default: this checkout), and reports wall seconds and ``ratio = maps / scores``; ``--before SRC`` adds
the same maps run with other sources (e.g. a checkout from before the change) for a before/after ratio.
``loop_ratio`` compares the scoring loops alone (``seconds_scoring`` + the maps' ``seconds`` of the runs'
``scores.csv.meta.json``: loading, forwards, maps; no start-up or model build), what a long job sees.
``--profile N`` times each stage of a map in this process on N photos, one image at a time, so that
what dominates is visible: decode, the patches' crop and transform, the patch forwards (per patch and
per image), the score's own forward, rendering and PNG writing.

``measure_maps(folder, model=..., workers=..., src=...)`` returns the rows, for other benchmarks to reuse.

    python -m benchmarks.maps_speed --images 32 --workers 0 2 --before /tmp/before/src --profile 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.common import REPO

SIZES = [(1600, 1200), (1440, 1080), (1280, 960), (1200, 1600), (1920, 1080)]


def make_photos(folder: str | os.PathLike, count: int = 64) -> list[Path]:
    """``count`` distinct 1.2-2.1 MP JPEGs from the example images (kept if already there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "examples" / "images").glob("*.jpg"))
    out = []
    for i in range(count):
        target = folder / f"p{i:03d}.jpg"
        if not target.exists():
            image = Image.open(sources[i % len(sources)]).convert("RGB")
            if (i // len(sources)) % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if (i // len(sources)) % 4 >= 2:
                image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            image.resize(SIZES[i % len(SIZES)], Image.Resampling.BICUBIC).save(target, quality=90)
        out.append(target)
    return out


def _run(src: str, folder: Path, model: str, workers: int, maps: bool, scratch: Path) -> dict:
    out = scratch / "scores.csv"
    for p in scratch.glob("scores.csv*"):
        p.unlink()
    shutil.rmtree(scratch / "maps", ignore_errors=True)
    cmd = [sys.executable, "-m", "pyica", "score", str(folder), "-o", str(out), "-m", model,
           "--workers", str(workers), "-q"] + (["--maps", str(scratch / "maps")] if maps else [])
    env = {**os.environ, "PYTHONPATH": src}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    meta = json.loads((scratch / "scores.csv.meta.json").read_text())
    maps_s = (meta.get("maps") or {}).get("seconds") or 0.0
    # the loop: loading, scoring and maps, without start-up and model build
    return {"wall_s": round(wall, 2), "loop_s": round(meta["seconds_scoring"] + maps_s, 2), "maps_s": maps_s,
            "maps_written": (meta.get("maps") or {}).get("written")}


def measure_maps(folder: str | os.PathLike, *, model: str = "effnet_lite0_within.savoias",
                 workers: tuple[int, ...] = (0, 2), src: str | None = None, before: str | None = None) -> list[dict]:
    """Wall seconds of a score-only run and a maps run (and, with ``before``, a maps run with those sources)
    per worker count, and ``ratio`` = maps / scores; one dict per worker count."""
    folder = Path(folder)
    src = src or str(REPO / "src")
    n = sum(1 for _ in folder.glob("*.jpg"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="pyica-maps-speed-") as scratch:
        scratch = Path(scratch)
        for w in workers:
            scores = _run(src, folder, model, w, False, scratch)
            maps = _run(src, folder, model, w, True, scratch)
            row = {"model": model, "images": n, "workers": w, "scores_wall_s": scores["wall_s"],
                   "maps_wall_s": maps["wall_s"], "ratio": round(maps["wall_s"] / scores["wall_s"], 2),
                   "scores_loop_s": scores["loop_s"], "maps_loop_s": maps["loop_s"],
                   "loop_ratio": round(maps["loop_s"] / scores["loop_s"], 1), "maps_written": maps["maps_written"]}
            if before:
                old = _run(before, folder, model, w, True, scratch)
                row.update(before_maps_wall_s=old["wall_s"], before_ratio=round(old["wall_s"] / scores["wall_s"], 2),
                           before_maps_loop_s=old["loop_s"], before_loop_ratio=round(old["loop_s"] / scores["loop_s"], 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def profile_stages(paths, model_name: str = "effnet_lite0_within.savoias", batch_size: int = 32) -> dict:
    """Milliseconds per image of each stage of a map, one image at a time in this process (after one
    untimed warm-up image)."""
    import torch

    from pyica import maps as M
    from pyica.loading import load_image
    from pyica.registry import create_model

    model = create_model(model_name, device="cpu")
    stages: dict[str, float] = {}
    patches = 0

    def timed(name, fn):
        t = time.perf_counter()
        value = fn()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
        return value

    for k, path in enumerate([paths[0], *paths]):
        if k == 1:
            stages.clear()
            patches = 0
        image = timed("decode", lambda: load_image(path))
        item = timed("score transform", lambda: model.transform(image))
        score = timed("score forward (batch of 1)", lambda: float(model.score_batch(model.collate([item]))[0]))
        boxes, shape = M.patch_grid(image.width, image.height)
        patches += len(boxes)
        items = timed("patches crop + transform", lambda: [model.transform(image.crop(b)) for b in boxes])
        grid = timed("patches forward", lambda: torch.cat([model.score_batch(model.collate(items[i:i + batch_size]))
                                                           for i in range(0, len(items), batch_size)]).numpy().reshape(shape))
        picture = timed("render", lambda: M.render_map(image.convert("L"), grid, score=score, value_range=(0, 1),
                                                       boxes=boxes))
        with tempfile.TemporaryDirectory() as tmp:
            timed("png + npy write", lambda: M.write_map(tmp, path, grid, picture))
    n = len(paths)
    out = {name: round(1000 * seconds / n, 1) for name, seconds in stages.items()}
    out["patches per image"] = round(patches / n, 1)
    out["patch forward ms per patch"] = round(1000 * stages["patches forward"] / patches, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("-m", "--model", default="effnet_lite0_within.savoias")
    p.add_argument("--src", default=None, help="pyica sources of the runs (default: this checkout's src)")
    p.add_argument("--before", default=None, help="also run the maps with these sources (before/after)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also time each stage on N photos")
    p.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "pyica-maps-photos"))
    args = p.parse_args(argv)
    folder = Path(args.folder) / str(args.images)
    paths = make_photos(folder, args.images)
    if args.profile:
        print(json.dumps({"profile_ms_per_image": profile_stages(paths[:args.profile], args.model)}), flush=True)
    measure_maps(folder, model=args.model, workers=tuple(args.workers), src=args.src, before=args.before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
