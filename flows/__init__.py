"""Prefect flows: thin tasks over ae_anomaly's pipeline steps."""

from ae_anomaly.environment import apply_quiet_defaults

apply_quiet_defaults()
