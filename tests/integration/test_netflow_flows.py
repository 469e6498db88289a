"""Network flows through the same Prefect flows, registry and table as server metrics.

Per-host mode (flows aggregated into per-host series, a windowed autoencoder) and row mode
(one score per flow, a row autoencoder) are each trained, registered and scored by the real
``ae-anomaly-train`` / ``ae-anomaly-score`` flows against a real MLflow store, writing their
events into the anomaly table; re-scoring writes nothing new.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ae_anomaly.config import load_config
from ae_anomaly.data.synthetic_netflow import generate_netflow
from ae_anomaly.sinks import open_sink
from ae_anomaly.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "netflow_demo.yaml"


NETFLOW = REPO / "configs" / "datasets" / "netflow.yaml"


@pytest.mark.parametrize(("mode", "kind", "config", "extra"), [
    ("aggregate", "series_autoencoder", str(CONFIG), ["window.length=16"]),
    ("rows", "row_autoencoder", None, [f"data.netflow={NETFLOW}", "model.name=dense_ae"]),
])
def test_flows_train_register_and_score_through_prefect(
        mode: str, kind: str, config: str | None, extra: list[str], home: Path, tmp_path: Path,
        prefect_harness) -> None:
    from ae_anomaly_flows.score import score_flow
    from ae_anomaly_flows.train import train_flow

    flows, _ = generate_netflow(n_hosts=3, days=1.0, seed=6, attacks=("dos", "port_scan"),
                                attack_count=2, clean_fraction=0.5)
    split = pd.Timestamp("2024-01-01 12:00")
    train, score = tmp_path / "train.csv", tmp_path / "score.csv"
    flows[flows["ts"] < split].to_csv(train, index=False)
    flows[flows["ts"] >= split].to_csv(score, index=False)
    overrides = [f"data.train={train}", f"data.score={score}", f"data.netflow_mode={mode}",
                 "training.epochs=2", "training.progress=false",
                 f"tracking.registered_model=netflow-{mode}", *extra]
    out = train_flow(config, overrides)
    assert out["model_version"] == "1" and out["champion_set"]
    cfg = load_config(config, overrides)
    det, ref = Tracker(cfg.tracking).load()
    assert det.kind == kind and ref.version == "1"

    first = score_flow(config, overrides)
    assert first["events"] > 0 and first["rows_written"] == first["events"]
    table = open_sink(cfg).read()
    mine = table[table["model_name"] == f"netflow-{mode}"]
    assert len(mine) == first["events"]
    assert set(mine["entity"]) <= {f"10.0.0.{i}" for i in range(1, 4)}
    again = score_flow(config, overrides)
    assert again["rows_written"] == 0
    assert len(open_sink(cfg).read()) == len(table)
