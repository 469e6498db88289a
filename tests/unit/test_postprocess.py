"""Score post-processing: smoothing, channel reduction and per-channel thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ae_anomaly.calibration import ConformalThreshold
from ae_anomaly.config import (
    CalibrationConfig,
    ConvAEConfig,
    PostprocessConfig,
    SyntheticConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.detectors import AutoencoderDetector, load_detector
from ae_anomaly.postprocess import Postprocessor, channel_quantiles, smooth_scores


def test_smoothing_is_per_channel():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3))
    for mode in ("center", "trailing"):
        got = smooth_scores(x, 4, mode)
        for c in range(3):
            np.testing.assert_allclose(got[:, c], smooth_scores(x[:, c], 4, mode))


def test_channel_quantiles_are_conformal_order_statistics_with_a_floor():
    x = np.column_stack([np.arange(1.0, 100.0), np.zeros(99), 10 * np.arange(1.0, 100.0)])
    q = channel_quantiles(x, 0.1)  # rank ceil(100 * 0.9) = 90 -> the value 90
    assert q[0] == 90 and q[2] == 900
    assert 0 < q[1] < 1  # an all-zero channel gets a small positive scale, never 0


def test_per_channel_thresholds_keep_the_step_false_alarm_rate():
    """Channels of very different scales (lognormal errors): dividing each by its own
    calibration quantile and thresholding the largest ratio conformally keeps the realised
    step false-alarm rate inside the Beta-law interval on new exchangeable data."""
    alpha, n_cal, n_new, reps = 0.01, 4000, 20_000, 40
    scales = np.array([0.01, 1.0, 50.0, 3.0])
    k = int(np.ceil((n_cal + 1) * (1 - alpha)))
    lo, hi = stats.beta.ppf([0.0005, 0.9995], n_cal + 1 - k, k)
    rates = []
    rng = np.random.default_rng(1)
    for _ in range(reps):
        cal = rng.lognormal(0, 1, (n_cal, 4)) * scales
        new = rng.lognormal(0, 1, (n_new, 4)) * scales
        post = Postprocessor(PostprocessConfig(), channel_quantiles(cal, alpha))
        rule = ConformalThreshold(alpha).fit(post(cal)[0])
        rate = float(np.mean(rule.flag(post(new)[0])))
        # binomial noise of the new sample on top of the Beta law of the threshold
        assert lo - 4 * np.sqrt(hi / n_new) <= rate <= hi + 4 * np.sqrt(hi / n_new)
        rates.append(rate)
    assert np.mean(rates) == pytest.approx(alpha, rel=0.25)
    # Every channel gets its share of the alarms (about a quarter each); with the mean over
    # channels the 50x channel decides alone.
    ratios = post(new)[1]
    driver = np.argmax(ratios[rule.flag(post(new)[0])], axis=1)
    assert np.bincount(driver, minlength=4).min() / driver.size > 0.15
    mean_rule = ConformalThreshold(alpha).fit(cal.mean(axis=1))
    mean_driver = np.argmax(ratios[mean_rule.flag(new.mean(axis=1))], axis=1)
    assert np.mean(mean_driver == 2) > 0.9


def test_trailing_baseline_absorbs_a_level_shift_after_half_its_window():
    w = 100
    scores = np.r_[np.ones(500), 4 * np.ones(500)]
    post = Postprocessor(PostprocessConfig(baseline_window=w), baseline=1.0)
    rel = post.relative(scores)
    np.testing.assert_allclose(rel[:500], 1.0)  # history shorter than w // 4: the stand-in
    assert np.all(rel[500:500 + w // 2] == 4.0)  # the shift alarms for half the window
    np.testing.assert_allclose(rel[500 + w // 2 + 1:], 1.0)  # then it is the new normal
    spike = scores.copy()
    spike[200:210] = 50.0  # a short burst does not move the median of the steps after it
    np.testing.assert_allclose(post.relative(spike)[210:500], 1.0)
    with pytest.raises(RuntimeError, match="calibration median"):
        Postprocessor(PostprocessConfig(baseline_window=w)).relative(scores)


@pytest.fixture(scope="module")
def data():
    return generate_server_metrics(SyntheticConfig(n_entities=2, n_metrics=4, train_days=1,
                                                   score_days=0.5, anomalies_per_entity=0))


def _detector(per_channel: bool) -> AutoencoderDetector:
    return AutoencoderDetector(ConvAEConfig(channels=[8], latent_dim=4),
                    WindowConfig(length=16, train_stride=4),
                    training=TrainingConfig(epochs=2, progress=False),
                    calibration=CalibrationConfig(alpha=0.01, per_channel=per_channel),
                    postprocess=PostprocessConfig(smooth=3))


def test_per_channel_detector_flags_a_quiet_channel_the_mean_misses(data, tmp_path):
    det = _detector(per_channel=True).fit(data.train)
    plain = _detector(per_channel=False).fit(data.train)
    scale = det.postprocessor_.channel_scale
    assert scale is not None and scale.shape == (4,) and np.all(scale > 0)
    # on the calibration slice about alpha of the steps exceed the threshold
    rep = det.rule_.report()
    assert rep["calibration_alarm_rate"] <= 0.01
    # a shift on the channel with the smallest calibration errors, one server, 30 steps
    quiet = int(np.argmin(scale))
    col = det.feature_names_[quiet]
    fresh = data.score.copy()
    rows = np.flatnonzero(fresh.entity.to_numpy() == "server-01")[300:330]
    fresh.iloc[rows, fresh.columns.get_loc(col)] += 3 * data.train[col].std()
    hits_pc = det.predict(fresh)[rows].mean()
    hits_plain = plain.predict(fresh)[rows].mean()
    assert hits_pc >= 0.5 and hits_pc > hits_plain + 0.3  # measured: 0.57 vs 0.07
    # the flagged channel is the shifted one
    x = det.scaler_.transform(fresh[det.feature_names_].to_numpy()[rows[0] - 50:rows[-1] + 50])
    assert np.argmax(det.score_values(x)[1][60:80].mean(axis=0)) == quiet
    # reported per channel, in smoothed error units; none without per-channel thresholds
    thr = det.channel_thresholds()
    assert list(thr) == det.feature_names_
    assert thr[col] == pytest.approx(scale[quiet] * det.threshold_)
    assert plain.channel_thresholds() == {}
    # the scales travel with the saved model
    back = load_detector(det.save(tmp_path / "pc"))
    np.testing.assert_array_equal(back.postprocessor_.channel_scale, scale)
    np.testing.assert_array_equal(back.score(fresh), det.score(fresh))
