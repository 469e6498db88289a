"""Registry promotion and rollback on a real MLflow store: gates, aliases, recorded
decisions, the CLI, scoring with the new champion, and the training flow's auto-promotion."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from ae_anomaly import cli
from ae_anomaly.tracking import Tracker
from ae_anomaly.tracking.promotion import CHALLENGER, PREVIOUS


@pytest.fixture(scope="module")
def registry(tmp_path_factory, ops, _quiet_env):
    """One model name with v1 (champion), v2 (another seed), v3 (one metric fewer)."""
    root = tmp_path_factory.mktemp("registry")
    v1 = ops.train_and_register(root, "ops-promo", seed=0)
    ops.train_and_register(root, "ops-promo", seed=1, epochs=3)
    ops.train_and_register(root, "ops-promo", seed=2, n_metrics=3)
    return v1


def _aliases(tracker: Tracker, name: str, champion: str, challenger: str | None) -> None:
    client = tracker.client
    for alias in (PREVIOUS, CHALLENGER):
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass
    tracker.set_alias("champion", champion, name)
    if challenger:
        tracker.set_alias(CHALLENGER, challenger, name)


def _config(ops, registry, tmp_path: Path, labelled: bool, **promotion) -> Path:
    frame = registry.data.score.copy()
    if labelled:
        frame["label"] = registry.data.labels
    frame.to_csv(tmp_path / "eval.csv", index=False)
    raw = registry.config(promotion={"eval_data": str(tmp_path / "eval.csv"), **promotion},
                          sink={"url": f"sqlite:///{tmp_path}/a.db"})
    return ops.write_config(tmp_path / "cfg.yaml", raw)


def _tags(tracker: Tracker, name: str, version: str) -> dict[str, str]:
    return dict(tracker.client.get_model_version(name, version).tags)


def test_promote_records_decision_scoring_uses_it_and_rollback_restores(
        registry, ops, tmp_path, capsys):
    cfg = _config(ops, registry, tmp_path, labelled=True, tolerance=1.0)
    tracker = Tracker(_tracking(registry))
    name = registry.name
    _aliases(tracker, name, champion="1", challenger="2")

    assert cli.main(["promote", "-c", str(cfg), "--name", name]) == 0
    out = capsys.readouterr().out
    assert "PROMOTED: champion -> v2 (previous: v1)" in out
    for gate in ("feature_schema", "calibration_size", "alert_rate", "quality (auc_pr)",
                 "score_shift"):
        assert gate in out
    assert tracker.alias_version("champion", name) == "2"
    assert tracker.alias_version(PREVIOUS, name) == "1"
    assert tracker.alias_version(CHALLENGER, name) is None
    tags = _tags(tracker, name, "2")
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.compared_to"] == "1"
    assert tags["promotion.gate.quality"] == "pass" and "promotion.auc_pr" in tags
    run = tracker.client.get_run(tags["promotion.run_id"])
    assert run.data.tags["ae_anomaly.job"] == "promote"
    assert {"challenger.alert_rate", "champion.alert_rate", "challenger.quality"} <= set(
        run.data.metrics)
    assert _tags(tracker, name, "1")["promotion.replaced_by"] == "2"

    # Scheduled scoring resolves @champion at run start and records the version it used.
    url = f"sqlite:///{tmp_path}/scored.db"
    ops.drop(tmp_path / "landing", "d.csv", registry.data.score)
    ops.score_inprocess(ops.folder_config(registry, tmp_path, url))
    assert set(ops.read_events(url).model_version) == {"2"}

    assert cli.main(["rollback", "-c", str(cfg), "--name", name]) == 0
    assert "champion v2 -> v1" in capsys.readouterr().out
    assert tracker.alias_version("champion", name) == "1"
    assert tracker.alias_version(PREVIOUS, name) is None
    assert "rollback.demoted_at" in _tags(tracker, name, "2")
    # Nothing left to roll back to: one line on stderr, exit 2.
    assert cli.main(["rollback", "-c", str(cfg), "--name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ae-anomaly: error:") and "previous" in err and "\n" not in err


def _tracking(registry):
    from ae_anomaly.config import TrackingConfig

    return TrackingConfig(**registry.tracking)


def test_challenger_with_another_feature_schema_is_rejected(registry, ops, tmp_path, capsys):
    cfg = _config(ops, registry, tmp_path, labelled=False)
    tracker = Tracker(_tracking(registry))
    name = registry.name
    _aliases(tracker, name, champion="1", challenger="3")
    assert cli.main(["promote", "-c", str(cfg), "--name", name]) == 1
    out = capsys.readouterr().out
    assert "REJECTED: champion unchanged" in out
    line = next(x for x in out.splitlines() if x.startswith("feature_schema"))
    assert "FAIL" in line and "different metrics" in line
    assert tracker.alias_version("champion", name) == "1"
    assert tracker.alias_version(CHALLENGER, name) == "3"
    tags = _tags(tracker, name, "3")
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.gate.feature_schema"] == "fail"


def test_unlabelled_window_uses_alert_budget_and_counts(registry, ops, tmp_path, capsys):
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config

    # a budget nobody meets: the alert rate is then judged against the champion's
    cfg_path = _config(ops, registry, tmp_path, labelled=False, max_alert_rate=1e-9,
                       alert_rate_tolerance=0.0)
    cfg = load_config(cfg_path)
    tracker = Tracker(cfg.tracking)
    name = registry.name
    _aliases(tracker, name, champion="1", challenger="2")
    decision = pipeline.promote(cfg, tracker, name)
    gates = {g.name: g for g in decision.gates}
    assert not decision.labelled and "alert_count" in gates and "quality (auc_pr)" not in gates
    assert decision.challenger is not None and decision.champion is not None
    assert gates["alert_rate"].passed == (
        decision.challenger.alert_rate <= decision.champion.alert_rate)
    assert "champion + tolerance" in gates["alert_rate"].limit
    assert decision.promoted == all(g.passed for g in decision.gates)
    if decision.promoted:
        _aliases(tracker, name, champion="1", challenger=None)
    assert tracker.alias_version("champion", name) == "1"
    assert decision.challenger is not None and decision.challenger.n_steps == len(
        registry.data.score)


def test_training_flow_registers_challengers_and_auto_promotes(ops, tmp_path, prefect_harness):
    from ae_anomaly.config import AppConfig
    from ae_anomaly.data.synthetic import generate_server_metrics
    from ae_anomaly_flows.train import train_flow

    raw = ops.tiny()
    raw["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                       "artifact_location": str(tmp_path / "mlartifacts"),
                       "experiment": "auto", "registered_model": "ops-auto"}
    cfg0 = AppConfig.model_validate(raw)
    gen = generate_server_metrics(cfg0.data.synthetic)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    gen.train.to_csv(data_dir / "train.csv", index=False)
    gen.score.assign(label=gen.labels).to_csv(data_dir / "eval.csv", index=False)
    raw["data"]["train"] = str(data_dir / "train.csv")
    raw["promotion"].update(auto=True, eval_data=str(data_dir / "eval.csv"), tolerance=1.0)
    cfg = ops.write_config(tmp_path / "cfg.yaml", raw)

    first = train_flow(str(cfg))
    assert first["champion_set"] and first["promotion"] is None
    tracker = Tracker(cfg0.tracking)
    assert tracker.alias_version("champion", "ops-auto") == "1"
    assert tracker.alias_version(CHALLENGER, "ops-auto") == "1"
    second = train_flow(str(cfg), ["training.seed=1"])
    assert second["model_version"] == "2" and not second["champion_set"]
    assert second["promotion"] is not None
    assert "challenger v2 vs champion v1" in second["promotion"]["table"]
    expected = "2" if second["promotion"]["promoted"] else "1"
    assert tracker.alias_version("champion", "ops-auto") == expected
    assert _tags(tracker, "ops-auto", "2")["promotion.decision"] in ("promoted", "rejected")


def test_a_re_registered_champion_always_passes(registry, ops, tmp_path):
    """A copy of the champion passes every gate, even with budgets the champion itself
    misses on a window full of anomalies (the demo's situation)."""
    from ae_anomaly import pipeline
    from ae_anomaly.config import load_config
    from ae_anomaly.tracking.promotion import load_version

    cfg = load_config(_config(ops, registry, tmp_path, labelled=False, max_alert_rate=1e-9,
                              alert_rate_tolerance=0.0, max_score_shift=1e-9,
                              score_shift_tolerance=0.0, min_calibration=10**9,
                              max_alert_increase=0.0))
    tracker = Tracker(cfg.tracking)
    name = registry.name
    det, _ = load_version(tracker, name, "1")
    run_id = tracker.start_run("re-register")
    ref = tracker.log_detector(run_id, det, registry.data.train)
    tracker.end_run(run_id)
    _aliases(tracker, name, champion="1", challenger=ref.version)
    decision = pipeline.promote(cfg, tracker, name)
    assert decision.promoted, decision.table()
    assert tracker.alias_version("champion", name) == ref.version
    _aliases(tracker, name, champion="1", challenger=None)
