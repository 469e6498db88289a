"""MLflow tracking, the pyfunc model and the registry (the only place that imports mlflow)."""

from ae_anomaly.tracking.store import DetectorModel, Tracker

__all__ = ["DetectorModel", "Tracker"]
