import math
import warnings

import numpy as np
import pytest
from scipy import stats

from pyica import metrics
from pyica.metrics import (
    MAPPED_METRIC_NAMES,
    METRIC_NAMES,
    RAW_METRIC_NAMES,
    FittedMapping,
    MetricWarning,
    evaluate,
    fit_logistic4,
    logistic4,
)


@pytest.fixture()
def noisy_pair():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, 300)
    pred = target + rng.normal(0, 0.2, 300)
    return pred, target


def test_metric_names_are_the_evaluate_keys_in_a_stable_order():
    # what results report: raw correlations, then PLCC and every error after the logistic mapping
    assert METRIC_NAMES == ("srcc", "plcc", "krcc", "plcc_logistic4", "rmse_logistic4", "mae_logistic4",
                            "rmae_icnet_logistic4", "rmae_cmssa_logistic4")
    assert RAW_METRIC_NAMES == ("srcc", "plcc", "krcc", "rmse", "mae", "rmae_icnet", "rmae_cmssa")
    assert not {"rmse", "mae", "rmae_icnet", "rmae_cmssa"} & set(METRIC_NAMES)  # no raw-unit error is reported
    assert set(METRIC_NAMES) | set(RAW_METRIC_NAMES) <= set(evaluate([1, 2, 3, 4], [1, 3, 2, 4]))


def test_metrics_match_direct_formulas(noisy_pair):
    pred, target = noisy_pair
    error = pred - target
    expected = {
        "srcc": stats.spearmanr(pred, target).statistic,
        "plcc": np.corrcoef(pred, target)[0, 1],
        "krcc": stats.kendalltau(pred, target).statistic,
        "rmse": np.sqrt(np.mean(error**2)),
        "mae": np.mean(np.abs(error)),
        "rmae_icnet": np.sqrt(np.mean(np.abs(error))),
        "rmae_cmssa": np.mean(np.abs(error)),
    }
    result = evaluate(pred, target)
    for name, value in expected.items():
        assert getattr(metrics, name)(pred, target) == pytest.approx(value, rel=1e-12), name
        assert result[name] == pytest.approx(value, rel=1e-12), name
    assert result["n"] == 300 and result["n_dropped"] == 0 and result["mapping"] == "logistic4"
    assert "per_category" not in result


def test_the_two_rmae_definitions_differ_as_documented():
    target = np.linspace(0, 1, 10)
    pred = target + np.where(np.arange(10) % 2, 0.25, -0.25)  # |error| = 0.25 everywhere
    assert metrics.rmae_cmssa(pred, target) == pytest.approx(0.25)
    assert metrics.mae(pred, target) == pytest.approx(0.25)
    assert metrics.rmae_icnet(pred, target) == pytest.approx(0.5)


def test_inputs_may_be_lists_column_vectors_or_tensors():
    torch = pytest.importorskip("torch")
    target = [0.1, 0.4, 0.2, 0.9, 0.5]
    pred = torch.tensor([[0.2], [0.5], [0.1], [0.8], [0.6]], requires_grad=True)
    assert evaluate(pred, target)["srcc"] == pytest.approx(stats.spearmanr([0.2, 0.5, 0.1, 0.8, 0.6], target).statistic)


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, 400)
    y = logistic4(x, 5.0, 1.0, 0.5, 0.8) + rng.normal(0, 0.02, 400)
    mapping = fit_logistic4(x, y)
    assert mapping.method == "logistic4"
    assert mapping.params == pytest.approx((5.0, 1.0, 0.5, 0.8), abs=0.05)
    # A decreasing relation is fitted too (b1 < b2), whatever the sign convention of the start.
    falling = fit_logistic4(x, -y)
    assert falling.method == "logistic4" and falling.params == pytest.approx((-5.0, -1.0, 0.5, 0.8), abs=0.05)


def test_logistic_mapping_improves_plcc_and_never_changes_rank_metrics():
    rng = np.random.default_rng(2)
    target = rng.uniform(0, 1, 300)
    pred = np.exp(4 * target) + rng.normal(0, 0.5, 300)  # monotone but far from linear
    result = evaluate(pred, target)
    assert result["mapping"] == "logistic4"
    assert result["plcc_logistic4"] > result["plcc"] + 0.02  # plcc is before the mapping, as the ICA papers
    assert result["rmse_logistic4"] < result["rmse"]
    assert result["srcc"] == pytest.approx(stats.spearmanr(pred, target).statistic)


def test_errors_are_in_the_label_units_after_the_mapping():
    # A perfect monotone predictor in [0, 1] of labels on a 0-100 scale (the labels a logistic of the
    # scores): raw RMSE measures the two scales (about 50), the mapped one the model (0).
    rng = np.random.default_rng(5)
    pred = rng.uniform(0, 1, 200)
    target = logistic4(pred, 100.0, 0.0, 0.5, 0.15)
    result = evaluate(pred, target)
    assert result["rmse"] > 30
    assert result["rmse_logistic4"] == pytest.approx(0, abs=1e-3)
    assert result["mae_logistic4"] == pytest.approx(0, abs=1e-3)
    assert result["srcc"] == pytest.approx(1.0)
    assert evaluate(pred + 0.7, target)["rmse_logistic4"] == pytest.approx(0, abs=1e-3)
    target = rng.uniform(0, 100, 200)
    # A constant offset (and scale) is removed: scores = label / 100 + 3 have no error in label units.
    offset = evaluate(target / 100 + 3, target)
    assert offset["rmse_logistic4"] == pytest.approx(0, abs=1e-3) and offset["rmse"] > 10
    # Label-unit noise survives the mapping: noise of std 5 gives an RMSE near 5.
    noisy = evaluate((target + rng.normal(0, 5, 200)) / 100, target)
    assert 4 < noisy["rmse_logistic4"] < 6
    assert noisy["rmae_icnet_logistic4"] == pytest.approx(np.sqrt(noisy["mae_logistic4"]))
    assert noisy["rmae_cmssa_logistic4"] == noisy["mae_logistic4"]


def test_logistic_fit_falls_back_to_a_line_and_records_it():
    x = np.linspace(0, 1, 50)
    y = 2 * x + 1
    unconverged = fit_logistic4(x, np.tanh(3 * x), maxfev=2)  # curve_fit gives up after 2 evaluations
    assert unconverged.method == "linear"
    assert fit_logistic4(x[:3], y[:3]).method == "linear"  # fewer points than parameters
    assert fit_logistic4(x[:3], y[:3])(x[:3]) == pytest.approx(y[:3])
    constant = fit_logistic4(np.ones(10), np.arange(10.0))
    assert constant == FittedMapping("constant", (4.5,))
    assert evaluate(np.ones(10), np.arange(10.0))["mapping"] == "constant"


def test_nan_and_inf_pairs_are_dropped_and_counted(noisy_pair):
    pred, target = noisy_pair[0].copy(), noisy_pair[1].copy()
    pred[[3, 7]] = np.nan
    target[[7, 11]] = np.inf
    result = evaluate(pred, target)
    keep = np.isfinite(pred) & np.isfinite(target)
    assert result["n"] == 297 and result["n_dropped"] == 3
    assert result["srcc"] == pytest.approx(stats.spearmanr(pred[keep], target[keep]).statistic)
    assert all(math.isfinite(result[m]) for m in (*METRIC_NAMES, *RAW_METRIC_NAMES))
    with pytest.warns(MetricWarning, match="dropped 3 pairs"):
        assert metrics.rmse(pred, target) == pytest.approx(result["rmse"])


def test_too_few_valid_pairs_gives_nan_with_a_warning():
    with pytest.warns(MetricWarning, match="at least 3"):
        result = evaluate([0.1, 0.2, np.nan], [0.3, 0.1, 0.5])
    assert result["n"] == 2 and result["n_dropped"] == 1
    assert all(math.isnan(result[m]) for m in (*METRIC_NAMES, *RAW_METRIC_NAMES))


def test_constant_input_gives_nan_correlations_without_warnings():
    target = np.arange(10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy ConstantInputWarning, no numpy RuntimeWarning
        constant_pred = evaluate(np.full(10, 3.0), target)
        constant_target = evaluate(target, np.full(10, 3.0))
    for result in (constant_pred, constant_target):
        assert all(math.isnan(result[m]) for m in ("srcc", "plcc", "krcc"))
    assert constant_pred["rmse"] == pytest.approx(np.sqrt(np.mean((3.0 - target) ** 2)))
    assert constant_pred["mae"] == pytest.approx(np.mean(np.abs(3.0 - target)))
    # mapped, a constant prediction is the target mean: the error is the target's spread
    assert constant_pred["mapping"] == "constant"
    assert constant_pred["rmse_logistic4"] == pytest.approx(np.std(target))


def test_mismatched_lengths_raise_naming_both():
    with pytest.raises(ValueError, match="pred has 3 values but target has 4"):
        evaluate([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="pred has 2 values but target has 3"):
        metrics.srcc([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="categories has 2 values"):
        evaluate([1, 2, 3], [1, 2, 3], categories=["a", "b"])


def test_per_category_metrics_with_mean_and_population_variance():
    rng = np.random.default_rng(3)
    categories = np.repeat(["art", "ads", "scenes"], 40)
    target = rng.uniform(0, 1, 120)
    pred = target + rng.normal(0, np.repeat([0.05, 0.2, 0.5], 40))
    pred[0] = np.nan  # one dropped pair, in "art"
    result = evaluate(pred, target, categories=categories)
    assert list(result["per_category"]) == ["ads", "art", "scenes"]
    art = result["per_category"]["art"]
    assert art["n"] == 39 and art["n_dropped"] == 1 and result["per_category"]["ads"]["n_dropped"] == 0
    keep = (categories == "art") & np.isfinite(pred)
    assert art["plcc"] == pytest.approx(np.corrcoef(pred[keep], target[keep])[0, 1])
    for name in (*METRIC_NAMES, *RAW_METRIC_NAMES):
        per = [result["per_category"][c][name] for c in ("ads", "art", "scenes")]
        assert result["category_mean"][name] == pytest.approx(np.mean(per))
        assert result["category_var"][name] == pytest.approx(np.mean((np.array(per) - np.mean(per)) ** 2))
    # Less noise, better agreement: the categories are told apart.
    assert art["srcc"] > result["per_category"]["ads"]["srcc"] > result["per_category"]["scenes"]["srcc"]


def test_category_mean_is_nan_when_a_category_metric_is_undefined():
    categories = ["a"] * 5 + ["b"] * 5
    pred = [1, 2, 3, 4, 5, 7, 7, 7, 7, 7]  # constant in "b": no correlation there
    result = evaluate(pred, list(range(10)), categories=categories)
    assert math.isnan(result["category_mean"]["srcc"]) and math.isnan(result["category_var"]["srcc"])
    assert math.isfinite(result["category_mean"]["rmse"])


def test_fit_per_category_maps_each_category_to_its_own_scale():
    rng = np.random.default_rng(4)
    categories = np.repeat(["a", "b"], 60)
    latent = rng.uniform(0, 1, 120)
    # Same model quality in both categories, but "b" is labelled on a 0-100 scale (as SAVOIAS's per-category scale).
    target = np.where(categories == "a", latent, 100 * latent) + rng.normal(0, 0.01, 120)
    pred = np.exp(2 * latent)
    shared = evaluate(pred, target, categories=categories)
    separate = evaluate(pred, target, categories=categories, fit_per_category=True)
    assert shared["mapping"] == "logistic4" and separate["mapping"] == "per_category:logistic4"
    assert separate["per_category"]["a"]["mapping"] == "logistic4"
    assert separate["plcc_logistic4"] > shared["plcc_logistic4"]
    assert separate["per_category"]["b"]["rmse_logistic4"] < shared["per_category"]["b"]["rmse_logistic4"]
    assert separate["plcc"] == shared["plcc"]  # raw PLCC does not depend on the mapping
    assert separate["srcc"] == shared["srcc"]


def test_fit_per_category_skips_a_category_whose_pairs_were_all_dropped():
    categories = ["a"] * 6 + ["b"] * 2
    pred = [0.1, 0.3, 0.2, 0.6, 0.5, 0.9, np.nan, np.nan]
    with pytest.warns(MetricWarning, match="category 'b'"):
        result = evaluate(pred, np.arange(8.0), categories=categories, fit_per_category=True)
    assert result["per_category"]["b"]["n"] == 0 and result["per_category"]["b"]["n_dropped"] == 2
    assert result["per_category"]["b"]["mapping"] == "none"
    assert result["mapping"] == "per_category:" + result["per_category"]["a"]["mapping"]
