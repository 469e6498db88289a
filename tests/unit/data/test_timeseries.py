import numpy as np
import pandas as pd
import pytest

from ae_anomaly.config import DataConfig
from ae_anomaly.data.timeseries import TimeSeriesReader, list_data_files, read_timeseries
from ae_anomaly.errors import DataError

WIDE = """timestamp,entity,cpu,mem
2026-01-01 00:00,a,1.0,10
2026-01-01 00:01,a,2.0,11
2026-01-01 00:00,b,3.0,12
2026-01-01 00:02,a,4.0,13
"""


def write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_wide_csv(tmp_path):
    df = read_timeseries(write(tmp_path, WIDE), DataConfig())
    assert list(df.columns) == ["timestamp", "entity", "cpu", "mem"]
    assert df.entity.tolist() == ["a", "a", "a", "b"]
    assert df.cpu.tolist() == [1.0, 2.0, 4.0, 3.0]
    assert df.timestamp.dtype == "datetime64[ns]"


def test_long_csv_equals_wide(tmp_path):
    rows = ["timestamp,entity,metric,value"]
    for line in WIDE.strip().splitlines()[1:]:
        ts, ent, cpu, mem = line.split(",")
        rows += [f"{ts},{ent},cpu,{cpu}", f"{ts},{ent},mem,{mem}"]
    long = read_timeseries(write(tmp_path, "\n".join(rows) + "\n", "l.csv"), DataConfig())
    wide = read_timeseries(write(tmp_path, WIDE), DataConfig())
    pd.testing.assert_frame_equal(long[wide.columns], wide)


def test_long_csv_chunked_across_timestamp(tmp_path):
    # Rows of one timestamp straddle chunk boundaries: the reader carries them over.
    rows = ["timestamp,metric,value"]
    for i in range(3000):
        ts = "2026-01-01 00:00:00+00:00" if i == 0 else str(pd.Timestamp("2026-01-01")
                                                            + pd.Timedelta(minutes=i))
        rows += [f"{ts},x,{i}", f"{ts},y,{-i}", f"{ts},z,{2 * i}"]
    cfg = DataConfig(read_chunk_rows=1000)
    df = read_timeseries(write(tmp_path, "\n".join(rows) + "\n"), cfg)
    assert len(df) == 3000 and df.z.tolist() == [2.0 * i for i in range(3000)]


def test_parquet_and_folder(tmp_path):
    df = read_timeseries(write(tmp_path, WIDE), DataConfig())
    d = tmp_path / "drop"
    d.mkdir()
    df.to_parquet(d / "part.parquet")
    back = read_timeseries(d, DataConfig())
    pd.testing.assert_frame_equal(back, df)
    assert list_data_files(d) == [d / "part.parquet"]


def test_no_entity_column_means_one_series(tmp_path):
    df = read_timeseries(write(tmp_path, "timestamp,x\n2026-01-01,1\n2026-01-02,2\n"),
                         DataConfig())
    assert df.entity.unique().tolist() == ["default"]


@pytest.mark.parametrize(
    "text, column, row, words",
    [
        ("time,x\n2026-01-01,1\n", "timestamp", None, "missing"),
        ("timestamp,x\n2026-01-01,1\nyesterday,2\n", "timestamp", 2, "does not parse"),
        ("timestamp,x\n2026-01-01,1\n2026-01-02,abc\n", "x", 2, "not a number"),
        ("timestamp,x\n2026-01-01,1\n2026-01-01,2\n", "timestamp", 2, "duplicate"),
        ("timestamp,x\n2026-01-02,1\n2026-01-01,2\n", "timestamp", 2, "not sorted"),
        ("timestamp,x\n2026-01-01,inf\n", "x", 1, "infinite"),
        ("timestamp\n2026-01-01\n", None, None, "no metric columns"),
    ],
)
def test_bad_input_errors_name_file_column_row(tmp_path, text, column, row, words):
    p = write(tmp_path, text)
    with pytest.raises(DataError) as e:
        read_timeseries(p, DataConfig())
    assert e.value.column == column and e.value.row == row
    assert words in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_empty_file_and_missing_path(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_timeseries(write(tmp_path, ""), DataConfig())
    with pytest.raises(DataError, match="no such file"):
        read_timeseries(tmp_path / "nope.csv", DataConfig())


def test_expected_metric_missing(tmp_path):
    reader = TimeSeriesReader(DataConfig(), ["cpu", "disk"])
    with pytest.raises(DataError) as e:
        list(reader.iter_path(write(tmp_path, WIDE)))
    assert e.value.column == "disk"


def test_nan_policy_ffill_fills_short_gaps_and_rejects_long(tmp_path):
    text = "timestamp,x\n" + "".join(
        f"2026-01-01 00:0{i},{'' if i in (2, 3) else i}\n" for i in range(6))
    df = read_timeseries(write(tmp_path, text), DataConfig(max_nan_fill=2))
    assert df.x.tolist() == [0, 1, 1, 1, 4, 5]
    with pytest.raises(DataError) as e:
        read_timeseries(write(tmp_path, text), DataConfig(max_nan_fill=1))
    assert e.value.column == "x" and e.value.row == 4 and "consecutive" in str(e.value)


def test_nan_policy_ffill_across_chunks(tmp_path):
    vals = ["1"] + [""] * 3 + ["5"] * 2000
    text = "timestamp,x\n" + "".join(
        f"{pd.Timestamp('2026-01-01') + pd.Timedelta(minutes=i)},{v}\n"
        for i, v in enumerate(vals))
    cfg = DataConfig(read_chunk_rows=1000, max_nan_fill=3)
    df = read_timeseries(write(tmp_path, text), cfg)
    assert df.x.iloc[:5].tolist() == [1, 1, 1, 1, 5]


def test_nan_first_value_and_other_policies(tmp_path):
    text = "timestamp,x\n2026-01-01,\n2026-01-02,2\n2026-01-03,3\n"
    with pytest.raises(DataError, match="first value"):
        read_timeseries(write(tmp_path, text), DataConfig())
    assert read_timeseries(write(tmp_path, text), DataConfig(nan_policy="drop")).x.tolist() \
        == [2, 3]
    with pytest.raises(DataError) as e:
        read_timeseries(write(tmp_path, text), DataConfig(nan_policy="error"))
    assert e.value.row == 1


def test_order_checked_across_chunks(tmp_path):
    ts = list(pd.date_range("2026-01-01", periods=2500, freq="min"))
    ts[1500] = ts[10]
    text = "timestamp,x\n" + "".join(f"{t},{i}\n" for i, t in enumerate(ts))
    with pytest.raises(DataError) as e:
        read_timeseries(write(tmp_path, text), DataConfig(read_chunk_rows=1000))
    assert e.value.row == 1501


def test_timezones_normalised_to_utc(tmp_path):
    df = read_timeseries(write(tmp_path, "timestamp,x\n2026-01-01T01:00:00+01:00,1\n"),
                         DataConfig())
    assert df.timestamp.iloc[0] == pd.Timestamp("2026-01-01 00:00:00")
    assert np.isfinite(df.x).all()
