"""The built-in ops view: flagged events, their context, alarm rates and operator feedback.

``ae-anomaly dashboard`` serves it (FastAPI, server-rendered Jinja2 pages, Plotly charts).
It reads the anomaly table and writes only its own ``anomaly_feedback`` table.
"""

from ae_anomaly.dashboard.store import (
    FEEDBACK_KINDS,
    DashboardStore,
    EventFilter,
    feedback_table,
)

__all__ = ["FEEDBACK_KINDS", "DashboardStore", "EventFilter", "feedback_table"]
