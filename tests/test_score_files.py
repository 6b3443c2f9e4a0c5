"""Output formats (CSV, TSV, JSONL, Parquet), path lists and stdin, progress totals, `pyica merge` and `pyica summary`."""

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyica.cli import main
from pyica.inputs import count_inputs, iter_image_paths
from pyica.scoring import ScoreRecord
from pyica.score_files import merge_score_files, summarize_scores
from pyica.writers import ScoreWriter, infer_format, read_scores

FAST = ["-m", "entropy", "-q", "--workers", "0"]


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 8 * (i + 1), (20, 20, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# --- formats -------------------------------------------------------------------------------------------


def test_formats_come_from_the_extension_and_unknown_ones_are_refused(tmp_path):
    assert [infer_format(f"x{ext}") for ext in (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", "")] == \
        ["csv", "tsv", "jsonl", "jsonl", "parquet", "csv"]
    with pytest.raises(ValueError, match=r"unknown output format '.xlsx'"):
        infer_format("x.xlsx")
    assert infer_format("x.xlsx", "tsv") == "tsv"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_scores_resumes_and_reads_back_the_same(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    images = _images(tmp_path / "imgs", 5)
    reference = tmp_path / "reference.csv"
    assert main(["score", str(tmp_path / "imgs"), "-o", str(reference), *FAST]) == 0
    expected = {r["path"]: r["score"] for r in read_scores(reference)}

    out = tmp_path / f"scores{suffix}"
    assert main(["score", *map(str, images[:2]), "-o", str(out), *FAST]) == 0  # a finished output ...
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume"]) == 0  # ... extended
    rows = read_scores(out)
    assert {r["path"]: r["score"] for r in rows} == expected and len(rows) == 5
    assert not Path(str(out) + ".part").exists()
    if suffix == ".tsv":
        assert out.read_text().splitlines()[0] == "path\tmodel\tscore\terror"
    if suffix == ".parquet":
        assert out.read_bytes()[:4] == b"PAR1"
    # resuming in another format is refused, and the output stays as it was
    other = ".jsonl" if suffix != ".jsonl" else ".csv"
    assert main(["score", str(tmp_path / "imgs"), "-o", str(out), *FAST, "--resume", "--format", other[1:]]) == 2
    assert {r["path"]: r["score"] for r in read_scores(out)} == expected


def test_unknown_extension_is_refused_before_any_file_is_made(tmp_path, capsys):
    _images(tmp_path / "imgs", 1)
    assert main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / "s.xlsx"), *FAST]) == 2
    assert "unknown output format" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_a_killed_parquet_run_resumes_from_its_jsonl_rows(tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "s.parquet"
    writer = ScoreWriter(out, identity={"model": "m"})
    writer.write([ScoreRecord("/a.png", "m", 1.0), ScoreRecord("/b.png", "m", None, "/b.png: broken")])
    writer.output.stream.write('{"path": "/c.png", "mod')  # torn by a kill
    writer.output.stream.flush()
    writer.output._release()  # the process died: its lock went with it
    again = ScoreWriter(out, resume=True, identity={"model": "m"})
    assert again.done == {"/a.png", "/b.png"} and again.done_errors == 1
    again.write([ScoreRecord("/c.png", "m", 3.0)])
    again.close()
    assert [(r["path"], r["score"], r["error"]) for r in read_scores(out)] == [
        ("/a.png", 1.0, None), ("/b.png", None, "/b.png: broken"), ("/c.png", 3.0, None)]


# --- inputs: lists, stdin, totals ------------------------------------------------------------------------


def test_txt_lists_and_stdin_name_inputs(tmp_path, monkeypatch):
    images = _images(tmp_path / "imgs", 3)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my picks\n\nimgs/{images[0].name}\n{images[1]}\r\n")
    assert list(iter_image_paths([listing])) == [str(images[0]), str(images[1])]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"imgs/{images[2].name}\n".encode())))
    assert list(iter_image_paths(["-"])) == [str(images[2])]


def test_count_inputs_matches_what_is_scored_and_is_unknown_for_stdin(tmp_path):
    images = _images(tmp_path / "imgs", 4)
    (tmp_path / "list.csv").write_text("image\n" + "".join(f"{p}\n" for p in images[:2]))
    sources = [tmp_path / "imgs", tmp_path / "list.csv", tmp_path / "missing.png"]
    assert count_inputs(sources) == len(list(iter_image_paths(sources))) == 7
    assert count_inputs(["-"]) is None


def test_the_progress_bar_has_a_total(tmp_path, capsys):
    _images(tmp_path / "imgs", 3)
    assert main(["score", str(tmp_path / "imgs"), "-m", "entropy", "--workers", "0",
                 "-o", str(tmp_path / "s.csv")]) == 0
    assert "3/3" in capsys.readouterr().err


# --- merge and summary ------------------------------------------------------------------------------------


def test_merge_restores_the_input_order_of_shards(tmp_path):
    _images(tmp_path / "imgs", 7)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"no")
    for i in range(3):
        main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / f"part{i}.jsonl"), *FAST, "--shard", f"{i}/3"])
    main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / "whole.csv"), *FAST])
    assert main(["merge", str(tmp_path / "part*.jsonl"), "-o", str(tmp_path / "merged.csv")]) == 0
    merged, whole = read_scores(tmp_path / "merged.csv"), read_scores(tmp_path / "whole.csv")
    assert [(r["path"], r["score"], r["error"]) for r in merged] == [(r["path"], r["score"], r["error"]) for r in whole]
    assert json.loads((tmp_path / "merged.csv.meta.json").read_text())["merged"]["input_order"] is True


def test_merge_refuses_overlaps_other_models_and_unfinished_parts(tmp_path, capsys):
    _images(tmp_path / "imgs", 3)
    main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / "a.csv"), *FAST])
    main(["score", str(tmp_path / "imgs"), "-o", str(tmp_path / "b.csv"), "-m", "edge_density", "-q", "--workers", "0"])
    with pytest.raises(ValueError, match="different model"):
        merge_score_files([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv")
    with pytest.raises(ValueError, match="more than one part"):
        merge_score_files([tmp_path / "a.csv", tmp_path / "a.csv"], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.csv.part").exists()
    (tmp_path / "c.csv.part").write_text("path,model,score,error\n")
    assert main(["merge", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"), "-o", str(tmp_path / "m.csv")]) == 2
    assert "--resume first" in capsys.readouterr().err


def test_summary_counts_quantiles_and_extremes(tmp_path, capsys):
    out = tmp_path / "s.csv"
    writer = ScoreWriter(out, identity={"model": "m"})
    writer.write([ScoreRecord(f"/{i}.png", "m", float(i)) for i in range(11)] + [ScoreRecord("/x.png", "m", None, "bad")])
    writer.close()
    summary = summarize_scores(out, top=2)
    assert (summary["rows"], summary["scored"], summary["errors"]) == (12, 11, 1)
    assert summary["mean"] == 5.0 and summary["q50"] == 5.0 and summary["min"] == 0.0 and summary["max"] == 10.0
    assert [h["path"] for h in summary["highest"]] == ["/10.png", "/9.png"]
    assert [low["path"] for low in summary["lowest"]] == ["/0.png", "/1.png"]
    assert main(["summary", str(out), "-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "12 rows, 11 scored, 1 errors" in text and "/10.png" in text
