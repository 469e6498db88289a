"""MLflow: runs, the detector as a pyfunc model, the registry and its aliases.

The detector is logged as a models-from-code pyfunc (``pyfunc_model.py``: no pickle in the
model) and registered with the SHA-256 of each of its files (``integrity.py``). Loading
never goes through ``mlflow.pyfunc.load_model``: it downloads the version's detector folder,
checks the hashes and reads it with :func:`~ae_anomaly.detectors.load_detector` (JSON, a
torch state_dict with ``weights_only=True``, arrays with ``allow_pickle=False``).
"""

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
from ae_anomaly.environment import apply_mlflow_http_defaults  # noqa: E402
from ae_anomaly.errors import AeAnomalyError, ModelNotFoundError, ServiceUnavailableError  # noqa: E402
from ae_anomaly.records import ModelRef  # noqa: E402
from ae_anomaly.secrets import mask_text, mask_url, mask_values  # noqa: E402
from ae_anomaly.tracking.integrity import SHA256_TAG, hashes_tag, verify_files  # noqa: E402

log = logging.getLogger(__name__)

PIP_REQUIREMENTS = ["ae-anomaly", "torch==2.13.0", "pandas", "numpy", "scikit-learn"]
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
DETECTOR_ARTIFACT = "detector"  # the pyfunc artifact: <model>/artifacts/detector/


class TrackingUnavailableError(ServiceUnavailableError):
    """The MLflow tracking store does not answer (after MLflow's capped HTTP retries)."""


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
        if uri.startswith(("http://", "https://")):
            apply_mlflow_http_defaults()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(uri, uri)
        try:
            exp = self.client.get_experiment_by_name(cfg.experiment)
        except MlflowException as exc:
            if not uri.startswith(("http://", "https://")):
                raise
            detail = (str(exc).strip().splitlines() or [""])[0][:300]
            raise TrackingUnavailableError(
                f"MLflow tracking server {mask_url(uri)} does not answer ({mask_text(detail)});"
                " MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_TIMEOUT set how long "
                "to wait") from None
        if exp is None:
            artifacts = Path(expand_path(cfg.artifact_location))
            artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(cfg.experiment,
                                                               artifact_location=artifacts.as_uri())
        else:
            self.experiment_id = exp.experiment_id

    @property
    def display_uri(self) -> str:
        """The tracking URI with any password masked (for messages and logs)."""
        return mask_url(self.uri)

    # --------------------------------------------------------------- runs
    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> str:
        """Create a run and return its id (logging goes through the id, thread-safe).

        Every run is tagged with the package version (``ae_anomaly.version``) and, when the
        package runs from a git checkout, its commit (``mlflow.source.git.commit``, which
        the MLflow UI shows, and ``ae_anomaly.git_commit``; ``-dirty`` when it has local
        changes).
        """
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**provenance_tags(), **(tags or {})})
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
        """Log the resolved configuration (artifact) and its flattened params, passwords
        masked (``***``)."""
        data = mask_values(cfg.model_dump(mode="json"))
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
        """Log the detector as a pyfunc model (models-from-code, no pickle) in the run and
        register a new version tagged with the SHA-256 of each detector file."""
        name = self.cfg.registered_model
        example = example.head(max(2 * det.min_samples, 8)).reset_index(drop=True)
        out = pd.DataFrame({"score": np.zeros(len(example)),
                            "is_anomaly": np.zeros(len(example), dtype=bool)})
        signature = infer_signature(example, out)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            path = det.save(Path(tmp) / DETECTOR_ARTIFACT)
            info = mlflow.pyfunc.log_model(
                name="detector",
                python_model=str(MODEL_CODE),
                artifacts={DETECTOR_ARTIFACT: str(path)},
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
            )
            tags = {"threshold": f"{det.threshold_:.6g}", "model": det.model.name,
                    "kind": det.kind, SHA256_TAG: hashes_tag(path)}
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        version = str(mv.version)
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
        """Load the detector of ``models:/<name>@<alias>`` (see :meth:`load_version`).

        Raises:
            ModelNotFoundError: no such model or alias.
            ModelIntegrityError: the version's files differ from those registered.
        """
        name = name or self.cfg.registered_model
        alias = alias or self.cfg.alias
        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise ModelNotFoundError(
                f"no model '{name}' with alias '{alias}' in {self.display_uri}: train one "
                f"first (ae-anomaly train)"
            ) from None
        return self._load_model_version(mv)

    def load_version(self, name: str, version: str) -> tuple[BaseDetector, ModelRef]:
        """Load one registered version's detector, without unpickling anything.

        The version's ``artifacts/detector`` folder is downloaded, its files are checked
        against the SHA-256 tag recorded at registration, and the folder is read with
        :func:`~ae_anomaly.detectors.load_detector`. The model's ``python_model`` code,
        MLmodel file and any other file of the model are never read. A version registered
        before the tag existed loads with a warning.

        Raises:
            ModelNotFoundError: no such model or version.
            ModelIntegrityError: the version's files differ from those registered.
        """
        try:
            mv = self.client.get_model_version(name, str(version))
        except MlflowException:
            raise ModelNotFoundError(f"model '{name}' has no version {version} in "
                                     f"{self.display_uri}") from None
        return self._load_model_version(mv)

    def _load_model_version(self, mv: Any) -> tuple[BaseDetector, ModelRef]:
        name, version = mv.name, str(mv.version)
        label = f"'{name}' v{version}"
        root = self.client.get_model_version_download_uri(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{root.rstrip('/')}/artifacts/{DETECTOR_ARTIFACT}",
                    dst_path=tmp, tracking_uri=self.uri)
            except (MlflowException, OSError) as exc:
                detail = (str(exc).strip().splitlines() or [""])[0][:300]
                raise AeAnomalyError(f"model {label}: its detector files cannot be read "
                                     f"from {mask_url(root)} ({mask_text(detail)})") from None
            folder = Path(local)
            tag = (mv.tags or {}).get(SHA256_TAG)
            if tag is None:
                log.warning("model %s has no %s tag (registered before ae-anomaly recorded "
                            "hashes): its files are loaded without an integrity check; "
                            "register it again to add one", label, SHA256_TAG)
            else:
                verify_files(folder, tag, label)
            det = load_detector(folder)
        return det, ModelRef(name=name, version=version, run_id=mv.run_id or "")


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


def provenance_tags() -> dict[str, str]:
    """The package version and, from a git checkout, the commit the code runs at."""
    import subprocess

    from ae_anomaly import __version__

    tags = {"ae_anomaly.version": __version__}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                    capture_output=True, text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return tags
        if commit:
            commit += "-dirty" if dirty else ""
            tags["ae_anomaly.git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
    return tags
