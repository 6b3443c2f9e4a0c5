"""The `pyica` command end to end, through `pyica.cli.main(argv)`."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from image_zoo import make_image_zoo
from pyica.cli import main
from pyica.writers import read_scores

MODEL = "entropy"  # a classic measure: fast, no weights


@pytest.fixture()
def zoo(tmp_path):
    folder = tmp_path / "zoo"
    return folder, make_image_zoo(folder)


def _rows(path):
    return {r["path"].split("/")[-1]: r for r in read_scores(path)}


def test_score_folder_records_every_file_and_continues_past_errors(zoo, tmp_path):
    folder, expected = zoo
    out = tmp_path / "scores.csv"
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q", "--workers", "0"]) == 1  # some inputs failed: rows for all, exit 1
    rows = _rows(out)
    assert set(rows) == set(expected)
    for name, ok in expected.items():
        row = rows[name]
        assert row["model"] == MODEL
        if ok:
            assert row["score"] is not None and np.isfinite(row["score"]) and row["error"] is None, name
        else:
            assert row["score"] is None and name in row["error"], name
    meta = json.loads((tmp_path / "scores.csv.meta.json").read_text())
    assert meta["inputs"] == len(expected)
    assert meta["errors"] == sum(not ok for ok in expected.values())
    assert meta["scored"] == sum(expected.values())
    assert meta["model"] == MODEL and meta["torch_version"]
    assert not (tmp_path / "scores.csv.part").exists()


def test_score_with_workers_matches_in_process(zoo, tmp_path):
    folder, _ = zoo
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["score", str(folder), "-m", MODEL, "-o", str(a), "-q", "--workers", "0"]) == 1  # the zoo holds unreadable files: exit 1 (rows for all)
    assert main(["score", str(folder), "-m", MODEL, "-o", str(b), "-q", "--workers", "2", "--batch-size", "3"]) == 1
    assert read_scores(a) == read_scores(b)
    first = json.loads(a.read_text().splitlines()[0])
    assert set(first) == {"path", "model", "score", "error"}


def test_existing_output_needs_resume_or_overwrite(zoo, tmp_path, capsys):
    folder, _ = zoo
    out = tmp_path / "s.csv"
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q", "--workers", "0"]) == 1  # the zoo holds unreadable files: exit 1 (rows for all)
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q"]) == 2  # refused
    assert "--resume" in capsys.readouterr().err
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q", "--overwrite", "--workers", "0"]) == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_interruption_scores_each_input_exactly_once(zoo, tmp_path, suffix):
    folder, expected = zoo
    out = tmp_path / f"s{suffix}"
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q", "--workers", "0"]) == 1  # the zoo holds unreadable files: exit 1 (rows for all)
    complete = out.read_text().splitlines(keepends=True)
    # Simulate a crash: the run wrote a header (CSV) and 5 rows, then half of the 6th line.
    head = 1 if suffix == ".csv" else 0
    part = tmp_path / f"s{suffix}.part"
    part.write_text("".join(complete[: head + 5]) + complete[head + 5][:7])
    out.unlink()
    assert main(["score", str(folder), "-m", MODEL, "-o", str(out), "-q", "--resume", "--workers", "0"]) == 1
    rows = read_scores(out)
    assert sorted(r["path"] for r in rows) == sorted(str(folder / n) for n in expected)
    assert len(rows) == len(expected)
    meta = json.loads((tmp_path / f"s{suffix}.meta.json").read_text())
    assert meta["skipped_already_done"] == 5


def test_score_to_stdout_and_from_manifest(tmp_path, capsys):
    for i, size in enumerate([(40, 30), (64, 64)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text("image,score\n0.png,1\n1.png,2\nmissing.png,3\n")
    assert main(["score", str(manifest), "-m", MODEL, "-q", "--workers", "0"]) == 1  # one listed file is missing: exit 1
    lines = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [l["path"].split("/")[-1] for l in lines] == ["0.png", "1.png", "missing.png"]
    assert lines[2]["score"] == "" and "file not found" in lines[2]["error"]


def test_list_and_info(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "entropy" in listing and "(default)" in listing
    assert main(["info", "entropy"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lower_better"] is False and info["kind"] == "classic"
    assert main(["info", "entropi"]) == 2
    assert "Did you mean" in capsys.readouterr().err


@pytest.fixture()
def labelled(tmp_path):
    """16 images whose 'human' score is the noise amplitude, in two categories."""
    rows = ["image,score,category"]
    for i in range(16):
        amplitude = 8 * i
        rng = np.random.default_rng(i)
        base = np.full((48, 48, 3), 128.0) + rng.normal(0, amplitude + 0.1, (48, 48, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
        rows.append(f"img{i}.png,{amplitude},{'a' if i % 2 else 'b'}")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_eval_predictions_file_against_manifest(labelled, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="scatter plots need matplotlib (pip install pyica[plot])")  # --plot
    pred = tmp_path / "pred.csv"
    assert main(["score", str(labelled.parent), "-m", MODEL, "-o", str(pred), "-q", "--workers", "0"]) == 0
    capsys.readouterr()
    results = tmp_path / "results.csv"
    plot = tmp_path / "scatter.png"
    assert main(["eval", "--pred", str(pred), "--dataset", str(labelled), "-o", str(results), "--plot", str(plot)]) == 0
    assert "srcc" in capsys.readouterr().out
    rows = list(csv.DictReader(results.open()))
    pooled = next(r for r in rows if r["category"] == "pooled")
    assert int(pooled["n"]) == 16 and float(pooled["srcc"]) > 0.9  # entropy rises with noise amplitude
    assert {r["category"] for r in rows} == {"pooled", "a", "b", "category_mean"}
    assert Image.open(plot).format == "PNG"


def test_eval_model_under_random_splits(labelled, tmp_path, capsys):
    results = tmp_path / "results.csv"
    argv = ["eval", "-m", MODEL, "--dataset", str(labelled), "--protocol", "random", "--splits", "3",
            "--test-fraction", "0.5", "-o", str(results), "-q", "--workers", "0"]
    assert main(argv) == 0
    rows = list(csv.DictReader(results.open()))
    splits = {r["split"] for r in rows}
    assert len(splits) == 3
    for r in rows:
        if r["category"] == "pooled":
            assert int(r["n"]) == 8
    # Appending a second run keeps the first one's rows.
    assert main(argv) == 0
    assert len(list(csv.DictReader(results.open()))) == 2 * len(rows)


def test_validate_data_reports_problems(labelled, tmp_path, capsys):
    assert main(["validate-data", str(labelled)]) == 0
    assert "16" in capsys.readouterr().out
    (labelled.parent / "img3.png").write_bytes(b"garbage")
    (labelled.parent / "img4.png").unlink()
    assert main(["validate-data", str(labelled), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert any("img4.png" in str(m) for m in report["missing"])
    assert any("img3.png" in str(u) for u in report["unreadable"])
