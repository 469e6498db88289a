"""The contract every registered model honours, checked on the tiny synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ae_anomaly.detectors import AutoencoderDetector, load_detector
from ae_anomaly.models import available_models, iter_batches

MODELS = available_models()


def _window_batch(det: AutoencoderDetector, frame) -> tuple[torch.Tensor, ...]:
    """Eight scaled windows of ``frame`` (with their context when the model needs one)."""
    values = det.scaler_.transform(frame[det.feature_names_].to_numpy(np.float64))
    x = torch.from_numpy(np.stack([values[i:i + det.window.length].T for i in range(8)]))
    ctx = det._window_context(frame["timestamp"].to_numpy()[:8 + det.window.length - 1],
                              str(frame["entity"].iloc[0]), 8)
    return (x,) if ctx is None else (x, ctx)


@pytest.mark.parametrize("name", MODELS)
def test_network_shapes_and_finite_loss(name, fitted, synthetic):
    det = fitted(name)
    net = det.network_
    batch = _window_batch(det, synthetic.score)
    x = batch[0]
    net.eval()
    with torch.no_grad():
        out = net(*batch)
        assert out.recon.shape == x.shape
        assert net.errors(x, out).shape == x.shape
        assert torch.isfinite(net.loss(x, out))
    net.train()
    out = net(*batch)
    loss = net.loss(x, out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    net.eval()
    assert all(np.isfinite(det.history_.train_loss)) and det.history_.train_loss
    assert np.isfinite(det.threshold_)


@pytest.mark.parametrize("name", MODELS)
def test_score_shapes_and_eval_determinism(name, fitted, synthetic):
    det = fitted(name)
    first = det.score(synthetic.score)
    second = det.score(synthetic.score)
    assert first.shape == (len(synthetic.score),)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    values = det.scaler_.transform(synthetic.score[det.feature_names_].to_numpy(np.float64))
    scores, channels = det.score_values(values, timestamps=synthetic.score["timestamp"].to_numpy(),
                                        entity=str(synthetic.score["entity"].iloc[0]))
    assert channels.shape == (len(values), len(det.feature_names_))
    np.testing.assert_allclose(scores, first)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_gives_identical_scores(name, fitted, synthetic, tmp_path):
    det = fitted(name)
    det.save(tmp_path / name)
    back = load_detector(tmp_path / name)
    assert back.threshold_ == det.threshold_
    np.testing.assert_array_equal(back.score(synthetic.score), det.score(synthetic.score))


@pytest.mark.parametrize("name", MODELS)
def test_detects_spikes(name, fitted, spikes):
    det = fitted(name)
    auc = roc_auc_score(spikes.labels, det.score(spikes.frame))
    assert auc >= 0.9, f"{name}: AUROC {auc:.3f} on the spike fixture"


def test_iter_batches_keeps_tuples_aligned():
    x, c = torch.arange(10.0), torch.arange(10.0) * 2
    order = torch.randperm(10)
    got = list(iter_batches((x, c), 3, order=order))
    assert [len(b[0]) for b in got] == [3, 3, 3, 1]
    for bx, bc in got:
        torch.testing.assert_close(bc, bx * 2)
