#!/usr/bin/env bash
# Runs the whole suite. Starts a throwaway PostgreSQL server when its binaries are present
# (or uses AE_ANOMALY_TEST_PG_URL) so the PostgreSQL tests run for real.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
exec "$BIN/python" -m pytest -q -ra "$@"
