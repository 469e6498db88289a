"""The network-flow part of the demo: synthetic NetFlow -> per-host series -> events.

:func:`run_netflow_demo` generates seeded NetFlow records with injected attacks
(:func:`~ae_anomaly.data.synthetic_netflow.generate_netflow`), writes the clean period as the
training flows and the rest as the fresh flows, trains the configured detector (``conv_ae``
on per-host series in ``configs/netflow_demo.yaml``), scores the fresh flows and upserts the
events into the anomaly table. Sizes come from ``data.synthetic``: ``n_entities`` hosts,
``train_days`` of clean traffic followed by ``score_days`` with attacks, ``seed``.

No MLflow run is made: the demo's model is saved under ``<home>/netflow_demo/model`` and its
events carry ``model_name`` = the configured registered model name and
``model_version`` ``"demo"``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, state_home
from ae_anomaly.data.synthetic_netflow import generate_netflow
from ae_anomaly.events import Event
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.netflow import (
    NetflowScoreResult,
    fit_netflow_detector,
    load_netflow_dataset,
    load_netflow_training_frame,
    score_netflow_inputs,
    write_netflow_events,
)

log = logging.getLogger(__name__)

ATTACKS_FILE = "injected_attacks.csv"
START = "2024-01-01"


@dataclass
class NetflowDemoData:
    """Where the flow demo's generated files are."""

    train: Path
    score: Path
    attacks: Path
    table: pd.DataFrame = field(repr=False)

    def overrides(self) -> list[str]:
        """Config overrides pointing training and scoring at these files."""
        return [f"data.train={self.train}", f"data.score={self.score}"]


def write_netflow_demo_data(cfg: AppConfig, folder: Path | None = None) -> NetflowDemoData:
    """Generate synthetic NetFlow and write the clean and the attack period as CSV files.

    Writes ``train_flows.csv`` (the first ``train_days``, no attacks), ``fresh_flows.csv``
    (the following ``score_days`` with attacks) and ``injected_attacks.csv`` (one row per
    attack: ``entity, kind, start, end``) into ``folder`` (default ``<home>/netflow_demo``).
    """
    syn = cfg.data.synthetic
    folder = folder or state_home() / "netflow_demo"
    folder.mkdir(parents=True, exist_ok=True)
    days = syn.train_days + syn.score_days
    flows, attacks = generate_netflow(
        n_hosts=syn.n_entities,
        days=days,
        seed=syn.seed,
        start=START,
        clean_fraction=syn.train_days / days,
    )
    split = pd.Timestamp(START) + pd.Timedelta(days=syn.train_days)
    data = NetflowDemoData(
        folder / "train_flows.csv", folder / "fresh_flows.csv", folder / ATTACKS_FILE, attacks
    )
    flows[flows["ts"] < split].to_csv(data.train, index=False)
    flows[flows["ts"] >= split].to_csv(data.score, index=False)
    attacks.to_csv(data.attacks, index=False)
    log.info(
        "flow demo: %d training and %d fresh flows, %d attacks, in %s",
        int((flows["ts"] < split).sum()),
        int((flows["ts"] >= split).sum()),
        len(attacks),
        folder,
    )
    return data


def attack_recall(
    events: list[Event], attacks: pd.DataFrame, slack: pd.Timedelta | None = None
) -> dict[str, float]:
    """Share of injected attacks of each kind that an event of the same entity overlaps.

    Args:
        events: detected events (their ``entity``, ``start_ts``, ``end_ts``).
        attacks: one row per attack with ``entity, kind, start, end``.
        slack: widen each attack's span by this much on both sides (e.g. one interval, as
            aggregated series stamp an interval by its start).

    Returns:
        ``{kind: recall}`` for every kind in ``attacks``.
    """
    slack = pd.Timedelta(0) if slack is None else slack
    by_entity: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for ev in events:
        by_entity.setdefault(ev.entity, []).append(
            (pd.Timestamp(ev.start_ts), pd.Timestamp(ev.end_ts))
        )
    hits: dict[str, list[bool]] = {}
    for a in attacks.itertuples(index=False):
        lo, hi = pd.Timestamp(a.start) - slack, pd.Timestamp(a.end) + slack
        found = any(s <= hi and e >= lo for s, e in by_entity.get(str(a.entity), []))
        hits.setdefault(str(a.kind), []).append(found)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def run_netflow_demo(cfg: AppConfig, folder: Path | None = None) -> dict[str, Any]:
    """Generate flows, train on the clean period, score the attack period, write events.

    Args:
        cfg: the configuration (``configs/netflow_demo.yaml``): ``data.netflow`` names the flow
            description, ``data.netflow_mode`` the mode, ``data.synthetic`` the sizes.
        folder: where the generated files and the model go (default ``<home>/netflow_demo``).

    Returns:
        A summary: ``data`` (:class:`NetflowDemoData`), ``result`` (:class:`NetflowScoreResult`),
        ``rows_written``, ``recall`` (per attack kind), ``threshold``, ``train_seconds``,
        ``seconds`` and ``model_path``.
    """
    start = time.perf_counter()
    folder = folder or state_home() / "netflow_demo"
    data = write_netflow_demo_data(cfg, folder)
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"train": str(data.train), "score": str(data.score)})
        }
    )
    ds = load_netflow_dataset(cfg.data)
    det = fit_netflow_detector(cfg, load_netflow_training_frame(cfg))
    model_path = det.save(folder / "model")
    model = ModelRef(cfg.tracking.registered_model, "demo", "")
    result: NetflowScoreResult = score_netflow_inputs(cfg, det, model)
    written = write_netflow_events(cfg, result)
    slack = ds.aggregate.step if ds.aggregate is not None else pd.Timedelta(0)
    recall = attack_recall(result.events, data.table, slack)
    seconds = time.perf_counter() - start
    log.info(
        "flow demo: %d events (%d rows written), recall %s, %.1fs",
        len(result.records),
        written,
        recall,
        seconds,
    )
    return {
        "data": data,
        "result": result,
        "rows_written": written,
        "recall": recall,
        "threshold": det.threshold_,
        "train_seconds": det.history_.seconds,
        "seconds": seconds,
        "model_path": model_path,
    }
