"""Hostile inputs (issue 19): one bad entry never aborts a run.

Symbolic link loops, directory cycles, very deep trees, unlistable folders, non-UTF-8 names and
manifests, broken archives: each becomes an error row (or a logged warning where no single file is
to blame) and every good file is still scored. Checked through :func:`iter_image_paths` and through
``pyica score`` end to end. Exit codes are not asserted (their meaning is defined elsewhere): rows are.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.inputs import (MemberBytes, TarMember, UnreadableInput, ZipMember, check_inputs, index_shard,
                          iter_image_paths)
from pyica.registry import create_model
from pyica.scoring import score_paths
from pyica.writers import read_scores

MODEL = "entropy"  # a classic measure: fast, no weights


def _png_bytes(seed: int, size: int = 16) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _png(path: Path | bytes, seed: int = 0) -> Path | bytes:
    """A tiny random PNG at ``path`` (a str/Path, or bytes for names that are not UTF-8)."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(_png_bytes(seed))
    return path


def _score(tmp_path: Path, *inputs, out: str = "s.csv", extra: tuple = ()) -> dict[str, dict]:
    """Run ``pyica score`` in-process and return its rows by path (no path may appear twice)."""
    target = tmp_path / out
    main(["score", *map(str, inputs), "-m", MODEL, "-o", str(target), "-q", "--workers", "0", "--overwrite", *extra])
    rows = read_scores(target)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a path was written twice"
    return by_path


def _scored(row: dict) -> bool:
    return row["score"] is not None and np.isfinite(row["score"]) and row["error"] is None


# --- symbolic links ----------------------------------------------------------------------------------


def test_file_symlink_loop_and_dangling_links_are_error_rows(tmp_path, caplog):
    folder = tmp_path / "imgs"
    _png(folder / "good.png")
    (folder / "a").symlink_to("b")
    (folder / "b").symlink_to("a")  # a -> b -> a: following either raises ELOOP
    (folder / "dang.png").symlink_to("missing.png")
    (folder / "notes.txt").symlink_to("missing.txt")  # not an image by name: skipped, only logged

    with caplog.at_level(logging.WARNING, logger="pyica.inputs"):
        found = list(iter_image_paths([folder]))
    assert found == [str(folder / n) for n in ("a", "b", "dang.png", "good.png")]
    reasons = {os.path.basename(p): p.reason for p in found if isinstance(p, UnreadableInput)}
    assert set(reasons) == {"a", "b", "dang.png"}
    assert "symbolic link loop" in reasons["a"] and "symbolic link loop" in reasons["b"]
    assert "broken symbolic link" in reasons["dang.png"]
    assert "notes.txt" in caplog.text

    rows = _score(tmp_path, folder)
    assert set(rows) == {str(folder / n) for n in ("a", "b", "dang.png", "good.png")}
    assert _scored(rows[str(folder / "good.png")])
    assert rows[str(folder / "a")]["error"] == f"{folder / 'a'}: {reasons['a']}"
    assert rows[str(folder / "dang.png")]["score"] is None
    assert "broken symbolic link" in rows[str(folder / "dang.png")]["error"]


def test_a_broken_link_named_as_input_is_an_error_row(tmp_path):
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    good = _png(tmp_path / "ok.png")
    [bad, ok] = iter_image_paths([link, good])
    assert isinstance(bad, UnreadableInput) and "broken symbolic link" in bad.reason and ok == str(good)
    rows = _score(tmp_path, link, good)
    assert _scored(rows[str(good)]) and "broken symbolic link" in rows[str(link)]["error"]


def test_directory_symlink_cycle_is_walked_once(tmp_path, caplog):
    root = tmp_path / "root"
    _png(root / "a.png", 1)
    _png(root / "sub" / "b.png", 2)
    (root / "sub" / "loop").symlink_to("..")  # root/sub/loop -> root: a cycle
    (root / "sub2").symlink_to("sub")  # a second name for a folder already walked
    with caplog.at_level(logging.WARNING, logger="pyica.inputs"):
        found = list(iter_image_paths([root]))
    assert found == [str(root / "a.png"), str(root / "sub" / "b.png")]
    assert str(root / "sub" / "loop") in caplog.text and str(root / "sub2") in caplog.text

    rows = _score(tmp_path, root)
    assert set(rows) == set(found) and all(_scored(r) for r in rows.values())


def test_linked_folder_is_walked_through_its_link_name(tmp_path):
    real = tmp_path / "real"
    _png(real / "x.png")
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan" / "photos").symlink_to(real)  # a link to a folder outside the tree: followed
    assert list(iter_image_paths([tmp_path / "scan"])) == [str(tmp_path / "scan" / "photos" / "x.png")]


# --- deep trees, order, listing errors ------------------------------------------------------------


def _remove_tree(top: str) -> None:
    """Remove a tree bottom-up without recursion (``shutil.rmtree``, which pytest's cleanup of old
    temporary folders uses, recurses and would fail on it)."""
    stack = [top]
    while stack:
        with os.scandir(stack[-1]) as it:
            entries = list(it)
        subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        if subdirs:
            stack.extend(subdirs)
            continue
        for e in entries:
            os.unlink(e.path)
        os.rmdir(stack.pop())


@pytest.fixture()
def deep_root(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    try:
        yield root
    finally:
        _remove_tree(str(root))


def test_very_deep_tree_is_walked_without_recursion(tmp_path, deep_root):
    depth = 1500  # well past Python's default recursion limit of 1000
    root = deep_root
    deepest = str(root)
    for _ in range(depth):  # os.makedirs itself recurses
        deepest = os.path.join(deepest, "d")
        os.mkdir(deepest)
    _png(Path(deepest) / "bottom.png", 1)
    _png(Path(os.path.join(str(root), *["d"] * 700)) / "middle.png", 2)
    _png(root / "top.png", 3)
    found = list(iter_image_paths([root]))
    # depth first, sorted by name: "d" sorts before "middle.png"/"top.png" at every level
    assert found == [os.path.join(deepest, "bottom.png"),
                     os.path.join(str(root), *["d"] * 700, "middle.png"),
                     str(root / "top.png")]
    rows = _score(tmp_path, root)
    assert set(rows) == set(found) and all(_scored(r) for r in rows.values())


def test_walk_order_hidden_files_and_no_recursive_are_kept(tmp_path):
    root = tmp_path / "t"
    for name in ("b.png", "a/z.png", "a/c/x.png", "a.png", "c.jpg", ".hidden.png", ".git/h.png", "notes.txt"):
        _png(root / name) if name.endswith((".png", ".jpg")) else (root / name).write_text("x")
    expected = ["a/c/x.png", "a/z.png", "a.png", "b.png", "c.jpg"]
    assert list(iter_image_paths([root])) == [str(root / n) for n in expected]
    assert list(iter_image_paths([root], recursive=False)) == [str(root / n) for n in ("a.png", "b.png", "c.jpg")]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can list a chmod 000 folder")
def test_unlistable_subfolder_is_an_error_row_chmod(tmp_path):
    root = tmp_path / "r"
    _png(root / "a.png", 1)
    _png(root / "locked" / "x.png", 2)
    _png(root / "z.png", 3)
    os.chmod(root / "locked", 0)
    try:
        rows = _score(tmp_path, root)
    finally:
        os.chmod(root / "locked", 0o755)
    assert _scored(rows[str(root / "a.png")]) and _scored(rows[str(root / "z.png")])
    assert "cannot list folder (Permission denied)" in rows[str(root / "locked")]["error"]


@pytest.fixture()
def deny_listing(monkeypatch):
    """Make ``os.scandir`` fail with EACCES on the given folders (works as root, unlike chmod 000)."""
    denied: set[str] = set()
    real = os.scandir

    def scandir(path="."):
        if os.path.abspath(os.fspath(path)) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return denied


def test_unlistable_folders_are_error_rows(tmp_path, deny_listing):
    root = tmp_path / "r"
    _png(root / "a.png", 1)
    _png(root / "locked" / "x.png", 2)
    _png(root / "z.png", 3)
    other = tmp_path / "other"
    _png(other / "o.png", 4)
    deny_listing.update({str(root / "locked"), str(other)})

    found = list(iter_image_paths([root, other]))
    assert found == [str(root / "a.png"), str(root / "locked"), str(root / "z.png"), str(other)]
    assert isinstance(found[1], UnreadableInput) and found[1].reason == "cannot list folder (Permission denied)"

    rows = _score(tmp_path, root, other)
    assert _scored(rows[str(root / "a.png")]) and _scored(rows[str(root / "z.png")])
    assert rows[str(root / "locked")]["error"] == f"{root / 'locked'}: cannot list folder (Permission denied)"
    assert rows[str(other)]["error"] == f"{other}: cannot list folder (Permission denied)"
    assert rows[str(other)]["score"] is None


# --- odd names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_non_utf8_and_newline_names_are_found_and_scored(tmp_path, workers):
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder)
    _png(raw + b"/bad\xff.png", 1)  # not UTF-8: Python names it with a surrogate escape
    _png(folder / "line\nbreak.png", 2)
    _png(folder / "carriage\rreturn.png", 3)
    found = list(iter_image_paths([folder]))
    assert sorted(os.fsencode(p) for p in found) == sorted(
        [raw + b"/bad\xff.png", raw + b"/line\nbreak.png", raw + b"/carriage\rreturn.png"])
    records = list(score_paths(found, create_model(MODEL, device="cpu"), num_workers=workers, batch_size=2))
    assert [r.path for r in records] == found
    assert all(r.error is None and r.score is not None for r in records), [r.error for r in records]


def test_names_with_newlines_through_the_cli(tmp_path):
    folder = tmp_path / "names"
    _png(folder / "line\nbreak.png", 1)
    _png(folder / "carriage\rreturn.png", 2)
    _png(folder / "plain.png", 3)
    rows = _score(tmp_path, folder, out="s.jsonl")
    assert len(rows) == 3 and all(_scored(r) for r in rows.values())


# --- manifests --------------------------------------------------------------------------------------


def test_non_utf8_manifest_is_an_error_row_and_the_run_goes_on(tmp_path):
    _png(tmp_path / "one.png", 1)
    _png(tmp_path / "two.png", 2)
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(b"path,label\none.png,1\nbad\xff.png,2\ntwo.png,3\n")
    other = _png(tmp_path / "more" / "three.png", 3)

    check_inputs([manifest, other])  # must not crash: the problem is reported as a row
    found = list(iter_image_paths([manifest, other]))
    assert found[0] == str(tmp_path / "one.png")
    assert found[1] == str(manifest) and isinstance(found[1], UnreadableInput)
    assert "line 3" in found[1].reason and "0xff" in found[1].reason
    assert found[2:] == [str(other)]

    rows = _score(tmp_path, manifest, other)
    assert _scored(rows[str(tmp_path / "one.png")]) and _scored(rows[str(other)])
    assert rows[str(manifest)]["score"] is None
    assert rows[str(manifest)]["error"].startswith(f"{manifest}: cannot read manifest (line 3 is not valid UTF-8")


def test_manifest_with_a_bad_header_or_unparsable_rows(tmp_path):
    bad_header = tmp_path / "h.csv"
    bad_header.write_bytes(b"p\xe9th\nx.png\n")
    check_inputs([bad_header])
    [row] = iter_image_paths([bad_header])
    assert isinstance(row, UnreadableInput) and "line 1" in row.reason and "0xe9" in row.reason

    _png(tmp_path / "ok.png")
    nul = tmp_path / "n.csv"
    nul.write_bytes(b"path\nok.png\nx\x00y.png\n")  # a NUL byte: csv may reject it, or it is a bad path
    found = list(iter_image_paths([nul]))
    assert found[0] == str(tmp_path / "ok.png") and isinstance(found[1], UnreadableInput) and len(found) == 2
    rows = _score(tmp_path, nul)
    assert _scored(rows[str(tmp_path / "ok.png")]) and rows[found[1]]["score"] is None

    huge = tmp_path / "f.csv"
    huge.write_text('path\nok.png\n"' + "x" * 200_000 + '"\nok.png\n')  # past csv's field size limit
    found = list(iter_image_paths([huge]))
    assert found[0] == str(tmp_path / "ok.png") and len(found) == 2
    assert found[1] == str(huge) and "cannot parse manifest at line 2" in found[1].reason


def test_check_inputs_still_fails_early_on_what_stops_a_stream(tmp_path):
    no_column = tmp_path / "m.csv"
    no_column.write_text("picture,score\na.png,1\n")
    with pytest.raises(ValueError, match="no image path column"):
        check_inputs([no_column])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        check_inputs([str(tmp_path / "*.nothing")])


# --- archives ---------------------------------------------------------------------------------------

ARCHIVES = [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"]


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return path
    mode = {".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz", ".tar": "w"}
    suffix = next(s for s in mode if path.name.endswith(s))
    with tarfile.open(path, mode[suffix]) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", ARCHIVES)
def test_archives_are_read_and_scored_like_their_files(tmp_path, suffix, monkeypatch):
    members = {"k0/img.png": _png_bytes(0), "k0/meta.json": b"{}", "k1/.hidden.png": _png_bytes(9),
               "k1/img.png": _png_bytes(1)}
    archive = _archive(tmp_path / f"x{suffix}", members)
    files = [_png(tmp_path / "files" / f"{i}.png", i) for i in range(2)]
    kind = {".tar": TarMember, ".zip": ZipMember}.get(suffix, MemberBytes)

    monkeypatch.chdir(tmp_path)  # a relative archive name: the key's archive part is absolute all the same
    keys = list(iter_image_paths([archive.name]))
    assert keys == [f"{archive}:k0/img.png", f"{archive}:k1/img.png"]
    assert all(type(k) is kind for k in keys)
    copies = [pickle.loads(pickle.dumps(k)) for k in keys]  # as DataLoader workers receive them
    assert copies == keys and all(type(c) is kind and vars(c) == vars(k) for c, k in zip(copies, keys))

    rows = _score(tmp_path, archive, *files)
    assert set(rows) == set(keys) | {str(f) for f in files}
    for key, f in zip(keys, files):
        assert _scored(rows[key]) and rows[key]["score"] == pytest.approx(rows[str(f)]["score"])


@pytest.mark.parametrize("suffix", ARCHIVES)
@pytest.mark.parametrize("content", [b"", b"this is not an archive at all " * 40])
def test_empty_or_garbage_archive_is_an_error_row(tmp_path, suffix, content):
    archive = tmp_path / f"bad{suffix}"
    archive.write_bytes(content)
    good = _png(tmp_path / "good.png")
    [found, ok] = iter_image_paths([archive, good])
    assert isinstance(found, UnreadableInput) and found == str(archive) and ok == str(good)
    assert found.reason.startswith("cannot read archive (")
    rows = _score(tmp_path, archive, good)
    assert _scored(rows[str(good)])
    assert rows[str(archive)]["score"] is None
    assert rows[str(archive)]["error"].startswith(f"{archive}: cannot read archive (")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.xz"])
def test_archive_truncated_midway_keeps_members_before_the_break(tmp_path, suffix):
    size = 48  # random pixels do not compress: each member takes ~7 kB, compressed or not
    members = {f"k{i}/img.png": _png_bytes(i, size) for i in range(4)}
    archive = _archive(tmp_path / f"cut{suffix}", members)
    data = archive.read_bytes()
    if suffix == ".tar":  # cut inside the third member's data (the file is padded to 10 kB records)
        cut = list(iter_image_paths([archive]))[2].offset + 100
    else:
        cut = int(len(data) * 0.6)
    archive.write_bytes(data[:cut])

    found = list(iter_image_paths([archive]))
    assert found[-1] == str(archive) and isinstance(found[-1], UnreadableInput)
    assert found[-1].reason.startswith("cannot read archive (")
    assert found[:2] == [f"{archive}:k0/img.png", f"{archive}:k1/img.png"] and len(found) <= 4

    rows = _score(tmp_path, archive)
    assert rows[str(archive)]["score"] is None and "cannot read archive" in rows[str(archive)]["error"]
    assert _scored(rows[f"{archive}:k0/img.png"]) and _scored(rows[f"{archive}:k1/img.png"])
    if suffix == ".tar":  # the cut member is listed by its header, and its own row says it is cut
        assert "truncated" in rows[f"{archive}:k2/img.png"]["error"]
    assert set(rows) == set(found)


def test_tar_with_garbage_after_its_members_is_an_error_row(tmp_path):
    archive = tmp_path / "junk.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("a.png")
        data = _png_bytes(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        end = tar.offset  # where the end-of-archive blocks start
    with open(archive, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(b"\x41" * 512)  # tarfile alone would stop here silently, as if the archive ended
    found = list(iter_image_paths([archive]))
    assert found[0] == f"{archive}:a.png"
    assert isinstance(found[1], UnreadableInput) and f"invalid tar header at byte {end}" in found[1].reason
    assert len(index_shard(str(archive)).names) == 1  # the index keeps the members read (and logs)


@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".zip"])
def test_valid_archive_without_images_is_one_warning(tmp_path, suffix, caplog):
    archive = _archive(tmp_path / f"none{suffix}", {"meta.json": b"{}", "readme.txt": b"hi"})
    with caplog.at_level(logging.WARNING, logger="pyica.inputs"):
        assert list(iter_image_paths([archive])) == []
    assert [r.getMessage() for r in caplog.records] == [f"{archive}: archive holds no images"]


def test_bad_zip_member_is_an_error_row_for_that_member(tmp_path):
    archive = _archive(tmp_path / "z.zip", {"a.png": _png_bytes(0), "b.png": b"not a png", "c.png": _png_bytes(2)})
    rows = _score(tmp_path, archive)
    assert _scored(rows[f"{archive}:a.png"]) and _scored(rows[f"{archive}:c.png"])
    assert rows[f"{archive}:b.png"]["score"] is None and f"{archive}:b.png" in rows[f"{archive}:b.png"]["error"]


def test_everything_at_once_through_dataloader_workers(tmp_path, deny_listing):
    """The hostile cases together, loaded by 2 worker processes (every kind of path is pickled)."""
    root = tmp_path / "mix"
    _png(root / "a.png", 1)
    _png(root / "locked" / "x.png", 2)
    (root / "loop").symlink_to("loop")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..")
    deny_listing.add(str(root / "locked"))
    tgz = _archive(tmp_path / "m.tgz", {"p.png": _png_bytes(3)})
    zipped = _archive(tmp_path / "m.zip", {"q.png": _png_bytes(4)})
    broken = _archive(tmp_path / "broken.tar.gz", {f"{i}.png": _png_bytes(i, 48) for i in range(3)})
    broken.write_bytes(broken.read_bytes()[:8000])  # cut inside the second member
    rows = _score(tmp_path, root, tgz, zipped, broken, out="s.jsonl", extra=("--workers", "2", "--batch-size", "2"))
    assert set(rows) == {str(root / "a.png"), str(root / "locked"), str(root / "loop"), f"{tgz}:p.png",
                         f"{zipped}:q.png", f"{broken}:0.png", str(broken)}
    assert _scored(rows[f"{broken}:0.png"])
    assert all(_scored(rows[k]) for k in (str(root / "a.png"), f"{tgz}:p.png", f"{zipped}:q.png"))
    assert "cannot list folder" in rows[str(root / "locked")]["error"]
    assert "symbolic link loop" in rows[str(root / "loop")]["error"]
    assert "cannot read archive" in rows[str(broken)]["error"]


# --- one key per file -------------------------------------------------------------------------------


def test_relative_and_absolute_names_give_one_key(tmp_path, monkeypatch):
    img = _png(tmp_path / "img" / "a.png")
    (tmp_path / "m.csv").write_text("path\nimg/a.png\n./img/../img/a.png\n" + f"{img}\n")
    shard = _archive(tmp_path / "s.tar", {"k/a.png": _png_bytes(0)})
    monkeypatch.chdir(tmp_path)
    found = list(iter_image_paths(["img/a.png", str(img), "img/../img/a.png", "img", "m.csv", "s.tar"]))
    assert found == [str(img)] * 7 + [f"{shard}:k/a.png"]
    assert found[-1].shard == str(shard)
    assert list(iter_image_paths([os.fsencode("img/a.png")])) == [str(img)]  # bytes names too


@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".zip"])
def test_archive_member_over_the_size_limit_is_an_error_row(tmp_path, suffix, monkeypatch):
    import pyica.inputs

    monkeypatch.setattr(pyica.inputs, "MAX_MEMBER_BYTES", 2000)
    archive = _archive(tmp_path / f"big{suffix}", {"big.png": _png_bytes(0, 48), "small.png": _png_bytes(1, 8)})
    big, small = iter_image_paths([archive])
    assert isinstance(big, UnreadableInput) and big == f"{archive}:big.png"
    assert "archive member too large" in big.reason and not isinstance(small, UnreadableInput)
    rows = _score(tmp_path, archive)
    assert rows[big]["score"] is None and "too large" in rows[big]["error"] and _scored(rows[small])
