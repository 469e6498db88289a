"""The benchmark datasets: :class:`Dataset` finds and loads one :class:`EntityData` at a time.

``smd`` (one entity per machine), ``nab`` (one entity per file, labels from NAB's anomaly
windows, training on the probationary period) and the tabular ``nsl-kdd`` / ``netflow``
(one entity: the dataset's train and test splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ae_anomaly.errors import DataError
from ae_anomaly.evaluation.benchmark.settings import TABULAR, BenchSettings
from ae_anomaly.evaluation.nab import _window_indices, load_nab_windows
from ae_anomaly.evaluation.nab import probationary_length as nab_probationary_length


@dataclass
class EntityData:
    """One entity of a dataset, ready to benchmark.

    Attributes:
        name: entity name (machine, NAB file, dataset).
        train: training frame (time series: ``timestamp, entity, <metrics>``; tabular:
            the flow rows of the train split).
        test: the frame that is scored as one block.
        labels: 0/1 per evaluated test row (``test`` rows from ``eval_from`` on).
        eval_from: first evaluated row of ``test`` (NAB scores the whole series but
            evaluates after the probationary period).
        nab_windows: NAB's anomaly windows of the file (NAB only).
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    labels: np.ndarray
    eval_from: int = 0
    nab_windows: list[Any] | None = None


class Dataset:
    """Entities of a benchmark dataset, loaded one at a time."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        self.kind = settings.dataset
        self.data_dir = settings.data_dir
        if not self.data_dir.is_dir():
            raise DataError("benchmark data folder not found", path=str(self.data_dir))
        if self.kind == "nab":
            wpath = self.data_dir / "labels" / "combined_windows.json"
            if not wpath.is_file():
                raise DataError("not a NAB folder (no labels/combined_windows.json)",
                                path=str(self.data_dir))
            self._windows = load_nab_windows(wpath)
            self.nab_cache: dict[str, tuple[np.ndarray, list[Any]]] = {}
        if self.kind in TABULAR:
            from ae_anomaly.data.netflow import load_netflow_dataset_config

            assert settings.dataset_config is not None
            self.flow_ds = load_netflow_dataset_config(settings.dataset_config)

    def entities(self) -> list[str]:
        """All entities found in the data folder."""
        if self.kind == "smd":
            from ae_anomaly.data.timeseries import smd_machines

            return smd_machines(self.data_dir)
        if self.kind == "nab":
            return sorted(k for k in self._windows if (self.data_dir / "data" / k).is_file())
        return [self.flow_ds.name]

    def select(self, wanted: Sequence[str] | None) -> list[str]:
        """The entities named by ``--entities`` (NAB: a file key, its stem or a category)."""
        found = self.entities()
        if not wanted:
            return found
        out: list[str] = []
        for w in wanted:
            hits = [e for e in found if w in (e, Path(e).stem, e.split("/")[0])]
            if not hits:
                raise DataError(f"entity '{w}' not found; found: {', '.join(found[:10])}"
                                + (" ..." if len(found) > 10 else ""), path=str(self.data_dir))
            out += [h for h in hits if h not in out]
        return out

    def load(self, name: str) -> EntityData:
        """Read one entity's training and test data."""
        if self.kind == "smd":
            from ae_anomaly.data.timeseries import read_smd

            train, _ = read_smd(self.data_dir, name, "train")
            test, labels = read_smd(self.data_dir, name, "test")
            assert labels is not None
            return EntityData(name, train, test, labels.astype(np.int64))
        if self.kind == "nab":
            return self._load_nab(name)
        return self._load_tabular(name)

    def _load_nab(self, name: str) -> EntityData:
        path = self.data_dir / "data" / name
        raw = pd.read_csv(path)
        ts = pd.to_datetime(raw["timestamp"]).to_numpy("datetime64[ns]")
        frame = pd.DataFrame({"timestamp": ts, "entity": name,
                              "value": raw["value"].to_numpy(np.float64)})
        n = len(frame)
        n_prob = nab_probationary_length(n)
        windows = self._windows[name]
        labels = np.zeros(n, dtype=np.int64)
        if windows:
            left, right = _window_indices(ts, windows)
            for lo, hi in zip(left, right, strict=True):
                labels[lo:hi + 1] = 1
        return EntityData(name, frame.iloc[:n_prob].reset_index(drop=True), frame,
                          labels[n_prob:], eval_from=n_prob, nab_windows=windows)

    def _load_tabular(self, name: str) -> EntityData:
        from ae_anomaly.data.netflow import IS_ANOMALY, read_netflow_split

        train = read_netflow_split(self.flow_ds, "train", self.data_dir)
        test = read_netflow_split(self.flow_ds, "test", self.data_dir)
        if IS_ANOMALY not in test.columns:
            raise DataError(f"the test split of '{name}' has no label column "
                            f"'{self.flow_ds.label}'", path=str(self.data_dir))
        return EntityData(name, train, test, test[IS_ANOMALY].to_numpy(dtype=np.int64))

