"""Loading a registered model never unpickles, and refuses tampered detector files.

A real MLflow SQLite store and artifact folder in tmp_path: the model is logged and
registered as training does it, then its files in the artifact store are changed the way
someone with write access to the store could change them.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.data.synthetic import generate_server_metrics
from ae_anomaly.detectors import BaseDetector, build_detector
from ae_anomaly.tracking import Tracker
from ae_anomaly.tracking.integrity import SHA256_TAG, ModelIntegrityError

SERIES = ["training.epochs=1", "training.progress=false", "training.num_threads=1",
          "training.batch_size=128", "window.length=16", "window.train_stride=4",
          "data.synthetic.n_entities=2", "data.synthetic.train_days=0.5",
          "data.synthetic.score_days=0.25", "model.name=dense_ae"]


class _Payload:
    """A crafted pickle: unpickling it writes the marker file (stands for any command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def fitted() -> tuple[AppConfig, BaseDetector, pd.DataFrame, pd.DataFrame]:
    cfg = load_config(None, SERIES)
    data = generate_server_metrics(cfg.data.synthetic)
    return cfg, build_detector(cfg).fit(data.train), data.train, data.score


@pytest.fixture
def registered(fitted, home: Path):
    """A fresh store in ``home`` with the detector registered as v1 (champion)."""
    cfg, det, train, test = fitted
    tracker = Tracker(cfg.tracking)
    run_id = tracker.start_run("integrity")
    ref = tracker.log_detector(run_id, det, train)
    tracker.set_alias("champion", ref.version)
    root = Path(tracker.client.get_model_version_download_uri(ref.name, ref.version)
                .removeprefix("file://"))
    return tracker, ref, root, det, test


def test_logged_model_holds_no_pickle_and_records_hashes(registered) -> None:
    tracker, ref, root, _, _ = registered
    assert not list(root.rglob("*.pkl")) and (root / "pyfunc_model.py").is_file()
    tag = json.loads(tracker.client.get_model_version(ref.name, ref.version).tags[SHA256_TAG])
    assert sorted(tag) == ["config.json", "weights.pt"]
    assert all(len(h) == 64 for h in tag.values())


def test_crafted_pickle_and_code_in_the_store_execute_nothing(registered, tmp_path,
                                                              capsys) -> None:
    from ae_anomaly.cli import main

    tracker, ref, root, det, test = registered
    marker = tmp_path / "marker"
    # the payload is live: unpickling it does write the marker
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    (root / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (root / "pyfunc_model.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    back, ref2 = tracker.load()
    assert ref2.version == ref.version
    np.testing.assert_array_equal(back.score(test), det.score(test))
    assert main(["calibrate"]) == 0
    assert "ae-anomaly-demo v1" in capsys.readouterr().out
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.pt", "config.json"])
def test_tampered_detector_file_is_refused_in_one_line(registered, name, capsys) -> None:
    from ae_anomaly.cli import main

    tracker, _, root, _, _ = registered
    path = root / "artifacts" / "detector" / name
    if name == "config.json":
        d = json.loads(path.read_text())
        d["threshold"] = 1e9  # a model that never alarms
        path.write_text(json.dumps(d))
    else:
        path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match=rf"'ae-anomaly-demo' v1: detector file "
                                                  rf"{name} does not match"):
        tracker.load()
    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ae-anomaly: error: model 'ae-anomaly-demo' v1: detector file "
                          f"{name} does not match") and len(err.splitlines()) == 1


def test_added_or_missing_detector_file_is_refused(registered) -> None:
    tracker, _, root, _, _ = registered
    folder = root / "artifacts" / "detector"
    (folder / "extra.pt").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="extra.pt was added after registration"):
        tracker.load()
    (folder / "extra.pt").unlink()
    (folder / "weights.pt").unlink()
    with pytest.raises(ModelIntegrityError, match="weights.pt is missing"):
        tracker.load()


def test_model_without_hash_tag_loads_with_a_warning(registered, caplog) -> None:
    tracker, ref, _, det, test = registered
    tracker.client.delete_model_version_tag(ref.name, ref.version, SHA256_TAG)
    with caplog.at_level("WARNING", logger="ae_anomaly.tracking.store"):
        back, _ = tracker.load()
    assert f"no {SHA256_TAG} tag" in caplog.text
    np.testing.assert_array_equal(back.score(test), det.score(test))


def test_unreachable_tracking_server_fails_in_one_masked_line(home, monkeypatch,
                                                              capsys) -> None:
    from ae_anomaly.cli import main

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, "0")  # restored after the test ...
        monkeypatch.delenv(key)  # ... and unset during it: the defaults apply
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    rc = main(["calibrate", "--set",
               f"tracking.tracking_uri=http://ops:hunter2@127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 3 and len(err.splitlines()) == 1, err
    assert err.startswith(f"ae-anomaly: error: MLflow tracking server "
                          f"http://ops:***@127.0.0.1:{port} does not answer")
    assert "hunter2" not in err
