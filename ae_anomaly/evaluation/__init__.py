"""Evaluation of anomaly detectors: point-wise and event metrics, and the NAB scorer."""
