"""Running the flows' tasks on Dask (``execution.backend: dask``, docs/scale.md).

The score and train flows stay where they are started (the Prefect worker, ``ae-anomaly
serve`` or the CLI); with the Dask backend they hand their heavy part to a sub-flow whose
task runner is prefect-dask's ``DaskTaskRunner``:

* scheduled scoring: one ``score-shard`` task per shard of entities
  (:func:`ae_anomaly.fleet.split_shards`); each loads the run's pinned model version from
  the registry on its worker and scores its entities from their watermarks;
* training: one ``train-on-worker`` task that reads the data, fits and registers there.

Tasks receive the config file and overrides, the model's name and version, entity names and
the job id: never frames or models (the scheduler keeps task inputs and results in memory).
A shard lost with its worker is run again by Dask; the watermarks and the idempotent sink
make the re-run write the same table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from ae_anomaly import fleet
from ae_anomaly.config import AppConfig, ExecutionConfig, resolve_config_path
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.incremental import IncrementResult
from ae_anomaly.sources import is_transient

# The flow and task objects below travel to the workers by value (they are small), so a
# worker needs ae_anomaly installed but not this package: what they call is ae_anomaly's.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def is_dask(cfg: AppConfig) -> bool:
    """Whether the configuration runs the flows' tasks on Dask."""
    return cfg.execution.backend == "dask"


def dask_task_runner(execution: ExecutionConfig) -> DaskTaskRunner:
    """The task runner: the scheduler at ``execution.address``, else a local cluster of
    ``execution.workers`` processes started for the run (and stopped after it)."""
    if execution.address:
        return DaskTaskRunner(address=execution.address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": execution.workers, "threads_per_worker": execution.threads_per_worker,
        "processes": True, "dashboard_address": None})


def config_for_workers(config: str | None) -> str | None:
    """The config file as an absolute path (a worker's working folder may differ)."""
    return None if config is None else str(Path(resolve_config_path(config)).resolve())


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a shard only for transient errors (database busy or unreachable)."""
    try:
        state.result()
    except BaseException as err:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(err)
    return False


score_shard = task(fleet.score_shard, name="score-shard", cache_policy=NO_CACHE,
                   task_run_name="score-shard-{entities[0]}")
train_on_worker = task(fleet.train_shard, name="train-on-worker", cache_policy=NO_CACHE)


@flow(name="ae-anomaly-score-shards")
def score_shards(config: str | None, overrides: list[str] | None, model_name: str,
                 model_version: str, shards: list[list[str]], job_id: str,
                 backfill: tuple[str | None, str | None] | None,
                 retries: int = 0, retry_delay_seconds: float = 0.0) -> list[IncrementResult]:
    """Map ``score-shard`` over the shards; waits for all, then fails if any failed."""
    delays = [retry_delay_seconds * 2**i for i in range(retries)] or 0
    mapped = score_shard.with_options(
        retries=retries, retry_delay_seconds=delays, retry_condition_fn=_retry_transient,
    ).map(unmapped(config), unmapped(overrides), unmapped(model_name),
          unmapped(model_version), shards, unmapped(job_id), unmapped(backfill))
    return mapped.result()


@flow(name="ae-anomaly-train-on-dask")
def train_remote(config: str | None, overrides: list[str] | None) -> fleet.TrainSummary:
    """Run the whole fit-log-register job as one task on a Dask worker."""
    return train_on_worker.submit(config, overrides).result()


def run_score_shards(cfg: AppConfig, config: str | None, overrides: list[str] | None,
                     model: ModelRef, job_id: str,
                     backfill: tuple[str | None, str | None] | None) -> IncrementResult:
    """Score every entity of the incremental source in shards on Dask.

    The model version is the one the flow resolved at its start (``model``): every shard
    scores with it, even if ``champion`` moves meanwhile.
    """
    shards = fleet.split_shards(fleet.list_entities(cfg), cfg.execution)
    if not shards:
        return IncrementResult(model)
    runner = dask_task_runner(cfg.execution)
    parts = score_shards.with_options(task_runner=runner)(
        config_for_workers(config), overrides, model.name, model.version, shards, job_id,
        backfill, cfg.source.retries, cfg.source.retry_delay_seconds)
    return fleet.merge_results(model, parts)


def run_training(cfg: AppConfig, config: str | None,
                 overrides: list[str] | None) -> fleet.TrainSummary:
    """Train and register on a Dask worker; returns what was registered."""
    runner = dask_task_runner(cfg.execution)
    return train_remote.with_options(task_runner=runner)(config_for_workers(config), overrides)
