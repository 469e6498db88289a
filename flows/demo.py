"""Demo flow: server metrics, then network flows, each through the train and score flows.

1. generated server metrics -> ``ae-anomaly-train`` -> ``ae-anomaly-score`` (the main demo);
2. generated NetFlow records with injected attacks (``configs/netflow_demo.yaml``) -> per-host
   one-minute series -> the same two flows, registered as their own model; their events go
   to the same anomaly table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ae_anomaly import pipeline
from ae_anomaly.config import load_config
from ae_anomaly.data.synthetic_netflow import NetflowDemoData, write_netflow_demo_data

from .score import score_flow
from .train import train_flow


@task(name="generate-demo-data", cache_policy=NO_CACHE)
def generate_demo_data(config: str | None, overrides: list[str] | None) -> pipeline.DemoData:
    return pipeline.write_demo_data(load_config(config, overrides))


@task(name="generate-flow-demo-data", cache_policy=NO_CACHE)
def generate_netflow_demo_data(config: str) -> NetflowDemoData:
    return write_netflow_demo_data(load_config(config))


@flow(name="ae-anomaly-demo")
def demo_flow(config: str | None = None, overrides: list[str] | None = None,
              netflow_config: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline on generated data; returns the train and score summaries.

    Args:
        config: the server-metrics config (``configs/demo.yaml``).
        overrides: ``key=value`` overrides of the server-metrics config.
        netflow_config: the network-flow config (``configs/netflow_demo.yaml``); None skips it.
    """
    data = generate_demo_data(config, overrides)
    ov = list(overrides or []) + pipeline.demo_overrides(data)
    out: dict[str, Any] = {"data": data, "overrides": ov, "train": train_flow(config, ov),
                           "score": score_flow(config, ov)}
    if netflow_config and Path(netflow_config).is_file():
        fdata = generate_netflow_demo_data(netflow_config)
        fov = [f"data.train={fdata.train}", f"data.score={fdata.score}"]
        out["netflow"] = {"data": fdata, "config": netflow_config, "overrides": fov,
                        "train": train_flow(netflow_config, fov),
                        "score": score_flow(netflow_config, fov)}
    return out
