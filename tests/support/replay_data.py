"""Tiny labelled data in the SMD layout for replay tests (train/, test/, test_label/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ae_anomaly.config import SyntheticConfig
from ae_anomaly.data.synthetic import generate_server_metrics


def write_smd_like(folder: Path, n_entities: int = 1, n_metrics: int = 3,
                   train_days: float = 0.5, score_days: float = 0.5,
                   anomalies: int = 4, seed: int = 5) -> list[str]:
    """Write ``generate_server_metrics`` output as SMD files (no header, no timestamp,
    one row a minute); returns the machine names."""
    data = generate_server_metrics(SyntheticConfig(
        n_entities=n_entities, n_metrics=n_metrics, train_days=train_days,
        score_days=score_days, anomalies_per_entity=anomalies, seed=seed))
    names = []
    for sub in ("train", "test", "test_label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    metrics = [c for c in data.train.columns if c not in ("timestamp", "entity")]
    for i, ent in enumerate(sorted(data.train.entity.unique())):
        name = f"machine-9-{i + 1}"
        tr = data.train[data.train.entity == ent][metrics].to_numpy()
        mask = (data.score.entity == ent).to_numpy()
        te = data.score[mask][metrics].to_numpy()
        np.savetxt(folder / "train" / f"{name}.txt", tr, delimiter=",", fmt="%.6f")
        np.savetxt(folder / "test" / f"{name}.txt", te, delimiter=",", fmt="%.6f")
        np.savetxt(folder / "test_label" / f"{name}.txt", data.labels[mask].astype(int),
                   fmt="%d")
        names.append(name)
    return names
