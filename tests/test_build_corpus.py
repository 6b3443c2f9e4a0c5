"""The pure parts of benchmarks/build_corpus.py: variant groups, DEP-5 licences, near-duplicates.

Installing packages and building a corpus is the script's job, never a test's (no apt here)."""

import numpy as np
from PIL import Image

from benchmarks.build_corpus import NearDuplicates, dhash, licence_for, parse_copyright, thumbnail, variant_group

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: walls

Files: *
Copyright: someone
License: GPL-2+

Files: 20.04/Fossa_by_Jasper.jpg
Copyright: Jasper
License: CC-BY-SA-3.0

Files: textures/*.png
License: CC0-1.0

Files: debian/*
License: Expat
"""


def test_resolutions_of_one_picture_share_a_group():
    a = variant_group("oxygen", "/usr/share/icons/oxygen/base/256x256/apps/k3b.png")
    b = variant_group("oxygen", "/usr/share/icons/oxygen/base/32x32/apps/k3b.png")
    c = variant_group("oxygen", "/usr/share/icons/oxygen/base/256x256/apps/kate.png")
    assert a == b != c
    wall = variant_group("plasma", "/usr/share/wallpapers/Kite/contents/images/1920x1080.jpg")
    assert wall == variant_group("plasma", "/usr/share/wallpapers/Kite/contents/images/5120x2880.jpg")
    assert wall != variant_group("plasma", "/usr/share/wallpapers/Altai/contents/images/1920x1080.jpg")


def test_licence_is_the_last_matching_stanza_by_suffix_or_file_name():
    stanzas = parse_copyright(DEP5)
    assert licence_for("walls", "/usr/share/backgrounds/other.jpg", stanzas)[0] == "GPL-2+"
    # installed without the source tree's folder: the file name names it
    assert licence_for("walls", "/usr/share/backgrounds/Fossa_by_Jasper.jpg", stanzas)[0] == "CC-BY-SA-3.0"
    assert licence_for("walls", "/usr/share/games/x/textures/rock.png", stanzas)[0] == "CC0-1.0"
    assert licence_for("walls", "/usr/share/games/x/textures/rock.jpg", stanzas)[0] == "GPL-2+"
    assert parse_copyright("This package was debianized by someone.\nLicense: GPL") is None


def test_near_duplicates_need_close_hashes_and_close_thumbnails():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    brighter = Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + 3, 0, 255).astype(np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    seen = NearDuplicates(3)
    assert not seen.add(dhash(base), thumbnail(base))
    assert seen.add(dhash(brighter), thumbnail(brighter))  # same picture, slightly brighter
    assert not seen.add(dhash(other), thumbnail(other))
    # a square, and the same square on ruled paper: the same dHash (horizontal rules change no
    # horizontal gradient at 9x8), told apart by the thumbnails
    white = np.full((128, 128, 3), 255, np.uint8)
    square = white.copy()
    square[40:88, 40:88] = 0
    ruled = square.copy()
    ruled[0:128:8, :] = 0
    square_img, ruled_img = Image.fromarray(square), Image.fromarray(ruled)
    assert dhash(square_img) == dhash(ruled_img)
    drawings = NearDuplicates(3)
    assert not drawings.add(dhash(square_img), thumbnail(square_img))
    assert not drawings.add(dhash(ruled_img), thumbnail(ruled_img))
    assert drawings.find(dhash(ruled_img)) == 0  # by hash alone it would have been dropped
