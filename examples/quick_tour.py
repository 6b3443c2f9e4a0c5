"""A notebook-style tour of pyica: score a folder, look at the report, use the metric in a training loop.

Run from the repository root (after `make demo` or `pip install -e .`):

    python examples/quick_tour.py                    # uses examples/images, writes into out/tour/
    python examples/quick_tour.py --images photos/   # your own folder

Each step prints what it made; open out/tour/report.html in a browser (it works offline).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pyica
from pyica.cli import main as pyica_cli
from pyica.score_files import format_summary, summarize_scores

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=HERE / "images", help="folder of images (default: the examples)")
    parser.add_argument("--out", type=Path, default=Path("out") / "tour", help="where to write (default: out/tour)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. Score a folder with the default model, as `pyica score` does (progress bar, resumable output).
    scores = args.out / "scores.csv"
    pyica_cli(["score", str(args.images), "-o", str(scores), "--overwrite", "-q"])
    print(format_summary(summarize_scores(scores, top=3)))

    # 2. A second opinion from a classic measure, and one offline HTML page comparing both.
    edges = args.out / "edge_density.csv"
    pyica_cli(["score", str(args.images), "-m", "edge_density", "-o", str(edges), "--overwrite", "-q"])
    report = args.out / "report.html"
    pyica_cli(["report", str(scores), str(edges), "-o", str(report), "--overwrite"])
    print(f"report: {report} (gallery sorted by complexity, histogram, scatter of the two models)")

    # 3. The metric as a module: one image gives a float, a batch gives a tensor.
    metric = pyica.create_metric()
    first = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:4]
    print("one image:", first[0].name, round(metric(str(first[0])), 4))
    print("a batch:", metric([str(p) for p in first]))

    # 4. The metric as a loss: push a picture towards simplicity by gradient descent on its pixels.
    loss = metric.as_loss()
    image = torch.rand(1, 3, 128, 128, requires_grad=True)  # noise: very complex
    optimizer = torch.optim.Adam([image], lr=0.05)
    for step in range(20):
        optimizer.zero_grad()
        value = loss(image.clamp(0, 1))
        value.backward()
        optimizer.step()
        if step % 5 == 0 or step == 19:
            print(f"step {step:2d}: complexity {value.item():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
