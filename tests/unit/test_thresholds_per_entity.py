"""Per-entity thresholds and the alert budget, through the AutoencoderDetector."""

import numpy as np
import pytest

from ae_anomaly.config import (
    CalibrationConfig,
    ConvAEConfig,
    SyntheticConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.detectors import AutoencoderDetector, load_detector


def fit(calibration: CalibrationConfig, data=None):
    data = data or generate_server_metrics(SyntheticConfig(
        n_entities=2, n_metrics=4, train_days=1, score_days=0.5, anomalies_per_entity=1))
    train = data.train.copy()
    # The second entity is much noisier: a shared threshold would flood it with alarms.
    noisy = train.entity == "server-02"
    cols = train.columns[2:]
    rng = np.random.default_rng(0)
    train.loc[noisy, cols] += rng.normal(0, 3 * train.loc[noisy, cols].std().to_numpy(),
                                         (int(noisy.sum()), len(cols)))
    det = AutoencoderDetector(ConvAEConfig(channels=[8], latent_dim=4), WindowConfig(length=16,
                   train_stride=4), training=TrainingConfig(epochs=2, progress=False),
                   calibration=calibration)
    return det.fit(train), train


def test_per_entity_thresholds_differ_and_survive_save_load(tmp_path):
    det, train = fit(CalibrationConfig(alpha=0.01, per_entity=True))
    t1, t2 = det.threshold_for("server-01"), det.threshold_for("server-02")
    assert t2 > 2 * t1
    assert det.threshold_for("never-seen") == det.threshold_
    flags = det.predict(train)
    assert flags.shape == (len(train),)
    det.save(tmp_path / "d")
    back = load_detector(tmp_path / "d")
    assert back.threshold_for("server-02") == t2
    np.testing.assert_array_equal(back.predict(train), flags)


def test_global_threshold_when_not_per_entity():
    det, _ = fit(CalibrationConfig(alpha=0.01))
    assert det.entity_rules_ == {}
    assert det.threshold_for("server-01") == det.threshold_for("server-02") == det.threshold_


def test_alert_budget_sets_alpha_from_sampling_rate():
    det, _ = fit(CalibrationConfig(max_alerts_per_day=2.88))
    assert det.steps_per_day_ == pytest.approx(1440)
    # 2.88 alerts/day over 1,440 steps/day: alpha 0.002.
    assert det.rule_.alpha == pytest.approx(0.002)
