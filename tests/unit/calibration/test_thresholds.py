"""Threshold rules: finite-sample behaviour, POT extrapolation, persistence and reports."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import stats

from ae_anomaly.calibration import (
    RULE_NAMES,
    BestF1Threshold,
    ConformalThreshold,
    KSigmaThreshold,
    POTThreshold,
    QuantileThreshold,
    ThresholdRule,
    alpha_from_alert_budget,
    conformal_rank,
    format_report,
    get_rule_class,
    rule_from_config,
)
from ae_anomaly.config import CalibrationConfig


# --------------------------------------------------------------------------- conformal
@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_conformal_realised_rate_on_fresh_normal_draws(alpha: float) -> None:
    # With n = 10,000 the realised rate of the alpha = 0.001 threshold is Beta(10, 9991)
    # distributed, 90% interval ~[0.54, 1.6] x alpha; seeds are fixed.
    cal = np.random.default_rng(1).normal(size=10_000)
    fresh = np.random.default_rng(2).normal(size=200_000)
    rule = ConformalThreshold(alpha=alpha).fit(cal)
    rate = float(np.mean(rule.flag(fresh)))
    assert 0.5 * alpha <= rate <= 2.0 * alpha
    assert rule.report()["warning"] is None


def test_conformal_threshold_is_the_right_order_statistic() -> None:
    cal = np.random.default_rng(3).exponential(size=999)
    rule = ConformalThreshold(alpha=0.01).fit(cal)
    k = conformal_rank(999, 0.01)  # ceil(1000 * 0.99) = 990, float noise notwithstanding
    assert k == 990
    assert rule.threshold_ == np.sort(cal)[k - 1]
    # exactly n - k calibration points lie above the threshold
    assert int(np.sum(cal > rule.threshold_)) == 999 - k


def test_conformal_too_few_points_uses_max_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    cal = np.random.default_rng(4).normal(size=50)
    with caplog.at_level(logging.WARNING):
        rule = ConformalThreshold(alpha=0.001).fit(cal)
    assert rule.threshold_ == cal.max()
    assert "cannot guarantee" in caplog.text


@pytest.mark.parametrize(
    "dist",
    [stats.lognorm(s=1.0), stats.t(df=2.5), stats.pareto(b=1.5)],
    ids=["lognormal", "student_t", "pareto"],
)
def test_far_interval_covers_realised_rate_about_90_percent(dist: stats.rv_frozen) -> None:
    # The realised false-alarm rate of a fitted threshold is sf(threshold) under the true
    # distribution; it should fall in the reported 90% interval in ~90% of repetitions.
    rng = np.random.default_rng(5)
    n, alpha, reps = 2_000, 0.005, 200
    inside = 0
    for _ in range(reps):
        rule = ConformalThreshold(alpha=alpha).fit(dist.rvs(size=n, random_state=rng))
        low, high = rule.report()["far_interval_90"]
        inside += low <= dist.sf(rule.threshold_) <= high
    assert 0.80 <= inside / reps <= 0.97


# --------------------------------------------------------------------------- POT
_P_TAIL, _SHAPE = 0.05, 0.2
_U = -np.log(_P_TAIL)  # the exponential body's own (1 - _P_TAIL) quantile


def _exp_body_gpd_tail(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exponential(1) below its 95% quantile u; u + exact GPD(shape 0.2, scale 1) above."""
    q = rng.uniform(size=n)
    body = -np.log1p(-np.minimum(q, 1 - _P_TAIL))
    tail = _U + stats.genpareto.ppf(np.clip((q - (1 - _P_TAIL)) / _P_TAIL, 0, None), _SHAPE)
    return np.where(q < 1 - _P_TAIL, body, tail)


def test_pot_recovers_extreme_quantile_of_gpd_tail() -> None:
    alpha = 1e-4  # below 1 / n: no order statistic reaches it
    true_q = _U + stats.genpareto.ppf(1 - alpha / _P_TAIL, _SHAPE)
    cal = _exp_body_gpd_tail(np.random.default_rng(0), 10_000)
    rule = POTThreshold(alpha=alpha, initial_quantile=0.98).fit(cal)
    # Tolerance: the fit sees ~200 excesses (2% of 10,000), so the shape estimate has a
    # standard error of about (1 + shape) / sqrt(200) ~ 0.085; extrapolating 200x further
    # into the tail, the delta method turns that into a ~13-20% relative standard error of
    # the quantile (13% measured over 50 seeds). 25% is about two standard errors.
    assert rule.threshold_ == pytest.approx(true_q, rel=0.25)
    # its realised false-alarm rate under the true law is of the right order
    realised = _P_TAIL * stats.genpareto.sf(rule.threshold_ - _U, _SHAPE)
    assert 0.5 * alpha <= realised <= 2.0 * alpha
    assert rule.n_excess_ == 200
    # the extrapolation is unbiased enough across seeds: median relative error within 10%
    rel = []
    for seed in range(1, 21):
        sample = _exp_body_gpd_tail(np.random.default_rng(seed), 10_000)
        rel.append(POTThreshold(alpha=alpha).fit(sample).threshold_ / true_q - 1)
    assert abs(float(np.median(rel))) < 0.10


def test_pot_small_sets_lower_the_initial_quantile_or_are_refused(caplog) -> None:
    # 100 scores: 2 lie above the 0.98 quantile; the fit moves down to the 10 largest
    rule = POTThreshold(alpha=0.001).fit(np.random.default_rng(3).exponential(size=100))
    assert rule.n_excess_ == 10 and rule.initial_quantile_used_ == pytest.approx(0.90)
    assert "tail is fitted above the 0.9 quantile" in caplog.text
    # alpha far below 1 / n: the threshold is extrapolated into the fitted tail
    assert np.isfinite(rule.threshold_) and rule.threshold_ > rule.initial_threshold_
    back = ThresholdRule.from_dict(rule.to_dict())
    assert back.initial_quantile_used_ == rule.initial_quantile_used_
    with pytest.raises(ValueError, match="too few for a tail fit"):
        POTThreshold(alpha=0.01).fit(np.arange(15.0))
    with pytest.raises(ValueError, match="tied scores"):
        POTThreshold(alpha=0.01).fit(np.r_[np.zeros(85), np.ones(15)])
    # ties below the top: the initial threshold moves to the next lower distinct value
    tied = np.r_[np.linspace(0, 1, 80), np.full(15, 2.0), np.linspace(3, 4, 5)]
    rule = POTThreshold(alpha=0.001).fit(tied)
    assert rule.initial_threshold_ == 1.0 and rule.n_excess_ == 20


# --------------------------------------------------------------------------- other rules
def test_quantile_and_k_sigma() -> None:
    cal = np.random.default_rng(6).normal(size=5_000)
    assert QuantileThreshold(alpha=0.01).fit(cal).threshold_ == np.quantile(cal, 0.99)
    ks = KSigmaThreshold(k=3.0).fit(cal)
    assert ks.threshold_ == pytest.approx(cal.mean() + 3 * cal.std(ddof=1))


def test_best_f1_needs_labels() -> None:
    with pytest.raises(ValueError, match="labelled validation set"):
        BestF1Threshold().fit(np.arange(10.0))


def test_best_f1_separable_and_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    scores = np.r_[rng.normal(size=500), rng.normal(3.0, 1.0, size=50)]
    labels = np.r_[np.zeros(500), np.ones(50)]
    rule = BestF1Threshold().fit(scores, labels)

    def f1(thr: float) -> float:
        pred = scores > thr
        tp = np.sum(pred & (labels == 1))
        return 2 * tp / (pred.sum() + labels.sum())

    best = max(f1(t) for t in np.r_[scores, scores.min() - 1])
    assert f1(rule.threshold_) == pytest.approx(best)
    assert rule.to_dict()["uses_labels"] is True
    assert rule.n_calibration == 500  # p-values against the normal-labelled scores
    # perfectly separable: threshold between the classes
    sep = BestF1Threshold().fit([0.1, 0.2, 0.3, 5.0, 6.0], [0, 0, 0, 1, 1])
    assert 0.3 <= sep.threshold_ < 5.0


# --------------------------------------------------------------------------- p-values
def test_p_values_match_definition() -> None:
    cal = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    rule = ConformalThreshold(alpha=0.2).fit(cal)
    s = np.array([0.0, 1.0, 2.0, 2.5, 5.0, 6.0, np.nan])
    expected = [(1 + np.sum(cal >= v)) / 6 for v in s[:-1]]
    got = rule.p_values(s)
    np.testing.assert_allclose(got[:-1], expected)
    assert np.isnan(got[-1])
    assert rule.p_values(np.array([[0.0, 6.0]])).shape == (1, 2)


def test_p_values_are_uniformish_on_fresh_normal_data() -> None:
    rule = ConformalThreshold(alpha=0.01).fit(np.random.default_rng(8).normal(size=5_000))
    p = rule.p_values(np.random.default_rng(9).normal(size=50_000))
    assert np.mean(p <= 0.01) == pytest.approx(0.01, abs=0.003)
    # flagged exactly when p <= alpha (for scores not tied with the calibration set)
    fresh = np.random.default_rng(10).normal(size=10_000)
    np.testing.assert_array_equal(rule.flag(fresh), rule.p_values(fresh) <= 0.01)


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", RULE_NAMES)
def test_to_dict_from_dict_round_trip(name: str) -> None:
    rng = np.random.default_rng(11)
    cal = rng.lognormal(size=3_000)
    labels = (rng.uniform(size=3_000) < 0.05).astype(int) if name == "best_f1" else None
    if labels is not None:
        cal = cal + 3 * labels
    rule = rule_from_config(CalibrationConfig(method=name, alpha=0.01)).fit(cal, labels)
    d = json.loads(json.dumps(rule.to_dict()))
    back = ThresholdRule.from_dict(d)
    assert type(back) is type(rule) and back.name == name
    assert back.threshold_ == rule.threshold_
    fresh = rng.lognormal(size=1_000) * 2
    np.testing.assert_array_equal(back.p_values(fresh), rule.p_values(fresh))
    assert back.report() == rule.report()
    assert back.to_dict() == d


def test_unknown_rule_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="conformal, pot, quantile, k_sigma, best_f1"):
        get_rule_class("nope")
    with pytest.raises(ValueError, match="valid methods"):
        ThresholdRule.from_dict({"name": "nope", "threshold": 1.0, "calibration_scores": []})
    cfg = CalibrationConfig.model_construct(method="nope", alpha=0.01)
    with pytest.raises(ValueError, match="valid methods"):
        rule_from_config(cfg)


def test_rule_from_config_passes_parameters() -> None:
    pot = rule_from_config(CalibrationConfig(method="pot", pot_initial_quantile=0.9))
    assert isinstance(pot, POTThreshold) and pot.initial_quantile == 0.9
    ks = rule_from_config(CalibrationConfig(method="k_sigma", k=4.5))
    assert isinstance(ks, KSigmaThreshold) and ks.k == 4.5
    assert isinstance(rule_from_config(CalibrationConfig()), ConformalThreshold)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        ConformalThreshold().fit(np.array([]))
    with pytest.raises(ValueError, match="non-finite"):
        ConformalThreshold().fit(np.array([1.0, np.nan]))
    with pytest.raises(RuntimeError, match="not fitted"):
        ConformalThreshold().p_values(np.array([1.0]))


# --------------------------------------------------------------------------- report
def test_report_warns_on_small_calibration_set() -> None:
    rule = ConformalThreshold(alpha=0.001).fit(np.random.default_rng(12).normal(size=500))
    rep = rule.report()
    assert rep["warning"] == (
        "calibration set of 500 points is too small for alpha=0.001: need at least 10000"
    )
    assert "WARNING" in format_report(rep)


def test_report_contents() -> None:
    rule = ConformalThreshold(alpha=0.01).fit(np.random.default_rng(13).normal(size=2_000))
    rep = rule.report()
    assert rep["method"] == "conformal" and rep["n_calibration"] == 2_000
    assert rep["threshold"] == rule.threshold_
    assert rep["warning"] is None
    low, high = rep["far_interval_90"]
    assert low < 0.01 < high
    k = conformal_rank(2_000, 0.01)
    assert rep["calibration_alarm_rate"] == (2_000 - k) / 2_000
    text = format_report(rep)
    assert "conformal" in text and "2000" in text and len(text.splitlines()) >= 5
    json.dumps(rep)


# --------------------------------------------------------------------------- alert budget
def test_alpha_from_alert_budget() -> None:
    # 2 alerts/day at 1-minute sampling, events of 3 steps on average
    assert alpha_from_alert_budget(2, 1440, 3) == pytest.approx(6 / 1440)
    assert alpha_from_alert_budget(1, 1440) == pytest.approx(1 / 1440)
    assert 0 < alpha_from_alert_budget(10_000, 10) < 0.5
    with pytest.raises(ValueError, match="steps_per_day"):
        alpha_from_alert_budget(1, 0)
    rule = rule_from_config(CalibrationConfig(max_alerts_per_day=1.44), steps_per_day=1440)
    assert rule.alpha == pytest.approx(0.001)
    with pytest.raises(ValueError, match="steps_per_day"):
        rule_from_config(CalibrationConfig(max_alerts_per_day=1.0))
