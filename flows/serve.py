"""Deployments for the score and train flows, served by this process.

Run ``ae-anomaly serve -c configs/ops.yaml`` (or ``python -m ae_anomaly_flows.serve CONFIG``) with
``PREFECT_API_URL`` pointing at a Prefect server (``prefect server start --host
127.0.0.1``); the schedules come from the config's ``deployment`` section and every run
gets the config path and overrides as parameters. ``flows/prefect.yaml`` declares the same
deployments for a work pool (``prefect deploy``). See docs/operations.md.

With an alert channel configured, the serving process also runs the alert dispatcher in a
background thread (docs/alerting.md), so notifications are sent between runs too.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.runner import Runner

from ae_anomaly.alerts.dispatcher import start_background
from ae_anomaly.config import load_config
from ae_anomaly.errors import ConfigError
from ae_anomaly.secrets import mask_url, stash_secrets

from .score import score_flow
from .train import train_flow

START_SERVER = "prefect server start --host 127.0.0.1 --port 4200"


def build_deployments(config: str | None, overrides: list[str] | None = None) -> list[Any]:
    """The ``score`` and ``train`` deployments with their schedules and parameters."""
    cfg = load_config(config, overrides)
    # Runs start in their own processes: give them an absolute config path. Deployment
    # parameters are stored by the Prefect server: passwords in the overrides travel as
    # ${AE_ANOMALY_SECRET_<n>} references to this process's environment, which the runs
    # started by serve() inherit.
    params = {"config": str(Path(config).resolve()) if config else None,
              "overrides": stash_secrets(list(overrides or []))}
    dep = cfg.deployment
    limit = ConcurrencyLimitConfig(limit=dep.concurrency,
                                   collision_strategy=ConcurrencyLimitStrategy[
                                       dep.on_overlap.upper()])
    when: dict[str, Any] = (
        {"interval": timedelta(seconds=dep.score_interval_seconds)}
        if dep.score_interval_seconds else {"cron": dep.score_cron})
    return [
        score_flow.to_deployment(name="score", parameters=params, tags=["ae-anomaly"],
                                 concurrency_limit=limit,
                                 description="Score new data with @champion from the "
                                             "watermarks; write events.", **when),
        train_flow.to_deployment(name="train", cron=dep.train_cron, parameters=params,
                                 tags=["ae-anomaly"], concurrency_limit=limit,
                                 description="Train and register a challenger "
                                             "(promotion.auto: promote it)."),
    ]


def check_api() -> str:
    """The configured Prefect API URL, after checking that the server answers.

    Raises:
        ConfigError: no ``PREFECT_API_URL``, or the server does not answer.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(f"PREFECT_API_URL is not set: start a server ({START_SERVER}) and "
                          "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    with get_client(sync_client=True) as client:
        err = client.api_healthcheck()
    if err is not None:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"the Prefect API at {mask_url(url)} does not answer ({first}): is "
                          f"'{START_SERVER}' running?")
    return url


def serve_deployments(config: str | None, overrides: list[str] | None = None) -> None:
    """Register the deployments with the Prefect API and run them as they come due, until
    SIGINT (Ctrl-C) or SIGTERM: both stop it the same way (the runner's shutdown: runs it
    started are cancelled, the schedules paused; then the alert dispatcher stops)."""
    import asyncio

    from prefect.flows import _display_serve_start_message

    deployments = build_deployments(config, overrides)
    check_api()
    dispatcher = start_background(load_config(config, overrides))
    runner = _Runner(pause_on_shutdown=True)
    for dep in deployments:
        runner.add_deployment(dep)
    _display_serve_start_message(*deployments)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
    finally:
        if dispatcher is not None:
            dispatcher[1].set()


class _Runner(Runner):
    """Prefect's runner, with SIGTERM handled as Ctrl-C.

    Prefect 3.8's own SIGTERM handler calls the runner's synchronous ``stop()`` from the
    signal handler (its coroutine is never awaited) and exits at once, leaving the runs it
    started behind; raising ``KeyboardInterrupt`` instead takes the same shutdown path as
    Ctrl-C.
    """

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    import sys

    serve_deployments(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml", sys.argv[2:])
