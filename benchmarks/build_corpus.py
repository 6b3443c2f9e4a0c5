"""Build an unlabeled image corpus for CLICv2 pretraining from Debian packages with known licences.

Why: CLICv2 learns complexity from unlabeled images, and SAVOIAS (the probe's test set) is far too
small and must never be pretrained on. Debian's archive is reachable from these machines and holds
tens of thousands of images whose licences its ``debian/copyright`` files state: public-domain clip
art, wallpapers (photographs, renders), icon themes, game textures and paintings.

What it does
------------
1. ``--install`` runs ``apt-get install`` for ``--packages`` (here, in this script; never in tests or
   CI). Without it, the packages already installed are used and a missing one is reported.
2. Lists each package's raster files (``dpkg -L``; ``.png .jpg .jpeg .webp .bmp .gif .tga``) and the
   images inside its ``.pk3`` archives (zip files of game textures). SVGs are left out: rendering
   them needs a renderer this project does not depend on.
3. Keeps one file per *variant group*: files whose paths differ only in size-like parts
   (``256x256``, ``1920x1080``, ``@2x``, ``-128``) are one image at several resolutions (icon themes,
   wallpapers); the one with the most pixels is kept. Byte-identical files are kept once.
4. Decodes each by pyica's own pixel rules (:func:`pyica.loading.load_image`: EXIF, ICC to sRGB,
   alpha composited on white, 8-bit RGB) and drops it when its shorter side is under ``--min-side``
   (tiny icons, sprites) or it is nearly flat (grey-level standard deviation under ``--min-std``).
5. Downscales so the longer side is at most ``--max-side`` (Lanczos), then drops near-duplicates:
   a 64-bit difference hash (dHash of a 9x8 grey thumbnail) within ``--max-hamming`` bits of an image
   already kept (found through four 16-bit bands, so the check is not quadratic) and a 16x16 grey
   thumbnail within ``--max-thumb-diff`` of it (the dHash alone calls most clip art on white alike). Files are visited
   in a fixed order (package, path), so the same packages give the same corpus.
6. Shuffles (``--seed``) and writes uncompressed tar shards ``corpus-000000.tar ...`` of
   ``--shard-size`` images, each image a PNG when it has at most 256 colours (clip art, icons: no JPEG
   ringing added to line art) and a JPEG (quality 92) otherwise, plus ``manifest.csv`` (one row per
   image: shard, member, source package and version, licence and where the licence was read,
   original path, original and stored size, kind, dHash) and ``summary.json`` (counts per source:
   found, kept, dropped for each reason).

The licence of a file is the ``License:`` of the ``Files:`` stanza of the package's machine-readable
(DEP-5) ``/usr/share/doc/PKG/copyright`` whose pattern matches the end of the installed path; else
the ``Files: *`` stanza; packages without a DEP-5 file carry the licence read from their copyright
text by hand (``PACKAGE_LICENCES``, ``licence_source`` says which). The corpus is for pretraining
research; its images keep their licences.

SAVOIAS is never part of the corpus: nothing is read from ``../shared``. ``pyica pretrain`` takes the
shards as a source (``corpus-{000000..000019}.tar``).

Examples::

    sudo python -m benchmarks.build_corpus --install --out /tmp/pyica-corpus     # everything, ~10 min
    python -m benchmarks.build_corpus --out /tmp/small --packages mate-backgrounds --max-side 160
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pyica.loading import ImageLoadError, load_image

from .common import RESULTS

#: Package -> kind of image it holds (a manifest column; the mix is reported per kind).
PACKAGES = {
    "openclipart-png": "clip art",
    "gnome-backgrounds": "wallpaper",
    "mate-backgrounds": "wallpaper",
    "plasma-workspace-wallpapers": "wallpaper",
    "desktop-base": "wallpaper",
    "sway-backgrounds": "wallpaper",
    "lomiri-wallpapers-20.04": "wallpaper",
    "oxygen-icon-theme": "icon",
    "adwaita-icon-theme": "icon",
    "colobot-common-textures": "texture",
    "openarena-081-textures": "texture",
    "mypaint-data-extras": "texture",
    "tuxpaint-stamps-default": "stamp",
    "wesnoth-1.16-data": "painting",
    "hedgewars-data": "painting",
    "supertuxkart-data": "texture",
    "stellarium-data": "painting",
}

#: Licences of packages whose copyright file is not machine-readable, read from it by hand.
PACKAGE_LICENCES = {
    "openclipart-png": "public-domain (Creative Commons Public Domain Dedication)",
    "gnome-backgrounds": "GPL-2+ / CC-BY-SA-3.0 / CC-BY-SA-2.0 / CC-BY-2.0 (per image, see copyright)",
    "adwaita-icon-theme": "CC-BY-SA-3.0 or LGPL-3",
    "wesnoth-1.16-data": "GPL-2+",
}

RASTER = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tga")
#: Path parts that name a resolution: the same picture at several sizes.
SIZE_PART = re.compile(r"(\d{2,5}x\d{2,5})|(@\dx)|([-_]\d{2,4}(?=\.\w+$))|(^\d{2,4}$)", re.I)


@dataclass
class Candidate:
    package: str
    path: str            # an installed file, or "ARCHIVE.pk3:member"
    size_bytes: int
    group: str           # variant group: same picture at other resolutions


# --- listing ---------------------------------------------------------------------------------------------

def install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0:
        cmd.insert(0, "sudo")
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env=env)


def package_version(package: str) -> str | None:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True)
    if out.returncode != 0 or "install ok installed" not in out.stdout:
        return None
    return out.stdout.split("\t", 1)[1]


def variant_group(package: str, path: str) -> str:
    parts = [p for p in path.split("/") if not SIZE_PART.fullmatch(p)]
    name = SIZE_PART.sub("", parts[-1]) if parts else ""
    stem = os.path.splitext(name)[0]
    if stem in ("", "screenshot") and len(parts) >= 2:  # plasma: NAME/contents/images/1920x1080.jpg
        stem = "/".join(parts[-4:-1])
    return f"{package}:{'/'.join(parts[:-1][-3:])}/{stem}"


def list_candidates(package: str) -> list[Candidate]:
    files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.splitlines()
    found = []
    for f in files:
        low = f.lower()
        if "/doc/" in f or not os.path.isfile(f):
            continue
        if low.endswith("screenshot.png"):  # a wallpaper's preview: the wallpaper shrunk
            continue
        if low.endswith(RASTER):
            found.append(Candidate(package, f, os.path.getsize(f), variant_group(package, f)))
        elif low.endswith(".pk3"):
            with zipfile.ZipFile(f) as z:
                for info in z.infolist():
                    if info.filename.lower().endswith(RASTER) and not info.is_dir():
                        member = f"{f}:{info.filename}"
                        found.append(Candidate(package, member, info.file_size, variant_group(package, info.filename)))
    return found


# --- licences --------------------------------------------------------------------------------------------

def copyright_stanzas(package: str) -> list[tuple[list[str], str]] | None:
    """``[(file patterns, licence)]`` of a DEP-5 copyright file, or None when it is not one."""
    try:
        text = Path(f"/usr/share/doc/{package}/copyright").read_text(errors="replace")
    except OSError:
        return None
    return parse_copyright(text)


def parse_copyright(text: str) -> list[tuple[list[str], str]] | None:
    """The ``(file patterns, licence)`` stanzas of a DEP-5 copyright text, or None when it is not one."""
    if not text.lstrip().startswith("Format:"):
        return None
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", block, re.M)
        lic = re.search(r"^License:[ \t]*(.+)$", block, re.M)
        if files and lic:
            stanzas.append((files.group(1).split(), lic.group(1).strip()))
    return stanzas


def licence_for(package: str, path: str, stanzas) -> tuple[str, str]:
    """(licence, where it was read). The last matching stanza wins, as DEP-5 says."""
    if stanzas is None:
        return PACKAGE_LICENCES.get(package, "unknown"), f"/usr/share/doc/{package}/copyright (read by hand)"
    inner = path.split(":", 1)[1] if ".pk3:" in path else path
    best = None
    for patterns, lic in stanzas:
        for pattern in patterns:
            if pattern.startswith("debian/"):
                continue
            # Source-tree paths often differ from installed ones above the file name: a pattern
            # without wildcards that names this file's name is taken as naming this file.
            by_name = not any(ch in pattern for ch in "*?[") and os.path.basename(pattern) == os.path.basename(inner)
            if pattern == "*" or by_name or fnmatch.fnmatch(inner, "*/" + pattern.lstrip("./")):
                best = (lic, pattern)
    if best is None:
        return "unknown", f"/usr/share/doc/{package}/copyright (no stanza matched)"
    return best[0], f"/usr/share/doc/{package}/copyright (Files: {best[1]})"


# --- decoding and hashing --------------------------------------------------------------------------------

def open_candidate(path: str) -> Image.Image:
    if ".pk3:" in path:
        archive, member = path.split(":", 1)
        with zipfile.ZipFile(archive) as z:
            return load_image(io.BytesIO(z.read(member)))
    return load_image(path)


def dhash(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def thumbnail(image: Image.Image) -> np.ndarray:
    """16x16 grey thumbnail: confirms a dHash match (clip art on white shares few-bit hashes)."""
    return np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.uint8)


def prepare(args: tuple[str, int, int, float]) -> dict:
    """Decode, filter and downscale one file (in a worker process); returns its record or why it was dropped."""
    path, max_side, min_side, min_std = args
    try:
        image = open_candidate(path)
    except (ImageLoadError, OSError, ValueError, zipfile.BadZipFile) as exc:
        return {"path": path, "dropped": "unreadable", "detail": str(exc)[:200]}
    w, h = image.size
    if min(w, h) < min_side:
        return {"path": path, "dropped": "small"}
    scale = max_side / max(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    pixels = np.asarray(image)
    if pixels.reshape(-1, 3).astype(np.float32).mean(axis=1).std() < min_std:
        return {"path": path, "dropped": "flat"}
    few_colours = image.getcolors(256) is not None
    buf = io.BytesIO()
    if few_colours:
        image.save(buf, format="PNG", optimize=False)
        ext = "png"
    else:
        image.save(buf, format="JPEG", quality=92)
        ext = "jpg"
    return {"path": path, "dropped": None, "orig_width": w, "orig_height": h, "width": image.size[0],
            "height": image.size[1], "dhash": dhash(image), "thumb": thumbnail(image), "ext": ext,
            "data": buf.getvalue()}


class NearDuplicates:
    """Images seen so far; ``add`` says whether an image is a near-duplicate of one of them.

    A near-duplicate has a dHash within ``max_hamming`` bits and, when thumbnails are given, a 16x16
    grey thumbnail within ``max_thumb_diff`` mean absolute difference (0-255): a dHash alone calls
    most clip art on white alike, since flat areas give the same few bits. Two hashes within 3 bits
    agree on at least one of their four 16-bit bands (pigeonhole), so only the hashes sharing a band
    value are compared.
    """

    def __init__(self, max_hamming: int, max_thumb_diff: float = 6.0):
        if max_hamming > 3:
            raise ValueError("--max-hamming above 3 needs more bands than four")
        self.max_hamming, self.max_thumb_diff = max_hamming, max_thumb_diff
        self.bands: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(4)]
        self.thumbs: list[np.ndarray | None] = []
        self.hashes: list[int] = []

    def _alike(self, h: int, thumb: np.ndarray | None, other: int) -> bool:
        if bin(h ^ self.hashes[other]).count("1") > self.max_hamming:
            return False
        theirs = self.thumbs[other]
        if thumb is None or theirs is None:
            return True
        return float(np.abs(thumb.astype(np.int16) - theirs.astype(np.int16)).mean()) <= self.max_thumb_diff

    def find(self, h: int, thumb: np.ndarray | None = None) -> int | None:
        """The number (order of adding) of an image ``h``/``thumb`` is a near-duplicate of, or None."""
        for band, key in zip(self.bands, self._keys(h)):
            for other in band[key]:
                if self._alike(h, thumb, other):
                    return other
        return None

    @staticmethod
    def _keys(h: int) -> list[int]:
        return [(h >> (16 * i)) & 0xFFFF for i in range(4)]

    def add(self, h: int, thumb: np.ndarray | None = None) -> bool:
        """Remember the image unless it is a near-duplicate of one already added; says which it was."""
        if self.find(h, thumb) is not None:
            return True
        keys = self._keys(h)
        index = len(self.hashes)
        self.hashes.append(h)
        self.thumbs.append(thumb)
        for band, key in zip(self.bands, keys):
            band[key].append(index)
        return False


# --- main --------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the shards, manifest.csv and summary.json "
                   "(created; must be empty or absent: nothing in it is overwritten)")
    p.add_argument("--packages", default=",".join(PACKAGES), help="comma-separated Debian packages (default: all "
                   f"{len(PACKAGES)} of PACKAGES in this file)")
    p.add_argument("--install", action="store_true", help="apt-get install the packages first (needs root or sudo)")
    p.add_argument("--max-side", type=int, default=512, help="longer side of the stored images (default 512: "
                   "enough for 224 px crops at CLICv2's scales; 160 for a corpus small enough to carry to a GPU)")
    p.add_argument("--min-side", type=int, default=96, help="drop images whose shorter side is below this "
                   "(default 96: icons and sprites of 16-72 px)")
    p.add_argument("--min-std", type=float, default=3.0, help="drop nearly flat images: grey-level std below this "
                   "(default 3, on 0-255)")
    p.add_argument("--max-hamming", type=int, default=3, help="dHash bits within which an image is a near-duplicate "
                   "of one already kept (default 3, at most 3)")
    p.add_argument("--max-thumb-diff", type=float, default=6.0, help="mean absolute difference of 16x16 grey "
                   "thumbnails (0-255) within which a dHash match is a near-duplicate (default 6)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per tar shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the shard order (default 0)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: cores)")
    p.add_argument("--counts", type=Path, default=RESULTS / "corpus_counts.csv",
                   help="where the per-source counts are also written (default benchmarks/results/corpus_counts.csv)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if args.out.exists() and any(args.out.iterdir()):
        print(f"build_corpus: {args.out} is not empty; give a new folder", file=sys.stderr)
        return 2
    if args.install:
        install(packages)
    started = time.time()
    versions = {}
    candidates: list[Candidate] = []
    for package in packages:
        version = package_version(package)
        if version is None:
            print(f"build_corpus: {package} is not installed (use --install); skipped", file=sys.stderr)
            continue
        versions[package] = version
        candidates += list_candidates(package)
    counts: dict[str, Counter] = defaultdict(Counter)
    for c in candidates:
        counts[c.package]["found"] += 1

    # One file per variant group (the most bytes, a proxy for the most pixels), each byte content once.
    by_group: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: (c.package, c.path)):
        kept = by_group.get(c.group)
        if kept is None or c.size_bytes > kept.size_bytes:
            if kept is not None:
                counts[c.package]["dropped_variant"] += 1
            by_group[c.group] = c
        else:
            counts[c.package]["dropped_variant"] += 1
    chosen = sorted(by_group.values(), key=lambda c: (c.package, c.path))

    jobs = [(c.path, args.max_side, args.min_side, args.min_std) for c in chosen]
    near = NearDuplicates(args.max_hamming, args.max_thumb_diff)
    stanzas = {p: copyright_stanzas(p) for p in versions}
    seen_bytes: set[str] = set()
    licences: dict[str, Counter] = defaultdict(Counter)
    records = []
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for i, (c, rec) in enumerate(zip(chosen, pool.map(prepare, jobs, chunksize=16))):
            if i % 1000 == 0:
                print(f"build_corpus: {i}/{len(chosen)} decoded, {len(records)} kept, "
                      f"{time.time() - started:.0f} s", file=sys.stderr)
            if rec["dropped"]:
                counts[c.package][f"dropped_{rec['dropped']}"] += 1
                continue
            lic, lic_source = licence_for(c.package, c.path, stanzas[c.package])
            if lic == "unknown":  # the corpus holds only images whose licence its packages state
                counts[c.package]["dropped_unknown_licence"] += 1
                continue
            digest = hashlib.sha256(rec["data"]).hexdigest()
            if digest in seen_bytes:
                counts[c.package]["dropped_duplicate"] += 1
                continue
            if near.add(rec["dhash"], rec["thumb"]):
                counts[c.package]["dropped_near_duplicate"] += 1
                continue
            seen_bytes.add(digest)
            rec.update(package=c.package, version=versions[c.package], kind=PACKAGES.get(c.package, "other"),
                       licence=lic, licence_source=lic_source, sha256=digest)
            records.append(rec)
            counts[c.package]["kept"] += 1
            licences[c.package][lic] += 1

    order = np.random.default_rng(args.seed).permutation(len(records))
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["shard", "member", "package", "version", "kind", "licence", "licence_source", "original_path",
              "orig_width", "orig_height", "width", "height", "dhash", "sha256"]
    n_shards = 0
    with open(args.out / "manifest.csv", "x", newline="", encoding="utf-8") as mf:
        writer = csv.DictWriter(mf, fieldnames=fields)
        writer.writeheader()
        for start in range(0, len(order), args.shard_size):
            shard = f"corpus-{n_shards:06d}.tar"
            with tarfile.open(args.out / shard, "x", format=tarfile.USTAR_FORMAT) as tar:
                for j, k in enumerate(order[start:start + args.shard_size]):
                    rec = records[k]
                    member = f"{start + j:07d}.{rec['ext']}"
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime, info.mode = len(rec["data"]), 0, 0o644
                    tar.addfile(info, io.BytesIO(rec["data"]))
                    writer.writerow({"shard": shard, "member": member, "original_path": rec["path"],
                                     "dhash": f"{rec['dhash']:016x}",
                                     **{f: rec[f] for f in fields if f in rec and f not in ("dhash",)}})
            n_shards += 1

    minutes = (time.time() - started) / 60
    kinds = Counter(r["kind"] for r in records)
    summary = {"images": len(records), "shards": n_shards,
               "pattern": f"corpus-{{000000..{n_shards - 1:06d}}}.tar" if n_shards else None,
               "max_side": args.max_side, "min_side": args.min_side, "min_std": args.min_std,
               "max_hamming": args.max_hamming, "max_thumb_diff": args.max_thumb_diff, "seed": args.seed, "minutes": round(minutes, 2),
               "bytes": sum(len(r["data"]) for r in records), "kinds": dict(kinds),
               "sources": {p: {"version": versions[p], "kind": PACKAGES.get(p, "other"), **counts[p],
                              "licences": dict(licences[p])} for p in versions},
               "command": " ".join(["python -m benchmarks.build_corpus", *(sys.argv[1:] if argv is None else argv)])}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_counts(args.counts, summary)
    print(f"build_corpus: {len(records)} images in {n_shards} shards ({summary['bytes'] / 2**20:.0f} MiB) "
          f"in {minutes:.1f} min: {dict(kinds)} -> {args.out}", file=sys.stderr)
    return 0


def write_counts(path: Path, summary: dict) -> None:
    """One row per source package: found, kept and dropped by reason (the corpus's make-up, in the repo)."""
    reasons = ["dropped_variant", "dropped_unreadable", "dropped_small", "dropped_flat", "dropped_duplicate",
               "dropped_near_duplicate", "dropped_unknown_licence"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["package", "version", "kind", "licences_kept", "found", "kept", *reasons, "max_side", "command"])
        for package, c in summary["sources"].items():
            lic = "; ".join(f"{name} ({n})" for name, n in sorted(c["licences"].items(), key=lambda kv: -kv[1]))
            w.writerow([package, c["version"], c["kind"], lic, c.get("found", 0), c.get("kept", 0),
                        *(c.get(r, 0) for r in reasons), summary["max_side"], summary["command"]])
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
