"""Streaming scoring equals whole-series scoring, whatever the chunking.

The network runs in float32, so batches of another composition differ in the last bits
(about 1e-8 relative); equality is asserted to float32 precision.
"""

import copy

import numpy as np
import pytest

from ae_anomaly.config import (
    ConvAEConfig,
    PostprocessConfig,
    SyntheticConfig,
    TrainingConfig,
    WindowConfig,
)
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.detectors import AutoencoderDetector, load_detector
from ae_anomaly.errors import DataError
from ae_anomaly.postprocess import Postprocessor
from ae_anomaly.scoring.stream import StreamingScorer


@pytest.fixture(scope="module")
def fitted():
    data = generate_server_metrics(SyntheticConfig(n_entities=2, n_metrics=4, train_days=1,
                                                   score_days=0.5, anomalies_per_entity=2))
    det = AutoencoderDetector(ConvAEConfig(channels=[8], latent_dim=4), WindowConfig(length=16,
                   train_stride=4), training=TrainingConfig(epochs=2, progress=False))
    return det.fit(data.train), data


def test_threshold_fitted_once_and_frozen(fitted):
    det, data = fitted
    t = det.threshold_
    det.score(data.score)
    assert det.threshold_ == t > 0
    # The calibration slice is the last 20% of training: never trained on.
    assert det.rule_.report()["n_calibration"] == 2 * round(1440 * 0.2)


def _with_postprocess(det: AutoencoderDetector, **kw) -> AutoencoderDetector:
    """The fitted detector scoring with other post-processing (threshold left as is)."""
    other = copy.copy(det)
    scale = np.linspace(0.5, 2.0, len(det.feature_names_)) if kw.pop("scaled", None) else None
    other.postprocess = PostprocessConfig(**kw)
    other.postprocessor_ = Postprocessor(other.postprocess, scale,
                                         baseline=float(np.median(det.rule_.calibration_scores_)))
    return other


POSTPROCESS = {
    "overlap": {},
    "center-7": {"smooth": 7, "smooth_mode": "center"},
    "trailing-5-max": {"smooth": 5, "channel_reduce": "max"},
    "causal-center-4": {"errors": "causal", "smooth": 4, "smooth_mode": "center"},
    "causal-tail": {"errors": "causal", "causal_tail": 2},
    "per-channel-scales": {"smooth": 3, "scaled": True},
    "baseline-40": {"smooth": 3, "smooth_mode": "center", "baseline_window": 40},
}


@pytest.mark.parametrize("post", list(POSTPROCESS))
@pytest.mark.parametrize("chunks", [[1], [7], [15, 16, 17], [100], [5000]])
def test_chunking_does_not_change_scores(fitted, chunks, post):
    det, data = fitted
    det = _with_postprocess(det, **dict(POSTPROCESS[post]))
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
    back = load_detector(tmp_path / "d")
    np.testing.assert_array_equal(back.score(data.score), det.score(data.score))
    assert back.threshold_ == det.threshold_
    assert back.feature_names_ == det.feature_names_


def test_short_series_is_refused(fitted):
    det, data = fitted
    with pytest.raises(DataError, match="shorter than the window"):
        det.score(data.score.head(5))


def test_context_follows_the_postprocessing(fitted):
    det, _ = fitted
    assert (det.context_before, det.context_after) == (15, 15)
    centred = _with_postprocess(det, smooth=7, smooth_mode="center")
    assert (centred.context_before, centred.context_after) == (15 + 3, 15 + 3)
    causal = _with_postprocess(det, errors="causal", smooth=5)
    assert (causal.context_before, causal.context_after) == (15 + 4, 0)
    relative = _with_postprocess(det, baseline_window=100)
    assert (relative.context_before, relative.context_after) == (15 + 100, 15)


def test_causal_scores_do_not_look_ahead(fitted):
    det, data = fitted
    det = _with_postprocess(det, errors="causal", smooth=3)
    series = data.score[data.score.entity == "server-01"]
    x = det.scaler_.transform(series[det.feature_names_].to_numpy())
    whole = det.score_values(x)[0]
    changed = x.copy()
    changed[200:] += 5.0  # the future changes; scores up to step 199 must not
    np.testing.assert_allclose(det.score_values(changed)[0][:200], whole[:200], rtol=1e-5)
    assert not np.allclose(det.score_values(changed)[0][200:210], whole[200:210])
