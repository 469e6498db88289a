"""Configuration: pydantic models loaded from YAML, with ``key=value`` overrides.

Every model forbids unknown keys, so a typo fails loudly with the key and the file named.
Paths may contain ``{home}``, which expands to the state folder (``AE_ANOMALY_HOME``,
default ``./.ae_anomaly``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ae_anomaly.errors import ConfigError

DEFAULT_HOME = ".ae_anomaly"


def state_home() -> Path:
    """The folder that holds everything a run writes (MLflow store, anomaly table, demo data)."""
    return Path(os.environ.get("AE_ANOMALY_HOME", DEFAULT_HOME)).expanduser().resolve()


def expand_path(value: str) -> str:
    """Expand ``{home}`` in a configured path or URL, and ``~`` in a path."""
    value = value.replace("{home}", str(state_home()))
    if "://" in value:  # a URL: Path() would collapse its slashes
        return value
    return str(Path(value).expanduser())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class SyntheticConfig(_Strict):
    """The seeded server-metrics generator used by the demo and the tests."""

    n_entities: int = Field(3, ge=1)
    n_metrics: int = Field(8, ge=2)
    train_days: float = Field(4.0, gt=0)
    score_days: float = Field(1.5, gt=0)
    freq: str = "1min"
    anomalies_per_entity: int = Field(6, ge=0)
    seed: int = 0


class DataConfig(_Strict):
    """Where training and scoring data come from and how to read them.

    ``train`` and ``score`` are a file (CSV or Parquet) or a folder of such files.
    """

    train: str | None = None
    score: str | None = None
    format: Literal["auto", "wide", "long", "smd"] = "auto"
    timestamp_col: str = "timestamp"
    entity_col: str = "entity"
    metric_col: str = "metric"
    value_col: str = "value"
    metrics: list[str] | None = None
    nan_policy: Literal["ffill", "drop", "error"] = "ffill"
    max_nan_fill: int = Field(5, ge=0)
    read_chunk_rows: int = Field(200_000, ge=1000)
    synthetic: SyntheticConfig = SyntheticConfig()


class WindowConfig(_Strict):
    """Sliding windows over each entity's series."""

    length: int = Field(64, ge=4)
    train_stride: int = Field(1, ge=1)


class PreprocessConfig(_Strict):
    """Per-channel scaling fitted on the training slice only."""

    scaler: Literal["standard", "robust", "minmax"] = "standard"
    clip: float | None = Field(20.0, gt=0)


# --------------------------------------------------------------------------- models
class _AEBase(_Strict):
    latent_dim: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    l1_activity: float = Field(0.0, ge=0)


class ConvAEConfig(_AEBase):
    """1D-convolutional autoencoder over (channels, window) tensors."""

    name: Literal["conv_ae"] = "conv_ae"
    channels: list[int] = Field(default_factory=lambda: [32, 32])
    kernel_size: int = Field(5, ge=1)


class DenseAEConfig(_AEBase):
    """Fully connected autoencoder; windows are flattened."""

    name: Literal["dense_ae"] = "dense_ae"
    hidden: list[int] = Field(default_factory=lambda: [128, 64])


ModelConfig = Annotated[ConvAEConfig | DenseAEConfig, Field(discriminator="name")]


class TrainingConfig(_Strict):
    """The one training loop's settings."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    seed: int = 0
    num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


# --------------------------------------------------------------------------- calibration
class CalibrationConfig(_Strict):
    """How the alarm threshold is fitted on held-out normal data."""

    method: Literal["conformal", "pot", "quantile", "k_sigma", "best_f1"] = "conformal"
    alpha: float = Field(0.001, gt=0, lt=0.5)
    calibration_fraction: float = Field(0.2, gt=0, lt=0.9)
    pot_initial_quantile: float = Field(0.98, gt=0.5, lt=1)
    k: float = Field(3.0, gt=0)
    max_alerts_per_day: float | None = Field(None, gt=0)


class EventsConfig(_Strict):
    """Rules that turn flagged points into events (shared by scoring and benchmarks)."""

    k: int = Field(1, ge=1)
    n: int = Field(1, ge=1)
    merge_gap: int = Field(5, ge=0)
    min_duration: int = Field(1, ge=1)
    cooldown: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _k_le_n(self) -> EventsConfig:
        if self.k > self.n:
            raise ValueError(f"events.k ({self.k}) must not exceed events.n ({self.n})")
        return self


class ScoringConfig(_Strict):
    """Batch scoring settings."""

    chunk_steps: int = Field(20_000, ge=16)
    batch_size: int = Field(1024, ge=1)


# --------------------------------------------------------------------------- outputs
class SinkConfig(_Strict):
    """Where flagged events are written (any SQLAlchemy URL)."""

    url: str = "sqlite:///{home}/anomalies.db"
    table: str = "anomaly_events"


class TrackingConfig(_Strict):
    """MLflow tracking and registry."""

    tracking_uri: str = "sqlite:///{home}/mlflow.db"
    artifact_location: str = "{home}/mlartifacts"
    experiment: str = "ae-anomaly"
    registered_model: str = "ae-anomaly-demo"
    alias: str = "champion"


class DeploymentConfig(_Strict):
    """Schedules for the Prefect deployments."""

    score_cron: str = "*/5 * * * *"
    train_cron: str = "0 2 * * *"


class AppConfig(_Strict):
    """The whole configuration of a training + scoring pipeline."""

    data: DataConfig = DataConfig()
    window: WindowConfig = WindowConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ConvAEConfig()
    training: TrainingConfig = TrainingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    events: EventsConfig = EventsConfig()
    scoring: ScoringConfig = ScoringConfig()
    sink: SinkConfig = SinkConfig()
    tracking: TrackingConfig = TrackingConfig()
    deployment: DeploymentConfig = DeploymentConfig()


# --------------------------------------------------------------------------- loading
def _parse_value(text: str) -> Any:
    """Parse an override's value as YAML, so ``3``, ``0.1``, ``true`` and ``[1, 2]`` type."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw config mapping (in place, returned).

    Raises:
        ConfigError: an override without ``=`` or one that walks into a non-mapping.
    """
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: key '{loc}': {msg}{more}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Load a YAML config file and apply ``key=value`` overrides.

    Args:
        path: YAML file; None for the built-in defaults.
        overrides: ``dotted.key=value`` strings, applied after the file.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is missing or unreadable, or a key or value is invalid; the
            message names the file and the key.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        raw = loaded
    if overrides:
        apply_overrides(raw, overrides)
        source = f"{source} with overrides {' '.join(overrides)}"
    if isinstance(raw.get("model"), dict):
        raw["model"].setdefault("name", "conv_ae")  # the default family
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
