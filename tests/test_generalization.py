"""benchmarks.generalization --quick on a tiny generated dataset with two classic measures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks import generalization
from pyica.reports import read_results_csv

SHIFTS, SUITES = ("edges", "binarised"), ("strokes", "grid_patterns")


def tiny_manifest(folder):
    """Two categories of 20 small images whose score grows with their noise (more noise, more complex)."""
    rng = np.random.default_rng(0)
    lines = ["image,score,category"]
    for category in ("a", "b"):
        for i in range(20):
            amount = rng.uniform(0, 120)
            base = np.full((48, 64, 3), 128.0 if category == "a" else 60.0)
            image = np.clip(base + rng.normal(0, 1, base.shape) * amount, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{category}{i}.png")
            lines.append(f"{category}{i}.png,{amount:.2f},{category}")
    (folder / "tiny.csv").write_text("\n".join(lines) + "\n")
    return folder / "tiny.csv"


def test_quick_run_writes_every_protocol(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    out, doc = tmp_path / "gen.csv", tmp_path / "bench.md"
    doc.write_text("# x\n\n<!-- generalization:start -->\nold\n<!-- generalization:end -->\n\n## after\n")
    generalization.main(["--quick", "--dataset", str(tiny_manifest(data)), "-m", "entropy", "edge_density",
                         "--shifts", *SHIFTS, "--suites", *SUITES, "--suites-cache", str(tmp_path / "cache"),
                         "--out", str(out), "--doc", str(doc), "--workers", "0"])
    rows = read_results_csv(out)
    keys = {(r["model"], r["protocol"], r["category"]) for r in rows}
    for model in ("entropy", "edge_density"):
        for protocol in ("loco", *(f"loco_{s}" for s in SHIFTS)):
            assert {(model, protocol, c) for c in ("a", "b", "category_mean")} <= keys
        for suite in SUITES:
            assert {(model, f"suite_{suite}", c) for c in ("g00", "g01", "category_mean")} <= keys
        random = [r for r in rows if r["model"] == model and r["protocol"] == "random"]
        assert [r["split"] for r in random][-1] == "mean" and len(random) == 3
    entropy_loco = next(r for r in rows if r["model"] == "entropy" and r["protocol"] == "loco" and r["category"] == "a")
    assert entropy_loco["n"] == 20 and entropy_loco["srcc"] > 0.8  # noise raises the grey-level entropy
    strokes = next(r for r in rows if r["model"] == "edge_density" and r["protocol"] == "suite_strokes"
                   and r["category"] == "category_mean")
    assert strokes["srcc"] == 1.0
    text = doc.read_text()
    assert "old" not in text and "| `entropy` |" in text and text.endswith("## after\n")
    assert "worst loco category" in capsys.readouterr().out
    # a rerun of one model keeps the other's rows
    generalization.main(["--quick", "--dataset", str(tiny_manifest(data)), "-m", "entropy", "--shifts", "--suites",
                         "--suites-cache", str(tmp_path / "cache"), "--out", str(out), "--no-doc", "--workers", "0"])
    again = read_results_csv(out)
    assert {r["protocol"] for r in again if r["model"] == "entropy"} == {"loco", "random"}
    assert len([r for r in again if r["model"] == "edge_density"]) == len([r for r in rows if r["model"] == "edge_density"])
    generalization.main(["--doc-only", "--out", str(out), "--doc", str(doc)])
    assert "| `edge_density` |" in doc.read_text() and doc.read_text().endswith("## after\n")


def test_fusion_features_are_finite_at_any_size_and_order_flat_below_noise():
    from benchmarks.generalization_selection import FUSION_FEATURE_NAMES, fusion_features

    rng = np.random.default_rng(0)
    for size in (8, 64, 700):
        flat = fusion_features(Image.new("RGB", (size, size), (120, 120, 120)))
        noise = fusion_features(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        assert flat.shape == noise.shape == (len(FUSION_FEATURE_NAMES),) and np.isfinite(flat).all()
        for name in ("compression_ratio_jpeg@256", "compression_ratio_png@256", "edge_density@256",
                     "compression_ratio_png@64"):
            i = FUSION_FEATURE_NAMES.index(name)
            assert flat[i] < noise[i], (size, name)
