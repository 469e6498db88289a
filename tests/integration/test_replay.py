"""``ae-anomaly replay`` end to end on tiny synthetic data in the SMD layout: MLflow
registry, promotion gates, incremental scoring into the SQLite anomaly table, static and
adaptive thresholds, the results file, and a resumed re-run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from replay_data import write_smd_like  # noqa: E402

from ae_anomaly.cli import main  # noqa: E402
from ae_anomaly.evaluation.benchmark import load_results  # noqa: E402

# 720 steps of history, then 720 steps replayed in ticks of 120; one retrain at step
# 1200, judged by the gates on the newest 300 steps of the source.
ARGS = ["--set", "replay.score_every=120", "--set", "replay.retrain_every=480",
        "--set", "replay.train_window=600", "--set", "promotion.eval_steps=300",
        "--set", "promotion.min_calibration=50", "--set", "calibration.alpha=0.01",
        "--set", "events.merge_gap=3", "--set", "postprocess.smooth=1"]


def test_replay_runs_through_registry_and_sink_and_resumes(tmp_path, capsys):
    data = tmp_path / "smd"
    (machine,) = write_smd_like(data)
    out = tmp_path / "replay.json"
    argv = ["replay", "--dataset", "smd", "--data-dir", str(data), "--models", "pca",
            "--variants", "static,aci", "--seeds", "0", "--output", str(out),
            "--report", str(tmp_path / "replay.md"), "--no-progress", *ARGS]
    assert main(argv) == 0
    res = load_results(out)
    assert res["meta"]["kind"] == "replay"
    recs = res["records"]
    assert [r["model"] for r in recs] == ["pca/static", "pca/aci"]
    for r in recs:
        assert r["entity"] == machine and r["seed"] == 0 and r["alpha"] == 0.01
        for key in ("f1", "precision", "recall", "auc_pr", "far_normal", "event_recall",
                    "event_precision", "delay_mean", "n_events", "budget_per_day"):
            assert key in r
        assert math.isfinite(r["events_per_day"]) and r["events_per_day"] >= 0
        assert math.isfinite(r["auc_pr"]) and 0 <= r["far_normal"] <= 1
        assert r["n_ticks"] == 6 and r["n_test"] == 720
        (d,) = r["decisions"]  # one retrain, one promotion decision
        assert d["step"] == 1200 and d["challenger"] == "2" and d["champion_before"] == "1"
        assert isinstance(d["promoted"], bool) and "alert_rate" in d["gates"]
        assert d["champion_after"] == ("2" if d["promoted"] else "1")
        assert len(r["far_normal_daily"]) == 1
    assert set(res["summary"]) == {"pca/static", "pca/aci"}
    report = (tmp_path / "replay.md").read_text()
    assert "events/entity-day" in report and (tmp_path / "replay.png").is_file()
    # The benchmark's report renders a replay file, with the replay's tables.
    from ae_anomaly.evaluation.report import render

    assert "Retrain and promotion decisions" in render([out])
    capsys.readouterr()

    # The same command again: every cell is in the file, nothing is recomputed.
    assert main(argv) == 0
    again = load_results(out)
    assert again["meta"]["runs"][-1]["cells_computed"] == 0
    assert json.dumps(again["records"]) == json.dumps(recs)

    # Other replay settings on the same file: refused, nothing recomputed.
    other = [a if a != "replay.score_every=120" else "replay.score_every=60" for a in argv]
    assert main(other) == 2
    assert "other settings" in capsys.readouterr().err
    assert load_results(out)["meta"]["runs"] == again["meta"]["runs"]
