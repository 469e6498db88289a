"""The light CLI: `events` filters and JSON, without importing torch, MLflow or Prefect;
`-v` after the command; per-command examples in --help; --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from ae_anomaly.sinks import EventQuery, EventRecord, SqlSink

HEAVY = ("torch", "mlflow", "prefect")


def _record(i: int, entity: str, severity: float, end: datetime, is_open: bool = False,
            model: str = "m") -> EventRecord:
    return EventRecord(
        event_id=f"e{i}", entity=entity, start_ts=end.replace(minute=0), end_ts=end,
        peak_ts=end, peak_score=severity, threshold=1.0, severity=severity, p_value=None,
        n_points=3, top_channels={"cpu": 1.0}, model_name=model, model_version="1",
        run_id="r", scored_at=end, is_open=is_open)


@pytest.fixture
def table(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/events.db"
    SqlSink(url).write([
        _record(1, "server-01", 1.5, datetime(2026, 1, 1, 1, 5)),
        _record(2, "server-02", 4.0, datetime(2026, 1, 2, 1, 5), is_open=True),
        _record(3, "server-01", 8.0, datetime(2026, 1, 3, 1, 5), model="other"),
    ])
    return url


def _cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m",
           "ae_anomaly.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_query_filters_in_the_sink(table: str) -> None:
    sink = SqlSink(table)
    assert list(sink.read(EventQuery(entity="server-01"))["event_id"]) == ["e3", "e1"]
    assert list(sink.read(EventQuery(min_severity=2))["event_id"]) == ["e3", "e2"]
    assert list(sink.read(EventQuery(open_only=True))["event_id"]) == ["e2"]
    assert list(sink.read(EventQuery(model="other"))["event_id"]) == ["e3"]
    assert list(sink.read(EventQuery(since=datetime(2026, 1, 2)))["event_id"]) == ["e3", "e2"]
    assert len(sink.read(EventQuery(limit=1))) == 1
    both = EventQuery(entity="server-01", min_severity=2)
    assert list(sink.read(replace(both, limit=5))["event_id"]) == ["e3"]


def test_events_json_filters_without_heavy_imports(table: str) -> None:
    res = _cli("events", "--set", f"sink.url={table}", "--json", "--min-severity", "2",
               "--since", "2026-01-01T12:00", importtime=True)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["event_id"] for r in rows] == ["e3", "e2"]
    assert rows[0]["start_ts"].startswith("2026-01-03T01:00")
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no -X importtime output"
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_events_table_output_and_no_match(table: str) -> None:
    res = _cli("events", "--set", f"sink.url={table}", "--entity", "server-02", "--open")
    assert res.returncode == 0 and "server-02" in res.stdout and "server-01" not in res.stdout
    res = _cli("events", "--set", f"sink.url={table}", "--entity", "nobody")
    assert res.returncode == 0 and "no events match" in res.stdout


def test_bad_since_is_one_line(table: str) -> None:
    res = _cli("events", "--set", f"sink.url={table}", "--since", "yesterday-ish")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--since" in res.stderr
    assert "Traceback" not in res.stderr


def test_verbose_after_the_command_examples_and_version(table: str) -> None:
    res = _cli("events", "-v", "--set", f"sink.url={table}", "--json")
    assert res.returncode == 0, res.stderr
    helps = {cmd: _cli(cmd, "--help").stdout for cmd in ("train", "score", "events")}
    for cmd, text in helps.items():
        assert "examples:" in text and f"ae-anomaly {cmd}" in text.split("examples:")[1]
    assert len({t.split("examples:")[1] for t in helps.values()}) == 3
    res = _cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("ae-anomaly ")
    assert "90%%" not in _cli("calibrate", "--help").stdout


def test_rollback_and_config_import_neither_torch_nor_prefect(tmp_path: Path) -> None:
    """`rollback` needs the MLflow registry only; `config` needs nothing heavy at all."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    res = _cli("rollback", "--set", f"tracking.tracking_uri={store}",
               "--set", f"tracking.artifact_location={tmp_path}/art", importtime=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr  # no model registered yet
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "prefect" not in imported
    res = _cli("config", importtime=True)
    assert res.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_alerts_list_imports_nothing_heavy(table: str) -> None:
    res = _cli("alerts", "list", "--set", f"sink.url={table}", importtime=True)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
