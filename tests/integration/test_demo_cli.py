"""`ae-anomaly demo` end to end (tiny data, the real flows and stores): it prints its stages,
shows one promotion, scores itself against the injected anomalies and ends with next steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_prints_stages_promotion_self_score_and_next_steps(tmp_path: Path) -> None:
    env = {**os.environ, "AE_ANOMALY_HOME": str(tmp_path / "home"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    cmd = [sys.executable, "-m", "ae_anomaly.cli", "demo", "-c", "configs/demo.yaml",
           "--no-netflow", "--set", "data.synthetic.train_days=1.5",
           "--set", "data.synthetic.score_days=0.5", "--set", "data.synthetic.n_entities=2",
           "--set", "data.synthetic.anomalies_per_entity=2", "--set", "training.epochs=2",
           "--set", "window.length=16", "--set", "training.progress=false",
           "--set", "promotion.min_calibration=10"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in out
    assert out.count("done in") == 5
    assert "challenger v2 vs champion v1" in out
    assert ("PROMOTED" in out) != ("REJECTED" in out)
    assert "server metrics: found " in out and " of 4 injected" in out
    assert "normal steps" in out and "against the budget alpha" in out
    assert "next:" in out and "ae-anomaly dashboard" in out
    assert "Traceback" not in res.stderr
