"""Scoring at scale: streamed inputs, tar shards, --shard, torchrun ranks, crash safety of --resume."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.registry import create_model
from pyica.inputs import TarMember, iter_batches, iter_image_paths
from pyica.scoring import ScoreRecord, rank_output_path, score_paths
from pyica.writers import SCORE_COLUMNS, ScoreWriter, drop_torn_tail, read_scores

MODEL = "entropy"  # the cheapest classic measure
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _images(folder: Path, n: int, size: int = 16) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rgb = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(rgb).save(paths[-1])
    return paths


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


# --- streaming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_score_paths_accepts_a_generator_and_pulls_it_lazily(tmp_path, workers):
    paths = _images(tmp_path, 6) + [str(tmp_path / "missing.png")]
    model = create_model(MODEL, device="cpu")
    pulled = []

    def stream():
        for p in paths:
            pulled.append(p)
            yield p

    records = score_paths(stream(), model, batch_size=2, num_workers=workers)
    first = next(records)
    if workers == 0:
        assert len(pulled) <= 2  # one batch ahead at most: the generator is not drained first
    records = [first, *records]
    assert [r.path for r in records] == paths  # input order, whatever worker loaded each batch
    assert records[-1].score is None and "file not found" in records[-1].error
    assert [r.score for r in records] == [r.score for r in score_paths(paths, model, batch_size=3, num_workers=0)]


def test_iter_batches_keeps_positions_for_sequences(tmp_path):
    paths = _images(tmp_path, 3)
    paths.insert(1, str(tmp_path / "nope.png"))
    model = create_model(MODEL, device="cpu")
    out = list(iter_batches(paths, model.transform, model.collate, batch_size=3, num_workers=0))
    assert [i for indices, _, _ in out for i in indices] == [0, 2, 3]
    assert [(i, "nope.png" in e) for _, _, errors in out for i, e in errors] == [(1, True)]


# --- tar shards and brace patterns -----------------------------------------------------------------


def _shards(tmp_path: Path, files: list[str], per_shard: int) -> list[str]:
    """Tar shards of the files (WebDataset-like: KEY/img.png plus a KEY/meta.json that is ignored)."""
    shards = []
    for s in range(0, len(files), per_shard):
        shard = tmp_path / f"x-{s // per_shard:03d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i, f in enumerate(files[s:s + per_shard]):
                tar.add(f, arcname=f"k{s + i:03d}/img.png")
                info = tarfile.TarInfo(f"k{s + i:03d}/meta.json")
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
        shards.append(str(shard))
    return shards


def test_tar_shards_with_brace_pattern_score_like_the_files(tmp_path):
    files = _images(tmp_path / "img", 5)
    shards = _shards(tmp_path, files, per_shard=2)  # x-000.tar, x-001.tar, x-002.tar
    pattern = str(tmp_path / "x-{000..002}.tar")
    keys = list(iter_image_paths([pattern]))
    assert keys == [f"{shards[i // 2]}:k{i:03d}/img.png" for i in range(5)]
    assert all(isinstance(k, TarMember) for k in keys)

    out = tmp_path / "s.jsonl"
    assert main(["score", pattern, str(tmp_path / "x-009.tar"), *files, "-m", MODEL, "-o", str(out), "-q",
                 "--workers", "2", "--batch-size", "2"]) == 1  # x-009.tar is missing: an error row, exit 1
    rows = read_scores(out)
    assert [r["path"] for r in rows] == keys + [str(tmp_path / "x-009.tar")] + files
    by_key = {r["path"]: r for r in rows}
    assert "file not found" in by_key[str(tmp_path / "x-009.tar")]["error"]  # a missing shard is an error row
    for i, f in enumerate(files):
        assert by_key[keys[i]]["score"] == pytest.approx(by_key[f]["score"])  # same pixels, same score
    # tar member names are what --resume matches
    assert main(["score", pattern, "-m", MODEL, "-o", str(out), "-q", "--workers", "0", "--resume"]) == 1  # the output keeps its error row
    assert len(read_scores(out)) == len(rows)
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["skipped_already_done"] == 5
    assert main(["score", pattern, "-m", MODEL, "-o", str(tmp_path / "m.csv"), "--maps", str(tmp_path / "maps")]) == 2


def test_truncated_tar_member_is_an_error_row(tmp_path):
    files = _images(tmp_path / "img", 2)
    [shard] = _shards(tmp_path, files, per_shard=2)
    keys = list(iter_image_paths([shard]))
    with open(shard, "r+b") as f:  # cut the shard inside its second image
        f.truncate(keys[1].offset + 10)
    model = create_model(MODEL, device="cpu")
    records = list(score_paths(keys, model, num_workers=0))
    assert records[0].score is not None
    assert records[1].score is None and keys[1] in records[1].error and "truncated" in records[1].error


# --- --shard and torchrun ----------------------------------------------------------------------------


def test_shards_cover_every_input_exactly_once(tmp_path):
    paths = _images(tmp_path / "img", 11)
    seen = []
    for i in range(3):
        out = tmp_path / f"s{i}.csv"
        assert main(["score", str(tmp_path / "img"), "-m", MODEL, "-o", str(out), "-q", "--workers", "0",
                     "--shard", f"{i}/3"]) == 0
        mine = [r["path"] for r in read_scores(out)]
        assert mine == paths[i::3]  # positions p with p % 3 == i, in input order
        assert json.loads((tmp_path / f"s{i}.csv.meta.json").read_text())["shard"] == f"{i}/3"
        seen += mine
    assert sorted(seen) == paths


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "x.png", "--shard", bad])
    assert exc.value.code == 2
    assert "--shard" in capsys.readouterr().err


@pytest.mark.slow  # ~8 s: two interpreter start-ups
def test_torchrun_ranks_write_their_own_files(tmp_path):
    """Two processes with torchrun's variables (no torchrun): each rank writes OUT.rank<r>of2.csv and
    takes, within --shard 1/2, every other input: p % 4 == 1 + 2 * r."""
    paths = _images(tmp_path / "img", 9)
    out = tmp_path / "scores.csv"
    cmd = [sys.executable, "-m", "pyica", "score", str(tmp_path / "img"), "-m", MODEL, "-o", str(out), "-q",
           "--workers", "0", "--shard", "1/2"]
    procs = [subprocess.Popen(cmd, env=_env(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2"),
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert not out.exists()
    for r in range(2):
        rank_out = tmp_path / f"scores.rank{r}of2.csv"
        assert str(rank_out) == rank_output_path(out, r, 2)
        assert [row["path"] for row in read_scores(rank_out)] == [p for k, p in enumerate(paths) if k % 4 == 1 + 2 * r]
        meta = json.loads((tmp_path / f"scores.rank{r}of2.csv.meta.json").read_text())
        assert (meta["rank"], meta["world_size"], meta["device"]) == (r, 2, "cpu")


def test_torchrun_needs_an_output_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["score", str(tmp_path), "-m", MODEL, "-q"]) == 2
    assert "-o is needed" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "2")
    assert main(["score", str(tmp_path), "-m", MODEL, "-q", "-o", str(tmp_path / "s.csv")]) == 2
    assert "RANK=2" in capsys.readouterr().err


# --- crash safety ----------------------------------------------------------------------------------


def _row(path: str) -> ScoreRecord:
    return ScoreRecord(path, MODEL, 1.5, None)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("state", ["empty", "header_only", "torn_header", "torn_line", "torn_quoted", "whole"])
def test_resume_cuts_the_part_file_after_its_last_complete_row(tmp_path, fmt, state):
    out = tmp_path / f"s.{fmt}"
    part = tmp_path / f"s.{fmt}.part"
    writer = ScoreWriter(out)
    writer.write([_row("a.png"), _row("odd\nname.png"), _row("b.png")])
    writer.close(finished=False)
    text = part.read_bytes()
    header = b"path,model,score,error\n" if fmt == "csv" else b""
    body = text[len(header):]
    content = {"empty": b"", "header_only": header, "torn_header": header[:7], "whole": text,
               "torn_line": text[:-5],                           # inside the last row
               "torn_quoted": header + body[:body.index(b"\n") + 8]}[state]  # inside "odd\nname.png"
    if fmt == "jsonl" and state in ("header_only", "torn_header"):
        content = text[:3]
    part.write_bytes(content)
    writer = ScoreWriter(out, resume=True)
    expected_done = {"empty": set(), "header_only": set(), "torn_header": set(), "torn_quoted": {"a.png"},
                     "torn_line": {"a.png", "odd\nname.png"}, "whole": {"a.png", "odd\nname.png", "b.png"}}[state]
    assert writer.done == expected_done
    writer.write([_row(p) for p in ["a.png", "odd\nname.png", "b.png"] if p not in writer.done])
    writer.close()
    rows = read_scores(out)
    assert [r["path"] for r in rows] == ["a.png", "odd\nname.png", "b.png"]
    assert all(r["score"] == 1.5 and r["model"] == MODEL for r in rows)
    if fmt == "csv":
        assert out.read_text().startswith(",".join(SCORE_COLUMNS) + "\n")
        assert out.read_text().count("path,model") == 1


def test_drop_torn_tail_reads_backwards_across_blocks(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"one\n" + b"x" * 200_000)
    drop_torn_tail(f)
    assert f.read_bytes() == b"one\n"
    f.write_bytes(b"y" * 70_000)
    drop_torn_tail(f)
    assert f.read_bytes() == b""
    f.write_bytes(b"a\nb\n")
    drop_torn_tail(f)
    assert f.read_bytes() == b"a\nb\n"


@pytest.mark.slow  # ~12 s: two interpreter start-ups and 300 images
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_kill_9_then_resume_scores_every_input_exactly_once(tmp_path, suffix):
    """A real `pyica score` killed by SIGKILL mid-run, then `--resume`: every input once, every row whole."""
    sources = []
    for i in range(4):  # noise PNGs: compression_ratio_png takes ~10 ms each, so the run lasts a few seconds
        sources.append(tmp_path / f"src{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(sources[-1])
    folder = tmp_path / "img"
    folder.mkdir()
    paths = []
    for k in range(300):  # distinct paths, hard links to 4 files
        paths.append(str(folder / f"{k:03d}.png"))
        os.link(sources[k % 4], paths[-1])
    out = tmp_path / f"scores{suffix}"
    part = tmp_path / f"scores{suffix}.part"
    cmd = [sys.executable, "-m", "pyica", "score", str(folder), "-m", "compression_ratio_png", "-o", str(out), "-q",
           "--workers", "0", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists() and part.exists()
    killed_rows = part.read_bytes().count(b"\n")
    assert killed_rows < 300

    done = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not part.exists()
    rows = read_scores(out)
    assert sorted(r["path"] for r in rows) == paths  # every input, none twice
    assert all(r["score"] is not None and r["error"] is None for r in rows)
    lines = out.read_text().splitlines()
    if suffix == ".csv":
        assert lines[0] == ",".join(SCORE_COLUMNS) and len(lines) == 301
        assert all(len(r) == 4 for r in csv.reader(lines))
    else:
        assert len(lines) == 300 and all(set(json.loads(line)) == set(SCORE_COLUMNS) for line in lines)
    meta = json.loads((tmp_path / f"scores{suffix}.meta.json").read_text())
    assert meta["inputs"] == 300 and meta["skipped_already_done"] + meta["scored"] == 300
    assert meta["skipped_already_done"] >= killed_rows - 2  # a torn last row (if any) is redone
