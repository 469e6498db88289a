"""What a benchmark run is configured with: :class:`BenchSettings` and how it is resolved.

The datasets and their defaults (:data:`DATASET_DEFAULTS`, :data:`ALWAYS_DEFAULTS`), the
``bench.*`` keys (:class:`BenchConfig`), the split of ``--set`` overrides into config,
``bench.*`` and ``models.<name>.*`` ones (:func:`split_overrides`), and
:func:`resolve_settings`, which turns a dataset, models, config file and overrides into the
:class:`BenchSettings` that decide every cell's result. Also the JSON helpers
(:func:`_jsonable`) the settings fingerprint and the results file share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ae_anomaly.config import (
    BASELINE_NAMES,
    AppConfig,
    CalibrationConfig,
    ModelConfig,
    apply_overrides,
    load_config,
)
from ae_anomaly.errors import ConfigError

DATASETS = ("smd", "nab", "nsl-kdd", "netflow")
TABULAR = ("nsl-kdd", "netflow")
# Calibration methods whose threshold does not depend on alpha (reported once).
_ALPHA_FREE = ("k_sigma",)


class BenchConfig(BaseModel):
    """Benchmark settings (``--set bench.KEY=VALUE``); see the package docstring."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    calibration_fraction: float = Field(0.1, gt=0, lt=0.5)
    check_fraction: float = Field(0.1, ge=0, lt=0.5)
    nab_detections: Literal["start", "mask"] = "start"
    save_scores: bool = False
    ensemble: bool = False


#: The headline alpha of the flow benchmarks (nsl-kdd, netflow): the alpha of the README's
#: flow figures. At the global default 0.001 the conformal threshold flags about one normal
#: flow in a thousand and F1 is near zero for every model on these data sets.
FLOW_ALPHA = 0.01

#: Per-dataset defaults, applied below the config file and ``--set`` (documented in
#: docs/benchmarks.md). SMD is already min-max scaled by its providers, so the PCA baseline
#: reads it as it is (the reference PCA of the issue does the same).
DATASET_DEFAULTS: dict[str, list[str]] = {
    "smd": ["models.pca.scaler=none", "postprocess.smooth=10", "postprocess.smooth_mode=center"],
    "nab": ["window.length=16", "bench.check_fraction=0", "bench.calibration_fraction=0.2",
            "postprocess.errors=causal", "postprocess.smooth=10", "events.cooldown=100",
            "calibration.alpha=0.01", "models.iforest.window=16", "models.pca.window=16"],
    "nsl-kdd": ["model.name=dense_ae", "bench.check_fraction=0",
                "bench.calibration_fraction=0.2", "models.iforest.window=1",
                "calibration.alpha=" + str(FLOW_ALPHA)],
    "netflow": ["model.name=dense_ae", "bench.check_fraction=0",
                "bench.calibration_fraction=0.2", "models.iforest.window=1",
                "calibration.alpha=" + str(FLOW_ALPHA)],
}
# One thread: on a shared 2-core machine two torch / BLAS threads contend with every other
# process and training runs several times slower (measured: 520 vs 4,000 windows/s).
ALWAYS_DEFAULTS = ["training.progress=false", "training.num_threads=1"]
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


@dataclass
class BenchSettings:
    """Everything that decides a cell's result, resolved from the config and overrides."""

    dataset: str
    data_dir: Path
    cfg: AppConfig
    bench: BenchConfig
    calibrations: list[tuple[str, float]]
    model_params: dict[str, dict[str, Any]]
    dataset_config: Path | None = None
    config_path: str | None = None
    overrides: list[str] = field(default_factory=list)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a results file must share with this run to be resumed."""
        return {
            "dataset": self.dataset,
            "data_dir": str(self.data_dir),
            "dataset_config": None if self.dataset_config is None else str(self.dataset_config),
            "config": _jsonable(self.cfg.model_dump(mode="json", exclude={"model"})),
            "bench": self.bench.model_dump(),
            "calibrations": [[m, a] for m, a in self.calibrations],
        }


def _dotted_keys(raw: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(raw, dict):
        for k, v in raw.items():
            key = f"{prefix}{k}"
            out.add(key)
            out |= _dotted_keys(v, key + ".")
    return out


def split_overrides(items: Iterable[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Split ``key=value`` overrides into config, ``bench.*`` and ``models.<name>.*`` ones.

    Returns:
        ``(config_overrides, bench_overrides, {model_name: [key=value, ...]})`` with the
        ``bench.`` / ``models.<name>.`` prefixes removed.
    """
    app, bench, models = [], [], {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if key.startswith("bench."):
            bench.append(item.strip()[len("bench."):])
        elif key.startswith("models."):
            parts = key.split(".")
            if len(parts) < 3:
                raise ConfigError(f"override '{item}': use models.<model>.<key>=<value>")
            rest = item.strip()[len("models.") + len(parts[1]) + 1:]
            models.setdefault(parts[1], []).append(rest)
        else:
            app.append(item)
    return app, bench, models


def resolve_settings(
    dataset: str,
    data_dir: str | Path,
    models: Sequence[str],
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    dataset_config: str | Path | None = None,
    calibration_methods: Sequence[str] | None = None,
    alphas: Sequence[float] | None = None,
) -> BenchSettings:
    """Resolve the configuration of a benchmark run.

    Precedence, lowest first: built-in defaults, :data:`DATASET_DEFAULTS` of the dataset,
    the config file, ``--set`` overrides. ``bench.*`` keys go to :class:`BenchConfig`,
    ``models.<name>.*`` keys to that model only (an autoencoder's ``model`` section or a
    baseline's parameters), other keys to the application config; ``model.*`` keys apply
    to every autoencoder of the run.

    Raises:
        ConfigError: an unknown dataset, model, key or value.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{dataset}'; datasets: {', '.join(DATASETS)}")
    user_app, user_bench, user_models = split_overrides(overrides)
    file_keys: set[str] = set()
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"{config_path}: config file not found")
        try:
            file_keys = _dotted_keys(yaml.safe_load(p.read_text()) or {})
        except yaml.YAMLError:
            file_keys = set()  # load_config reports it with the line
    user_keys = {o.split("=", 1)[0].strip() for o in overrides}
    defaults = [d for d in ALWAYS_DEFAULTS + DATASET_DEFAULTS[dataset]
                if d.split("=", 1)[0] not in file_keys | user_keys]
    def_app, def_bench, def_models = split_overrides(defaults)
    cfg = load_config(config_path, def_app + user_app)

    bench_raw = apply_overrides({}, def_bench + user_bench)
    try:
        bench = BenchConfig.model_validate(bench_raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"bench.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    from ae_anomaly.models import available_models

    known = set(available_models()) | set(BASELINE_NAMES)
    for name in list(models) + list(user_models):
        if name not in known:
            raise ConfigError(f"unknown model '{name}'; models: {', '.join(sorted(known))}")
    model_params: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in models:
        items = def_models.get(name, []) + user_models.get(name, [])
        if name in BASELINE_NAMES:
            params = apply_overrides({}, items)
            try:
                model_params[name] = _MODEL_ADAPTER.validate_python(
                    {**params, "name": name}).model_dump()
            except ValidationError as err:
                first = err.errors()[0]
                problems.append(f"models.{name}.{_key(first['loc'], name)}: {first['msg']}")
        else:
            raw = cfg.model.model_dump() if cfg.model.name == name else {}
            model_keys = {k.split(".", 1)[1] for k in user_keys if k.startswith("model.")}
            if cfg.model.name != name:  # keep the model.* keys given for every autoencoder
                base = cfg.model.model_dump()
                raw = {k: base[k] for k in model_keys if k in base and k != "name"}
            raw = apply_overrides({**raw, "name": name}, items)
            try:
                model_params[name] = _MODEL_ADAPTER.validate_python(raw).model_dump()
            except ValidationError as err:
                first = err.errors()[0]
                problems.append(f"model '{name}': key '{_key(first['loc'], name)}': "
                                f"{first['msg']}")
                continue
            problem = _network_problem(name, model_params[name], cfg, dataset in TABULAR)
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(f"{len(problems)} of {len(models)} models cannot run on "
                          f"{dataset} (nothing was trained): " + "; ".join(problems))

    methods = list(calibration_methods or [cfg.calibration.method])
    alpha_list = list(alphas or [cfg.calibration.alpha])
    if "best_f1" in methods:
        raise ConfigError("calibration 'best_f1' needs labels; the benchmark never fits a "
                          "threshold on test labels (best_f1 is reported as an oracle anyway)")
    calibrations: list[tuple[str, float]] = []
    for m in methods:
        for a in alpha_list[:1] if m in _ALPHA_FREE else alpha_list:
            try:
                CalibrationConfig(method=m, alpha=a)
            except ValidationError as err:
                raise ConfigError(f"calibration {m} at alpha {a}: "
                                  f"{err.errors()[0]['msg']}") from None
            calibrations.append((m, float(a)))
    ds_cfg = None
    if dataset in TABULAR:
        ds_cfg = Path(dataset_config) if dataset_config else None
        if ds_cfg is None and dataset == "nsl-kdd":
            ds_cfg = Path(__file__).resolve().parents[3] / "configs" / "datasets" / "nsl_kdd.yaml"
        if ds_cfg is None:
            raise ConfigError("--dataset netflow needs --dataset-config FILE (a flow dataset YAML)")
        ds_cfg = ds_cfg.resolve()
    return BenchSettings(dataset, Path(data_dir).resolve(), cfg, bench, calibrations,
                         model_params, ds_cfg, config_path, list(overrides))



def _key(loc: Sequence[Any], name: str) -> str:
    """A validation error's key, without the union's tag (the model name) in front."""
    parts = [str(p) for p in loc]
    return ".".join(parts[1:] if parts[:1] == [name] else parts)


def _network_problem(name: str, params: dict[str, Any], cfg: AppConfig,
                     rows: bool) -> str | None:
    """Why an autoencoder's settings cannot run on the data kind, or None.

    Builds the network once for a tiny input of the run's shape (flow rows: window 1;
    series: the configured window), as the detector's fit would after reading the data, so
    a bad combination (``vae`` with ``arch: conv`` on rows) fails before any training.
    """
    from ae_anomaly.models import build_model

    model = _MODEL_ADAPTER.validate_python(params)
    window = 1 if rows else cfg.window.length
    hint = f" (--set models.{name}.arch=dense)" if rows and params.get("arch") == "conv" else ""
    try:
        net = build_model(model, 3, window)
    except (ConfigError, ValueError, RuntimeError) as exc:
        return f"{exc}{hint}"
    if rows and net.needs_context:
        return (f"model '{name}' is conditioned on time-of-day context, which flow rows "
                "do not have; use it on series")
    return None


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return _nan_to_none(obj)

