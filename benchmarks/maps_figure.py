"""Complexity maps of a few example images from several models, side by side in one image (PNG or JPEG).

Each row is an image: the photo, then one overlay per model (``pyica.maps.complexity_map`` and
``pyica.maps.overlay``, the code behind ``pyica score --maps``), captioned with the model's score of
the whole image and its map's range. A model with its own map (ICNet) draws that; the others score patches. Every overlay
is scaled to its own map's range, so colours compare places within one map, not across maps.

Default images: photos that scikit-image ships (free to redistribute, unlike SAVOIAS) and two of the
repository's synthetic examples. Models are ``NAME`` or ``NAME=WEIGHTS``:

    python -m benchmarks.maps_figure -m effnet_lite0_ridge.savoias \\
        icnet.savoias=runs/icnet.savoias.cpu/icnet.savoias.safetensors
    python -m benchmarks.maps_figure -m entropy --images a.jpg b.png --out /tmp/maps.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
EXAMPLES = ("examples/images/cluttered_shapes.jpg", "examples/images/sky_gradient.jpg")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", default=["effnet_lite0_ridge.savoias"],
                   help="NAME or NAME=WEIGHTS (a weights file for models that need one, e.g. icnet.savoias)")
    p.add_argument("--images", nargs="+", default=None,
                   help="image files (default: scikit-image photos " + ", ".join(SKIMAGE_PHOTOS) + " and two examples)")
    p.add_argument("--tile", type=int, default=256, help="height of each tile in pixels (default 256)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "maps_examples.jpg",
                   help="output image, PNG or JPEG by its suffix (default benchmarks/results/maps_examples.jpg)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    return p.parse_args(argv)


def default_images() -> list[tuple[str, Image.Image]]:
    """(label, RGB image) of the default examples."""
    import skimage.data

    images = [(name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in SKIMAGE_PHOTOS]
    return images + [(Path(p).stem, Image.open(REPO / p).convert("RGB")) for p in EXAMPLES]


def load_models(specs: list[str], device: str) -> list[tuple[str, object]]:
    from pyica.registry import create_model

    models = []
    for spec in specs:
        name, _, weights = spec.partition("=")
        models.append((name, create_model(name, device=device, **({"weights": weights} if weights else {}))))
    return models


def captioned(image: Image.Image, text: str, height: int) -> Image.Image:
    """``image`` scaled to ``height`` with ``text`` on a dark strip at its top."""
    width = max(1, round(image.width * height / image.height))
    tile = image.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, width, 14), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return tile


def main(argv=None) -> None:
    from pyica import maps

    args = parse_args(argv)
    images = ([(Path(p).stem, Image.open(p).convert("RGB")) for p in args.images] if args.images
              else default_images())
    models = load_models(args.models, args.device)
    rows = []
    for label, image in images:
        tiles = [captioned(image, label, args.tile)]
        for name, model in models:
            grid = maps.complexity_map(model, image)
            boxes = None if grid.shape == (image.height, image.width) else maps.patch_grid(image.width, image.height)[0]
            score = float(model.score_images([image])[0])
            caption = f"{name}: {score:.3f} (map {grid.min():.2f}-{grid.max():.2f})"
            tiles.append(captioned(maps.overlay(image, grid, boxes=boxes), caption, args.tile))
            print(f"{label:24s} {name:32s} score {score:.4f}  map {grid.shape[0]}x{grid.shape[1]} "
                  f"range {grid.min():.3f}..{grid.max():.3f}", flush=True)
        rows.append(tiles)
    gap = 4
    width = max(sum(t.width for t in tiles) + gap * (len(tiles) - 1) for tiles in rows)
    sheet = Image.new("RGB", (width, len(rows) * (args.tile + gap) - gap), (255, 255, 255))
    for r, tiles in enumerate(rows):
        x = 0
        for tile in tiles:
            sheet.paste(tile, (x, r * (args.tile + gap)))
            x += tile.width + gap
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, **({"quality": 90} if args.out.suffix.lower() in (".jpg", ".jpeg") else {}))
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    sys.exit(main())
