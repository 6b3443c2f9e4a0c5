"""`pyica select` and `pyica.select`: every filter on generated score files, the manifest, copies and links
with collisions, read-only originals (unchanged by hash), hostile paths that must never write outside
the destination, dry runs, exit codes and one-line errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyica
from pyica import curation
from pyica.cli import main
from pyica.writers import read_scores, write_parquet

SRC = Path(__file__).resolve().parents[1] / "src"


# --- helpers ---------------------------------------------------------------------------------------------


def _write_scores(path: Path, rows: list[dict], fmt: str | None = None) -> Path:
    """A score file as `pyica score` writes it (columns path, model, score, error)."""
    fmt = fmt or path.suffix.lstrip(".")
    rows = [{"path": str(r["path"]), "model": r.get("model", "entropy"), "score": r.get("score"),
             "error": r.get("error")} for r in rows]
    if fmt == "parquet":
        write_parquet(path, rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            delimiter = "\t" if fmt == "tsv" else ","
            w = csv.writer(f, lineterminator="\n", delimiter=delimiter)
            quoted = csv.writer(f, lineterminator="\n", delimiter=delimiter, quoting=csv.QUOTE_ALL)
            w.writerow(["path", "model", "score", "error"])
            for r in rows:  # as ScoreWriter: csv leaves a field holding only "\r" unquoted, so quote that row
                (quoted if "\r" in r["path"] else w).writerow([r["path"], r["model"], "" if r["score"] is None else repr(r["score"]), r["error"] or ""])
    return path


def _images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Small files standing in for images (select never decodes them): distinct bytes each."""
    out = []
    for i, name in enumerate(names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"image {seed} {i} {name}".encode() * 50)
        out.append(p)
    return out


def _ladder(tmp_path: Path, n: int = 20, fmt: str = "csv") -> tuple[Path, list[Path]]:
    """``n`` images in two class folders with scores 0..n-1 (image i has score i)."""
    paths = _images(tmp_path / "data", [f"{'cats' if i % 2 else 'dogs'}/img{i:03d}.png" for i in range(n)])
    scores = _write_scores(tmp_path / f"scores.{fmt}", [{"path": p, "score": float(i)} for i, p in enumerate(paths)])
    return scores, paths


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) with its content hash or link target; ``skip`` left out."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if skip is not None and (p == skip or skip in p.parents):
                continue
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = _sha(p)
            else:
                out[str(p)] = "dir"
    return out


def _scores_of(rows) -> list[float]:
    return [r.score for r in rows]


# --- filters ---------------------------------------------------------------------------------------------


def test_min_and_max_keep_the_range_bounds_included(tmp_path):
    scores, _ = _ladder(tmp_path)
    rows = pyica.select(scores, min_score=5, max_score=9)
    assert _scores_of(rows) == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert [r.rank for r in rows] == [11, 12, 13, 14, 15]  # ranks among all 20 rows, 1 = highest
    assert rows[0].reason == "score >= 5 and score <= 9"
    assert _scores_of(pyica.select(scores, min_score=18.5)) == [19.0]
    assert _scores_of(pyica.select(scores, max_score=0)) == [0.0]
    with pytest.raises(ValueError, match="above --max"):
        pyica.select(scores, min_score=3, max_score=2)


def test_top_and_bottom_and_both_ends(tmp_path):
    scores, paths = _ladder(tmp_path)
    top = pyica.select(scores, top=3)
    assert _scores_of(top) == [19.0, 18.0, 17.0] and [r.rank for r in top] == [1, 2, 3]
    assert top[0].path == str(paths[19]) and top[0].reason == "top 3" and top[0].model == "entropy"
    assert _scores_of(pyica.select(scores, bottom=2)) == [1.0, 0.0]
    assert _scores_of(pyica.select(scores, top=2, bottom=2)) == [19.0, 18.0, 1.0, 0.0]
    both = pyica.select(scores, top=15, bottom=15)  # the ends overlap: their union, each row once
    assert len(both) == 20 and {r.reason for r in both if r.score == 10.0} == {"top 15, bottom 15"}
    assert len(pyica.select(scores, top=100)) == 20


def test_ties_are_broken_by_path_so_a_selection_is_deterministic(tmp_path):
    paths = _images(tmp_path / "d", ["b.png", "a.png", "c.png"])
    scores = _write_scores(tmp_path / "s.csv", [{"path": p, "score": 1.0} for p in paths])
    assert [Path(r.path).name for r in pyica.select(scores, top=2)] == ["a.png", "b.png"]


def test_quantile_keeps_the_rows_between_the_two_quantiles(tmp_path):
    scores, _ = _ladder(tmp_path, n=100)
    assert _scores_of(pyica.select(scores, quantile="0.9:1")) == [float(i) for i in range(99, 89, -1)]
    assert _scores_of(pyica.select(scores, quantile=(0, 0.1))) == [float(i) for i in range(9, -1, -1)]
    assert len(pyica.select(scores, quantile="0:1")) == 100
    small, _ = _ladder(tmp_path / "small", n=11)
    assert _scores_of(pyica.select(small, quantile="0.7:0.8")) == [8.0, 7.0]  # 0.7 * 10 is position 7 exactly
    for bad in ("0.9", "a:b", "0.5:0.2", "-0.1:1", "0:1.5"):
        with pytest.raises(ValueError, match="quantile"):
            pyica.select(scores, quantile=bad)


def test_balance_takes_the_centre_of_equal_count_bins(tmp_path):
    scores, _ = _ladder(tmp_path, n=100)
    rows = pyica.select(scores, balance=10)
    assert sorted(_scores_of(rows)) == [5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0]
    assert {r.reason for r in rows} == {f"balance {b}/10" for b in range(1, 11)}
    assert pyica.select(scores, balance=10) == rows  # deterministic
    assert len(pyica.select(scores, balance=1000)) == 100  # fewer rows than bins: all of them
    assert sorted(_scores_of(pyica.select(scores, balance=3))) == [16.0, 50.0, 83.0]


def test_filters_apply_in_order_each_on_what_the_previous_kept(tmp_path):
    scores, _ = _ladder(tmp_path, n=100)
    rows = pyica.select(scores, min_score=50, quantile="0:0.5", top=5, balance=2)
    # min: 50..99; quantile 0:0.5 of those: 50..74.5 -> 50..74; top 5: 70..74; balance 2 of 5: positions 1, 3
    assert sorted(_scores_of(rows)) == [71.0, 73.0]
    assert rows[0].reason == "score >= 50; quantile 0:0.5; top 5; balance 2/2"
    selection = curation.select_rows(scores, min_score=50, quantile="0:0.5", top=5, balance=2)
    assert selection.steps == [("--min 50", 50), ("--quantile 0:0.5", 25), ("--top 5", 5), ("--balance 2", 2)]
    assert (selection.read, selection.scored, selection.errors) == (100, 100, 0)


def test_per_folder_applies_top_quantile_and_balance_within_each_folder(tmp_path):
    scores, _ = _ladder(tmp_path, n=20)  # odd scores in cats/, even in dogs/
    rows = pyica.select(scores, top=2, per_folder=True)
    by_folder = {}
    for r in rows:
        by_folder.setdefault(Path(r.path).parent.name, []).append((r.score, r.rank))
    assert by_folder == {"cats": [(19.0, 1), (17.0, 2)], "dogs": [(18.0, 1), (16.0, 2)]}  # rank within the folder
    assert rows[0].reason == "top 2 in its folder"
    assert sorted(_scores_of(pyica.select(scores, quantile="0.8:1", per_folder=True))) == [16.0, 17.0, 18.0, 19.0]
    assert len(pyica.select(scores, balance=3, per_folder=True)) == 6
    assert len(pyica.select(scores, min_score=10, bottom=1, per_folder=True)) == 2  # the range first, then per folder
    with pytest.raises(ValueError, match="--per-folder applies"):
        pyica.select(scores, per_folder=True)


def test_per_folder_groups_archive_members_by_their_folder_inside_the_archive(tmp_path):
    archive = tmp_path / "shard.tar"
    _tar(archive, {"a/1.png": b"1", "a/2.png": b"2", "b/1.png": b"3"})
    scores = _write_scores(tmp_path / "s.csv", [{"path": f"{archive}:{m}", "score": s}
                                                 for m, s in (("a/1.png", 1.0), ("a/2.png", 2.0), ("b/1.png", 3.0))])
    assert sorted(_scores_of(pyica.select(scores, top=1, per_folder=True))) == [2.0, 3.0]


def test_errors_selects_the_failed_rows_and_takes_no_score_filter(tmp_path):
    paths = _images(tmp_path / "d", ["ok.png", "bad.png", "nan.png"])
    scores = _write_scores(tmp_path / "s.jsonl", [
        {"path": paths[0], "score": 1.0}, {"path": paths[1], "score": None, "error": "bad.png: truncated"},
        {"path": paths[2], "score": float("nan")}])
    rows = pyica.select(scores, errors=True)
    assert [(Path(r.path).name, r.score, r.rank, r.reason) for r in rows] == [
        ("bad.png", None, None, "error"), ("nan.png", None, None, "error")]
    assert rows[0].error == "bad.png: truncated" and rows[1].error == "score is not finite"
    assert _scores_of(pyica.select(scores)) == [1.0]  # error rows are never selected by score filters
    with pytest.raises(ValueError, match="--errors"):
        pyica.select(scores, errors=True, top=1)


# --- reading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_score_format_reads_the_same(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    scores, _ = _ladder(tmp_path, n=10, fmt=fmt)
    rows = pyica.select(scores, top=3)
    assert _scores_of(rows) == [9.0, 8.0, 7.0]


def test_several_files_are_read_as_one_and_overlaps_and_mixed_models_are_refused(tmp_path):
    paths = _images(tmp_path / "d", [f"{i}.png" for i in range(6)])
    a = _write_scores(tmp_path / "a.csv", [{"path": p, "score": float(i)} for i, p in enumerate(paths[:3])])
    b = _write_scores(tmp_path / "b.jsonl", [{"path": p, "score": float(i + 3)} for i, p in enumerate(paths[3:])])
    assert _scores_of(pyica.select([a, b], top=2)) == [5.0, 4.0]
    assert _scores_of(pyica.select(str(tmp_path / "[ab].*"), top=1)) == [5.0]  # a quoted glob
    overlap = _write_scores(tmp_path / "c.csv", [{"path": paths[0], "score": 9.0}])
    with pytest.raises(ValueError, match="listed more than once"):
        pyica.select([a, overlap])
    mixed = _write_scores(tmp_path / "m.csv", [{"path": paths[0], "score": 1.0, "model": "entropy"},
                                               {"path": paths[0], "score": 2.0, "model": "jpeg_ratio"}])
    with pytest.raises(ValueError, match="choose one with -m"):
        pyica.select(mixed)
    assert _scores_of(pyica.select(mixed, model="jpeg_ratio")) == [2.0]
    with pytest.raises(ValueError, match="no rows of model 'icnet'"):
        pyica.select(mixed, model="icnet")


def test_a_manifest_select_wrote_can_be_selected_from_again(tmp_path):
    scores, _ = _ladder(tmp_path)
    manifest = tmp_path / "m.jsonl"
    assert main(["select", str(scores), "--top", "5", "-o", str(manifest), "-q"]) == 0
    assert _scores_of(pyica.select(manifest, bottom=1)) == [15.0]


# --- the manifest ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_the_manifest_has_path_score_rank_and_reason_in_every_format(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    scores, paths = _ladder(tmp_path)
    out = tmp_path / f"manifest{suffix}"
    assert main(["select", str(scores), "--top", "2", "-o", str(out), "-q"]) == 0
    rows = read_scores(out)
    assert [(r["path"], r["score"], int(r["rank"]), r["reason"]) for r in rows] == [
        (str(paths[19]), 19.0, 1, "top 2"), (str(paths[18]), 18.0, 2, "top 2")]
    assert json.loads(Path(f"{out}.meta.json").read_text())["status"] == "finished"
    assert not Path(f"{out}.part").exists()


def test_without_o_nor_to_the_manifest_goes_to_stdout(tmp_path, capsys):
    scores, paths = _ladder(tmp_path)
    assert main(["select", str(scores), "--bottom", "1"]) == 0
    out = capsys.readouterr().out
    assert list(csv.DictReader(io.StringIO(out))) == [
        {"path": str(paths[0]), "model": "entropy", "score": "0.0", "rank": "20", "reason": "bottom 1", "error": ""}]


def test_the_manifest_follows_the_output_rules(tmp_path, capsys):
    scores, _ = _ladder(tmp_path)
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    dest = tmp_path / "dest"
    assert main(["select", str(scores), "--top", "2", "-o", str(out), "--to", str(dest)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert not dest.exists()  # refused before any copy
    assert main(["select", str(scores), "--top", "2", "-o", str(out), "--overwrite", "-q"]) == 0
    assert len(read_scores(out)) == 2
    assert main(["select", str(scores), "-o", str(scores), "--overwrite"]) == 2  # never over what it reads
    assert "also an input" in capsys.readouterr().err


# --- copies and links ------------------------------------------------------------------------------------


def _read_only(paths: list[Path], folder: Path) -> None:
    for p in paths:
        p.chmod(0o444)
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        sub.chmod(0o555)


def _writable(folder: Path) -> None:
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        sub.chmod(0o755)


@pytest.mark.parametrize("mode", ["copy", "link", "symlink"])
def test_copies_and_links_keep_the_layout_and_leave_read_only_originals_unchanged(tmp_path, mode, capsys):
    scores, paths = _ladder(tmp_path)
    before = {p: (_sha(p), p.stat().st_mode, p.stat().st_mtime_ns) for p in paths}
    _read_only(paths, tmp_path / "data")
    dest = tmp_path / "dest"
    try:
        assert main(["select", str(scores), "--top", "3", "--to", str(dest), f"--{mode}"]) == 0
        assert "3 " in capsys.readouterr().err
        made = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.png"))
        assert made == ["cats/img017.png", "cats/img019.png", "dogs/img018.png"]  # below the files' common folder
        for name in made:
            copy, original = dest / name, tmp_path / "data" / name
            assert _sha(copy) == _sha(original)
            if mode == "copy":
                assert not copy.is_symlink() and copy.stat().st_ino != original.stat().st_ino
                assert copy.stat().st_mtime_ns == original.stat().st_mtime_ns  # the original's times
                assert copy.stat().st_mode & 0o200  # a copy is the user's file, not read-only
            elif mode == "link":
                assert copy.stat().st_ino == original.stat().st_ino
            else:
                assert copy.is_symlink() and os.readlink(copy) == str(original)
        assert not [p for p in dest.rglob(".pyica-*")]  # no temporary file left
    finally:
        _writable(tmp_path / "data")
    assert {p: (_sha(p), p.stat().st_mode, p.stat().st_mtime_ns) for p in paths} == \
        {p: (h, m & ~0o222, t) for p, (h, m, t) in before.items()}  # only the mode we set changed


def test_the_layout_does_not_depend_on_the_filters_and_relative_to_moves_it(tmp_path):
    scores, _ = _ladder(tmp_path)
    dest = tmp_path / "dest"
    assert main(["select", str(scores), "--top", "1", "--to", str(dest), "-q"]) == 0  # only cats/ selected
    assert [str(p.relative_to(dest)) for p in dest.rglob("*.png")] == ["cats/img019.png"]
    other = tmp_path / "other"
    assert main(["select", str(scores), "--top", "1", "--to", str(other), "--relative-to", str(tmp_path), "-q"]) == 0
    assert [str(p.relative_to(other)) for p in other.rglob("*.png")] == ["data/cats/img019.png"]
    report = curation.copy_selected(pyica.select(scores, top=1), tmp_path / "api")  # the rows' own common folder
    assert report.written == 1 and (tmp_path / "api" / "img019.png").is_file()


def test_existing_files_are_never_overwritten_refused_or_skipped(tmp_path, capsys):
    scores, paths = _ladder(tmp_path)
    dest = tmp_path / "dest"
    (dest / "cats").mkdir(parents=True)
    (dest / "cats" / "img019.png").write_bytes(b"mine")
    assert main(["select", str(scores), "--top", "3", "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "1 destination file(s) exist already (e.g. cats/img019.png): nothing was copied" in err
    assert sorted(p.name for p in dest.rglob("*.png")) == ["img019.png"]  # nothing else was written
    assert main(["select", str(scores), "--top", "3", "--to", str(dest), "--skip-existing"]) == 0
    assert "2 copied, 1 skipped" in capsys.readouterr().err
    assert (dest / "cats" / "img019.png").read_bytes() == b"mine"
    assert main(["select", str(scores), "--top", "3", "--to", str(dest), "--skip-existing", "--link"]) == 0  # rerun


def test_a_destination_taken_meanwhile_is_a_failure_not_an_overwrite(tmp_path, monkeypatch):
    scores, paths = _ladder(tmp_path)
    dest = tmp_path / "dest"
    real_open_folder = curation._open_folder

    def racing(root_fd, parts):  # another process creates the file between the check and the write
        fd = real_open_folder(root_fd, parts)
        os.close(os.open("img019.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        return fd

    monkeypatch.setattr(curation, "_open_folder", racing)
    report = curation.copy_selected(pyica.select(scores, top=1), dest, relative_to=tmp_path / "data")
    assert report.written == 0 and "exists in the destination" in report.failed[0][1]
    assert (dest / "cats" / "img019.png").read_bytes() == b""
    report = curation.copy_selected(pyica.select(scores, top=1), dest, relative_to=tmp_path / "data",
                                    skip_existing=True)
    assert report.skipped == 1


def test_an_interrupted_copy_leaves_no_half_file(tmp_path, monkeypatch):
    scores, _ = _ladder(tmp_path)
    dest = tmp_path / "dest"

    def broken(src, fd):
        os.write(fd, src.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(curation, "_pump", broken)
    report = curation.copy_selected(pyica.select(scores, top=2), dest)
    assert report.written == 0 and [why for _, why in report.failed] == ["No space left on device"] * 2
    assert [p for p in dest.rglob("*") if p.is_file()] == []  # neither the final names nor temporary files


def test_some_copies_failing_is_exit_1_with_each_failure_reported_all_failing_is_2(tmp_path, capsys):
    scores, paths = _ladder(tmp_path)
    paths[19].unlink()
    paths[18].unlink()
    assert main(["select", str(scores), "--top", "3", "--to", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.splitlines()
    failures = [line for line in err if line.startswith("pyica: error: not copied:")]
    assert len(failures) == 2 and all("No such file or directory" in line for line in failures)
    assert "1 copied, 0 skipped (existing), 2 failed" in err[-1]
    assert main(["select", str(scores), "--top", "2", "--to", str(tmp_path / "b"), "--symlink"]) == 2
    assert "not linked" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # nothing done: the folder it made is gone again


def test_archive_members_are_extracted_by_copy_and_never_linked(tmp_path, capsys):
    tar, zf = tmp_path / "data" / "shard.tar.gz", tmp_path / "data" / "more.zip"
    tar.parent.mkdir()
    _tar(tar, {"x/1.png": b"one", "x/2.png": b"two"})
    with zipfile.ZipFile(zf, "w") as z:
        z.writestr("y/3.png", b"three")
    plain = _images(tmp_path / "data" / "plain", ["4.png"])[0]
    scores = _write_scores(tmp_path / "s.csv", [
        {"path": f"{tar}:x/1.png", "score": 1.0}, {"path": f"{tar}:x/2.png", "score": 2.0},
        {"path": f"{zf}:y/3.png", "score": 3.0}, {"path": plain, "score": 4.0},
        {"path": f"{tar}:x/missing.png", "score": 5.0}])
    tar_sha = _sha(tar)
    dest = tmp_path / "dest"
    assert main(["select", str(scores), "--to", str(dest), "--link"]) == 2
    assert "archive members" in capsys.readouterr().err and not dest.exists()
    assert main(["select", str(scores), "--to", str(dest)]) == 1
    assert "x/missing.png: not in the archive" in capsys.readouterr().err
    assert (dest / "shard.tar.gz" / "x" / "2.png").read_bytes() == b"two"
    assert (dest / "more.zip" / "y" / "3.png").read_bytes() == b"three"
    assert (dest / "plain" / "4.png").read_bytes() == plain.read_bytes()
    assert _sha(tar) == tar_sha


# --- hostile paths ---------------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> None:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_member_names_with_dotdot_or_absolute_cannot_lead_out_of_dest(tmp_path, capsys):
    work = tmp_path / "work"
    archive = work / "evil.tar"
    archive.parent.mkdir()
    _tar(archive, {"../../escaped.png": b"x", "/tmp/abs-escaped.png": b"y", "ok/../../up.png": b"z", "fine.png": b"f"})
    scores = _write_scores(work / "s.csv", [{"path": f"{archive}:{m}", "score": float(i)} for i, m in
                                            enumerate(["../../escaped.png", "/tmp/abs-escaped.png", "ok/../../up.png",
                                                       "fine.png"])])
    dest = work / "dest"
    outside = _snapshot(tmp_path, skip=dest)
    assert main(["select", str(scores), "--to", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("leads out of its folder") == 2 and "is an absolute name" in err
    assert _snapshot(tmp_path, skip=dest) == outside
    assert not Path("/tmp/abs-escaped.png").exists()
    assert [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()] == ["evil.tar/fine.png"]


def test_dotdot_and_absolute_source_paths_are_laid_out_inside_dest(tmp_path):
    work = tmp_path / "work"
    a, b = _images(work / "data" / "a", ["1.png"])[0], _images(tmp_path / "elsewhere", ["2.png"], seed=1)[0]
    scores = _write_scores(work / "s.csv", [
        {"path": str(work / "data" / "a" / ".." / ".." / ".." / "elsewhere" / "2.png"), "score": 2.0},
        {"path": str(a), "score": 1.0}])
    dest = work / "dest"
    outside = _snapshot(tmp_path, skip=dest)
    assert main(["select", str(scores), "--to", str(dest), "-q"]) == 0
    assert _snapshot(tmp_path, skip=dest) == outside
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.png")) == ["elsewhere/2.png", "work/data/a/1.png"]
    assert (dest / "elsewhere" / "2.png").read_bytes() == b.read_bytes()
    # with --relative-to, a source outside that folder is reported, not placed above DEST
    assert main(["select", str(scores), "--to", str(tmp_path / "d2"), "--relative-to", str(work), "-q"]) == 1
    assert [p.name for p in (tmp_path / "d2").rglob("*.png")] == ["1.png"]


def test_a_symlinked_folder_planted_inside_dest_is_not_followed(tmp_path, capsys):
    scores, paths = _ladder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "cats").symlink_to(outside)  # an attacker's link where a folder of the copy will go
    (dest / "dogs").symlink_to(outside)
    for mode in ("--copy", "--link", "--symlink"):
        assert main(["select", str(scores), "--top", "3", "--to", str(dest), mode]) == 2  # every row refused
        err = capsys.readouterr().err
        assert err.count("is a symbolic link or a file, not a folder: not followed") == 3
    assert list(outside.iterdir()) == []


def test_a_link_planted_at_a_file_name_is_neither_followed_nor_replaced(tmp_path, capsys):
    scores, paths = _ladder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "cats").mkdir(parents=True)
    (dest / "cats" / "img019.png").symlink_to(outside / "victim.png")  # dangling: writing through it would create
    assert main(["select", str(scores), "--top", "1", "--to", str(dest)]) == 2
    assert main(["select", str(scores), "--top", "1", "--to", str(dest), "--skip-existing", "-q"]) == 0
    assert list(outside.iterdir()) == []
    assert os.readlink(dest / "cats" / "img019.png") == str(outside / "victim.png")


def test_names_with_newlines_and_markup_are_kept_as_data(tmp_path, capsys):
    names = ["a\nb.png", "<img src=x onerror=alert(1)>&amp;.png", "c\rd.png", "\x1b[31mred.png"]
    paths = _images(tmp_path / "data", names)
    scores = _write_scores(tmp_path / "s.csv", [{"path": p, "score": float(i)} for i, p in enumerate(paths)])
    dest, manifest = tmp_path / "dest", tmp_path / "m.csv"
    assert main(["select", str(scores), "--to", str(dest), "-o", str(manifest), "-q"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)
    assert sorted(Path(r["path"]).name for r in read_scores(manifest)) == sorted(names)
    paths[0].unlink()
    assert main(["select", str(scores), "--to", str(tmp_path / "d2")]) == 1
    err = capsys.readouterr().err
    failure = [line for line in err.splitlines() if "not copied" in line]
    assert len(failure) == 1 and "a\\nb.png" in failure[0] and "\x1b" not in err


# --- dry run, CLI errors, imports ------------------------------------------------------------------------


def test_dry_run_prints_counts_per_filter_and_writes_nothing(tmp_path, capsys):
    scores, _ = _ladder(tmp_path, n=100)
    dest = tmp_path / "dest"
    before = _snapshot(tmp_path)
    assert main(["select", str(scores), "--min", "10", "--per-folder", "--top", "5", "--dry-run", "--to", str(dest)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["read 100 rows from 1 file (model entropy): 100 scored, 0 errors",
                   "after --min 10: 90",
                   "after --top 5 (per folder, 2 folders): 10",
                   "kept 10 rows, scores 90..99",
                   f"--to {dest}: would copy 10 files (0 exist already, 0 cannot be placed safely)"]
    assert _snapshot(tmp_path) == before
    assert main(["select", str(scores), "--dry-run", "-o", str(tmp_path / "m.csv")]) == 2


@pytest.mark.parametrize("content, message", [
    ("path,model,score,error\n/x.png,entropy,abc,\n", "score 'abc' of '/x.png' is not a number"),
    ("image,label\n/x.png,3\n", "not a pyica score file"),
    (b"path,model,score,error\n/\xff.png,entropy,1,\n", "not a UTF-8 score file"),
])
def test_bad_score_files_are_one_line_naming_the_file(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["select", str(bad), "--top", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pyica: error: {bad}: ") and message in err


@pytest.mark.parametrize("argv, message", [
    (["--top", "0"], "must be at least 1"),
    (["--min", "nan"], "expected a finite number"),
    (["--link"], "add --to"),
    (["--errors", "--min", "1"], "takes no score filter"),
    (["--link", "--symlink", "--to", "d"], "not allowed with argument"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    scores, _ = _ladder(tmp_path)
    try:
        code = main(["select", str(scores), *argv])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


def test_nothing_selected_is_exit_2_and_writes_nothing(tmp_path, capsys):
    scores, _ = _ladder(tmp_path)
    assert main(["select", str(scores), "--min", "100", "-o", str(tmp_path / "m.csv"), "--to", str(tmp_path / "d")]) == 2
    assert "nothing selected" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "d").exists()


def test_select_imports_no_torch(tmp_path):
    scores, _ = _ladder(tmp_path)
    code = (f"import sys\nfrom pyica.cli import main\nimport pyica\n"
            f"assert main(['select', {str(scores)!r}, '--top', '2', '--to', {str(tmp_path / 'd')!r}, '-q']) == 0\n"
            f"assert len(pyica.select({str(scores)!r}, balance=3)) == 3\n"
            "print(sorted(m for m in ('torch', 'scipy', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
