"""``/metrics`` on the dashboard app: parses with the Prometheus text parser and carries the
documented series; a real Prometheus (Debian's package) scrapes it in a slow test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ae_anomaly.alerts.dispatcher import Dispatcher
from ae_anomaly.alerts.ops import record_run
from ae_anomaly.config import AppConfig
from ae_anomaly.dashboard.app import create_app
from ae_anomaly.dashboard.security import DashboardSecurity
from ae_anomaly.db import utcnow
from ae_anomaly.records import Watermark
from ae_anomaly.sinks import SqlSink
from tests.support.alerting import Receiver, free_port, prometheus_bin, record, wait_for

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "alerting.md"
GRAFANA = REPO / "docker" / "grafana"
T0 = datetime(2026, 3, 1, 12)


def _setup(url: str, hook: str, tmp_path: Path) -> AppConfig:
    cfg = AppConfig.model_validate({
        "sink": {"url": url},
        "source": {"kind": "folder", "path": str(tmp_path / "landing")},
        "alerts": {"webhook_url": hook, "retry_base_seconds": 0}})
    (tmp_path / "landing" / "quarantine").mkdir(parents=True)
    (tmp_path / "landing" / "quarantine" / "bad.csv").write_text("x")
    (tmp_path / "landing" / "quarantine" / "bad.csv.reason.txt").write_text("why")
    sink = SqlSink(url, outbox=True)
    sink.write([record("a", T0, is_open=True), record("b", T0 + timedelta(hours=1))])
    now = utcnow()
    sink.write_increment("m", "web-1", [], T0 + timedelta(days=1), None,
                         Watermark(resume_after=now, scored_through=now - timedelta(hours=1)))
    record_run(cfg, "score", ok=True, summary={"events": 2})
    record_run(cfg, "score", ok=False, error="boom", run_id="r1")
    return cfg


def grafana_exprs() -> list[str]:
    """The PromQL of the pipeline dashboard's panels and of the Grafana alert rules."""
    dash = json.loads((GRAFANA / "dashboards" / "ae-anomaly-pipeline.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load((GRAFANA / "provisioning" / "alerting" /
                            "ae-anomaly-rules.yaml").read_text())
    exprs += [d["model"]["expr"] for g in rules["groups"] for r in g["rules"]
              for d in r["data"] if "expr" in d["model"]]
    return exprs


def test_grafana_panels_and_rules_use_the_documented_series():
    documented = set(re.findall(r"`(ae_anomaly_[a-z_]+)", DOCS.read_text()))
    exprs = grafana_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(re.findall(r"ae_anomaly_[a-z_]+", expr))
        assert used and used <= documented, expr
    rules = yaml.safe_load((GRAFANA / "provisioning" / "alerting" /
                            "ae-anomaly-rules.yaml").read_text())
    for rule in rules["groups"][0]["rules"]:
        assert rule["data"][0]["datasourceUid"] == "ae-anomaly-prom"
        assert rule["condition"] == "C"


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_metrics_parse_and_carry_the_documented_series(tmp_path):
    receiver = Receiver().start()
    try:
        cfg = _setup(f"sqlite:///{tmp_path}/m.db", receiver.url, tmp_path)
        Dispatcher.from_config(cfg).run_once()
        with TestClient(create_app(cfg, compute_scores=False, security=DashboardSecurity(
                trusted_hosts=["testserver"]))) as c:
            resp = c.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        fams = _families(resp.text)
    finally:
        receiver.stop()
    documented = set(re.findall(r"`(ae_anomaly_[a-z_]+)", DOCS.read_text()))
    assert documented and documented <= set(fams), documented - set(fams)

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in fams[name] if all(s.labels.get(k) == v
                                                      for k, v in labels.items()))

    assert value("ae_anomaly_last_success_timestamp_seconds", deployment="score") > 0
    assert value("ae_anomaly_last_failure_timestamp_seconds", deployment="score") > 0
    assert 3500 < value("ae_anomaly_scoring_lag_seconds", model="m", entity="web-1") < 7200
    assert value("ae_anomaly_events", model="m") == 2
    assert value("ae_anomaly_open_events", model="m") == 1
    assert value("ae_anomaly_quarantined_files") == 1
    # Two events and the failed run's operational alert went out.
    assert value("ae_anomaly_alert_notifications", channel="webhook", status="sent") == 3
    assert value("ae_anomaly_alert_notifications", channel="webhook", status="pending") == 0
    assert value("ae_anomaly_alarm_rate", model="m") == 2


@pytest.mark.slow
@pytest.mark.skipif(prometheus_bin() is None and os.environ.get("CI", "").lower() != "true",
                    reason="prometheus not installed (scripts/run_tests.sh installs it)")
def test_prometheus_scrapes_the_dashboard(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    cfg = _setup(url, "http://127.0.0.1:9/unused", tmp_path)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    port, prom_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    dash = subprocess.Popen([sys.executable, "-m", "ae_anomaly.cli", "dashboard", "-c",
                            str(tmp_path / "cfg.yaml"), "--port", str(port), "--no-scores"],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    (tmp_path / "prom.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: ae-anomaly\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    prom = subprocess.Popen([prometheus_bin(), f"--config.file={tmp_path / 'prom.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(q: str) -> list:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{prom_port}/api/v1/query?query={q}", timeout=5) as r:
                return json.loads(r.read())["data"]["result"]
        except OSError:
            return []

    try:
        got = wait_for(lambda: query("ae_anomaly_events"), what="Prometheus to scrape")
        assert got[0]["metric"]["model"] == "m" and got[0]["value"][1] == "2"
        up = wait_for(lambda: query("up"), what="the up series")
        assert up[0]["value"][1] == "1"
        assert query("ae_anomaly_last_success_timestamp_seconds")
        # Every panel and alert-rule expression of the Grafana provisioning is valid PromQL
        # that Prometheus evaluates against the scraped series.
        for expr in grafana_exprs():
            q = urllib.parse.quote(expr)
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{prom_port}/api/v1/query?query={q}", timeout=5) as r:
                assert json.loads(r.read())["status"] == "success", expr
    finally:
        for p in (prom, dash):
            p.terminate()
            p.wait(30)
