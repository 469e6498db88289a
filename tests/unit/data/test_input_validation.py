"""Input validation parity: Parquet and CSV meet the same checks; text encodings are
sniffed; long lists in messages are cut. (The CLI battery is
tests/integration/test_bad_inputs.py.)"""

from __future__ import annotations

import codecs
import gzip

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.config import DataConfig
from ae_anomaly.data.timeseries import csv_encoding, read_timeseries
from ae_anomaly.errors import DataError, shorten
from ae_anomaly.sources import check_feature_schema, is_transient


def frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": pd.date_range("2026-01-01", periods=n, freq="1min"),
        "entity": "a",
        "cpu": np.arange(n, dtype=float),
        "mem": np.ones(n),
    })


def write(tmp_path, df: pd.DataFrame, kind: str) -> str:
    path = tmp_path / f"f.{kind}"
    if kind == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("change, says", [
    (lambda d: d.assign(cpu=d.cpu.where(d.index != 3, np.inf)),
     "column 'cpu', row 4: value is infinite"),
    (lambda d: d.assign(timestamp=d.timestamp.where(d.index != 3, pd.NaT)),
     "column 'timestamp', row 4: timestamp is missing"),
    (lambda d: d.assign(entity=d.entity.where(d.index != 5, None)),
     "column 'entity', row 6: entity is empty"),
    (lambda d: d.assign(cpu=d.cpu > 3), "column 'cpu'"),
])
def test_csv_and_parquet_refuse_the_same_values(tmp_path, kind, change, says):
    with pytest.raises(DataError, match=says):
        read_timeseries(write(tmp_path, change(frame()), kind), DataConfig())


def test_parquet_text_metric_column_is_refused_by_type(tmp_path):
    path = write(tmp_path, frame().assign(cpu=lambda d: d.cpu.astype(str)), "parquet")
    with pytest.raises(DataError, match="column 'cpu', row 1: column type is str, not a number"):
        read_timeseries(path, DataConfig())


def test_header_only_file_is_refused(tmp_path):
    (tmp_path / "h.csv").write_text("timestamp,entity,cpu\n")
    with pytest.raises(DataError, match="h.csv: file has a header but no data rows"):
        read_timeseries(tmp_path / "h.csv", DataConfig())


def test_naive_beside_offset_timestamps_is_refused_but_utc_marks_are_fine(tmp_path):
    df = frame()
    ts = df.timestamp.astype(str)
    utc = df.assign(timestamp=ts.where(df.index % 2 == 0, ts + "Z"))
    assert len(read_timeseries(write(tmp_path, utc, "csv"), DataConfig())) == 20
    mixed = df.assign(timestamp=ts.where(df.index < 7, ts + "+02:00"))
    with pytest.raises(DataError, match="column 'timestamp', row 8: .* offset"):
        read_timeseries(write(tmp_path, mixed, "csv"), DataConfig())


def test_mixed_zones_are_found_across_chunks(tmp_path):
    df = frame(2500)
    ts = df.timestamp.astype(str)
    df = df.assign(timestamp=ts.where(df.index < 1500, ts + "+01:00"))
    with pytest.raises(DataError, match="row 1501"):
        read_timeseries(write(tmp_path, df, "csv"), DataConfig(read_chunk_rows=1000))


def test_encodings_are_named_or_decoded_when_declared(tmp_path):
    text = frame().assign(label="caf\u00e9").to_csv(index=False)
    p = tmp_path / "t.csv"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match="Latin-1 .* data.encoding"):
        read_timeseries(p, DataConfig())
    assert len(read_timeseries(p, DataConfig(encoding="latin-1", metrics=["cpu", "mem"]))) == 20
    p.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text .* data.encoding: utf-16"):
        read_timeseries(p, DataConfig())
    assert len(read_timeseries(p, DataConfig(encoding="utf-16", metrics=["cpu", "mem"]))) == 20
    p.write_bytes(codecs.BOM_UTF8 + text.encode())
    assert csv_encoding(p) == "utf-8-sig"
    assert len(read_timeseries(p, DataConfig(metrics=["cpu", "mem"]))) == 20
    p.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match="t.csv: is gzip-compressed, not CSV text"):
        read_timeseries(p, DataConfig())


def test_input_read_whole_is_refused_over_the_limit(tmp_path):
    path = write(tmp_path, frame(), "csv")
    with pytest.raises(DataError, match="over data.max_in_memory_bytes"):
        read_timeseries(path, DataConfig(max_in_memory_bytes=100))


def test_long_lists_are_cut():
    assert shorten([f"x{i}" for i in range(5000)], 3) == "x0, x1, x2 and 4,997 more"
    with pytest.raises(DataError) as err:
        check_feature_schema(["a", "b"], ["a", "b"] + [f"extra_{i}" for i in range(5000)],
                             "wide.csv")
    assert len(str(err.value)) < 500 and "and 4,990 more" in str(err.value)


def test_broken_pipe_is_not_transient():
    assert not is_transient(BrokenPipeError(32, "Broken pipe"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
