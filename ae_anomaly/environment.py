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

# MLflow retries an unanswered HTTP request 7 times with a doubling back-off (minutes) by
# default; an unreachable tracking server should fail a run within seconds.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def apply_mlflow_http_defaults() -> None:
    """Cap MLflow's HTTP retries and timeout (about 3 s to give up on a refused
    connection) unless the user set ``MLFLOW_HTTP_REQUEST_*`` already."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def apply_quiet_defaults() -> None:
    """Set telemetry-off and Prefect/MLflow defaults unless the user set them already.

    ``PREFECT_HOME`` defaults to ``<state folder>/prefect`` so an ephemeral Prefect run
    leaves nothing outside the state folder.
    """
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    apply_mlflow_http_defaults()
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(state_home() / "prefect"))
    if "PREFECT_HOME" in os.environ:
        # Prefect's embedded SQLite database cannot be created in a missing folder.
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
