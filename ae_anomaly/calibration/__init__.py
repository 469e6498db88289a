"""Calibration: threshold rules fitted on normal scores, and the rules that turn flagged
points into events."""

from ae_anomaly.calibration.events import Event, EventBuilder, event_mask, find_events
from ae_anomaly.calibration.thresholds import (
    RULE_NAMES,
    BestF1Threshold,
    ConformalThreshold,
    KSigmaThreshold,
    POTThreshold,
    QuantileThreshold,
    ThresholdRule,
    alpha_from_alert_budget,
    conformal_rank,
    format_report,
    get_rule_class,
    min_calibration_size,
    rule_from_config,
)

__all__ = [
    "RULE_NAMES",
    "BestF1Threshold",
    "ConformalThreshold",
    "Event",
    "EventBuilder",
    "KSigmaThreshold",
    "POTThreshold",
    "QuantileThreshold",
    "ThresholdRule",
    "alpha_from_alert_budget",
    "conformal_rank",
    "event_mask",
    "find_events",
    "format_report",
    "get_rule_class",
    "min_calibration_size",
    "rule_from_config",
]
