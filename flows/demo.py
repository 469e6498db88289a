"""Demo flow: generate server metrics -> train flow -> score flow, on embedded defaults."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ae_anomaly import pipeline
from ae_anomaly.config import load_config
from flows.score import score_flow
from flows.train import train_flow


@task(name="generate-demo-data", cache_policy=NO_CACHE)
def generate_demo_data(config: str | None, overrides: list[str] | None) -> pipeline.DemoData:
    return pipeline.write_demo_data(load_config(config, overrides))


@flow(name="ae-anomaly-demo")
def demo_flow(config: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline on generated data; returns the train and score summaries."""
    data = generate_demo_data(config, overrides)
    ov = list(overrides or []) + pipeline.demo_overrides(data)
    trained = train_flow(config, ov)
    scored = score_flow(config, ov)
    return {"data": data, "train": trained, "score": scored, "overrides": ov}
