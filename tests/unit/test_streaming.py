"""Streaming scoring equals whole-series scoring, whatever the chunking.

The network runs in float32, so batches of another composition differ in the last bits
(about 1e-8 relative); equality is asserted to float32 precision.
"""

import numpy as np
import pytest

from ae_anomaly.config import ConvAEConfig, SyntheticConfig, TrainingConfig, WindowConfig
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.detector import Detector
from ae_anomaly.errors import DataError
from ae_anomaly.scoring.stream import StreamingScorer


@pytest.fixture(scope="module")
def fitted():
    data = generate_server_metrics(SyntheticConfig(n_entities=2, n_metrics=4, train_days=1,
                                                   score_days=0.5, anomalies_per_entity=2))
    det = Detector(ConvAEConfig(channels=[8], latent_dim=4), WindowConfig(length=16,
                   train_stride=4), training=TrainingConfig(epochs=2, progress=False))
    return det.fit(data.train), data


def test_threshold_fitted_once_and_frozen(fitted):
    det, data = fitted
    t = det.threshold_
    det.score(data.score)
    assert det.threshold_ == t > 0
    # The calibration slice is the last 20% of training: never trained on.
    assert det.rule_.report()["n_calibration"] == 2 * round(1440 * 0.2)


@pytest.mark.parametrize("chunks", [[1], [7], [15, 16, 17], [100], [5000]])
def test_chunking_does_not_change_scores(fitted, chunks):
    det, data = fitted
    series = data.score[data.score.entity == "server-01"]
    values = series[det.feature_names_].to_numpy()
    ts = series.timestamp.to_numpy()
    whole, whole_ch = det.score_values(det.scaler_.transform(values))
    scorer = StreamingScorer(det, batch_size=33)
    got_ts, got, got_ch, i, k = [], [], [], 0, 0
    while i < len(values):
        n = chunks[k % len(chunks)]
        t_, s_, c_ = scorer.push(ts[i:i + n], values[i:i + n])
        got_ts.append(t_), got.append(s_), got_ch.append(c_)
        i, k = i + n, k + 1
    t_, s_, c_ = scorer.flush()
    got_ts.append(t_), got.append(s_), got_ch.append(c_)
    np.testing.assert_array_equal(np.concatenate(got_ts), ts)
    np.testing.assert_allclose(np.concatenate(got), whole, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.concatenate(got_ch), whole_ch, rtol=1e-5, atol=1e-9)


def test_channel_errors_point_at_the_broken_metric(fitted):
    det, data = fitted
    series = data.score[data.score.entity == "server-01"].copy()
    col = det.feature_names_[2]
    series.iloc[300:303, series.columns.get_loc(col)] += 10 * series[col].std()
    scores, ch = det.score_values(det.scaler_.transform(series[det.feature_names_].to_numpy()))
    assert scores[300:303].min() > det.threshold_
    assert np.argmax(ch[301]) == 2


def test_save_load_identical_scores(fitted, tmp_path):
    det, data = fitted
    det.save(tmp_path / "d")
    back = Detector.load(tmp_path / "d")
    np.testing.assert_array_equal(back.score(data.score), det.score(data.score))
    assert back.threshold_ == det.threshold_
    assert back.feature_names_ == det.feature_names_


def test_short_series_is_refused(fitted):
    det, data = fitted
    with pytest.raises(DataError, match="shorter than the window"):
        det.score(data.score.head(5))
