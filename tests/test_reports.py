import csv
import math
import sys

import numpy as np
import pytest
from PIL import Image

from pyica.metrics import METRIC_NAMES, evaluate, fit_logistic4
from pyica.reports import (
    LEGACY_RESULT_COLUMNS,
    RESULT_COLUMNS,
    is_results_header,
    format_markdown_table,
    format_table,
    read_results_csv,
    results_rows,
    scatter_plot,
    summarise,
    write_results_csv,
)


@pytest.fixture()
def categorised():
    rng = np.random.default_rng(0)
    categories = np.repeat(["art", "scenes"], 30)
    target = rng.uniform(0, 1, 60)
    pred = target + rng.normal(0, 0.1, 60)
    return pred, target, categories


def test_results_rows_are_pooled_categories_and_category_mean(categorised):
    result = evaluate(*categorised)
    rows = results_rows(result, model="m", dataset="d", protocol="random", split="split0", seconds=1.5)
    assert [r["category"] for r in rows] == ["pooled", "art", "scenes", "category_mean"]
    for row in rows:
        assert list(row)[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS) and row["seconds"] == 1.5
    assert rows[0]["srcc"] == result["srcc"] and rows[1]["n"] == 30
    assert rows[3]["plcc"] == result["category_mean"]["plcc"] and rows[3]["n"] == 60
    assert [r["category"] for r in results_rows(evaluate(*categorised[:2]), model="m", dataset="d",
                                                 protocol="all", split="all")] == ["pooled"]


def test_results_rows_refuse_categories_named_like_added_rows():
    result = evaluate([1, 2, 3, 4], [1, 2, 4, 3], categories=["pooled"] * 4)
    with pytest.raises(ValueError, match="clash"):
        results_rows(result, model="m", dataset="d", protocol="all", split="all")


def test_write_results_csv_then_append_round_trips(categorised, tmp_path):
    path = tmp_path / "out" / "results.csv"
    first = results_rows(evaluate(*categorised), model="m", dataset="d", protocol="p", split="s0")
    write_results_csv(first, path)
    second = results_rows(evaluate(*categorised[:2]), model="m2", dataset="d", protocol="p", split="s1",
                          pyica_version="9.9")
    write_results_csv(second, path, append=True)

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [*RESULT_COLUMNS, "pyica_version"]  # new column added at the end
    assert len(rows) == len(first) + len(second)
    assert rows[0]["model"] == "m" and rows[-1]["model"] == "m2"
    assert rows[0]["pyica_version"] == "" and rows[-1]["pyica_version"] == "9.9"
    assert float(rows[0]["srcc"]) == first[0]["srcc"]  # full precision
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind

    parsed = read_results_csv(path)
    assert parsed[0]["n"] == 60 and parsed[0]["rmse_logistic4"] == first[0]["rmse_logistic4"]
    assert parsed[0]["mapping"] == "logistic4"

    write_results_csv(second, path)  # without append: replaced
    assert len(read_results_csv(path)) == len(second)


def test_results_rows_report_errors_only_in_label_units(categorised):
    rows = results_rows(evaluate(*categorised), model="m", dataset="d", protocol="all", split="all")
    for row in rows:
        assert {"rmse", "mae", "rmae_icnet", "rmae_cmssa", "fit"}.isdisjoint(row)  # no raw-unit error column
        assert row["mapping"] == "logistic4" and row["rmse_logistic4"] >= 0
    assert list(RESULT_COLUMNS[-3:]) == ["rmae_icnet_logistic4", "rmae_cmssa_logistic4", "mapping"]


def test_legacy_results_csv_is_recognised_read_appended_and_summarised(categorised, tmp_path):
    """A results CSV of the old layout (raw errors, a fit column) stays usable: appended rows add the new
    columns at its end, the old raw errors keep their names, summaries carry both."""
    path = tmp_path / "old.csv"
    legacy = {**dict.fromkeys(LEGACY_RESULT_COLUMNS, ""), "model": "old", "dataset": "d", "protocol": "random",
              "split": "s0", "category": "pooled", "n": "60", "srcc": "0.5", "plcc": "0.4", "krcc": "0.3",
              "rmse": "53.2", "mae": "50.1", "rmae_icnet": "7.1", "rmae_cmssa": "50.1", "fit": "none"}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEGACY_RESULT_COLUMNS)
        writer.writeheader()
        writer.writerow(legacy)
    assert is_results_header(list(LEGACY_RESULT_COLUMNS)) and is_results_header(list(RESULT_COLUMNS))
    assert not is_results_header(["path", "model", "score", "error"]) and not is_results_header(None)
    new = results_rows(evaluate(*categorised[:2]), model="new", dataset="d", protocol="random", split="s0")
    write_results_csv(new, path, append=True)
    rows = read_results_csv(path)
    assert [r["model"] for r in rows] == ["old", "new"]
    assert rows[0]["rmse"] == 53.2 and math.isnan(rows[0]["rmse_logistic4"])
    assert math.isnan(rows[1]["rmse"]) and rows[1]["rmse_logistic4"] == pytest.approx(new[0]["rmse_logistic4"])
    summary = {s["model"]: s for s in summarise(rows)}
    assert summary["old"]["fit"] == "none" and summary["new"]["mapping"] == "logistic4"
    assert summary["old"]["rmse_mean"] == 53.2


class _Unwritable:
    def __str__(self):
        raise OSError("disk full")


def test_write_results_csv_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.csv"
    write_results_csv([{"model": "m", "srcc": 0.5}], path)
    before = path.read_text()
    with pytest.raises(OSError, match="disk full"):
        write_results_csv([{"model": "m", "srcc": 0.5}, {"model": _Unwritable()}], path, append=True)
    assert path.read_text() == before and list(tmp_path.iterdir()) == [path]


def test_summarise_gives_mean_and_sample_std_over_splits():
    rows = [
        {"model": "m", "dataset": "d", "protocol": "random", "split": f"s{i}", "category": "pooled",
         "n": 10, "srcc": srcc, "plcc": plcc, "fit": "none"}
        for i, (srcc, plcc) in enumerate([(0.8, 0.7), (0.9, 0.9), (0.7, 0.8)])
    ]
    rows.append({"model": "other", "dataset": "d", "protocol": "random", "split": "s0", "category": "pooled",
                 "n": "12", "srcc": "0.5", "plcc": "0.6", "fit": "logistic4"})  # as text, as read by csv
    summary = summarise(rows)
    assert [(s["model"], s["n_splits"]) for s in summary] == [("m", 3), ("other", 1)]
    m = summary[0]
    assert m["srcc_mean"] == pytest.approx(0.8) and m["srcc_std"] == pytest.approx(0.1)
    assert m["plcc_mean"] == pytest.approx(0.8) and m["plcc_std"] == pytest.approx(0.1)
    assert m["n_mean"] == 10 and m["n_std"] == 0 and m["fit"] == "none"
    other = summary[1]
    assert other["srcc_mean"] == pytest.approx(0.5) and math.isnan(other["srcc_std"])  # one split: no spread
    assert summarise(rows[:3], ddof=0)[0]["srcc_std"] == pytest.approx(np.std([0.8, 0.9, 0.7]))


def test_format_table_aligns_headers_and_values():
    rows = [{"model": "entropy", "n": 120, "srcc": 0.81234, "plcc": math.nan},
            {"model": "ic9600-icnet", "n": 8, "srcc": 0.9, "plcc": 0.95}]
    text = format_table(rows, floatfmt=".2f")
    header, rule, first, second = text.splitlines()
    assert header.split() == ["model", "n", "srcc", "plcc"]
    assert first.split() == ["entropy", "120", "0.81", "nan"] and second.split() == ["ic9600-icnet", "8", "0.90", "0.95"]
    assert len({len(line) for line in (rule, first, second)}) == 1  # aligned columns
    assert second.index("0.90") == first.index("0.81")
    assert format_table(rows, columns=["srcc", "model"]).splitlines()[0].split() == ["srcc", "model"]


def test_format_markdown_table():
    text = format_markdown_table([{"model": "a|b", "srcc": 0.91234}], floatfmt=".3f")
    assert text.splitlines() == ["| model | srcc |", "|:---|---:|", "| a\\|b | 0.912 |"]


@pytest.mark.parametrize("with_categories", [False, True])
def test_scatter_plot_writes_a_png(categorised, tmp_path, with_categories):
    pytest.importorskip("matplotlib", reason="scatter plots need matplotlib (pip install pyica[plot])")
    pred, target, categories = categorised
    pred = pred.copy()
    pred[0] = np.nan  # left out of the plot
    path = tmp_path / "scatter.png"
    scatter_plot(pred, target, path, categories=categories if with_categories else None, title="test",
                 fit="logistic4" if with_categories else None)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert list(tmp_path.iterdir()) == [path]


def test_scatter_plot_draws_a_given_mapping_and_rejects_unknown_fits(categorised, tmp_path):
    pytest.importorskip("matplotlib", reason="scatter plots need matplotlib (pip install pyica[plot])")
    pred, target, _ = categorised
    scatter_plot(pred, target, tmp_path / "fit.png", fit=fit_logistic4(pred, target))
    assert Image.open(tmp_path / "fit.png").format == "PNG"
    with pytest.raises(ValueError, match="fit must be"):
        scatter_plot(pred, target, tmp_path / "bad.png", fit="cubic")


def test_scatter_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(RuntimeError, match=r"pip install pyica\[plot\]"):
        scatter_plot([1, 2, 3], [1, 2, 3], tmp_path / "x.png")


def test_result_columns_cover_every_metric():
    assert set(METRIC_NAMES) <= set(RESULT_COLUMNS)
