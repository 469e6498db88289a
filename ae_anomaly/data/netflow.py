"""Flow data sets described in YAML: the description, a validating reader, and aggregation.

A new flow data set needs a YAML file and no code: :class:`NetflowDatasetConfig` names the
columns (or the header), which are numeric, categorical, the label and the timestamp, and
:func:`read_netflow` reads and validates a file against it. :func:`aggregate_netflow` turns
timestamped flows into a wide per-entity time series (``timestamp, entity, <features>``) that
the time-series side of the pipeline reads like any other wide frame.

Every bad-input case is a :class:`~ae_anomaly.errors.DataError` naming the file, the column
and the first bad data row (counted from 1 after the header); a bad description is a
:class:`~ae_anomaly.errors.ConfigError` naming the YAML file and the key.
"""

from __future__ import annotations

import glob
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ae_anomaly.config import AppConfig, DataConfig, expand_path
from ae_anomaly.data.timeseries import check_in_memory_size, csv_encoding, list_data_files
from ae_anomaly.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IS_ANOMALY = "is_anomaly"
TS = "timestamp"
ENTITY = "entity"
MISSING_TOKENS = ("", "nan", "NaN", "NA", "N/A", "null", "NULL", "None")
ENTITY_SEPARATOR = "|"
_GLOB_CHARS = set("*?[")
LOG_PREFIX = "log1p_"
FAILED_FLOWS = "failed_flows"

AggFeature = Literal[
    "flows",
    "bytes",
    "packets",
    "distinct_dst",
    "distinct_dst_port",
    "failed_share",
    "bytes_out_per_flow",
]
DEFAULT_AGG_FEATURES: list[str] = [
    "flows",
    "bytes",
    "packets",
    "distinct_dst",
    "distinct_dst_port",
    "failed_share",
    "bytes_out_per_flow",
]


# --------------------------------------------------------------------------- description
class AggregationConfig(BaseModel):
    """How timestamped flows become a per-entity time series.

    The ``*_col`` keys name the flow columns the features read, so a data set with other
    column names needs only its YAML file. A feature reads only the columns it needs:
    ``bytes`` and ``bytes_out_per_flow`` read ``bytes_col``, ``packets`` reads
    ``packets_col``, ``distinct_dst`` reads ``dst_col``, ``distinct_dst_port`` reads
    ``dst_port_col`` and ``failed_share`` reads ``flags_col``; ``flows`` reads none.
    """

    model_config = ConfigDict(extra="forbid")

    interval: str = "1min"
    entity: str = "src_ip"
    features: list[AggFeature] = Field(default_factory=lambda: list(DEFAULT_AGG_FEATURES))
    bytes_col: str = "bytes"
    packets_col: str = "packets"
    dst_col: str = "dst_ip"
    dst_port_col: str = "dst_port"
    flags_col: str = "tcp_flags"

    @field_validator("interval")
    @classmethod
    def _fixed_interval(cls, value: str) -> str:
        try:
            step = pd.Timedelta(pd.tseries.frequencies.to_offset(value))
        except (ValueError, TypeError):
            raise ValueError(
                f"'{value}' is not a fixed-length interval such as '30s', '1min' or '1h'"
            ) from None
        if step <= pd.Timedelta(0):
            raise ValueError(f"interval '{value}' must be positive")
        return value

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one feature")
        if len(set(value)) != len(value):
            raise ValueError("a feature is listed twice")
        return value

    @property
    def step(self) -> pd.Timedelta:
        """The interval as a :class:`pandas.Timedelta`."""
        return pd.Timedelta(pd.tseries.frequencies.to_offset(self.interval))

    def needed_columns(self) -> list[str]:
        """The flow columns the configured features read (entity included), in a stable order."""
        need = {
            "bytes": self.bytes_col,
            "bytes_out_per_flow": self.bytes_col,
            "packets": self.packets_col,
            "distinct_dst": self.dst_col,
            "distinct_dst_port": self.dst_port_col,
            "failed_share": self.flags_col,
        }
        cols = [self.entity] + [need[f] for f in self.features if f in need]
        return list(dict.fromkeys(cols))


class NetflowSplitConfig(BaseModel):
    """One labelled file (or glob) split into train and test rows by the description.

    Train: a seeded random ``train_fraction`` of the label-normal rows. Test: the other
    normal rows plus every attack row. The same file, fraction and seed give the same rows.
    """

    model_config = ConfigDict(extra="forbid")

    file: str
    train_fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 0


class NetflowDatasetConfig(BaseModel):
    """A flow data set: its files, its columns and what each column is.

    ``train`` and ``test`` are a file or a glob relative to the data folder. Instead of them,
    ``split`` names one labelled file (or glob) and splits its rows
    (:class:`NetflowSplitConfig`; :func:`split_part`). When the file has
    no header, ``columns`` names every field in order. ``log1p`` lists heavy-tailed count
    columns to log-transform, or ``"auto"`` to pick non-negative numeric columns whose
    max/p99 ratio or skew is large (see :func:`ae_anomaly.data.netflow_features.auto_log1p`).
    The ``label`` column is optional in a file (scoring data usually has none); when present,
    a row is anomalous when its label is not in ``normal_values`` (compared as text after
    :func:`label_text`, so ``0``, ``0.0`` and ``"0"`` are one value, as are ``true`` and
    ``True``).
    ``keep`` lists columns read and passed through without being features (e.g. ``dst_ip``).
    ``timestamp_unit`` is set when timestamps are Unix epoch numbers (``"s"``, ``"ms"``...);
    otherwise they are date-time text, naive values taken as UTC.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    format: Literal["csv", "parquet"] = "csv"
    header: bool = True
    columns: list[str] | None = None
    train: str | None = None
    test: str | None = None
    split: NetflowSplitConfig | None = None
    timestamp: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None = None
    entity: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    log1p: list[str] | Literal["auto"] = "auto"
    label: str | None = None
    normal_values: list[str] = Field(default_factory=lambda: ["normal"])
    drop: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    aggregate: AggregationConfig | None = None

    @field_validator("normal_values", mode="before")
    @classmethod
    def _label_values_as_text(cls, value: Any) -> Any:
        # YAML reads `[0]` as an int and `[true]` as a bool: labels are compared as text.
        if isinstance(value, list):
            return [str(v) if isinstance(v, bool | int | float) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NetflowDatasetConfig:
        if self.split is not None:
            both = [k for k in ("train", "test") if getattr(self, k) is not None]
            if both:
                raise ValueError(f"key 'split': not with '{both[0]}' (a split picks the train "
                                 "and test rows of one file; name either the split or the "
                                 "train/test files)")
            if self.label is None:
                raise ValueError("key 'split': a split needs the 'label' column")
        for key in ("columns", "entity", "numeric", "categorical", "drop", "keep"):
            values = getattr(self, key) or []
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"key '{key}': '{dupes[0]}' is listed twice")
        if not self.header and not self.columns:
            raise ValueError("key 'columns': a file without a header needs its column names")
        if self.header and self.columns:
            raise ValueError("key 'columns': only for files without a header (header: false)")
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ValueError(f"key 'categorical': '{sorted(both)[0]}' is also numeric")
        if self.log1p != "auto":
            extra = [c for c in self.log1p if c not in self.numeric]
            if extra:
                raise ValueError(f"key 'log1p': '{extra[0]}' is not a numeric column")
        special = {"timestamp": self.timestamp, "label": self.label}
        for key, col in special.items():
            if col is not None and (col in self.numeric or col in self.categorical):
                raise ValueError(f"key '{key}': '{col}' is also a feature column")
        if self.label is not None and not self.normal_values:
            raise ValueError("key 'normal_values': name at least one normal label value")
        clash = [c for c in self.drop if c in self.used_columns(include_label=True)]
        if clash:
            raise ValueError(f"key 'drop': '{clash[0]}' is also used")
        if self.aggregate is not None and self.timestamp is None:
            raise ValueError("key 'aggregate': aggregation needs a 'timestamp' column")
        if self.columns:
            known = set(self.columns)
            for col in self.used_columns(include_label=True) + self.drop:
                if col not in known:
                    raise ValueError(f"key 'columns': '{col}' is used but not in 'columns'")
        return self

    def used_columns(self, include_label: bool = False) -> list[str]:
        """The columns :func:`read_netflow` requires, in a stable order, without duplicates.

        Args:
            include_label: also list the label column (which a file may lack).
        """
        cols: list[str] = []
        if self.timestamp is not None:
            cols.append(self.timestamp)
        cols += self.entity + self.numeric + self.categorical + self.keep
        if self.aggregate is not None:
            cols += self.aggregate.needed_columns()
        if include_label and self.label is not None:
            cols.append(self.label)
        return list(dict.fromkeys(cols))


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    # Union members and validators add parts like "list[str]" or "function-after[...]".
    parts = [str(p) for p in first["loc"] if not re.search(r"[\[\]]|^function-", str(p))]
    loc = ".".join(parts)
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    where = f"key '{loc}': " if loc else ""
    return f"{source}: {where}{msg}{more}"


def load_netflow_dataset_config(path: str | Path) -> NetflowDatasetConfig:
    """Load a flow data set description from YAML.

    Args:
        path: the YAML file.

    Returns:
        The validated description.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a key or value is invalid; the
            message names the file and the key.
    """
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{source}: dataset description not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        return NetflowDatasetConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def netflow_files(
    ds: NetflowDatasetConfig, split: Literal["train", "test"], data_dir: str | Path
) -> list[Path]:
    """The files of a split under ``data_dir``: ``ds.train`` or ``ds.test`` (a file or glob),
    or, when the description has a ``split``, its one labelled ``split.file`` for both.

    Raises:
        ConfigError: the description names no file for the split.
        DataError: nothing matches.
    """
    key = "split.file" if ds.split is not None else split
    pattern = ds.split.file if ds.split is not None else getattr(ds, split)
    if pattern is None:
        raise ConfigError(f"dataset '{ds.name}': key '{split}' is not set")
    full = Path(data_dir) / pattern
    files = sorted(Path(f) for f in glob.glob(str(full)) if Path(f).is_file())
    if not files:
        raise DataError(f"no file matches the '{key}' pattern '{pattern}'", path=str(full))
    return files


def split_part(
    frame: pd.DataFrame, ds: NetflowDatasetConfig, part: Literal["train", "test"]
) -> pd.DataFrame:
    """The train or test rows of a labelled frame under the description's ``split``.

    Train: a random ``split.train_fraction`` of the label-normal rows, drawn with
    ``split.seed``; test: every other row (the remaining normal rows and all attack rows).
    Both keep the file order, are disjoint and together hold every row; the same frame,
    fraction and seed always give the same rows.

    Raises:
        ConfigError: the description has no ``split``.
        DataError: the frame has no label column, or no normal row.
    """
    if ds.split is None:
        raise ConfigError(f"dataset '{ds.name}': no 'split' section")
    if IS_ANOMALY not in frame.columns:
        raise DataError(f"dataset '{ds.name}': the split needs labelled rows, but the "
                        f"label column '{ds.label}' is missing")
    normal = np.flatnonzero(~frame[IS_ANOMALY].to_numpy(dtype=bool))
    if len(normal) == 0:
        raise DataError(f"dataset '{ds.name}': no row has a normal label "
                        f"({', '.join(ds.normal_values)}); nothing to train on")
    rng = np.random.default_rng(ds.split.seed)
    n_train = max(1, int(round(ds.split.train_fraction * len(normal))))
    is_train = np.zeros(len(frame), dtype=bool)
    is_train[rng.permutation(normal)[:n_train]] = True
    keep = is_train if part == "train" else ~is_train
    return frame[keep].reset_index(drop=True)


def read_netflow_split(
    ds: NetflowDatasetConfig, split: Literal["train", "test"], data_dir: str | Path
) -> pd.DataFrame:
    """Read and concatenate every file of a split (:func:`netflow_files`, :func:`read_netflow`);
    with the description's ``split``, only that part's rows (:func:`split_part`)."""
    frames = [read_netflow(f, ds) for f in netflow_files(ds, split, data_dir)]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame if ds.split is None else split_part(frame, ds, split)


# --------------------------------------------------------------------------- reading
def category_strings(values: pd.Series) -> pd.Series:
    """Categorical values as text; whole-number floats lose their ``.0``; missing stays NA.

    Args:
        values: a column read from a file (text, integers, or floats when a cell was empty).

    Returns:
        A ``str``-typed series, so ``443``, ``443.0`` and ``"443"`` are one category.
    """
    if pd.api.types.is_bool_dtype(values):
        return values.astype(str)
    if pd.api.types.is_numeric_dtype(values):
        num = values.astype("float64")
        finite = num.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return num.astype("Int64").astype(str)
        return num.astype(str)
    text = values.astype(str).str.strip()
    return text.mask(text.isin(MISSING_TOKENS))


def coerce_numeric(
    values: pd.Series, column: str, path: str | Path | None = None, rows: np.ndarray | None = None
) -> pd.Series:
    """A column as float64; empty cells become NaN, text or infinity is a :class:`DataError`.

    Args:
        values: the column.
        column: its name, for the error.
        path: the file it came from, for the error.
        rows: 1-based data row numbers of the values; default 1..N.

    Raises:
        DataError: the first value that is not a finite number, naming column and row.
    """
    where = None if path is None else str(path)
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("float64")
    if not pd.api.types.is_numeric_dtype(values):
        text = values.astype(str).str.strip()
        missing = (text.isna() | text.isin(MISSING_TOKENS)).to_numpy()
        nums = pd.to_numeric(text.mask(missing), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        bad = np.isnan(nums) & ~missing
        if bad.any():
            i = int(np.argmax(bad))
            row = int(rows[i]) if rows is not None else i + 1
            raise DataError(
                f"value '{text.iloc[i]}' is not a number", path=where, column=column, row=row
            )
    else:
        nums = values.to_numpy(dtype=np.float64, na_value=np.nan)
    inf = np.isinf(nums)
    if inf.any():
        i = int(np.argmax(inf))
        row = int(rows[i]) if rows is not None else i + 1
        raise DataError("value is infinite", path=where, column=column, row=row)
    return pd.Series(nums, index=values.index, name=values.name)


def parse_timestamps(
    values: pd.Series,
    column: str,
    unit: str | None = None,
    path: str | Path | None = None,
) -> pd.Series:
    """Timestamps as naive UTC ``datetime64[ns]``; the first unparsable or missing one is an error.

    Args:
        values: the column (text, epoch numbers when ``unit`` is set, or datetimes).
        column: its name, for the error.
        unit: ``"s"``, ``"ms"``, ``"us"`` or ``"ns"`` for Unix epoch numbers; None for text.
        path: the file, for the error.

    Raises:
        DataError: a value is missing or does not parse, naming column and row.
    """
    where = None if path is None else str(path)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
        shown = values.astype(str)
    elif unit is not None:
        nums = coerce_numeric(values, column, path)
        parsed = pd.to_datetime(nums, unit=unit, utc=True, errors="coerce")
        shown = values.astype(str)
    else:
        shown = values.astype(str).str.strip()
        try:
            parsed = pd.to_datetime(shown, utc=True, errors="coerce", format="mixed")
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(f"timestamps do not parse ({exc})", path=where, column=column) from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"timestamp '{shown.iloc[i]}' is missing or does not parse",
            path=where,
            column=column,
            row=i + 1,
        )
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def label_text(value: Any) -> str:
    """A label value as the text it is compared by: trimmed; whole numbers without ``.0``
    (``0``, ``0.0`` and ``"0"`` are ``"0"``); ``true`` / ``false`` in lower case."""
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        num = float(text)
    except ValueError:
        return text
    if math.isfinite(num) and num == int(num):
        return str(int(num))
    return str(num) if math.isfinite(num) else text


def label_is_anomaly(
    labels: pd.Series, ds: NetflowDatasetConfig, path: str | Path | None = None
) -> pd.Series:
    """True where a label is not one of ``ds.normal_values`` (both sides as :func:`label_text`).

    Raises:
        DataError: a label is missing, naming the row.
    """
    text = category_strings(labels)
    missing = text.isna().to_numpy()
    if missing.any():
        raise DataError(
            "label is missing",
            path=None if path is None else str(path),
            column=ds.label,
            row=int(np.argmax(missing)) + 1,
        )
    normal = {label_text(v) for v in ds.normal_values}
    canonical = {v: label_text(v) for v in text.unique()}
    return (~text.map(canonical).isin(normal)).astype(bool).rename(IS_ANOMALY)


def _parser_row(exc: Exception, header: bool) -> int | None:
    match = re.search(r"line (\d+)", str(exc))
    if match is None:
        return None
    return int(match.group(1)) - (1 if header else 0)


def _read_csv(path: Path, ds: NetflowDatasetConfig) -> pd.DataFrame:
    where = str(path)
    text_cols = set(ds.entity + ds.categorical + ([ds.label] if ds.label else []))
    if ds.timestamp is not None and ds.timestamp_unit is None:
        text_cols.add(ds.timestamp)
    common: dict[str, Any] = {"skipinitialspace": True, "low_memory": False,
                              "encoding": csv_encoding(path)}
    try:
        if ds.header:
            # The header and the first data row: a ParserError when that row is longer.
            pd.read_csv(path, header=None, nrows=2, dtype=str, **common)
            head = pd.read_csv(path, nrows=0, **common)
            names = [str(c).strip() for c in head.columns]
            missing = [c for c in ds.used_columns() if c not in names]
            if missing:
                raise DataError("declared column is not in the file", path=where, column=missing[0])
            # No usecols, so a later row with too many fields is a ParserError too.
            frame = pd.read_csv(
                path,
                index_col=False,
                dtype={c: str for c, n in zip(head.columns, names, strict=True) if n in text_cols},
                **common,
            )
            frame.columns = names
            frame = frame.loc[:, ~frame.columns.duplicated()]
            frame = frame[[c for c in ds.used_columns(include_label=True) if c in names]]
        else:
            columns = ds.columns or []
            wanted = ds.used_columns(include_label=True)
            # No names and no usecols, so a row with too many fields is a ParserError.
            frame = pd.read_csv(
                path,
                header=None,
                dtype={i: str for i, c in enumerate(columns) if c in text_cols},
                **common,
            )
            if frame.shape[1] != len(columns):
                raise DataError(
                    f"rows have {frame.shape[1]} fields but the description names "
                    f"{len(columns)} columns",
                    path=where,
                    row=1,
                )
            frame.columns = columns
            frame = frame[wanted]
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", path=where) from None
    except pd.errors.ParserError as exc:
        msg = str(exc).strip().splitlines()[0]
        raise DataError(
            f"not a valid CSV file ({msg})", path=where, row=_parser_row(exc, ds.header)
        ) from None
    except UnicodeDecodeError:
        raise DataError("file is not UTF-8 text", path=where) from None
    return frame


def _read_parquet(path: Path, ds: NetflowDatasetConfig) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"not a readable Parquet file ({exc})", path=str(path)) from None
    missing = [c for c in ds.used_columns() if c not in frame.columns]
    if missing:
        raise DataError("declared column is not in the file", path=str(path), column=missing[0])
    return frame[[c for c in ds.used_columns(include_label=True) if c in frame.columns]]


def read_netflow(path: str | Path, ds: NetflowDatasetConfig) -> pd.DataFrame:
    """Read one flow file and validate it against its description.

    Args:
        path: a CSV or Parquet file (as ``ds.format`` says).
        ds: the data set description.

    Returns:
        The declared columns (timestamp, entity, numeric, categorical, kept, aggregation and
        label columns) with numeric columns as float64 (empty cells NaN), categorical and
        entity columns as strings, the timestamp as naive UTC ``datetime64[ns]``, and, when
        the file has the label column, a boolean ``is_anomaly`` column.

    Raises:
        DataError: the file is missing, empty or unreadable, a declared column is missing, a
            numeric value is not a number, a timestamp does not parse, or a label is missing;
            the message names the file, the column and the first bad data row.
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise DataError("no such file", path=where)
    if p.stat().st_size == 0:
        raise DataError("file is empty", path=where)
    frame = _read_csv(p, ds) if ds.format == "csv" else _read_parquet(p, ds)
    if len(frame) == 0:
        raise DataError("file has no data rows", path=where)

    out: dict[str, pd.Series] = {}
    if ds.timestamp is not None:
        out[ds.timestamp] = parse_timestamps(
            frame[ds.timestamp], ds.timestamp, ds.timestamp_unit, p
        )
    for col in ds.entity:
        ent = category_strings(frame[col])
        missing = ent.isna().to_numpy()
        if missing.any():
            raise DataError(
                "entity is missing", path=where, column=col, row=int(np.argmax(missing)) + 1
            )
        out[col] = ent
    agg_numeric = []
    if ds.aggregate is not None:
        agg_numeric = [ds.aggregate.bytes_col, ds.aggregate.packets_col]
    for col in ds.numeric + [c for c in agg_numeric if c in frame.columns]:
        if col not in out:
            out[col] = coerce_numeric(frame[col], col, p)
    for col in ds.categorical:
        out[col] = category_strings(frame[col])
    for col in ds.used_columns():
        if col not in out:
            out[col] = frame[col]
    result = pd.DataFrame(out, index=frame.index)
    if ds.label is not None:
        if ds.label in frame.columns:
            result[ds.label] = category_strings(frame[ds.label])
            result[IS_ANOMALY] = label_is_anomaly(frame[ds.label], ds, p)
        else:
            log.info("%s: no label column '%s'; rows are unlabelled", where, ds.label)
    extra = [c for c in ds.drop if c in frame.columns]
    if extra:
        log.debug("%s: dropping %s", where, extra)
    log.info("%s: read %d flows", where, len(result))
    return result.reset_index(drop=True)


# --------------------------------------------------------------------------- aggregation
def _failed(flags: pd.Series) -> np.ndarray:
    """Failed or refused connections: TCP flags containing ``R`` (reset) or exactly ``S``.

    Placeholder characters are ignored, so nfdump's ``....S.`` counts as ``S``.
    """
    text = category_strings(flags).str.upper().str.replace(r"[.\-\s]", "", regex=True)
    failed = text.str.contains("R", regex=False) | (text == "S")
    return failed.fillna(False).to_numpy(dtype=bool)


def aggregate_netflow(
    frame: pd.DataFrame, ds: NetflowDatasetConfig, agg: AggregationConfig | None = None
) -> pd.DataFrame:
    """Per-entity time series from timestamped flows.

    Every interval between an entity's first and last flow gets a row; intervals without
    flows have zero counts and zero shares. Features:

    - ``flows``: number of flows; ``bytes``, ``packets``: their sums;
    - ``distinct_dst``, ``distinct_dst_port``: distinct destinations and destination ports;
    - ``failed_share``: share of flows whose TCP flags contain ``R`` or are exactly ``S``;
    - ``bytes_out_per_flow``: bytes sent per flow (0 without flows).

    Args:
        frame: flows, as :func:`read_netflow` returns them.
        ds: the data set description (its ``timestamp`` and ``aggregate`` section).
        agg: overrides ``ds.aggregate``.

    Returns:
        A wide frame ``timestamp, entity, <features...>`` (plus ``is_anomaly`` when the flows
        are labelled: any anomalous flow in the interval), sorted by entity then timestamp;
        timestamps are interval starts.

    Raises:
        ConfigError: neither ``agg`` nor ``ds.aggregate`` is set, or ``ds.timestamp`` is not.
        DataError: a needed column is missing, or a timestamp or entity value is missing.
    """
    agg = agg or ds.aggregate
    if agg is None:
        raise ConfigError(f"dataset '{ds.name}': no 'aggregate' section")
    if ds.timestamp is None:
        raise ConfigError(f"dataset '{ds.name}': aggregation needs a 'timestamp' column")
    for col in [ds.timestamp] + agg.needed_columns():
        if col not in frame.columns:
            raise DataError("column needed for aggregation is missing", column=col)
    ts = parse_timestamps(frame[ds.timestamp], ds.timestamp)
    entity = category_strings(frame[agg.entity])
    missing = entity.isna().to_numpy()
    if missing.any():
        raise DataError("entity is missing", column=agg.entity, row=int(np.argmax(missing)) + 1)
    step = agg.step
    bins = ts.dt.floor(step)

    work = pd.DataFrame({ENTITY: entity.to_numpy(dtype=object), TS: bins.to_numpy()})
    spec: dict[str, tuple[str, str]] = {"flows": (TS, "size")}
    feats = set(agg.features)
    if feats & {"bytes", "bytes_out_per_flow"}:
        work["_bytes"] = coerce_numeric(frame[agg.bytes_col], agg.bytes_col).fillna(0).to_numpy()
        spec["bytes"] = ("_bytes", "sum")
    if "packets" in feats:
        work["_packets"] = (
            coerce_numeric(frame[agg.packets_col], agg.packets_col).fillna(0).to_numpy()
        )
        spec["packets"] = ("_packets", "sum")
    if "distinct_dst" in feats:
        work["_dst"] = category_strings(frame[agg.dst_col]).to_numpy(dtype=object)
        spec["distinct_dst"] = ("_dst", "nunique")
    if "distinct_dst_port" in feats:
        work["_dport"] = category_strings(frame[agg.dst_port_col]).to_numpy(dtype=object)
        spec["distinct_dst_port"] = ("_dport", "nunique")
    if "failed_share" in feats:
        work["_failed"] = _failed(frame[agg.flags_col]).astype(np.int64)
        spec["failed"] = ("_failed", "sum")
    labelled = IS_ANOMALY in frame.columns or (ds.label is not None and ds.label in frame.columns)
    if labelled:
        flags = (
            frame[IS_ANOMALY].astype(bool)
            if IS_ANOMALY in frame.columns
            else label_is_anomaly(frame[ds.label], ds)
        )
        work["_anom"] = flags.to_numpy(dtype=bool).astype(np.int8)
        spec[IS_ANOMALY] = ("_anom", "max")

    grouped = work.groupby([ENTITY, TS], sort=True).agg(**spec)

    # Every interval between each entity's first and last one, built without a Python loop.
    span = grouped.reset_index().groupby(ENTITY, sort=True)[TS].agg(["min", "max"])
    n_steps = ((span["max"] - span["min"]) // step + 1).to_numpy(dtype=np.int64)
    ent_rep = np.repeat(span.index.to_numpy(dtype=object), n_steps)
    starts = np.repeat(span["min"].to_numpy(), n_steps)
    offsets = np.arange(int(n_steps.sum())) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
    stamps = starts + offsets * step.to_timedelta64()
    full = pd.MultiIndex.from_arrays([ent_rep, stamps], names=[ENTITY, TS])
    grouped = grouped.reindex(full, fill_value=0)

    flows = grouped["flows"].to_numpy(dtype=np.int64)
    safe = np.maximum(flows, 1)
    out = pd.DataFrame(
        {TS: stamps.astype("datetime64[ns]"), ENTITY: pd.array(ent_rep, dtype="str")}
    )
    for feat in agg.features:
        if feat == "flows":
            out[feat] = flows
        elif feat in ("bytes", "packets"):
            out[feat] = grouped[feat].to_numpy(dtype=np.float64)
        elif feat in ("distinct_dst", "distinct_dst_port"):
            out[feat] = grouped[feat].to_numpy(dtype=np.int64)
        elif feat == "failed_share":
            out[feat] = np.where(flows > 0, grouped["failed"].to_numpy(np.float64) / safe, 0.0)
        elif feat == "bytes_out_per_flow":
            out[feat] = np.where(flows > 0, grouped["bytes"].to_numpy(np.float64) / safe, 0.0)
    if labelled:
        out[IS_ANOMALY] = grouped[IS_ANOMALY].to_numpy(dtype=bool)
    log.info(
        "aggregated %d flows into %d rows for %d entities at %s",
        len(frame),
        len(out),
        len(span),
        agg.interval,
    )
    return out


# --------------------------------------------------------------------------- pipeline input
def load_netflow_dataset(data_cfg: DataConfig) -> NetflowDatasetConfig:
    """The flow data set description that ``data.netflow`` names.

    Raises:
        ConfigError: ``data.netflow`` is not set, or the description is missing or invalid.
    """
    if not data_cfg.netflow:
        raise ConfigError(
            "data.netflow is not set: name a flow data set description "
            "(e.g. --set data.netflow=configs/datasets/netflow.yaml)"
        )
    return load_netflow_dataset_config(expand_path(data_cfg.netflow))


def netflow_paths(path: str | Path, ds: NetflowDatasetConfig) -> list[Path]:
    """The flow files at ``path``: a file, a folder (its ``.csv`` / ``.parquet`` files) or a glob.

    Raises:
        DataError: nothing matches.
    """
    text = str(path)
    if _GLOB_CHARS & set(text) and not Path(text).exists():
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
        if not files:
            raise DataError("no flow file matches the pattern", path=text)
        return files
    files = list_data_files(path)
    if Path(path).is_dir():
        suffixes = (".csv",) if ds.format == "csv" else (".parquet", ".pq")
        files = [f for f in files if f.suffix.lower() in suffixes]
        if not files:
            raise DataError(f"folder holds no {ds.format} flow file", path=text)
    return files


def read_netflow_paths(paths: Iterable[str | Path], ds: NetflowDatasetConfig) -> pd.DataFrame:
    """Read and validate every flow file of ``paths`` (files, folders or globs) into one frame.

    Raises:
        DataError: see :func:`~ae_anomaly.data.netflow.read_netflow`; no path given.
    """
    files = [f for p in paths for f in netflow_paths(p, ds)]
    if not files:
        raise DataError("no flow file to read")
    frames = [read_netflow(f, ds) for f in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def netflow_series(frame: pd.DataFrame, ds: NetflowDatasetConfig) -> pd.DataFrame:
    """Per-entity series of flows for the time-series detector (``timestamp, entity, ...``).

    The aggregate features are counts and volumes with heavy tails (a DoS minute has
    hundreds of flows, a normal one a few; one large transfer dwarfs a day's traffic), so
    every one enters the detector as ``log1p_<feature>`` and the scaler measures orders of
    magnitude. ``failed_share`` becomes the count of failed flows first
    (``log1p_failed_flows``): a share is noise in a quiet interval (one reset flow out of one
    is 100%), and with it the conformal threshold on the synthetic NetFlow fell from about
    10 to 4 while DoS minutes scored 60. A series without the prefix (raw
    :func:`~ae_anomaly.data.netflow.aggregate_netflow` output) fails loudly at scoring instead of
    being scored on the wrong scale. Use ``preprocess.scaler: standard``: empty intervals make
    a median/IQR scale degenerate.

    Raises:
        ConfigError: the description has no ``aggregate`` section or no timestamp.
    """
    if ds.aggregate is None:
        raise ConfigError(
            f"dataset '{ds.name}' has no 'aggregate' section: it is needed for "
            "data.netflow_mode 'aggregate' (or use data.netflow_mode=rows)"
        )
    features = list(ds.aggregate.features)
    agg = ds.aggregate
    if "failed_share" in features and "flows" not in features:
        agg = agg.model_copy(update={"features": [*features, "flows"]})
    series = aggregate_netflow(frame, ds, agg)
    if "failed_share" in features:
        failed = series["failed_share"].to_numpy(np.float64) * series["flows"].to_numpy()
        series["failed_share"] = np.round(failed)
        if "flows" not in features:
            series = series.drop(columns="flows")
    names = {f: f"{LOG_PREFIX}{FAILED_FLOWS if f == 'failed_share' else f}" for f in features}
    for feat in features:
        series[feat] = np.log1p(series[feat].to_numpy(np.float64))
    return series.rename(columns=names)


def read_netflow_input(cfg: AppConfig, paths: list[str], training: bool = False
                       ) -> tuple[pd.DataFrame, list[Path]]:
    """The detector's input frame from flow files: the reader plus the feature step.

    ``data.netflow_mode: aggregate``: the wide per-entity series of the flows
    (:func:`netflow_series`), scored like server metrics; ``rows``: the flow rows themselves
    (a row detector keeps only the normal ones for training when they are labelled).

    When the description has a ``split``, ``paths`` (``data.train`` / ``data.score``) name
    its one labelled file and the split picks the rows (:func:`split_part`): training reads
    the train part, scoring the test part (the other normal rows and every attack). Scoring
    files without the label column (new traffic) are scored whole. A split picks rows, so
    it needs ``data.netflow_mode: rows``.

    Args:
        cfg: the configuration (``data.netflow`` names the description).
        paths: flow files, folders or globs.
        training: read the training part of a split; warn when aggregated training
            intervals contain labelled attacks.

    Returns:
        The frame and the files read.

    Raises:
        ConfigError: ``data.netflow`` is not set, or the description is bad, or it has a
            ``split`` and ``data.netflow_mode`` is ``aggregate``.
        DataError: the flow files are missing or invalid, or training files of a split
            have no labels.
    """
    ds = load_netflow_dataset(cfg.data)
    if ds.split is not None and cfg.data.netflow_mode != "rows":
        raise ConfigError(
            f"{cfg.data.netflow}: key 'split' picks random rows, which cannot be aggregated "
            "into per-host series; use data.netflow_mode=rows (or train/test files)"
        )
    files = [f for p in paths for f in netflow_paths(expand_path(p), ds)]
    check_in_memory_size([Path(f) for f in files], cfg.data, "flow input")
    frame = read_netflow_paths(files, ds)
    if ds.split is not None and (training or IS_ANOMALY in frame.columns):
        frame = split_part(frame, ds, "train" if training else "test")
    if cfg.data.netflow_mode == "rows":
        return frame, files
    series = netflow_series(frame, ds)
    if training and IS_ANOMALY in series.columns and series[IS_ANOMALY].any():
        log.warning(
            "%d of %d training intervals contain flows labelled anomalous; the "
            "time-series detector trains on them as if normal",
            int(series[IS_ANOMALY].sum()),
            len(series),
        )
    return series, files


def row_entities(frame: pd.DataFrame, ds: NetflowDatasetConfig) -> np.ndarray:
    """Each row's entity: its entity key columns joined with ``|`` (the data set name if none)."""
    if not ds.entity:
        return np.full(len(frame), ds.name, dtype=object)
    parts = [frame[c].astype(str).to_numpy(dtype=object) for c in ds.entity]
    out = parts[0]
    for p in parts[1:]:
        out = out + ENTITY_SEPARATOR + p
    return out


def row_keys(frame: pd.DataFrame, ds: NetflowDatasetConfig, rows: np.ndarray) -> list[str]:
    """Deterministic keys of rows: content hash plus the occurrence of identical rows."""
    cols = [c for c in ds.used_columns(include_label=False) if c in frame.columns]
    hashes = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    nth = pd.Series(hashes).groupby(hashes).cumcount().to_numpy()
    return [f"{hashes[i]:016x}.{nth[i]}" for i in rows]
