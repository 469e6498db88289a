"""The flows on Dask (``execution.backend: dask``): the same table as the local backend.

A tiny fleet (the tiny store's servers, copied under new names: 4 entities, 2 shards),
scored from a landing folder into SQLite (writers serialise) or PostgreSQL. Clusters are
tiny (2 worker processes, 1 thread each, no dashboard) and stopped by their fixtures.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def _fleet(frame: pd.DataFrame) -> pd.DataFrame:
    """Four entities: the two servers and copies of them under other names."""
    copy = frame.assign(entity=frame["entity"] + "-b")
    return pd.concat([frame, copy], ignore_index=True)


def _reference(ops, store, root: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The local backend, in this process: all the data, one run, its own SQLite file."""
    url = f"sqlite:///{root}/ref.db"
    ops.drop(root / "landing", "all.csv", frame)
    ops.score_inprocess(ops.folder_config(store, root, url))
    return ops.read_events(url)


def _dask_config(ops, store, root: Path, db_url: str, **execution) -> Path:
    raw = ops.folder_config(store, root, db_url,
                            execution={"backend": "dask", "shard_size": 2, **execution})
    return ops.write_config(root / "score.yaml", raw)


@pytest.fixture
def fleet(store) -> pd.DataFrame:
    return _fleet(store.data.score)


def test_score_on_local_cluster_matches_local_backend(db_url, store, ops, tmp_path, fleet,
                                                      prefect_harness):
    from ae_anomaly_flows.score import score_flow

    want = _reference(ops, store, tmp_path / "ref", fleet)
    assert want.entity.nunique() == 4 and len(want) >= 3
    cfg = _dask_config(ops, store, tmp_path, db_url, workers=2)
    for i, part in enumerate(ops.slices(fleet, 2)):  # two scheduled runs
        ops.drop(tmp_path / "landing", f"d{i}.csv", part)
        out = score_flow(str(cfg))
        assert out["entities"] == 4 and out["model_version"] == store.version
    ops.assert_same_events(ops.read_events(db_url), want)
    again = score_flow(str(cfg))  # nothing new: nothing written
    assert again["rows_written"] == 0


def test_train_on_local_cluster_registers_a_model_that_scores_like_local(
        store, ops, tmp_path, fleet, prefect_harness):
    """The train flow fits and registers on a worker; the version it registers scores the
    fleet on Dask exactly as the local backend scores it with that version."""
    from ae_anomaly_flows.score import score_flow
    from ae_anomaly_flows.train import train_flow

    raw = ops.tiny()
    train_csv = tmp_path / "train.csv"
    store.data.train.to_csv(train_csv, index=False)
    raw["data"] = {"train": str(train_csv)}
    raw["tracking"] = {**store.tracking, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                       "artifact_location": str(tmp_path / "mlartifacts"),
                       "registered_model": "dask-trained"}
    raw["execution"] = {"backend": "dask", "workers": 2}
    cfg = ops.write_config(tmp_path / "train.yaml", raw)
    out = train_flow(str(cfg))
    assert out["model_version"] == "1" and out["champion_set"]
    assert out["epochs"] >= 1 and out["threshold"] > 0

    trained = dataclasses.replace(store, tracking=raw["tracking"], name="dask-trained",
                                  version="1")
    want = _reference(ops, trained, tmp_path / "ref", fleet)
    db = f"sqlite:///{tmp_path}/dask.db"
    ops.drop(tmp_path / "landing", "all.csv", fleet)
    res = score_flow(str(_dask_config(ops, trained, tmp_path, db)))
    assert res["model_name"] == "dask-trained" and res["model_version"] == "1"
    ops.assert_same_events(ops.read_events(db), want)


@pytest.fixture
def faulty_cluster(tmp_path, monkeypatch):
    """A LocalCluster whose first worker to commit a watermark stalls there (marker)."""
    from distributed import LocalCluster

    marker = tmp_path / "stalled"
    monkeypatch.setenv("AE_ANOMALY_FAULT_STALL", "after_commit:1:600")
    monkeypatch.setenv("AE_ANOMALY_FAULT_MARKER", str(marker))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(SUPPORT), path) if p))
    monkeypatch.syspath_prepend(str(SUPPORT))  # the nanny imports the preload here too
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, preload=["dask_faults"])
    try:
        yield cluster, marker
    finally:
        cluster.close()


def test_worker_killed_mid_shard_loses_nothing(db_url, store, ops, tmp_path, fleet,
                                               faulty_cluster, prefect_harness):
    from ae_anomaly_flows.score import score_flow

    cluster, marker = faulty_cluster
    want = _reference(ops, store, tmp_path / "ref", fleet)
    cfg = _dask_config(ops, store, tmp_path, db_url, address=cluster.scheduler_address)
    ops.drop(tmp_path / "landing", "all.csv", fleet)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["out"] = score_flow(str(cfg))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it below
            result["error"] = exc

    # The thread runs in a copy of this context: the Prefect test server's settings.
    first = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    first.start()
    deadline = time.monotonic() + 300
    while not marker.exists() and time.monotonic() < deadline and first.is_alive():
        time.sleep(0.2)
    assert marker.exists(), f"no worker stalled: {result}"
    point, _, pid = marker.read_text().split()
    assert point == "after_commit"
    # One entity of the stalled shard is committed, the other is not written yet.
    marks = ops.read_watermarks(db_url, store.name)
    assert 1 <= len(marks) < 4
    os.kill(int(pid), signal.SIGKILL)
    first.join(timeout=600)
    assert not first.is_alive()
    # Dask re-runs the lost shard (or the run fails); a re-run completes the table either way.
    score_flow(str(cfg))
    got = ops.read_events(db_url)
    assert got["event_id"].is_unique
    ops.assert_same_events(got, want)
    assert len(ops.read_watermarks(db_url, store.name)) == 4


@pytest.fixture
def dask_processes(ops, tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, as on three
    machines; stopped afterwards."""
    dask_cli = Path(ops.PYTHON).parent / "dask"
    if not dask_cli.exists():
        pytest.skip("the dask command is not installed beside the interpreter")
    port = ops.free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = ops.runner_env(PYTHONPATH=str(ops.REPO))
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = []

    def start(name: str, *args: str) -> None:
        out = (logs / f"{name}.log").open("w")
        procs.append(subprocess.Popen([str(dask_cli), *args], cwd=tmp_path, env=env,
                                      stdout=out, stderr=subprocess.STDOUT))

    start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port),
          "--no-dashboard")
    for i in range(2):
        start(f"worker{i}", "worker", address, "--nworkers", "1", "--nthreads", "1",
              "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}")
    try:
        from distributed import Client

        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


def test_separate_scheduler_and_worker_processes(store, ops, tmp_path, fleet, dask_processes,
                                                 prefect_harness):
    from ae_anomaly_flows.score import score_flow

    want = _reference(ops, store, tmp_path / "ref", fleet)
    db = f"sqlite:///{tmp_path}/dask.db"
    ops.drop(tmp_path / "landing", "all.csv", fleet)
    out = score_flow(str(_dask_config(ops, store, tmp_path, db, address=dask_processes)))
    assert out["entities"] == 4
    ops.assert_same_events(ops.read_events(db), want)
