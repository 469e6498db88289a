"""A fleet in shards: the work of one shard of entities, given paths and URIs only.

A distributed run (``execution.backend: dask``) cuts the source's entities into shards and
runs one task per shard on a worker. What a task receives is small and plain: the config
file and its overrides (read again on the worker), the registered model's name and version
(resolved once when the run starts, so every shard scores with the same version), the
shard's entity names and the job id. The worker loads the model from the registry itself
and scores its entities from their watermarks through the idempotent sink, each entity's
events and watermark in one transaction; a shard that dies half-way is re-run from the
watermarks without duplicates. Nothing here knows about Dask or Prefect.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ae_anomaly.config import AppConfig, ExecutionConfig, load_config
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementResult

log = logging.getLogger(__name__)


def split_shards(entities: list[str], execution: ExecutionConfig) -> list[list[str]]:
    """Cut ``entities`` into consecutive shards.

    ``execution.shard_size`` entities per shard when set, else ``execution.shards`` shards
    (default: one per ``execution.workers``), never more shards than entities. Shards differ
    in size by at most one entity.

    Args:
        entities: the entity names, in the source's order.
        execution: the ``execution`` section.

    Returns:
        The shards (no empty shard; none at all without entities).
    """
    if not entities:
        return []
    if execution.shard_size is not None:
        n = math.ceil(len(entities) / execution.shard_size)
    else:
        n = execution.shards or execution.workers
    n = max(1, min(n, len(entities)))
    size, extra = divmod(len(entities), n)
    shards, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        shards.append(entities[start:end])
        start = end
    return shards


def list_entities(cfg: AppConfig) -> list[str]:
    """The entities of the incremental source (``source.kind`` folder or sql)."""
    from ae_anomaly.sources import open_source

    return list(open_source(cfg).entities())


def score_shard(config: str | None, overrides: list[str] | None, model_name: str,
                model_version: str, entities: list[str], job_id: str,
                backfill: tuple[str | None, str | None] | None = None) -> IncrementResult:
    """Score one shard of entities incrementally (or re-score a range), on a worker.

    Loads the configuration and the pinned model version (``models:/<name>/<version>``) in
    this process, then runs :func:`ae_anomaly.pipeline.score_increment` for ``entities``.

    Args:
        config: the YAML config file (None: built-in defaults), as the flow received it.
        overrides: its ``key=value`` overrides.
        model_name: the registered model.
        model_version: the version every shard of the run uses.
        entities: this shard's entity names.
        job_id: the run's label (stored with the watermarks).
        backfill: ``(from, to)`` to re-score a range instead of scoring from watermarks.

    Returns:
        What the shard did, per entity (small: counts and watermarks, no data).
    """
    from ae_anomaly import pipeline
    from ae_anomaly.tracking import Tracker
    from ae_anomaly.tracking.promotion import load_version

    cfg = load_config(config, overrides)
    det, model = load_version(Tracker(cfg.tracking), model_name, model_version)
    log.info("shard of %d entities (%s .. %s) with %s v%s", len(entities), entities[0],
             entities[-1], model.name, model.version)
    return pipeline.score_increment(cfg, det, model, job_id, backfill, entities=entities)


def merge_results(model: ModelRef, parts: list[IncrementResult]) -> IncrementResult:
    """One run's result from its shards' results (entities in shard order)."""
    return IncrementResult(model, [e for part in parts for e in part.entities])


@dataclass(frozen=True)
class TrainSummary:
    """What a training job on a worker registered (small: no detector, no data)."""

    model: ModelRef
    champion_set: bool
    threshold: float
    calibration: dict[str, Any]
    epochs: int
    train_seconds: float


def train_shard(config: str | None, overrides: list[str] | None) -> TrainSummary:
    """Read the training data, fit, log and register a model version, on a worker.

    The same steps as :func:`ae_anomaly.api.train_and_register`, without promotion (the
    flow decides on promotion where it runs).
    """
    from ae_anomaly.api import train_and_register

    cfg = load_config(config, overrides)
    cfg.promotion.auto = False
    res = train_and_register(cfg)
    hist = res.detector.history_
    return TrainSummary(res.model, res.champion_set, res.threshold, res.calibration,
                        len(hist.train_loss), float(hist.seconds))
