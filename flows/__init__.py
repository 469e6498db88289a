"""Prefect flows: thin tasks over ae_anomaly's pipeline steps.

This folder installs as the package ``ae_anomaly_flows`` (see ``pyproject.toml``), so the
modules import each other relatively (``from .score import score_flow``). ``score.py`` and
``train.py`` are also deployment entrypoints that Prefect loads as scripts
(``flows/score.py:score_flow`` in ``prefect.yaml``): they import only ``ae_anomaly``.
"""

from ae_anomaly.environment import apply_quiet_defaults

apply_quiet_defaults()
