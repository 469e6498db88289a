"""The Prefect layer: retries with back-off for transient errors only, clear failures for
permanent ones, the CLI's score / backfill, the deployments (serve and prefect.yaml)."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import yaml
from sqlalchemy import create_engine

from ae_anomaly import cli
from ae_anomaly.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_file_still_being_written_is_retried_with_backoff_then_ingested(
        store, ops, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ae_anomaly_flows.score import score_flow

    url = f"sqlite:///{tmp_path}/a.db"
    landing = tmp_path / "landing"
    ops.drop(landing, "fresh.csv", store.data.score, age=0)
    cfg = ops.write_config(tmp_path / "cfg.yaml", ops.folder_config(
        store, tmp_path, url, source={"settle_seconds": 2, "retries": 4,
                                      "retry_delay_seconds": 1}))
    state = score_flow(str(cfg), return_state=True)
    out = state.result()
    # The file was too fresh at first: the ingest task was retried until it had settled.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    ingest = [r for r in runs if r.name.startswith("ingest-landing")]
    assert len(ingest) == 1 and ingest[0].run_count >= 2
    assert out["ingested"] == ["fresh.csv"] and out["events"] > 0
    assert (landing / "processed" / "fresh.csv").exists()

    # Still being written when the retries run out: the run scores what is complete and
    # leaves the file for the next run.
    ops.drop(landing, "later.csv", store.data.score.tail(50), age=0)
    cfg2 = ops.write_config(tmp_path / "cfg2.yaml", ops.folder_config(
        store, tmp_path, url, source={"settle_seconds": 600, "retries": 1,
                                      "retry_delay_seconds": 0.1}))
    out = score_flow(str(cfg2))
    assert "later.csv" in out["waiting"] and out["rows_written"] == 0
    assert (landing / "later.csv").exists()


def test_permanent_error_fails_at_once_with_a_clear_message(store, ops, tmp_path,
                                                            prefect_harness, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ae_anomaly_flows.score import score_flow

    url = f"sqlite:///{tmp_path}/raw.db"
    engine = create_engine(url)
    store.data.score.head(100).assign(unknown_metric=1.0).to_sql("raw_metrics", engine,
                                                                  index=False)
    engine.dispose()
    cfg = ops.write_config(tmp_path / "cfg.yaml", store.config(
        source={"kind": "sql", "url": url, "table": "raw_metrics", "retries": 3,
                "retry_delay_seconds": 30},
        sink={"url": f"sqlite:///{tmp_path}/a.db"}))
    state = score_flow(str(cfg), return_state=True)
    assert state.is_failed()  # at once: the task ran once (run_count below), no retry
    exc = state.result(raise_on_failure=False)
    assert "feature schema mismatch" in str(exc) and "unexpected unknown_metric" in str(exc)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    scoring = [r for r in runs if r.name.startswith("score-increment")]
    assert len(scoring) == 1 and scoring[0].run_count == 1

    # The CLI prints it as one line and exits 2 (Prefect's own log lines aside).
    assert cli.main(["score", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("ae-anomaly: error:")]
    assert len(lines) == 1 and "unexpected unknown_metric" in lines[0]


def test_cli_score_and_backfill(store, ops, tmp_path, prefect_harness, capsys):
    url = f"sqlite:///{tmp_path}/a.db"
    ops.drop(tmp_path / "landing", "d.csv", store.data.score)
    cfg = ops.write_config(tmp_path / "cfg.yaml", ops.folder_config(store, tmp_path, url))
    assert cli.main(["score", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    n = len(ops.read_events(url))
    assert f"{n} events" in out and n > 0
    first, last = store.data.score.timestamp.min(), store.data.score.timestamp.max()
    assert cli.main(["backfill", "-c", str(cfg), "--from", str(first), "--to",
                     str(last)]) == 0
    assert "0 inserted, 0 updated, 0 deleted" in capsys.readouterr().out
    assert cli.main(["backfill", "-c", str(cfg), "--from", "yesterday-ish"]) == 2
    assert "is not a timestamp" in capsys.readouterr().err


def test_deployments_from_configs_and_prefect_yaml():
    from ae_anomaly_flows.serve import build_deployments

    deps = {d.name: d for d in build_deployments("configs/ops.yaml")}
    cfg = load_config("configs/ops.yaml")
    assert set(deps) == {"score", "train"}
    assert deps["score"].schedules[0].schedule.cron == cfg.deployment.score_cron
    assert deps["train"].schedules[0].schedule.cron == cfg.deployment.train_cron
    assert deps["score"].parameters["config"] == str((REPO / "configs/ops.yaml").resolve())
    fast = {d.name: d for d in build_deployments(
        "configs/ops.yaml", ["deployment.score_interval_seconds=20"])}
    assert fast["score"].schedules[0].schedule.interval.total_seconds() == 20
    # one run per deployment at a time; an overlapping one is cancelled (the next scores
    # from the watermarks anyway)
    for dep in deps.values():
        assert dep.concurrency_limit == 1
        assert dep.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    queued = {d.name: d for d in build_deployments(
        "configs/ops.yaml", ["deployment.concurrency=2", "deployment.on_overlap=enqueue"])}
    assert queued["score"].concurrency_limit == 2
    assert queued["score"].concurrency_options.collision_strategy.value == "ENQUEUE"

    spec = yaml.safe_load((REPO / "flows" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["score"]["schedules"][0]["cron"] == cfg.deployment.score_cron
    assert by_name["train"]["schedules"][0]["cron"] == cfg.deployment.train_cron
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).exists()
        # The entrypoint is a file of flows/, which installs as the package ae_anomaly_flows.
        assert Path(path).parent.name == "flows"
        module = importlib.import_module(f"ae_anomaly_flows.{Path(path).stem}")
        assert hasattr(module, func)
        # Prefect loads it as a script, outside the package: no relative imports there.
        from prefect.flows import load_flow_from_entrypoint

        assert load_flow_from_entrypoint(str(REPO / d["entrypoint"])).name == getattr(
            module, func).name
        assert (REPO / d["parameters"]["config"]).exists()
        load_config(REPO / d["parameters"]["config"], d["parameters"]["overrides"])


def test_serve_needs_a_reachable_prefect_api(ops, tmp_path):
    base = ops.runner_env(PREFECT_HOME=str(tmp_path / "prefect"),
                          AE_ANOMALY_HOME=str(tmp_path / "home"))
    base.pop("PREFECT_API_URL", None)
    dead = {**base, "PREFECT_API_URL": f"http://127.0.0.1:{ops.free_port()}/api"}
    cmd = [ops.PYTHON, "-m", "ae_anomaly.cli", "serve", "-c", "configs/ops.yaml"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for env in (base, dead)]
    results = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 2, err[-2000:]
        lines = [x for x in err.strip().splitlines() if x.startswith("ae-anomaly: error:")]
        assert len(lines) == 1, err[-2000:]
    assert "PREFECT_API_URL is not set" in results[0][1]
    assert "prefect server start --host 127.0.0.1" in results[0][1]
    assert "does not answer" in results[1][1]
