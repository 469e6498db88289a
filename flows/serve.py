"""Cron deployments for the score and train flows, served by this process.

Run ``ae-anomaly serve`` (or ``python -m flows.serve``) with ``PREFECT_API_URL`` pointing
at a Prefect server; the schedules come from the config's ``deployment`` section.
"""

from __future__ import annotations

from typing import Any

from prefect import serve

from ae_anomaly.config import load_config
from flows.score import score_flow
from flows.train import train_flow


def build_deployments(config: str | None, overrides: list[str] | None = None) -> list[Any]:
    """The ``score`` and ``train`` deployments with their cron schedules and parameters."""
    cfg = load_config(config, overrides)
    params = {"config": config, "overrides": list(overrides or [])}
    return [
        score_flow.to_deployment(name="score", cron=cfg.deployment.score_cron,
                                 parameters=params, tags=["ae-anomaly"]),
        train_flow.to_deployment(name="train", cron=cfg.deployment.train_cron,
                                 parameters=params, tags=["ae-anomaly"]),
    ]


def serve_deployments(config: str | None, overrides: list[str] | None = None) -> None:
    """Register the deployments with the Prefect API and run them as they come due."""
    serve(*build_deployments(config, overrides))


if __name__ == "__main__":  # pragma: no cover
    import sys

    serve_deployments(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
