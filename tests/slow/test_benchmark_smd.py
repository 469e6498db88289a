"""The benchmark on one real SMD machine (../shared/data/smd), 1 epoch: the JSON schema."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ae_anomaly.cli import main
from ae_anomaly.evaluation.benchmark import RECORD_KEYS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMD = REPO.parent / "shared" / "data" / "smd"


@pytest.fixture(scope="module")
def smd_dir() -> Path:
    if not (SMD / "train" / "machine-1-2.txt").is_file():
        pytest.skip(f"real SMD data not found at {SMD} (the shared data folder beside the "
                    "repository, ../shared/data/smd)")
    return SMD


def test_benchmark_one_real_machine(smd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "smd.json"
    rc = main(["benchmark", "--dataset", "smd", "--data-dir", str(smd_dir),
               "--entities", "machine-1-2", "--models", "conv_ae,pca,random", "--seeds", "0",
               "--calibration", "conformal,k_sigma", "--alphas", "0.01",
               "--set", "training.epochs=1", "--set", "window.train_stride=8",
               "--no-progress", "--output", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert {r["model"] for r in data["records"]} == {"conv_ae", "pca", "random"}
    for rec in data["records"]:
        assert [k for k in RECORD_KEYS if k not in rec] == []
        assert rec["entity"] == "machine-1-2" and rec["seed"] == 0
        assert rec["n_test"] == 23694
        for key in ("auc_roc", "auc_pr", "f1", "f1_pa", "best_f1", "far_normal", "far_check"):
            assert rec[key] is not None and math.isfinite(rec[key]), key
    summ = data["summary"]
    assert summ["random"]["f1"] <= 0.05  # the harness's own sanity check
    assert summ["pca"]["auc_pr"] > 3 * summ["random"]["auc_pr"]
    assert set(summ["conv_ae"]["calibrations"]) == {"conformal@0.01", "k_sigma@0.01"}
