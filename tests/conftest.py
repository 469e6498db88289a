"""Shared fixtures: an isolated state folder, quiet Prefect/MLflow, tiny synthetic data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect or mlflow: offline, quiet, nothing written outside tmp.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ae-anomaly-tests-"))
os.environ["AE_ANOMALY_HOME"] = str(_SESSION_HOME / "home")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
for key, value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ[key] = value
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

REPO = Path(__file__).resolve().parents[1]

# The flows are the package ae_anomaly_flows (the repository's flows/ folder): this
# checkout's, whatever an editable install elsewhere points at.
from ae_anomaly.cli import bind_flows_package  # noqa: E402

bind_flows_package()
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (about 7 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh state folder (AE_ANOMALY_HOME) for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("AE_ANOMALY_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data folder beside the project (tests using it are slow)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA
