"""MLflow: runs, the detector as a pyfunc model, the registry and its aliases."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ae_anomaly.config import AppConfig, TrackingConfig, expand_path  # noqa: E402
from ae_anomaly.detectors import BaseDetector, load_detector  # noqa: E402
from ae_anomaly.errors import ModelNotFoundError  # noqa: E402
from ae_anomaly.records import ModelRef  # noqa: E402

log = logging.getLogger(__name__)

PIP_REQUIREMENTS = ["ae-anomaly", "torch==2.13.0", "pandas", "numpy", "scikit-learn"]


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: ``predict`` returns ``score`` and ``is_anomaly`` per input row.

    The input is a wide frame (``timestamp``, optional ``entity``, the metric columns), in
    time order per entity; each entity's rows are scored as one series.
    """

    def load_context(self, context: Any) -> None:
        self.detector = load_detector(Path(context.artifacts["detector"]))

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        scores = self.detector.score(model_input)
        flags = scores > self.detector.row_thresholds(model_input)
        return pd.DataFrame({"score": scores, "is_anomaly": flags})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested config sections into ``section.key`` params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """One MLflow tracking store + registry, configured from the ``tracking`` section.

    Args:
        cfg: tracking URI, artifact location, experiment and registered model names.
    """

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        uri = cfg.tracking_uri
        if uri.startswith("sqlite:///"):
            uri = expand_path(uri)
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(uri, uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            artifacts = Path(expand_path(cfg.artifact_location))
            artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(cfg.experiment,
                                                               artifact_location=artifacts.as_uri())
        else:
            self.experiment_id = exp.experiment_id

    # --------------------------------------------------------------- runs
    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> str:
        """Create a run and return its id (logging goes through the id, thread-safe)."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run finished (or FAILED)."""
        self.client.set_terminated(run_id, status=status)

    def epoch_logger(self, run_id: str) -> Any:
        """A training-loop callback logging per-epoch losses to the run."""

        def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
            self.client.log_metric(run_id, "train_loss", train_loss, step=epoch)
            if val_loss is not None:
                self.client.log_metric(run_id, "val_loss", val_loss, step=epoch)

        return on_epoch

    def log_config(self, run_id: str, cfg: AppConfig) -> None:
        """Log the resolved configuration (artifact) and its flattened params."""
        data = cfg.model_dump(mode="json")
        self.client.log_dict(run_id, data, "config/resolved.json")
        for k, v in flatten(data).items():
            self.client.log_param(run_id, k, str(v)[:6000])

    def log_training(self, run_id: str, det: BaseDetector) -> dict[str, Any]:
        """Log losses summary, calibration statistics and the score-distribution plot."""
        report = det.calibration_report()
        metrics = {"threshold": det.threshold_, "best_epoch": det.history_.best_epoch,
                   "train_seconds": det.history_.seconds,
                   "n_train_samples": det.n_train_samples_}
        metrics.update({f"calibration.{k}": float(v) for k, v in report.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})
        for k, v in metrics.items():
            self.client.log_metric(run_id, k, float(v))
        self.client.log_dict(run_id, _jsonable(report), "calibration/report.json")
        fig = score_distribution_plot(np.asarray(det.rule_.calibration_scores_), det.threshold_,
                                      det.calibration.method, det.calibration.alpha)
        self.client.log_figure(run_id, fig, "calibration/score_distribution.png")
        plt.close(fig)
        return report

    # --------------------------------------------------------------- models
    def log_detector(self, run_id: str, det: BaseDetector, example: pd.DataFrame) -> ModelRef:
        """Log the detector as a pyfunc model in the run and register a new version."""
        name = self.cfg.registered_model
        example = example.head(max(2 * det.min_samples, 8)).reset_index(drop=True)
        out = pd.DataFrame({"score": np.zeros(len(example)),
                            "is_anomaly": np.zeros(len(example), dtype=bool)})
        signature = infer_signature(example, out)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            path = det.save(Path(tmp) / "detector")
            info = mlflow.pyfunc.log_model(
                name="detector",
                python_model=DetectorModel(),
                artifacts={"detector": str(path)},
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        self.client.set_model_version_tag(name, version, "threshold", f"{det.threshold_:.6g}")
        self.client.set_model_version_tag(name, version, "model", det.model.name)
        self.client.set_model_version_tag(name, version, "kind", det.kind)
        log.info("registered %s version %s", name, version)
        return ModelRef(name=name, version=version, run_id=run_id)

    def alias_version(self, alias: str, name: str | None = None) -> str | None:
        """The version an alias points at, or None."""
        try:
            mv = self.client.get_model_version_by_alias(name or self.cfg.registered_model, alias)
        except MlflowException:
            return None
        return str(mv.version)

    def set_alias(self, alias: str, version: str, name: str | None = None) -> None:
        """Point an alias at a version."""
        self.client.set_registered_model_alias(name or self.cfg.registered_model, alias, version)

    def ensure_alias(self, version: str, alias: str | None = None) -> bool:
        """Give ``version`` the alias (default ``champion``) when no version has it yet.

        Returns:
            True when the alias was set now.
        """
        alias = alias or self.cfg.alias
        if self.alias_version(alias) is not None:
            return False
        self.set_alias(alias, version)
        return True

    def load(self, alias: str | None = None, name: str | None = None) -> tuple[BaseDetector,
                                                                                ModelRef]:
        """Load ``models:/<name>@<alias>`` through MLflow and return the detector.

        Raises:
            ModelNotFoundError: no such model or alias.
        """
        name = name or self.cfg.registered_model
        alias = alias or self.cfg.alias
        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise ModelNotFoundError(
                f"no model '{name}' with alias '{alias}' in {self.uri}: train one first "
                f"(ae-anomaly train)"
            ) from None
        model = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
        det = model.unwrap_python_model().detector
        return det, ModelRef(name=name, version=str(mv.version), run_id=mv.run_id or "")


def score_distribution_plot(cal_scores: np.ndarray, threshold: float, method: str,
                            alpha: float) -> Any:
    """Histogram of calibration scores (log scale) with the threshold marked."""
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    s = cal_scores[cal_scores > 0] if (cal_scores > 0).any() else cal_scores + 1e-12
    bins = np.logspace(np.log10(s.min()), np.log10(max(s.max(), threshold) * 1.05), 60)
    ax.hist(s, bins=bins, color="#4c78a8", alpha=0.85, label="calibration scores (normal)")
    ax.axvline(threshold, color="#e45756", lw=2, label=f"threshold {threshold:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("anomaly score (mean squared reconstruction error)")
    ax.set_ylabel("steps")
    ax.set_title(f"Calibration: {method}, alpha={alpha:g}, n={len(cal_scores)}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, tuple | list):
            v = [x.item() if isinstance(x, np.generic) else x for x in v]
        out[k] = v
    return out
