"""Plain webhooks: the Alertmanager v4 payload and the Slack message, HMAC-signed; the CLI's
test alert with --set alerts.webhook_url; a failed scoring run alerts about itself."""

from __future__ import annotations

from datetime import datetime

import pytest

from ae_anomaly import cli
from ae_anomaly.alerts.channels import verify_signature
from ae_anomaly.alerts.dispatcher import Dispatcher
from ae_anomaly.config import AlertsConfig
from ae_anomaly.sinks import SqlSink
from tests.support.alerting import Receiver, record

T0 = datetime(2026, 3, 1, 12)


@pytest.fixture
def receivers():
    hook, slack = Receiver().start(), Receiver().start()
    yield hook, slack
    hook.stop()
    slack.stop()


def test_webhook_and_slack_payloads_are_signed(receivers, tmp_path, monkeypatch):
    hook, slack = receivers
    monkeypatch.setenv("HOOK_KEY", "s3cret")
    url = f"sqlite:///{tmp_path}/w.db"
    cfg = AlertsConfig(webhook_url=hook.url, slack_webhook_url=slack.url,
                       webhook_secret_env="HOOK_KEY", labels={"team": "sre"})
    SqlSink(url, outbox=True).write([record("e1", T0, severity=6, is_open=True)])
    report = Dispatcher(cfg, url).run_once()
    assert report.channels["webhook"].sent == 1 and report.channels["slack"].sent == 1
    body = hook.bodies()[0]
    assert {"version", "groupKey", "status", "receiver", "groupLabels", "commonLabels",
            "commonAnnotations", "externalURL", "alerts", "truncatedAlerts"} <= set(body)
    alert = body["alerts"][0]
    assert alert["labels"] == {"team": "sre", "alertname": "AeAnomalyEvent",
                               "entity": "web-1", "model": "m", "model_version": "1",
                               "event_id": "e1", "severity": "critical"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["fingerprint"]
    assert "cpu_util 70%" in alert["annotations"]["top_channels"]
    for post in (hook.posts[0], slack.posts[0]):
        h = post["headers"]
        assert verify_signature(b"s3cret", post["raw"], h["x-ae-anomaly-timestamp"],
                                h["x-ae-anomaly-signature"])
        assert not verify_signature(b"wrong", post["raw"], h["x-ae-anomaly-timestamp"],
                                    h["x-ae-anomaly-signature"])
    msg = slack.bodies()[0]
    assert "[CRITICAL]" in msg["text"] and "web-1" in msg["text"]
    assert "/events/e1|" in msg["blocks"][0]["text"]["text"]


def test_cli_test_alert_with_set_webhook_url(receivers, tmp_path, capsys):
    hook, _ = receivers
    args = ["--set", f"sink.url=sqlite:///{tmp_path}/t.db",
            "--set", f"alerts.webhook_url={hook.url}"]
    assert cli.main(["alerts", "test", *args]) == 0
    assert hook.bodies()[0]["alerts"][0]["labels"]["alertname"] == "AeAnomalyTest"
    capsys.readouterr()
    assert cli.main(["alerts", *args]) == 0
    assert "webhook:sent" in capsys.readouterr().out
    hook.status = 404  # a receiver that refuses: parked, listed with the reason, exit 1
    assert cli.main(["alerts", "test", *args]) == 1
    capsys.readouterr()
    assert cli.main(["alerts", "--status", "parked", *args]) == 0
    assert "HTTP 404" in capsys.readouterr().out


def test_failed_run_sends_an_operational_alert(receivers, tmp_path, prefect_harness):
    from ae_anomaly_flows.score import score_flow

    hook, _ = receivers
    overrides = [f"sink.url=sqlite:///{tmp_path}/f.db", f"alerts.webhook_url={hook.url}",
                 f"tracking.tracking_uri=sqlite:///{tmp_path}/empty-mlflow.db",
                 "tracking.registered_model=no-such-model"]
    with pytest.raises(Exception):  # noqa: B017 - whatever the missing model raises
        score_flow(None, overrides)
    alert = hook.bodies()[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "AeAnomalyRunFailed"
    assert alert["labels"]["entity"] == "manual"
    assert "failed" in alert["annotations"]["summary"]
