"""Calibration: threshold rules fitted on normal scores (alarm -> event rules live in
:mod:`ae_anomaly.events`)."""

from ae_anomaly.calibration.adaptive import AciState, AdaptiveConformal
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
    "AciState",
    "AdaptiveConformal",
    "BestF1Threshold",
    "ConformalThreshold",
    "KSigmaThreshold",
    "POTThreshold",
    "QuantileThreshold",
    "ThresholdRule",
    "alpha_from_alert_budget",
    "conformal_rank",
    "format_report",
    "get_rule_class",
    "min_calibration_size",
    "rule_from_config",
]
