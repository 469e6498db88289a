import numpy as np
import torch

from ae_anomaly.config import SyntheticConfig
from ae_anomaly.data.preprocessing import Scaler
from ae_anomaly.data.synthetic import KINDS, generate_server_metrics
from ae_anomaly.data.windowing import overlap_sum, sliding_windows, window_coverage


def test_sliding_windows_shape_and_content():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = sliding_windows(x, 4, 1)
    assert w.shape == (7, 2, 4)
    np.testing.assert_array_equal(w[3], x[3:7].T)
    assert sliding_windows(x, 4, 3).shape == (3, 2, 4)
    assert sliding_windows(x, 11).shape == (0, 2, 11)


def test_overlap_sum_matches_loop():
    rng = np.random.default_rng(0)
    n, c, length = 9, 3, 5
    vals = rng.normal(size=(n, c, length))
    expected = np.zeros((n + length - 1, c))
    for i in range(n):
        expected[i:i + length] += vals[i].T
    got = overlap_sum(torch.from_numpy(vals), n + length - 1).numpy()
    np.testing.assert_allclose(got, expected)
    cov = window_coverage(n, length).numpy()
    assert cov.tolist() == [1, 2, 3, 4, 5, 5, 5, 5, 5, 4, 3, 2, 1]


def test_scaler_fitted_on_train_only():
    rng = np.random.default_rng(1)
    train = rng.normal(5, 2, size=(1000, 3))
    test = rng.normal(50, 20, size=(1000, 3))
    s = Scaler("standard").fit(train)
    center = s.center_.copy()
    s.transform(test)  # transforming never refits
    np.testing.assert_array_equal(s.center_, center)
    assert np.allclose(s.transform(train).mean(axis=0), 0, atol=1e-6)
    assert s.transform(test).mean() > 10
    back = Scaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(back.transform(test), s.transform(test))


def test_robust_and_constant_channels():
    x = np.column_stack([np.arange(100.0), np.full(100, 3.0)])
    for kind in ("standard", "robust", "minmax"):
        out = Scaler(kind).fit(x).transform(x)
        assert np.isfinite(out).all() and np.all(out[:, 1] == 0)


def test_synthetic_generator_is_seeded_and_labelled():
    cfg = SyntheticConfig(n_entities=2, n_metrics=5, train_days=1, score_days=1,
                          anomalies_per_entity=4, seed=3)
    a, b = generate_server_metrics(cfg), generate_server_metrics(cfg)
    np.testing.assert_array_equal(a.score.iloc[:, 2:].to_numpy(), b.score.iloc[:, 2:].to_numpy())
    assert set(a.anomalies.kind) == set(KINDS)
    assert len(a.labels) == len(a.score) and a.labels.sum() > 0
    for r in a.anomalies.itertuples():
        rows = a.score[(a.score.entity == r.entity)
                       & (a.score.timestamp.between(r.start_ts, r.end_ts))]
        assert len(rows) == r.end_idx - r.start_idx + 1
    # Metrics are correlated (shared load factors), as real server metrics are.
    corr = np.corrcoef(a.train[a.train.entity == "server-01"].iloc[:, 2:].to_numpy().T)
    assert np.abs(corr[np.triu_indices(5, 1)]).mean() > 0.3
