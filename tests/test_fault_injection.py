"""Short form of benchmarks.fault_injection: kill -9 a scoring run at random points, resume, lose nothing."""

import random

import pytest

from benchmarks.fault_injection import check_output, make_images, passed, run_with_kills
from pyica.cli import main
from pyica.writers import read_scores


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_killed_and_resumed_runs_score_every_image_once_with_the_same_score(tmp_path, fmt):
    folder = tmp_path / "images"
    make_images(folder, 160, size=24)
    assert main(["score", str(folder), "-o", str(tmp_path / "reference.csv"), "-m", "entropy", "-q",
                 "--workers", "0"]) == 0
    reference = {r["path"]: r["score"] for r in read_scores(tmp_path / "reference.csv")}
    out = tmp_path / "killed" / f"scores.{fmt}"
    out.parent.mkdir()
    landed = run_with_kills(folder, out, kills=3, total=160, rng=random.Random(1), batch_size=4)
    assert landed, "no kill landed before the run finished"
    check = check_output(out, reference)
    assert passed(check), check
    assert check["rows"] == 160
