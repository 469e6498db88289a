"""Dask worker preload for the fault tests: the stall of ``faults.py``, in one worker only.

Start a cluster with ``preload=["dask_faults"]`` (this folder on the workers' PYTHONPATH:
Dask copies a preload *file* elsewhere, away from ``faults.py``) and
``AE_ANOMALY_FAULT_STALL`` / ``AE_ANOMALY_FAULT_MARKER`` in the environment. Every worker
installs the hooks; the first to reach the point claims it (``<marker>.claim``, created
exclusively), writes the marker with its pid and sleeps, so a test can kill that worker
process mid-shard. The others, and the worker a nanny restarts, pass through.
"""

from __future__ import annotations

import os
from typing import Any

import faults


def dask_setup(worker: Any) -> None:
    """Install the one-shot fault plan in this worker process."""
    plan = faults.plan_from_env()
    if plan is None or not plan.marker:
        return
    stall = plan.stall
    claim = plan.marker + ".claim"

    def stall_once(name: str) -> None:
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        stall(name)

    plan.stall = stall_once  # type: ignore[method-assign]
    faults.install(plan)
