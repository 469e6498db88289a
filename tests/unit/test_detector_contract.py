"""The one detector contract, over every detector kind: each windowed autoencoder family, the
row autoencoders (network flows), and the three baselines on series and on rows.

Every kind is built by the one factory from a configuration, and must: fit and score with
the right shapes, be deterministic for a seed, give identical scores after save / load,
register through MLflow and load back from the registry, and give a calibration report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.data.netflow import IS_ANOMALY
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.data.synthetic_netflow import generate_netflow
from ae_anomaly.detectors import BaseDetector, build_detector, load_detector

REPO = Path(__file__).resolve().parents[2]
NETFLOW = REPO / "configs" / "datasets" / "netflow.yaml"

COMMON = ["training.epochs=1", "training.progress=false", "training.num_threads=1",
          "training.batch_size=128", "calibration.alpha=0.01"]
SERIES = [*COMMON, "window.length=16", "window.train_stride=4",
          "data.synthetic.n_entities=2", "data.synthetic.train_days=0.5",
          "data.synthetic.score_days=0.25"]
ROWS = [*COMMON, f"data.netflow={NETFLOW}", "data.netflow_mode=rows"]

SERIES_KINDS = {
    "conv_ae": [], "dense_ae": [], "denoising": [], "contractive": [], "vae": [], "rae": [],
    "cvae": [], "pca": [], "iforest": ["model.window=4"], "random": [],
}
ROW_KINDS = {"dense_ae": [], "vae": ["model.arch=dense"], "pca": [],
             "iforest": ["model.window=1"], "random": []}
CASES = ([("series", n, o) for n, o in SERIES_KINDS.items()]
         + [("rows", n, o) for n, o in ROW_KINDS.items()])
IDS = [f"{layout}-{name}" for layout, name, _ in CASES]


@pytest.fixture(scope="module")
def series_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = load_config(None, SERIES)
    data = generate_server_metrics(cfg.data.synthetic)
    return data.train, data.score


@pytest.fixture(scope="module")
def row_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame, _ = generate_netflow(n_hosts=2, days=0.25, seed=4, attack_count=1)
    frame[IS_ANOMALY] = frame["label"] != "normal"
    return frame, frame.tail(500).reset_index(drop=True)


def _config(layout: str, name: str, extra: list[str]) -> AppConfig:
    return load_config(None, [*(SERIES if layout == "series" else ROWS), f"model.name={name}",
                              *extra])


def _data(layout: str, series_data, row_data) -> tuple[pd.DataFrame, pd.DataFrame]:
    return series_data if layout == "series" else row_data


@pytest.fixture(scope="module")
def fitted(series_data, row_data):
    cache: dict[str, BaseDetector] = {}

    def get(layout: str, name: str, extra: list[str]) -> BaseDetector:
        key = f"{layout}-{name}"
        if key not in cache:
            train, _ = _data(layout, series_data, row_data)
            cache[key] = build_detector(_config(layout, name, extra)).fit(train)
        return cache[key]

    return get


@pytest.mark.parametrize(("layout", "name", "extra"), CASES, ids=IDS)
def test_fit_score_shapes_and_report(layout, name, extra, fitted, series_data,
                                     row_data) -> None:
    det = fitted(layout, name, extra)
    _, test = _data(layout, series_data, row_data)
    assert det.model.name == name and det.kind
    # sklearn-shaped: params are the constructor's, fitted state ends in "_"
    params = det.get_params()
    assert params["model"] is det.model
    assert type(det)(**params).get_params().keys() == params.keys()
    scores = det.score(test)
    assert scores.shape == (len(test),) and np.isfinite(scores).all()
    assert det.predict(test).shape == (len(test),)
    s, ch = det.score_channels(test)
    if name != "random":  # the control draws new scores on every call
        np.testing.assert_array_equal(s, scores)
    assert ch.shape == (len(test), len(det.channel_names))
    assert np.isfinite(det.threshold_) and det.n_train_samples_ > 0
    report = det.calibration_report()
    assert report["threshold"] == pytest.approx(det.threshold_)
    assert report["n_calibration"] > 0


@pytest.mark.parametrize(("layout", "name", "extra"), CASES, ids=IDS)
def test_deterministic_for_a_seed_and_identical_after_save_load(
        layout, name, extra, series_data, row_data, tmp_path: Path) -> None:
    train, test = _data(layout, series_data, row_data)
    cfg = _config(layout, name, extra)
    a = build_detector(cfg).fit(train)
    b = build_detector(cfg).fit(train)
    path = a.save(tmp_path / "det")
    loaded = load_detector(path)
    assert type(loaded) is type(a) and loaded.threshold_ == a.threshold_
    assert loaded.feature_names_ == a.feature_names_
    # the loaded copy starts from the saved state (random continues its stream from there)
    scores = a.score(test)
    np.testing.assert_array_equal(scores, b.score(test))
    np.testing.assert_array_equal(loaded.score(test), scores)
    assert not list(path.glob("*.pkl"))


@pytest.mark.parametrize(("layout", "name", "extra"), CASES, ids=IDS)
def test_registers_through_mlflow_and_loads_back(layout, name, extra, series_data, row_data,
                                                 tmp_path: Path, monkeypatch) -> None:
    from ae_anomaly.tracking import Tracker

    monkeypatch.setenv("AE_ANOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # nothing may be written to the working folder (./mlruns)
    train, test = _data(layout, series_data, row_data)
    cfg = _config(layout, name, extra)
    det = build_detector(cfg).fit(train)
    expected = build_detector(cfg).fit(train).score(test)
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run("contract")
    report = tracker.log_training(run_id, det)
    assert report["threshold"] == pytest.approx(det.threshold_)
    ref = tracker.log_detector(run_id, det, train)
    tracker.set_alias("champion", ref.version)
    back, ref2 = tracker.load("champion")
    assert ref2.version == ref.version and type(back) is type(det)
    np.testing.assert_array_equal(back.score(test), expected)
    tags = tracker.client.get_run(run_id).data.tags
    assert tags["ae_anomaly.version"]
    if (REPO / ".git").exists():
        assert len(tags["ae_anomaly.git_commit"].removesuffix("-dirty")) == 40
    assert not (tmp_path / "mlruns").exists()
