"""Feature pipeline for flow records: fitted on training rows only, saved with the model as JSON.

Per row, in order:

1. numeric columns: ``log1p`` on heavy-tailed count columns (negative values clipped at 0
   first), then robust scaling ``(x - median) / IQR`` (IQR 0: the standard deviation; that 0
   too: 1); a missing value becomes 0, i.e. the training median;
2. categorical columns: one-hot over the most frequent training categories (at most
   ``max_categories``) plus an ``__unseen__`` bucket that takes any other value, so a
   category never seen in training never crashes; a missing value is the category
   ``__missing__``;
3. columns constant in training (numeric or categorical) are dropped.

The output is a float32 matrix ``(N, F)`` whose column names are :attr:`feature_names_`:
numeric names first, then ``column=value`` one-hot names.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ae_anomaly.data.netflow import NetflowDatasetConfig, category_strings, coerce_numeric
from ae_anomaly.errors import DataError

log = logging.getLogger(__name__)

UNSEEN = "__unseen__"
MISSING = "__missing__"
FORMAT = "ae_anomaly.netflow_feature_pipeline"
VERSION = 1

# "auto" log1p: a non-negative column reaching above 1 whose tail is long.
AUTO_MAX_OVER_P99 = 10.0
AUTO_SKEW = 2.0


def auto_log1p(frame: pd.DataFrame, numeric: list[str]) -> list[str]:
    """The numeric columns that look like heavy-tailed counts.

    A column qualifies when it is non-negative, its maximum exceeds 1 (so rates and 0/1
    flags are left alone), and its maximum is at least ``AUTO_MAX_OVER_P99`` times its 99th
    percentile (or that percentile is 0) or its skew is at least ``AUTO_SKEW``.

    Args:
        frame: numeric columns already as numbers.
        numeric: the columns to consider.

    Returns:
        The qualifying columns, in ``numeric`` order.
    """
    if not numeric:
        return []
    block = frame[numeric].astype("float64")
    lo, hi = block.min(), block.max()
    p99 = block.quantile(0.99)
    skew = block.skew().fillna(0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p99 > 0, hi / p99, np.inf)
    heavy = (ratio >= AUTO_MAX_OVER_P99) | (skew.to_numpy() >= AUTO_SKEW)
    ok = (lo >= 0).to_numpy() & (hi > 1).to_numpy() & heavy
    return [c for c, keep in zip(numeric, ok, strict=True) if keep]


class _Fitted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    log1p_cols: list[str]
    medians: dict[str, float]
    iqrs: dict[str, float]
    categories: dict[str, list[str]]
    dropped_constant: list[str]
    feature_names: list[str]


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["ae_anomaly.netflow_feature_pipeline"]
    version: Literal[1]
    numeric: list[str]
    categorical: list[str]
    log1p: list[str] | Literal["auto"]
    max_categories: int = Field(ge=1)
    fitted: _Fitted | None


class NetflowFeaturePipeline:
    """Flow rows to a float32 feature matrix; see the module docstring for the steps.

    Args:
        numeric: numeric columns.
        categorical: categorical columns.
        log1p: numeric columns to log-transform, or ``"auto"`` (see :func:`auto_log1p`,
            decided on the training rows).
        max_categories: most frequent categories kept per column; rarer ones share the
            ``__unseen__`` bucket.

    Attributes (after :meth:`fit`):
        log1p_cols_: the log-transformed columns.
        medians_: per kept numeric column, the training median (after log1p).
        iqrs_: per kept numeric column, the scale it is divided by.
        categories_: per kept categorical column, the categories with their own column.
        dropped_constant_: columns constant in training, dropped.
        feature_names_: names of the output columns.
    """

    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        log1p: list[str] | Literal["auto"] = "auto",
        max_categories: int = 50,
    ) -> None:
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ValueError(f"column '{sorted(overlap)[0]}' is both numeric and categorical")
        if log1p != "auto":
            extra = [c for c in log1p if c not in numeric]
            if extra:
                raise ValueError(f"log1p column '{extra[0]}' is not a numeric column")
        if max_categories < 1:
            raise ValueError("max_categories must be at least 1")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.log1p: list[str] | Literal["auto"] = log1p if log1p == "auto" else list(log1p)
        self.max_categories = int(max_categories)

    @classmethod
    def from_dataset(cls, ds: NetflowDatasetConfig,
                     max_categories: int = 50) -> NetflowFeaturePipeline:
        """An unfitted pipeline for a data set description's numeric and categorical columns."""
        return cls(ds.numeric, ds.categorical, ds.log1p, max_categories)

    # ------------------------------------------------------------------ helpers
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict` of a fitted state) has run."""
        return hasattr(self, "feature_names_")

    @property
    def n_features(self) -> int:
        """The number of output columns."""
        self._check_fitted()
        return len(self.feature_names_)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("NetflowFeaturePipeline is not fitted; call fit() first")

    @staticmethod
    def _require(frame: pd.DataFrame, columns: list[str]) -> None:
        for col in columns:
            if col not in frame.columns:
                raise DataError("feature column is missing", column=col)

    @staticmethod
    def _numeric_block(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
        return pd.DataFrame(
            {c: coerce_numeric(frame[c], c) for c in columns}, index=frame.index, columns=columns
        )

    @staticmethod
    def _categories(frame: pd.DataFrame, column: str) -> pd.Series:
        return category_strings(frame[column]).fillna(MISSING)

    def _log1p(self, block: pd.DataFrame) -> pd.DataFrame:
        if self.log1p_cols_:
            block[self.log1p_cols_] = np.log1p(block[self.log1p_cols_].clip(lower=0.0))
        return block

    # ------------------------------------------------------------------ fit / transform
    def fit(self, frame: pd.DataFrame) -> NetflowFeaturePipeline:
        """Fit the statistics on training rows.

        Args:
            frame: training rows with every numeric and categorical column.

        Returns:
            self.

        Raises:
            DataError: a column is missing, a numeric value is not a number, or there are
                no rows.
        """
        self._require(frame, self.numeric + self.categorical)
        if len(frame) == 0:
            raise DataError("no training rows to fit the feature pipeline on")
        block = self._numeric_block(frame, self.numeric)
        self.log1p_cols_ = auto_log1p(block, self.numeric) if self.log1p == "auto" else self.log1p
        block = self._log1p(block)

        lo, hi = block.min(), block.max()
        constant = [c for c in self.numeric if not (hi[c] > lo[c])]  # all-NaN is constant too
        kept = [c for c in self.numeric if c not in constant]
        med = block[kept].median()
        q = block[kept].quantile([0.25, 0.75])
        iqr = q.loc[0.75] - q.loc[0.25]
        std = block[kept].std(ddof=0)
        scale = iqr.where(iqr > 0, std).where(lambda s: s > 0, 1.0).fillna(1.0)
        self.medians_ = {c: float(med[c]) for c in kept}
        self.iqrs_ = {c: float(scale[c]) for c in kept}

        self.categories_: dict[str, list[str]] = {}
        for col in self.categorical:
            counts = self._categories(frame, col).value_counts()
            if len(counts) < 2:
                constant.append(col)
                continue
            order = pd.DataFrame({"v": counts.index.astype(str), "n": counts.to_numpy()})
            order = order.sort_values(["n", "v"], ascending=[False, True], kind="stable")
            self.categories_[col] = order["v"].head(self.max_categories).tolist()
        self.dropped_constant_ = [c for c in self.numeric + self.categorical if c in constant]
        self.feature_names_ = list(self.medians_) + [
            f"{col}={v}" for col, cats in self.categories_.items() for v in [*cats, UNSEEN]
        ]
        if self.dropped_constant_:
            log.info("dropped columns constant in training: %s", self.dropped_constant_)
        log.info(
            "flow features: %d rows -> %d features (log1p on %s)",
            len(frame),
            len(self.feature_names_),
            self.log1p_cols_,
        )
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Transform rows with the fitted statistics.

        Args:
            frame: rows with every kept numeric and categorical column.

        Returns:
            A float32 array of shape ``(N, len(feature_names_))``.

        Raises:
            DataError: a column is missing or a numeric value is not a number.
        """
        self._check_fitted()
        num_cols = list(self.medians_)
        self._require(frame, num_cols + list(self.categories_))
        n = len(frame)
        out = np.zeros((n, len(self.feature_names_)), dtype=np.float32)
        if num_cols:
            block = self._numeric_block(frame, num_cols)
            logs = [c for c in self.log1p_cols_ if c in self.medians_]
            if logs:
                block[logs] = np.log1p(block[logs].clip(lower=0.0))
            med = np.array([self.medians_[c] for c in num_cols])
            scale = np.array([self.iqrs_[c] for c in num_cols])
            values = (block.to_numpy(dtype=np.float64) - med) / scale
            out[:, : len(num_cols)] = np.nan_to_num(values, nan=0.0)
        offset = len(num_cols)
        rows = np.arange(n)
        for col, cats in self.categories_.items():
            codes = pd.Index(cats).get_indexer(self._categories(frame, col))
            codes = np.where(codes < 0, len(cats), codes)
            out[rows, offset + codes] = 1.0
            offset += len(cats) + 1
        return out

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same rows."""
        return self.fit(frame).transform(frame)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the pipeline and, when fitted, its statistics."""
        fitted = None
        if self.is_fitted:
            fitted = {
                "log1p_cols": list(self.log1p_cols_),
                "medians": dict(self.medians_),
                "iqrs": dict(self.iqrs_),
                "categories": {c: list(v) for c, v in self.categories_.items()},
                "dropped_constant": list(self.dropped_constant_),
                "feature_names": list(self.feature_names_),
            }
        return {
            "format": FORMAT,
            "version": VERSION,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "log1p": self.log1p if self.log1p == "auto" else list(self.log1p),
            "max_categories": self.max_categories,
            "fitted": fitted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetflowFeaturePipeline:
        """Rebuild a pipeline saved with :meth:`to_dict`; it transforms identically.

        Raises:
            ValueError: the mapping is not a saved pipeline of this version.
        """
        try:
            state = _State.model_validate(d)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"not a saved flow feature pipeline: '{loc}': {first['msg']}"
            ) from None
        pipe = cls(state.numeric, state.categorical, state.log1p, state.max_categories)
        if state.fitted is not None:
            f = state.fitted
            pipe.log1p_cols_ = list(f.log1p_cols)
            pipe.medians_ = dict(f.medians)
            pipe.iqrs_ = dict(f.iqrs)
            pipe.categories_ = {c: list(v) for c, v in f.categories.items()}
            pipe.dropped_constant_ = list(f.dropped_constant)
            pipe.feature_names_ = list(f.feature_names)
        return pipe
