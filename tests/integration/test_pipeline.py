"""End to end through Prefect (test harness), MLflow (SQLite in tmp) and the SQLite table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ae_anomaly import pipeline
from ae_anomaly.config import expand_path, load_config
from ae_anomaly.evaluation.metrics import event_recall, false_events_per_1000

CONFIG = "configs/demo.yaml"
FAST = ["training.epochs=12", "training.progress=false", "data.synthetic.train_days=3",
        "data.synthetic.score_days=1.5"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, prefect_harness):
    """Train and score once (module scope): the tests below read what it wrote."""
    from ae_anomaly_flows.score import score_flow
    from ae_anomaly_flows.train import train_flow

    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("AE_ANOMALY_HOME", str(home))
    cfg = load_config(CONFIG, FAST)
    data = pipeline.write_demo_data(cfg)
    ov = FAST + pipeline.demo_overrides(data)
    trained = train_flow(CONFIG, ov)
    scored = score_flow(CONFIG, ov)
    yield {"home": home, "data": data, "ov": ov, "trained": trained, "scored": scored,
           "cfg": load_config(CONFIG, ov)}
    mp.undo()


def test_injected_anomalies_are_detected(demo_run):
    cfg, data = demo_run["cfg"], demo_run["data"]
    fresh = pd.read_csv(data.score, parse_dates=["timestamp"])
    events = pipeline.read_events(cfg)
    labels = data.labels
    pred = np.zeros(len(fresh), dtype=np.int64)
    for ev in events.itertuples():
        pred[((fresh.entity == ev.entity) & fresh.timestamp.between(ev.start_ts, ev.end_ts))
             .to_numpy()] = 1
    recall = event_recall(labels, pred)
    false_rate = false_events_per_1000(labels, pred)
    # alpha = 0.001 bounds isolated false alarms at ~1 per 1,000 normal steps; events merge
    # nearby alarms, so a working detector stays well below that.
    assert recall >= 0.8, recall
    assert false_rate < 1.0, false_rate
    assert demo_run["scored"]["events"] == len(events) > 0


def test_champion_alias_and_logged_run(demo_run):
    cfg = demo_run["cfg"]
    uri = expand_path(cfg.tracking.tracking_uri)
    client = MlflowClient(uri, uri)
    mv = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    assert str(mv.version) == demo_run["trained"]["model_version"] == "1"
    run = client.get_run(mv.run_id)
    assert run.data.metrics["threshold"] == pytest.approx(demo_run["trained"]["threshold"])
    assert len(client.get_metric_history(mv.run_id, "train_loss")) >= 1
    assert run.data.params["model.name"] == "conv_ae"
    arts = {a.path for a in client.list_artifacts(mv.run_id, "calibration")}
    assert "calibration/score_distribution.png" in arts


def test_pyfunc_predict_returns_score_and_flag(demo_run):
    import mlflow

    cfg = demo_run["cfg"]
    mlflow.set_tracking_uri(expand_path(cfg.tracking.tracking_uri))
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}@champion")
    fresh = pd.read_csv(demo_run["data"].score, parse_dates=["timestamp"])
    out = model.predict(fresh[fresh.entity == "server-01"].head(300))
    assert list(out.columns) == ["score", "is_anomaly"] and len(out) == 300
    assert np.isfinite(out.score).all()


def test_rescoring_adds_and_changes_no_rows(demo_run):
    from ae_anomaly_flows.score import score_flow

    cfg = demo_run["cfg"]
    before = pipeline.read_events(cfg)
    again = score_flow(CONFIG, demo_run["ov"])
    assert again["rows_written"] == 0
    pd.testing.assert_frame_equal(pipeline.read_events(cfg), before)


def test_second_training_keeps_champion(demo_run):
    from ae_anomaly_flows.train import train_flow

    out = train_flow(CONFIG, demo_run["ov"] + ["training.epochs=1"])
    assert out["model_version"] == "2" and not out["champion_set"]


def cli(*args: str, env_home) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, AE_ANOMALY_HOME=str(env_home))
    return subprocess.run([sys.executable, "-m", "ae_anomaly.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("trainig:\n  epochs: 2\n")
    res = cli("train", "-c", str(bad), env_home=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "trainig" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_bad_data_is_one_line(tmp_path, demo_run):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,entity,x\n2026-01-01,a,1\n2026-01-01 00:01,a,oops\n")
    res = cli("train", "-c", CONFIG, "--input", str(bad), env_home=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("ae-anomaly: error:") and "Traceback" not in res.stderr
    assert str(bad) in lines[-1] and "column 'x'" in lines[-1] and "row 2" in lines[-1]


def test_cli_help_teaches():
    res = subprocess.run([sys.executable, "-m", "ae_anomaly.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    for word in ("demo", "train", "score", "--set", "AE_ANOMALY_HOME"):
        assert word in res.stdout


def test_cli_calibrate_report(demo_run):
    res = cli("calibrate", "-c", CONFIG, env_home=demo_run["home"])
    assert res.returncode == 0, res.stderr
    assert "conformal" in res.stdout and "false-alarm rate, 90%" in res.stdout
    assert "ae-anomaly-demo v1" in res.stdout


def test_cli_sample_refuses_a_non_generative_model(demo_run, tmp_path):
    res = cli("sample", "-c", CONFIG, "-n", "2", "-o", str(tmp_path / "s.csv"),
              env_home=demo_run["home"])
    assert res.returncode == 2 and "cannot generate windows" in res.stderr


def test_cli_sample_writes_rae_windows(demo_run, tmp_path):
    from ae_anomaly_flows.train import train_flow

    ov = demo_run["ov"] + ["model.name=rae", "model.gmm_components=2", "training.epochs=2",
                           "tracking.registered_model=demo-rae"]
    train_flow(CONFIG, ov)
    out = tmp_path / "s.csv"
    res = cli("sample", "-c", CONFIG, "--set", "tracking.registered_model=demo-rae", "-n", "3",
              "-o", str(out), env_home=demo_run["home"])
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(out)
    assert len(df) == 3 * 64 and df.window.nunique() == 3
    assert np.isfinite(df.iloc[:, 2:].to_numpy()).all()
