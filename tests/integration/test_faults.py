"""Faults that must lose nothing: killed writers, a database that goes away, bad files,
the same data twice and overlapping runs, and a real Prefect server running the schedule.

Everything is real: SQLite files and PostgreSQL servers, MLflow stores in tmp_path,
subprocesses killed with SIGKILL, a ``prefect server`` on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ae_anomaly.sources import FileNotReady


def _urls(request: pytest.FixtureRequest, tmp_path: Path, kind: str, n: int) -> list[str]:
    if kind == "sqlite":
        return [f"sqlite:///{tmp_path}/db{i}.db" for i in range(n)]
    make = request.getfixturevalue("new_pg_db")
    return [make() for _ in range(n)]


def _reference(ops, store, root: Path, frame: pd.DataFrame) -> pd.DataFrame:
    url = f"sqlite:///{root}/ref.db"
    ops.drop(root / "landing", "all.csv", frame)
    ops.score_inprocess(ops.folder_config(store, root, url))
    return ops.read_events(url)


# --------------------------------------------------------------------------- 1. SIGKILL
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sigkill_while_writing_then_next_run_equals_clean_run(request, kind, store, ops,
                                                              tmp_path):
    clean_url, faulty_url = _urls(request, tmp_path, kind, 2)
    clean_cfg = ops.write_config(tmp_path / "clean" / "cfg.yaml",
                                 ops.folder_config(store, tmp_path / "clean", clean_url))
    faulty_cfg = ops.write_config(tmp_path / "faulty" / "cfg.yaml",
                                  ops.folder_config(store, tmp_path / "faulty", faulty_url))
    parts = ops.slices(store.data.score, 3)
    for root in ("clean", "faulty"):
        ops.drop(tmp_path / root / "landing", "d0.csv", parts[0])
    for root, url in (("clean", clean_url), ("faulty", faulty_url)):
        ops.score_inprocess(ops.folder_config(store, tmp_path / root, url), job="first")
    first = ops.read_watermarks(faulty_url, store.name)
    first_events = ops.read_events(faulty_url)
    for root in ("clean", "faulty"):
        ops.drop(tmp_path / root / "landing", "d1.csv", parts[1])
        ops.drop(tmp_path / root / "landing", "d2.csv", parts[2])

    # The faulty run stalls inside its second entity's transaction (events written, not
    # committed) and is killed there; the clean run goes through meanwhile.
    marker = tmp_path / "stalled"
    victim = ops.start_runner(faulty_cfg, "faulty-2", AE_ANOMALY_FAULT_STALL="in_txn:2:600",
                              AE_ANOMALY_FAULT_MARKER=str(marker))
    ops.finish(ops.start_runner(clean_cfg, "clean-2"))
    deadline = time.time() + 240
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.time() < deadline, "the scoring run never reached the fault point"
        time.sleep(0.2)
    ops.kill(victim)
    assert victim.returncode == -signal.SIGKILL

    # Killed mid-write: the first entity's transaction is in, the second's is not.
    after_kill = ops.read_watermarks(faulty_url, store.name)
    want_marks = ops.read_watermarks(clean_url, store.name)
    ents = sorted(want_marks)
    assert after_kill[ents[0]] == want_marks[ents[0]]
    assert after_kill[ents[1]] == first[ents[1]]
    second = ops.read_events(faulty_url)
    ops.assert_same_events(second[second.entity == ents[1]],
                           first_events[first_events.entity == ents[1]], exact=True)

    ops.run_scoring(faulty_cfg, "faulty-3")
    ops.assert_same_events(ops.read_events(faulty_url), ops.read_events(clean_url), exact=True)
    assert ops.read_watermarks(faulty_url, store.name) == want_marks


# --------------------------------------------------------------------------- 2. database down
def test_database_down_then_back_during_retries_and_staying_down(pg_server, store, ops,
                                                                  tmp_path, prefect_harness):
    from ae_anomaly_flows.score import score_flow

    server = pg_server()
    server.start()
    parts = ops.slices(store.data.score, 3)
    landing = tmp_path / "landing"
    raw = ops.folder_config(store, tmp_path, server.url,
                            source={"retries": 5, "retry_delay_seconds": 1.0})
    cfg = ops.write_config(tmp_path / "cfg.yaml", raw)
    ops.drop(landing, "d0.csv", parts[0])
    score_flow(str(cfg))

    # Down when the run starts, back once a task has failed and waits for its retry: the
    # run completes.
    server.stop()
    ops.drop(landing, "d1.csv", parts[1])
    retried = threading.Event()

    class RetryWatch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Retry 1/" in record.getMessage():
                retried.set()

    def restart() -> None:
        if retried.wait(timeout=120):
            server.start()

    watch = RetryWatch()
    task_log = logging.getLogger("prefect.task_runs")
    level = task_log.level
    task_log.setLevel(logging.INFO)
    task_log.addHandler(watch)
    starter = threading.Thread(target=restart)
    starter.start()
    try:
        out = score_flow(str(cfg))
        assert retried.is_set(), "no task was retried: the database was not down"
    finally:
        retried.set()
        starter.join()
        task_log.removeHandler(watch)
        task_log.setLevel(level)
    assert out["steps"] > 0
    want = _reference(ops, store, tmp_path / "ref01", pd.concat(parts[:2]))
    ops.assert_same_events(ops.read_events(server.url), want)
    marks = ops.read_watermarks(server.url, store.name)

    # Down for good: the run fails after its retries, the new drop stays in the landing
    # folder, the watermarks have not moved, and the next run catches up.
    server.stop()
    ops.drop(landing, "d2.csv", parts[2])
    short = ops.write_config(tmp_path / "short.yaml", ops.folder_config(
        store, tmp_path, server.url, source={"retries": 2, "retry_delay_seconds": 0.2}))
    with pytest.raises(Exception, match="(?i)connect|connection"):
        score_flow(str(short))
    assert (landing / "d2.csv").exists()
    server.start()
    assert ops.read_watermarks(server.url, store.name) == marks
    score_flow(str(cfg))
    want = _reference(ops, store, tmp_path / "ref012", store.data.score)
    ops.assert_same_events(ops.read_events(server.url), want)
    assert not (landing / "d2.csv").exists()


# --------------------------------------------------------------------------- 3. bad files
def test_bad_files_are_quarantined_with_reason_good_ones_scored(db_url, store, ops, tmp_path):
    from ae_anomaly import pipeline
    from ae_anomaly.config import AppConfig

    parts = ops.slices(store.data.score, 4)
    landing = tmp_path / "landing"
    metric = store.detector.feature_names_[1]
    ops.drop(landing, "good0.csv", parts[0])
    ops.drop(landing, "good1.parquet", parts[1])
    bad = parts[1].astype({metric: object}).copy()
    bad.iloc[7, bad.columns.get_loc(metric)] = "n/a"
    ops.drop(landing, "bad_value.csv", bad)
    ops.drop(landing, "bad_schema.csv", parts[1].drop(columns=[metric]))
    (landing / "notes.txt").write_text("not metrics")
    os.utime(landing / "notes.txt", (time.time() - 60,) * 2)
    ops.drop(landing, "half.csv", parts[2])
    os.replace(landing / "half.csv", landing / "half.csv.part")  # still being written
    ops.drop(landing, "fresh.csv", parts[3], age=0)  # modified just now

    raw = ops.folder_config(store, tmp_path, db_url, source={"settle_seconds": 30})
    cfg = AppConfig.model_validate(raw)
    with pytest.raises(FileNotReady, match="fresh.csv"):
        pipeline.ingest_landing(cfg, list(store.detector.feature_names_))
    ops.score_inprocess(raw)
    want = _reference(ops, store, tmp_path / "ref", pd.concat(parts[:2]))
    ops.assert_same_events(ops.read_events(db_url), want)

    q = landing / "quarantine"
    assert sorted(p.name for p in q.iterdir()) == sorted(
        ["bad_schema.csv", "bad_schema.csv.reason.txt", "bad_value.csv",
         "bad_value.csv.reason.txt", "notes.txt", "notes.txt.reason.txt"])
    reason = (q / "bad_value.csv.reason.txt").read_text()
    assert f"column '{metric}'" in reason and "row 8" in reason and "'n/a'" in reason
    assert "feature schema mismatch" in (q / "bad_schema.csv.reason.txt").read_text()
    assert f"missing {metric}" in (q / "bad_schema.csv.reason.txt").read_text()
    assert "not a data file" in (q / "notes.txt.reason.txt").read_text()
    assert sorted(p.name for p in (landing / "processed").iterdir()) == [
        "good0.csv", "good1.parquet"]
    assert (landing / "half.csv.part").exists() and (landing / "fresh.csv").exists()

    # The writer finishes: renamed and settled, both are scored by the next run.
    os.replace(landing / "half.csv.part", landing / "half.csv")
    for name in ("half.csv", "fresh.csv"):
        os.utime(landing / name, (time.time() - 60,) * 2)
    ops.score_inprocess(raw)
    want = _reference(ops, store, tmp_path / "ref_all", store.data.score)
    ops.assert_same_events(ops.read_events(db_url), want)


# --------------------------------------------------------------------------- 4. duplicates
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_same_data_twice_and_two_overlapping_runs_write_no_duplicates(request, kind, store,
                                                                      ops, tmp_path):
    (url,) = _urls(request, tmp_path, kind, 1)
    cfg = ops.write_config(tmp_path / "cfg.yaml", ops.folder_config(store, tmp_path, url))
    parts = ops.slices(store.data.score, 2)
    for i, part in enumerate(parts):
        ops.drop(tmp_path / "landing", f"d{i}.csv", part)
    # Two processes start together on the same landing folder and table; each pauses after
    # its first commit so that they interleave.
    procs = [ops.start_runner(cfg, f"race-{i}", AE_ANOMALY_FAULT_STALL="after_commit:1:2")
             for i in range(2)]
    outs = [ops.finish(p) for p in procs]
    got = ops.read_events(url)
    want = _reference(ops, store, tmp_path / "ref", store.data.score)
    ops.assert_same_events(got, want)
    assert sum(o["inserted"] for o in outs) == len(want)
    # The same data again: nothing is written.
    again = ops.run_scoring(cfg, "again")
    assert again["rows_written"] == 0
    pd.testing.assert_frame_equal(ops.read_events(url), got)


# --------------------------------------------------------------------------- 5. real server
def _completed_runs(api: str) -> list[dict]:
    body = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
            "deployments": {"name": {"any_": ["score"]}}}
    r = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


SCHEDULE_SAFETY_DEADLINE_S = 600


@pytest.mark.slow
def test_served_score_deployment_runs_on_schedule(store, ops, tmp_path):
    port = ops.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = ops.runner_env(PREFECT_HOME=str(tmp_path / "prefect-server"),
                         PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
                         PREFECT_LOGGING_LEVEL="WARNING")
    env.pop("PREFECT_API_URL", None)
    prefect = shutil.which("prefect", path=str(Path(ops.PYTHON).parent)) or "prefect"
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    serve = None
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.communicate()[0][-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "prefect server did not become healthy"
            time.sleep(1)

        url = f"sqlite:///{tmp_path}/anomalies.db"
        raw = ops.folder_config(store, tmp_path, url,
                                deployment={"score_interval_seconds": 20})
        cfg = ops.write_config(tmp_path / "cfg.yaml", raw)
        parts = ops.slices(store.data.score, 2)
        ops.drop(tmp_path / "landing", "d0.csv", parts[0])
        serve_env = ops.runner_env(PREFECT_API_URL=api,
                                   PREFECT_HOME=str(tmp_path / "prefect-client"),
                                   PREFECT_LOGGING_LEVEL="WARNING")
        # The expected table first, so the deadline below covers the scheduler alone.
        want = _reference(ops, store, tmp_path / "ref", store.data.score)
        serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
        serve = subprocess.Popen([ops.PYTHON, "-m", "ae_anomaly.cli", "serve", "-c", str(cfg)],
                                 cwd=ops.REPO, env=serve_env, stdout=serve_log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        started = time.time()
        dropped = False
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            runs = _completed_runs(api)
            bad = [r for r in runs if r["state_type"] != "COMPLETED"]
            assert not bad, (bad[0]["state"], (tmp_path / "serve.log").read_text()[-3000:])
            if runs and not dropped:
                # After the first scheduled run: new data lands for the next ones.
                ops.drop(tmp_path / "landing", "d1.csv", parts[1])
                dropped = True
            if len(runs) >= 2 and dropped:
                got = ops.read_events(url)
                if len(got) == len(want):
                    break
            # Not a timing claim: a safety net against a hung scheduler, far beyond the two
            # 20-second intervals even on a loaded machine.
            assert time.time() - started < SCHEDULE_SAFETY_DEADLINE_S, (
                f"only {len(runs)} scheduled run(s) completed before the safety deadline "
                f"({SCHEDULE_SAFETY_DEADLINE_S} s: the scheduler looks hung); serve log:\n"
                + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(2)
        # What happened: at least two scheduled runs, all completed, and the table equals
        # one clean scoring of all the data.
        runs = _completed_runs(api)
        assert len(runs) >= 2 and all(r["state_type"] == "COMPLETED" for r in runs)
        ops.assert_same_events(ops.read_events(url), want)
        # SIGTERM (what a service manager sends) stops serve cleanly: exit 0, one line, and
        # no run of the deployment left running or pending.
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=180) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert "ae-anomaly serve: stopped" in (tmp_path / "serve.log").read_text()
        body = {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}},
                "deployments": {"name": {"any_": ["score"]}}}
        stuck = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
        assert not stuck, [(r["name"], r["state"]["name"]) for r in stuck]
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)
