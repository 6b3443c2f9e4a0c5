"""The notebook-style tour in examples/ runs end to end and makes what it says."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_tour_scores_reports_and_trains(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "quick_tour.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "scores.csv").exists() and (tmp_path / "report.html").read_text().count("<img") >= 9
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 5 and losses[-1] < losses[0]  # the loss makes the noise simpler
