"""Process-wide defaults: quiet, offline, and everything under the state folder."""

from __future__ import annotations

import os

from ae_anomaly.config import state_home

QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",  # MLflow ignores "1"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply_quiet_defaults() -> None:
    """Set telemetry-off and Prefect/MLflow defaults unless the user set them already.

    ``PREFECT_HOME`` defaults to ``<state folder>/prefect`` so an ephemeral Prefect run
    leaves nothing outside the state folder.
    """
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(state_home() / "prefect"))
    if "PREFECT_HOME" in os.environ:
        # Prefect's embedded SQLite database cannot be created in a missing folder.
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
