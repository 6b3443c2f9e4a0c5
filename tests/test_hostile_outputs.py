"""Hostile outputs, exits and environments for `pyica score`: nothing this run did not create is destroyed.

Every case is built in a temporary folder (FIFOs included); nothing outside it is touched.
"""

import csv
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.scoring import ScoreRecord
from pyica.writers import OutputFile, OutputRefused, ScoreWriter, read_scores

MODEL = "entropy"  # a classic measure: fast, no weights
FAST = ["-m", MODEL, "-q", "--workers", "0"]


def _images(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256 // (i + 1), (24, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("pyica: error:")]) == 1


# --- where the output goes -------------------------------------------------------------------------------


def test_output_that_is_a_folder_is_refused_and_left_alone(tmp_path, capsys):
    _images(tmp_path / "imgs")
    target = tmp_path / "results"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["score", str(tmp_path / "imgs"), "-o", str(target), *FAST, "--overwrite"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "is a folder" in err
    assert sorted(os.listdir(target)) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("which", ["manifest", "image"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, capsys, which):
    images = _images(tmp_path / "imgs")
    manifest = tmp_path / "list.csv"
    manifest.write_text("image\n" + "".join(f"{p}\n" for p in images))
    before = {p: p.read_bytes() for p in [manifest, *images]}
    target = manifest if which == "manifest" else images[0]
    inputs = [str(manifest)] if which == "manifest" else [str(p) for p in images]
    # --format, so that the .png extension is not what refuses it
    assert main(["score", *inputs, "-o", str(target), *FAST, "--overwrite", "--format", "csv"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "also an input" in err
    assert {p: p.read_bytes() for p in before} == before
    assert not Path(str(target) + ".part").exists()


def test_existing_output_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    _images(tmp_path / "imgs")
    out = tmp_path / "scores.csv"
    out.write_text("my own notes, not pyica's\n")
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST]) == 2
    _no_traceback(capsys.readouterr().err)
    assert out.read_text() == "my own notes, not pyica's\n"
    # nor resumed into: it is not a pyica file, and it is left exactly as it was
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume"]) == 2
    assert "not a pyica output file" in capsys.readouterr().err
    assert out.read_text() == "my own notes, not pyica's\n" and not Path(str(out) + ".part").exists()


def test_output_to_a_fifo_is_written_straight_into(tmp_path):
    _images(tmp_path / "imgs", 3)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(Path(fifo).read_text()))
    reader.start()
    assert main(["score", str(tmp_path / "imgs"), "-o", str(fifo), *FAST, "--overwrite"]) == 0
    reader.join(timeout=30)
    rows = list(csv.DictReader(received[0].splitlines()))
    assert len(rows) == 3 and all(r["score"] for r in rows)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO: no temporary file renamed over it
    assert sorted(os.listdir(tmp_path)) == ["imgs", "pipe"]


def test_overwrite_replaces_only_when_the_run_finishes(tmp_path, monkeypatch):
    _images(tmp_path / "imgs")
    out = tmp_path / "s.csv"
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST]) == 0
    before = out.read_bytes()
    import pyica.cli as cli

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pyica.scoring.score_paths", crash)
    assert cli.main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--overwrite"]) == 130
    assert out.read_bytes() == before  # the interrupted overwrite left the finished output as it was


# --- resume identity, duplicates, locks ---------------------------------------------------------------------


def test_resume_with_another_model_or_format_is_refused_and_nothing_moves(tmp_path, capsys):
    _images(tmp_path / "imgs")
    out = tmp_path / "s.csv"
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST]) == 0
    before = out.read_bytes()
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), "-m", "edge_density", "-q", "--workers", "0",
                 "--resume"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "model was 'entropy', now 'edge_density'" in err
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume", "--format", "jsonl"]) == 2
    assert "format was 'csv', now 'jsonl'" in capsys.readouterr().err
    # without the sidecar, the rows themselves tell: another model's rows are refused too
    Path(str(out) + ".meta.json").unlink()
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), "-m", "edge_density", "-q", "--workers", "0",
                 "--resume"]) == 2
    assert "holds rows of model 'entropy'" in capsys.readouterr().err
    assert out.read_bytes() == before and not Path(str(out) + ".part").exists()


def test_resume_keys_on_the_absolute_path_and_repeated_inputs_are_scored_once(tmp_path, monkeypatch, caplog):
    images = _images(tmp_path / "imgs", 3)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.csv"
    assert main(["score", "imgs/img00.png", "-o", str(out), *FAST]) == 0
    manifest = tmp_path / "list.csv"  # names img01 twice
    manifest.write_text("image\nimgs/img01.png\nimgs/img01.png\n")
    assert main(["score", str(images[0]), "imgs", str(manifest), "-o", str(out), *FAST, "--resume"]) == 0
    rows = read_scores(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)  # absolute, each exactly once
    assert "named more than once" in caplog.text


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    _images(tmp_path / "imgs")
    out = tmp_path / "s.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(out) + ".lock"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume"]) == 2
        err = capsys.readouterr().err
        _no_traceback(err)
        assert "being written by another pyica run" in err and "--wait" in err
        assert not out.exists() and not Path(str(out) + ".part").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume"]) == 0  # free again


def test_the_lock_names_the_running_holder(tmp_path):
    first = OutputFile(tmp_path / "s.csv", "csv", identity={"model": "m"})
    try:
        second = subprocess.run(
            [sys.executable, "-c", "from pyica.writers import OutputFile; import sys; "
                                   "OutputFile(sys.argv[1], 'csv', identity={'model': 'm'}, resume=True)",
             str(tmp_path / "s.csv")], capture_output=True, text=True)
    finally:
        first.abort()
    assert second.returncode != 0
    assert "OutputRefused" in second.stderr and f"pid {os.getpid()} on " in second.stderr


# --- rows that stay parseable -----------------------------------------------------------------------------


def test_names_with_cr_newline_and_bad_bytes_round_trip_and_resume(tmp_path):
    out = tmp_path / "s.csv"
    names = ["/d/a\rb.png", "/d/c\nd.png", "/d/plain, with comma.png", os.fsdecode(b"/d/bad\xff.png")]
    writer = ScoreWriter(out, identity={"model": "m"})
    writer.write([ScoreRecord(n, "m", 1.0) for n in names])
    writer.close()
    data = out.read_bytes()
    data.decode("utf-8")  # valid UTF-8
    rows = read_scores(out)
    assert [r["path"] for r in rows] == names[:3] + ["/d/bad\\xff.png"]
    again = ScoreWriter(out, resume=True, identity={"model": "m"})
    assert again.done == {r["path"] for r in rows}
    again.close()


def test_output_files_respect_the_umask(tmp_path):
    _images(tmp_path / "imgs", 2)
    old = os.umask(0o027)
    try:
        assert main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / "s.csv"), *FAST]) == 0
    finally:
        os.umask(old)
    for name in ("s.csv", "s.csv.meta.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640


# --- exits and one-line failures ---------------------------------------------------------------------------


def test_exit_codes_say_what_happened(tmp_path, capsys):
    images = _images(tmp_path / "imgs", 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    run = lambda *inputs: main(["score", *map(str, inputs), *FAST])  # noqa: E731
    assert run(*images) == 0
    assert run(images[0], tmp_path / "bad") == 1
    assert run(tmp_path / "bad") == 2
    assert run(tmp_path / "missing.png") == 2
    assert run(tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert "1 of 2 inputs failed" in err and "no images found" in err


def test_bad_flags_are_usage_errors_and_leave_nothing_behind(tmp_path, capsys):
    _images(tmp_path / "imgs", 1)
    out = tmp_path / "s.csv"
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(tmp_path / "imgs"), "-o", str(out), "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["imgs"]


def test_full_disk_is_one_line_and_the_part_file_is_kept_for_resume(tmp_path, monkeypatch, capsys):
    _images(tmp_path / "imgs", 3)
    out = tmp_path / "s.csv"

    def full(self, text, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.part))

    monkeypatch.setattr(OutputFile, "write", full)
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "No space left on device" in err and "s.csv.part" in err
    assert not out.exists()


def test_a_bad_environment_variable_is_one_line_and_list_still_runs(tmp_path):
    env = {**os.environ, "PYICA_MAX_PIXELS": "lots"}
    listed = subprocess.run([sys.executable, "-m", "pyica", "list", "entropy"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "entropy" in listed.stdout
    _images(tmp_path / "imgs", 1)
    scored = subprocess.run([sys.executable, "-m", "pyica", "score", str(tmp_path / "imgs"), *FAST], env=env,
                            capture_output=True, text=True)
    assert scored.returncode == 2
    _no_traceback(scored.stderr)
    assert "PYICA_MAX_PIXELS='lots'" in scored.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    _images(tmp_path / "imgs", 40)
    shell = (f"{sys.executable} -m pyica score {tmp_path / 'imgs'} -m {MODEL} -q --workers 0 --batch-size 1 "
             f"| head -n 2")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True)
    assert len(done.stdout.splitlines()) == 2
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr
