"""Configuration: pydantic models loaded from YAML, with ``key=value`` overrides.

Every model forbids unknown keys, so a typo fails loudly with the key and the file named.
Paths may contain ``{home}``, which expands to the state folder (``AE_ANOMALY_HOME``,
default ``./.ae_anomaly``). Any string value may contain ``${ENV_VAR}``, which is replaced
by that environment variable when the configuration is loaded (the way to pass a password
without writing it in a file or on a command line; see docs/security.md).
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ae_anomaly.errors import ConfigError
from ae_anomaly.secrets import interpolate_env, mask_text

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
    """The seeded server-metrics generator used by the demo and the tests.

    Attributes:
        n_entities: servers (entities) to generate.
        n_metrics: metrics per server (cpu_util, load_avg, mem_used, ...).
        train_days: days of normal history (the training file).
        score_days: days after it, with injected anomalies (the file to score).
        freq: sampling interval (pandas frequency).
        anomalies_per_entity: anomalies injected per server in the scoring period, kinds
            in turn: spike, level shift, variance burst, correlation break.
        seed: the generator's seed (same seed, same data).
    """

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

    Network flows: ``netflow`` names a network-flow data set description
    (``configs/datasets/*.yaml``)
    and then ``train`` / ``score`` hold flow records (a file, folder or glob). With
    ``netflow_mode: aggregate`` the flows become per-entity series (the description's
    ``aggregate`` section) scored by the time-series detector; with ``rows`` every flow is
    scored by a row detector (``dense_ae``, ``vae``, ``rae``, ... with ``arch: dense``).

    Attributes:
        train: training data: a file or folder (``{home}`` allowed).
        score: data to score (``ae-anomaly score`` default input).
        format: ``auto`` detects long form (metric/value columns) or wide form; ``smd`` reads
            an SMD benchmark folder.
        timestamp_col: name of the timestamp column.
        entity_col: name of the entity column (optional in files: one series without it).
        metric_col: long form: the column naming the metric.
        value_col: long form: the column holding the value.
        metrics: the metric columns to use (default: every non-key column).
        nan_policy: missing values: ``ffill`` (fill short gaps, reject long ones), ``drop``
            (drop rows), ``error`` (reject).
        max_nan_fill: ``ffill``: the longest gap (in steps) filled.
        read_chunk_rows: rows read per chunk (bounds memory when scoring large files).
        encoding: text encoding of CSV files (``utf-8``; a file with a byte-order mark is
            read by it). Another encoding (``latin-1``, ``cp1252``, ``utf-16``) must be
            declared here; an undeclared one is refused with the file named.
        max_in_memory_bytes: largest total size of the files read whole into memory
            (training data, network flows, promotion's evaluation data); larger inputs are
            refused before reading. Metric files being scored are streamed in chunks and
            not limited.
        synthetic: the demo's data generator.
        netflow: network-flow data set description (YAML); when set, train/score hold flow records.
        netflow_mode: per-entity series (``aggregate``) or one score per flow (``rows``).
        netflow_max_categories: rows mode: most frequent training categories kept per column.
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
    encoding: str = "utf-8"
    max_in_memory_bytes: int = Field(1_000_000_000, ge=1)
    synthetic: SyntheticConfig = SyntheticConfig()
    netflow: str | None = Field(
        None,
        description="network-flow data set description (YAML); set: train/score hold flows")
    netflow_mode: Literal["rows", "aggregate"] = Field(
        "aggregate", description="netflow: per-entity series (aggregate) or one score per flow")
    netflow_max_categories: int = Field(
        50, ge=1, description="rows mode: most frequent training categories kept per column")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding '{value}' (e.g. utf-8, latin-1, "
                             "cp1252, utf-16)") from None
        return value


class WindowConfig(_Strict):
    """Sliding windows over each entity's series.

    Attributes:
        length: steps per window (the network's receptive field; scoring needs at least
            this many steps per entity).
        train_stride: steps between training windows (scoring always uses stride 1).
    """

    length: int = Field(64, ge=4)
    train_stride: int = Field(1, ge=1)


class PreprocessConfig(_Strict):
    """Per-channel scaling fitted on the training slice only.

    Attributes:
        scaler: ``standard`` (mean/std), ``robust`` (median/IQR) or ``minmax``.
        clip: clip scaled values to [-clip, clip] (None: no clipping).
    """

    scaler: Literal["standard", "robust", "minmax"] = "standard"
    clip: float | None = Field(20.0, gt=0)


class PostprocessConfig(_Strict):
    """How per-step, per-channel errors become the step score; frozen with the model.

    The same code serves the threshold's calibration, every production scoring path and the
    benchmark, so what the benchmark measures is what production writes.

    Attributes:
        errors: ``overlap`` (a step's error is the mean over the windows that cover it: up
            to ``window.length - 1`` later steps, so scoring waits for them) or ``causal``
            (the error of the window that ends at the step: no later data).
        causal_tail: ``causal``: average each window's error over its last ``causal_tail``
            steps only (0: the whole window; 1: the newest step).
        smooth: moving average over this many steps, per channel (1: none).
        smooth_mode: ``trailing`` (causal) or ``center`` (waits ``(smooth - 1) // 2``
            later steps).
        channel_reduce: step score from the channels: ``mean``, ``max`` or ``topk`` (mean of
            the ``channel_topk`` largest). ``calibration.per_channel`` implies ``max``.
        channel_topk: ``topk``: how many channels.
        baseline_window: divide each step's score by the median score of the
            ``baseline_window`` steps before it (0: off), so the score is relative to the
            recent typical error: slow drift and level shifts of the error stop alarming
            after about half the window, and so does an anomaly that lasts that long.
            Scoring then keeps that many earlier steps as context.
    """

    errors: Literal["overlap", "causal"] = "overlap"
    causal_tail: int = Field(0, ge=0)
    smooth: int = Field(1, ge=1)
    smooth_mode: Literal["trailing", "center"] = "trailing"
    channel_reduce: Literal["mean", "max", "topk"] = "mean"
    channel_topk: int = Field(3, ge=1)
    baseline_window: int = Field(0, ge=0)


# --------------------------------------------------------------------------- models
class _AEBase(_Strict):
    """Options every autoencoder honours.

    Attributes:
        latent_dim: size of the code (bottleneck).
        dropout: dropout probability in the encoder (and, for dense layers, the decoder).
        l1_activity: weight of the L1 activity penalty on the code (sparse codes); added to
            the training loss as ``l1_activity * mean(|code|)``. L2 weight decay is
            ``training.weight_decay``.
    """

    latent_dim: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    l1_activity: float = Field(0.0, ge=0)


class ConvAEConfig(_AEBase):
    """1D-convolutional autoencoder over (channels, window) tensors.

    Attributes:
        channels: output channels of the strided Conv1d blocks (each halves the time axis).
        kernel_size: convolution kernel size.
    """

    name: Literal["conv_ae"] = "conv_ae"
    channels: list[int] = Field(default_factory=lambda: [32, 32])
    kernel_size: int = Field(5, ge=1)


class DenseAEConfig(_AEBase):
    """Fully connected autoencoder; windows are flattened.

    Attributes:
        hidden: hidden layer sizes of the encoder (mirrored by the decoder).
    """

    name: Literal["dense_ae"] = "dense_ae"
    hidden: list[int] = Field(default_factory=lambda: [128, 64])


class _BackboneAEBase(_AEBase):
    """Families that wrap the convolutional or the dense architecture.

    Attributes:
        arch: ``conv`` (the ``conv_ae`` network; windows only) or ``dense`` (the
            ``dense_ae`` network; windows or tabular rows).
        channels: conv blocks' output channels (``arch: conv``).
        kernel_size: conv kernel size (``arch: conv``).
        hidden: dense hidden layer sizes (``arch: dense``).
    """

    arch: Literal["conv", "dense"] = "conv"
    channels: list[int] = Field(default_factory=lambda: [32, 32])
    kernel_size: int = Field(5, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [128, 64])


class DenoisingAEConfig(_BackboneAEBase):
    """Denoising autoencoder: trains on corrupted input against the clean target.

    Corruption is applied in training mode only; validation and scoring see clean input.
    Inputs are standardised, so ``noise_std`` is in units of a channel's standard deviation
    and a masked element is set to 0 (the channel's training mean).

    Attributes:
        noise_std: standard deviation of the additive Gaussian noise.
        mask_prob: probability that an input element is masked (set to 0).
    """

    name: Literal["denoising"] = "denoising"
    noise_std: float = Field(0.1, ge=0)
    mask_prob: float = Field(0.1, ge=0, lt=1)


class ContractiveAEConfig(_BackboneAEBase):
    """Contractive autoencoder: MSE plus ``contractive_weight * ||J_encoder(x)||_F^2``.

    The squared Frobenius norm of the encoder's Jacobian is computed with vector-Jacobian
    products vectorised by ``torch.func.vmap`` (no Python loop over outputs), averaged over
    the batch. It needs gradients, so it is added in training only (the validation loss that
    drives early stopping is the reconstruction part).

    Attributes:
        contractive_weight: weight of the Jacobian penalty.
        jacobian: ``exact`` (one product per code dimension: ``latent_dim`` backward passes)
            or ``hutchinson`` (an unbiased estimate from ``n_projections`` random
            Rademacher projections: cheaper for large codes).
        n_projections: random projections per sample (``jacobian: hutchinson``).
    """

    name: Literal["contractive"] = "contractive"
    arch: Literal["conv", "dense"] = "dense"
    contractive_weight: float = Field(1e-3, ge=0)
    jacobian: Literal["exact", "hutchinson"] = "exact"
    n_projections: int = Field(4, ge=1)


class VAEConfig(_BackboneAEBase):
    """Variational autoencoder (beta-VAE when ``beta != 1``).

    The decoder is Gaussian with a learned per-channel standard deviation. Training loss
    per element: ``mean(NLL) + beta * KL / n_elements`` (the negative ELBO divided by the
    elements of a window, plus the L1 activity penalty on the posterior mean).

    Attributes:
        beta: weight of the KL term.
        score: what ``errors`` returns per element:
            ``elbo``: negative ELBO per element: the Gaussian NLL of each element at the
            posterior mean plus the window's KL divided by its number of elements;
            ``recon_prob``: reconstruction probability (An & Cho 2015): ``-log`` of the
            element's likelihood averaged over ``mc_samples`` posterior samples (fixed
            random numbers, so scores are deterministic and independent of batching);
            ``latent``: encoder-only: squared Mahalanobis distance of the posterior mean
            under the training latent distribution (Ledoit-Wolf covariance fitted after
            training), divided by ``latent_dim``, the same for every element of a window.
        mc_samples: Monte Carlo samples for ``score: recon_prob``.
    """

    name: Literal["vae"] = "vae"
    beta: float = Field(1.0, ge=0)
    score: Literal["elbo", "recon_prob", "latent"] = "elbo"
    mc_samples: int = Field(16, ge=1)


class RAEConfig(_BackboneAEBase):
    """Regularised (deterministic) autoencoder with ex-post density estimation.

    After Ghosh et al. 2020 ("From variational to deterministic autoencoders"): the loss is
    MSE plus ``latent_l2 * mean(||z||^2 / 2)`` (use ``training.weight_decay`` for the
    decoder regularisation of RAE-L2). After training a Gaussian mixture (full covariances)
    is fitted on the training codes. Element-wise score::

        (x - x_hat)^2 + latent_weight * (-log p(z) - c) / latent_dim

    where ``-log p(z)`` is the window code's negative log-density under the mixture and
    ``c`` its mean over the training codes: the latent term is in nats per latent dimension,
    about 0 on normal data, and is added to every element of the window.

    Attributes:
        latent_l2: weight of the L2 penalty on the code.
        gmm_components: mixture components (fewer when there are fewer training windows).
        latent_weight: weight of the latent term in the score (0: reconstruction only).
    """

    name: Literal["rae"] = "rae"
    latent_l2: float = Field(1e-3, ge=0)
    gmm_components: int = Field(4, ge=1)
    latent_weight: float = Field(1.0, ge=0)


class CVAEConfig(VAEConfig):
    """Conditional VAE: encoder and decoder also take a context vector per window.

    The context of a window describes its last step: hour-of-day and day-of-week as
    sin/cos pairs (4 features), and optionally the entity as a hashed one-hot vector, so
    behaviour that is normal at that time (or for that entity) is not flagged. All VAE
    options apply (``beta``, ``score``, ``mc_samples``).

    Attributes:
        time_features: include the hour-of-day / day-of-week features.
        entity_buckets: size of the entity one-hot (the entity name is hashed into a
            bucket; 0 leaves the entity out).
    """

    name: Literal["cvae"] = "cvae"  # type: ignore[assignment]
    time_features: bool = True
    entity_buckets: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _has_context(self) -> CVAEConfig:
        if not self.time_features and self.entity_buckets == 0:
            raise ValueError("cvae needs a context: time_features or entity_buckets > 0")
        return self


BaselineScaler = Literal["config", "none", "standard", "robust", "minmax"]


class PCAConfig(_Strict):
    """PCA reconstruction error: the baseline every result is compared against.

    Attributes:
        variance: share of the training variance the kept components explain.
        window: steps per sample (1: single steps; more: flattened windows, needed for a
            univariate series); errors are overlap-averaged onto steps like the autoencoders'.
        max_train_windows: most windows fitted on (thinned evenly).
        scaler: ``config`` uses the ``preprocess`` section; ``none`` feeds the values as
            they are (right for data that is already scaled, such as SMD).
    """

    name: Literal["pca"] = "pca"
    variance: float = Field(0.99, gt=0, le=1)
    window: int = Field(1, ge=1)
    max_train_windows: int = Field(50_000, ge=100)
    scaler: BaselineScaler = "config"


class IForestConfig(_Strict):
    """scikit-learn's IsolationForest on flattened windows (rows: one row per sample).

    Attributes:
        window: steps per sample; a step's score is the mean over the windows covering it.
        n_estimators: trees.
        max_samples: samples per tree.
        max_train_windows: most windows fitted on (thinned evenly).
        scaler: as for ``pca``.
    """

    name: Literal["iforest"] = "iforest"
    window: int = Field(10, ge=1)
    n_estimators: int = Field(100, ge=1)
    max_samples: int = Field(256, ge=2)
    max_train_windows: int = Field(20_000, ge=100)
    scaler: BaselineScaler = "config"


class RandomConfig(_Strict):
    """Uniform random scores: the control every benchmark table shows (chance level)."""

    name: Literal["random"] = "random"


#: the baselines' model names (fitted without the training loop)
BASELINE_NAMES = ("pca", "iforest", "random")

ModelConfig = Annotated[
    ConvAEConfig | DenseAEConfig | DenoisingAEConfig | ContractiveAEConfig | VAEConfig
    | RAEConfig | CVAEConfig | PCAConfig | IForestConfig | RandomConfig,
    Field(discriminator="name"),
]


def model_config(raw: dict[str, Any]) -> Any:
    """Validate a ``model`` section (a mapping with ``name``) into its config class."""
    from pydantic import TypeAdapter

    return TypeAdapter(ModelConfig).validate_python(raw)


class TrainingConfig(_Strict):
    """The one training loop's settings.

    Attributes:
        epochs: maximum epochs.
        batch_size: windows (or rows) per gradient step.
        lr: Adam learning rate.
        weight_decay: L2 weight decay (regularisation of every model).
        patience: epochs without validation improvement before stopping (best weights kept).
        val_fraction: share of each entity's fitting slice (its end) used for validation.
        seed: seeds initialisation and shuffling (same seed, same model).
        num_threads: torch CPU threads (None: torch's default).
        device: ``auto`` uses CUDA when present.
        progress: show a progress bar with the loss per epoch.
    """

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
    """How the alarm threshold is fitted on held-out normal data.

    Attributes:
        method: ``conformal`` (split-conformal quantile, finite-sample guarantee), ``pot``
            (extreme-value tail fit, for alpha below 1/n), ``quantile`` and ``k_sigma`` (for
            comparison, no guarantee), ``best_f1`` (needs labels; reported as such).
        alpha: target false-alarm rate per step on normal data.
        calibration_fraction: share of each entity's training series (its end) held out
            for the threshold, never trained on.
        pot_initial_quantile: ``pot``: quantile above which the tail is fitted.
        k: ``k_sigma``: the number of standard deviations.
        max_alerts_per_day: alert budget per entity; when set it replaces ``alpha``
            (converted with the data's sampling rate).
        per_entity: fit one threshold per entity (each on its own calibration slice).
        per_channel: one threshold per channel: each channel's error is divided by its own
            ``(1 - alpha)`` calibration quantile and the step score is the largest ratio;
            the threshold on that score is fitted by ``method`` as usual, so a step alarms
            when any channel exceeds its own threshold and the step-level false-alarm
            rate is still the one ``method`` controls.
        adaptive: ``none`` (the threshold is frozen at training time) or ``aci``: scheduled
            (incremental) scoring moves each entity's threshold online by adaptive
            conformal inference so that its long-run alarm rate stays at ``alpha`` under
            drift (docs/thresholds.md); the state is kept per (model, entity) in the sink.
        aci_gamma: ``aci``: the step size; None: ``alpha / 10``. The flagged steps never
            exceed ``alpha * T + alpha / aci_gamma + 1`` after ``T`` steps.
        aci_window: ``aci``: the quantile is taken over a rolling window of this many
            scores (the calibration scores at first, replaced by the entity's recent
            unflagged scores); None: over the calibration scores only.
    """

    method: Literal["conformal", "pot", "quantile", "k_sigma", "best_f1"] = "conformal"
    alpha: float = Field(0.001, gt=0, lt=0.5)
    calibration_fraction: float = Field(0.2, gt=0, lt=0.9)
    pot_initial_quantile: float = Field(0.98, gt=0.5, lt=1)
    k: float = Field(3.0, gt=0)
    max_alerts_per_day: float | None = Field(None, gt=0)
    per_entity: bool = False
    per_channel: bool = False
    adaptive: Literal["none", "aci"] = "none"
    aci_gamma: float | None = Field(None, gt=0, lt=1)
    aci_window: int | None = Field(None, ge=1)


class EventsConfig(_Strict):
    """Rules that turn flagged points into events (shared by scoring and benchmarks).

    Attributes:
        k: an alarm needs at least ``k`` flagged steps ...
        n: ... among the last ``n`` steps (1 of 1: every flagged step alarms).
        merge_gap: alarms separated by at most this many quiet steps form one event.
        min_duration: events shorter than this (steps) are dropped.
        cooldown: after an event ends, new alarms of the entity within this many steps are
            suppressed.
    """

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
    """Batch scoring settings.

    Attributes:
        chunk_steps: rows read and scored at a time (memory stays bounded).
        batch_size: windows per forward pass.
    """

    chunk_steps: int = Field(20_000, ge=16)
    batch_size: int = Field(1024, ge=1)


# --------------------------------------------------------------------------- outputs
class SinkConfig(_Strict):
    """Where flagged events are written.

    Attributes:
        kind: the kind of sink; ``sql``: an anomaly table (and its watermarks) in any
            SQLAlchemy database (docs/schema.md).
        url: ``sqlite:///{home}/anomalies.db`` or ``postgresql+psycopg://user@host:5432/db``.
        table: the events table name.
    """

    kind: Literal["sql"] = "sql"
    url: str = "sqlite:///{home}/anomalies.db"
    table: str = "anomaly_events"


class TrackingConfig(_Strict):
    """MLflow tracking and registry.

    Attributes:
        tracking_uri: MLflow store: ``sqlite:///...`` or a tracking server ``http://...``.
        artifact_location: where a new experiment stores artifacts.
        experiment: MLflow experiment name.
        registered_model: the registered model's name.
        alias: the alias scoring resolves (``champion``).
    """

    tracking_uri: str = "sqlite:///{home}/mlflow.db"
    artifact_location: str = "{home}/mlartifacts"
    experiment: str = "ae-anomaly"
    registered_model: str = "ae-anomaly-demo"
    alias: str = "champion"


class DeploymentConfig(_Strict):
    """Schedules for the Prefect deployments.

    Attributes:
        score_cron: cron schedule of the ``score`` deployment.
        train_cron: cron schedule of the ``train`` deployment.
        score_interval_seconds: run ``score`` every so many seconds instead of on
            ``score_cron`` (short intervals for tests and demos).
        concurrency: runs of one deployment at a time (Prefect's deployment concurrency
            limit): a scoring run that is still busy when the next one comes due does not
            get a second, competing run.
        on_overlap: what happens to a run that comes due while ``concurrency`` runs are
            busy: ``cancel_new`` (it is cancelled; the next scheduled run scores from the
            watermarks anyway) or ``enqueue`` (it waits).
    """

    score_cron: str = "*/5 * * * *"
    train_cron: str = "0 2 * * *"
    score_interval_seconds: float | None = Field(None, gt=0)
    concurrency: int = Field(1, ge=1)
    on_overlap: Literal["cancel_new", "enqueue"] = "cancel_new"


class SourceConfig(_Strict):
    """Where scheduled, incremental scoring reads new data (docs/operations.md).

    ``files`` scores ``data.score`` as a whole, once (the batch path of ``ae-anomaly
    score``). ``folder`` ingests the CSV/Parquet drops that land in ``path`` into a staging
    table (in the database of ``staging_url``, by default the sink's), then scores from
    each entity's watermark. ``sql`` scores
    from each entity's watermark in a raw metrics table (``url``, ``table``; wide or long
    form, column names from the ``data`` section).

    Attributes:
        kind: ``files``, ``folder`` or ``sql``.
        path: the landing folder (``folder``).
        url: SQLAlchemy URL of the raw metrics database (``sql``).
        table: raw metrics table (``sql``).
        since: ignore data before this timestamp (ISO 8601, UTC); default: all data.
        settle_seconds: a landing file modified more recently than this is still being
            written and waits for a later attempt.
        temp_suffixes: names ending so (or starting with ``.`` or ``~``) are files still
            being written, ignored until renamed.
        processed_dir: sub-folder of ``path`` that ingested files move to.
        quarantine_dir: sub-folder of ``path`` that invalid files move to, each with a
            ``<name>.reason.txt``.
        staging_table: table that holds ingested landing data (``folder``).
        staging_url: SQLAlchemy URL of the database holding ``staging_table``
            (``folder``); default: ``sink.url``. The landing folder opens its own
            connection to it, so the staging table may live apart from the anomaly table.
        retries: attempts after the first for transient errors (database unavailable,
            file still being written).
        retry_delay_seconds: first retry delay; doubled for each later retry.
    """

    kind: Literal["files", "folder", "sql"] = "files"
    path: str | None = None
    url: str | None = None
    table: str = "metrics"
    since: str | None = None
    settle_seconds: float = Field(10.0, ge=0)
    temp_suffixes: list[str] = Field(default_factory=lambda: [
        ".tmp", ".part", ".partial", ".inprogress", ".writing", ".crdownload", ".filepart"])
    processed_dir: str = "processed"
    quarantine_dir: str = "quarantine"
    staging_table: str = "landing_metrics"
    staging_url: str | None = None
    retries: int = Field(4, ge=0)
    retry_delay_seconds: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _where(self) -> SourceConfig:
        if self.kind == "folder" and not self.path:
            raise ValueError("source.kind 'folder' needs source.path (the landing folder)")
        if self.kind == "sql" and not self.url:
            raise ValueError("source.kind 'sql' needs source.url (a SQLAlchemy URL)")
        return self


class PromotionConfig(_Strict):
    """Gates a challenger must pass to become ``champion`` (``ae-anomaly promote``).

    Both models score the same evaluation window: ``eval_data`` when set (a file or folder;
    a ``label_col`` column, 1 = anomalous, enables the quality gate), otherwise the newest
    ``eval_steps`` steps per entity of the incremental source, otherwise ``data.score``.

    Attributes:
        auto: the training flow runs promotion after registering a challenger.
        eval_data: evaluation file or folder.
        eval_steps: newest steps per entity read from the source when ``eval_data`` is unset.
        label_col: label column of ``eval_data``.
        metric: labelled quality metric (``auc_pr``, ``auc_roc`` or ``f1`` at the threshold).
        tolerance: the challenger's quality may be at most this much below the champion's.
        max_alert_rate: budget: flagged fraction of evaluation steps (of the normal ones,
            with labels). A challenger within it passes; above it, it passes only when its
            rate is at most the champion's plus ``alert_rate_tolerance`` (so a copy of the
            champion always passes, even on a window full of anomalies).
        alert_rate_tolerance: how far (absolute, as a fraction of steps) the challenger's
            alert rate may exceed the champion's.
        max_alert_increase: unlabelled: the challenger may raise at most
            ``(1 + max_alert_increase) * champion events + 1`` events.
        max_score_shift: median evaluation score over median calibration score must stay
            below this (a model that finds recent normal data unusual is refused), or at most
            ``1 + score_shift_tolerance`` times the champion's.
        score_shift_tolerance: relative slack on the champion's score shift.
        min_calibration: smallest calibration set (steps) the challenger's threshold may
            rest on (or the champion's, when that is smaller).
    """

    auto: bool = False
    eval_data: str | None = None
    eval_steps: int = Field(2880, ge=16)
    label_col: str = "label"
    metric: Literal["auc_pr", "auc_roc", "f1"] = "auc_pr"
    tolerance: float = Field(0.02, ge=0)
    max_alert_rate: float = Field(0.02, gt=0, le=1)
    alert_rate_tolerance: float = Field(0.005, ge=0, le=1)
    max_alert_increase: float = Field(0.5, ge=0)
    max_score_shift: float = Field(3.0, gt=0)
    score_shift_tolerance: float = Field(0.1, ge=0)
    min_calibration: int = Field(500, ge=1)


class ExecutionConfig(_Strict):
    """Where the flows' tasks run (docs/scale.md).

    ``local``: in the flow's own process, as before. ``dask``: on a Dask cluster through
    prefect-dask's ``DaskTaskRunner``: scheduled (incremental) scoring maps one task over
    each shard of entities, each loading the run's model version from the registry on its
    worker and writing its entities through the sink in their own transactions; training
    fits the model in one task on a worker. Tasks get paths, URIs and entity names, never
    frames or models, so every worker must reach the config file, the data, the tracking
    store and the sink at the same paths and URLs.

    Attributes:
        backend: ``local`` or ``dask``.
        address: a running Dask scheduler (``tcp://host:8786``); unset: a local cluster of
            ``workers`` processes is started for the run and stopped after it.
        workers: worker processes of the local cluster.
        threads_per_worker: threads of each local worker process.
        shard_size: entities per shard (task); unset: ``shards`` shards.
        shards: number of shards when ``shard_size`` is unset; unset: one per worker
            (``workers``), at most one per entity.
    """

    backend: Literal["local", "dask"] = "local"
    address: str | None = None
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    shard_size: int | None = Field(None, ge=1)
    shards: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_split(self) -> ExecutionConfig:
        if self.shard_size is not None and self.shards is not None:
            raise ValueError("execution: set shard_size or shards, not both")
        return self

class AlertsConfig(_Strict):
    """Alert delivery: outbox, channels, rules and operational alerts (docs/alerting.md).

    Every new or materially changed event (grew, escalated, closed) gets an outbox row in
    the same transaction as the event; a dispatcher sends the pending rows to every
    configured channel, in order, with retries. The outbox is written only while a channel
    is configured (or ``outbox`` is true).

    Attributes:
        outbox: write outbox rows even with no channel configured (a channel added later
            then catches up on them, within ``max_age_hours``).
        alertmanager_url: Alertmanager's base URL (``http://127.0.0.1:9093``); alerts are
            posted to ``/api/v2/alerts``.
        webhook_url: a generic JSON webhook: Alertmanager's webhook payload, version 4.
        slack_webhook_url: a Slack-compatible incoming webhook (``{"text": ..., "blocks"}``).
        webhook_secret_env: name of an environment variable holding an HMAC key; when set,
            webhook and Slack posts carry ``X-AE-Anomaly-Signature: sha256=<hex>`` over
            ``<X-AE-Anomaly-Timestamp>.<body>``.
        labels: static labels added to every alert (``{team: sre}``).
        dashboard_url: the dashboard's base URL, for the link to each event's page.
        severity_levels: severity label -> smallest severity (peak score / threshold) that
            earns it; the ``severity`` label of an alert.
        min_severity: events below this severity are recorded but not sent.
        entities: send only events of entities matching one of these glob patterns
            (empty: all).
        exclude_entities: never send events of entities matching these patterns.
        models: send only events of models (registered names) matching these patterns.
        exclude_models: never send events of these models.
        max_per_entity_per_day: the alarm budget: at most this many new alerts per entity
            and channel in 24 hours; further ones are recorded as rate-limited (escalations
            and resolutions of sent alerts still go out).
        min_firing_seconds: an alert stays firing at least this long after it was first
            sent (an event that closed before it was sent is posted with
            ``endsAt`` = now + this, so Alertmanager notifies before it resolves).
        open_ttl_hours: ``endsAt`` of an open event's alert (it is resolved explicitly when
            the event closes; this bounds it if the pipeline stops).
        timeout_seconds: HTTP timeout of one post.
        retry_base_seconds: first retry delay of a failed post; doubled per attempt.
        retry_max_seconds: the longest retry delay.
        max_age_hours: outbox rows older than this when first picked for a channel are
            marked expired instead of sent (a channel added later does not replay history).
        dispatch_interval_seconds: how often the dispatcher looks for pending rows
            (``ae-anomaly alerts dispatch``, and inside ``serve``).
        dispatch_seconds: how long a scoring run may spend sending what it queued before it
            exits (the rest stays pending for the dispatcher).
        retention_days: sent, parked and suppressed rows older than this are deleted.
        stale_after_intervals: operational alert when an entity's newest data is older
            than this many scoring intervals (``deployment.score_interval_seconds``, or 5
            minutes); 0 turns it off.
        backlog_alert_rows: operational alert when this many rows wait for a channel; 0
            turns it off.
        ops_alerts: send operational alerts (failed runs, quarantined files, stale sources,
            dispatcher backlog).
    """

    outbox: bool = False
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    slack_webhook_url: str | None = None
    webhook_secret_env: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    dashboard_url: str = "http://127.0.0.1:8050"
    severity_levels: dict[str, float] = Field(
        default_factory=lambda: {"warning": 0.0, "major": 2.0, "critical": 5.0})
    min_severity: float = Field(1.0, ge=0)
    entities: list[str] = Field(default_factory=list)
    exclude_entities: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    exclude_models: list[str] = Field(default_factory=list)
    max_per_entity_per_day: int = Field(20, ge=1)
    min_firing_seconds: float = Field(300.0, ge=0)
    open_ttl_hours: float = Field(24.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    retry_base_seconds: float = Field(5.0, ge=0)
    retry_max_seconds: float = Field(600.0, ge=0)
    max_age_hours: float = Field(72.0, gt=0)
    dispatch_interval_seconds: float = Field(10.0, gt=0)
    dispatch_seconds: float = Field(30.0, ge=0)
    retention_days: float = Field(30.0, gt=0)
    stale_after_intervals: int = Field(6, ge=0)
    backlog_alert_rows: int = Field(500, ge=0)
    ops_alerts: bool = True

    @model_validator(mode="after")
    def _levels(self) -> AlertsConfig:
        if not self.severity_levels:
            raise ValueError("alerts.severity_levels needs at least one level")
        for key in ("alertmanager_url", "webhook_url", "slack_webhook_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"alerts.{key} must be an http:// or https:// URL")
        return self

    def channels(self) -> dict[str, str]:
        """The configured channels: name (``alertmanager``, ``webhook``, ``slack``) -> URL."""
        named = {"alertmanager": self.alertmanager_url, "webhook": self.webhook_url,
                 "slack": self.slack_webhook_url}
        return {k: v for k, v in named.items() if v}

    @property
    def outbox_enabled(self) -> bool:
        """Whether event changes are written to the outbox."""
        return self.outbox or bool(self.channels())


class AppConfig(_Strict):
    """The whole configuration of a training + scoring pipeline."""

    data: DataConfig = DataConfig()
    window: WindowConfig = WindowConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    model: ModelConfig = ConvAEConfig()
    training: TrainingConfig = TrainingConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    events: EventsConfig = EventsConfig()
    scoring: ScoringConfig = ScoringConfig()
    sink: SinkConfig = SinkConfig()
    tracking: TrackingConfig = TrackingConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    source: SourceConfig = SourceConfig()
    promotion: PromotionConfig = PromotionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    alerts: AlertsConfig = AlertsConfig()


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


def resolve_config_path(path: str | Path) -> str:
    """``path``, or the copy of it shipped with the package when it does not exist here.

    The wheel carries the repository's ``configs/`` folder (``ae_anomaly/configs``), so
    ``configs/demo.yaml`` or ``configs/datasets/netflow.yaml`` work after ``pip install``
    from any directory. A path that exists, or has no packaged copy, is returned unchanged.
    """
    p = Path(path)
    parts = p.parts
    if p.exists() or p.is_absolute() or len(parts) < 2 or parts[0] != "configs":
        return str(path)
    from importlib.util import find_spec

    checkout = Path(__file__).resolve().parents[1]
    # A source checkout's own configs/ (beside the package) first, then the packaged copy.
    roots = [checkout / "configs"] if (checkout / "pyproject.toml").is_file() else []
    spec = find_spec("ae_anomaly.configs")
    roots += [Path(d) for d in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if root.joinpath(*parts[1:]).is_file():
            return str(root.joinpath(*parts[1:]))
    return str(path)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Load a YAML config file and apply ``key=value`` overrides.

    Args:
        path: YAML file; None for the built-in defaults.
        overrides: ``dotted.key=value`` strings, applied after the file; then
            ``${ENV_VAR}`` references are resolved in every string value.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: the file is missing or unreadable, a key or value is invalid, or a
            referenced environment variable is not set; the message names the file and
            the key (passwords in overrides masked).
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(resolve_config_path(path))
        if p.is_dir():
            raise ConfigError(f"{source}: is a folder, not a config file")
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_bytes().decode("utf-8-sig")) or {}
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not a UTF-8 text file (byte {exc.start} is "
                              f"0x{exc.object[exc.start]:02x}); a config is YAML text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        raw = loaded
    if overrides:
        apply_overrides(raw, overrides)
        source = f"{source} with overrides {mask_text(' '.join(overrides))}"
    try:
        raw = interpolate_env(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if isinstance(raw.get("model"), dict):
        raw["model"].setdefault("name", "conv_ae")  # the default family
    try:
        cfg = AppConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    if cfg.data.netflow:  # a data set description named as configs/datasets/...
        cfg.data.netflow = resolve_config_path(cfg.data.netflow)
    return cfg
