"""Flow data set descriptions, the validating reader, and per-entity aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.data.netflow import (
    AggregationConfig,
    NetflowDatasetConfig,
    aggregate_netflow,
    load_netflow_dataset_config,
    netflow_files,
    read_netflow,
    read_netflow_split,
)
from ae_anomaly.data.netflow_features import UNSEEN, NetflowFeaturePipeline
from ae_anomaly.data.synthetic_netflow import generate_netflow
from ae_anomaly.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs" / "datasets"
NSL_KDD_DIR = (REPO / ".." / "shared" / "data" / "nsl_kdd").resolve()

HEADER = "ts,src_ip,dst_ip,src_port,dst_port,proto,bytes,packets,duration,tcp_flags,label"


def _netflow() -> NetflowDatasetConfig:
    return load_netflow_dataset_config(CONFIGS / "netflow.yaml")


def _write(tmp_path: Path, lines: list[str], name: str = "flows.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(ts: str = "2024-01-01 00:00:00", bytes_: str = "100", label: str = "normal") -> str:
    return f"{ts},10.0.0.1,10.0.1.1,50000,443,tcp,{bytes_},2,0.5,PA,{label}"


# --------------------------------------------------------------------------- descriptions
def test_shipped_descriptions_load() -> None:
    nsl = load_netflow_dataset_config(CONFIGS / "nsl_kdd.yaml")
    assert nsl.columns is not None and len(nsl.columns) == 43
    assert nsl.columns[-2:] == ["label", "difficulty"] and nsl.drop == ["difficulty"]
    assert nsl.categorical == ["protocol_type", "service", "flag"]
    assert len(nsl.numeric) == 38 and not nsl.header

    net = _netflow()
    assert net.timestamp == "ts" and net.entity == ["src_ip"]
    assert "dst_port" in net.categorical and net.aggregate is not None
    assert net.aggregate.entity == "src_ip" and net.aggregate.interval == "1min"


@pytest.mark.skipif(not NSL_KDD_DIR.is_dir(), reason=f"NSL-KDD not present at {NSL_KDD_DIR}")
def test_nsl_kdd_column_names_match_field_names() -> None:
    names = [
        line.split(",")[0].strip()
        for line in (NSL_KDD_DIR / "Field_Names.csv").read_text().splitlines()
        if line.strip()
    ]
    nsl = load_netflow_dataset_config(CONFIGS / "nsl_kdd.yaml")
    assert nsl.columns is not None and nsl.columns[:41] == names


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: x\nnumerc: [a]\n", "numerc"),
        ("name: x\nnumeric: [a]\nlog1p: [b]\n", "log1p"),
        ("name: x\nheader: false\n", "columns"),
        ("name: x\nnumeric: [a]\ncategorical: [a]\n", "categorical"),
        ("name: x\naggregate: {interval: 1min}\n", "aggregate"),
        ("name: x\ntimestamp: t\naggregate: {interval: soon}\n", "aggregate.interval"),
        ("name: x\ntimestamp: t\naggregate: {features: [flows, bogus]}\n", "aggregate.features"),
        ("name: x\nlog1p: sometimes\n", "log1p"),
    ],
)
def test_bad_description_is_config_error_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_netflow_dataset_config(path)
    assert str(path) in str(err.value)
    assert f"'{key}" in str(err.value)


def test_missing_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_netflow_dataset_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_netflow_dataset_config(bad)


# --------------------------------------------------------------------------- reading
def test_read_flows_types_and_label(tmp_path: Path) -> None:
    path = _write(tmp_path, [HEADER, _row(), _row("2024-01-01 00:00:30", "7", "dos")])
    frame = read_netflow(path, _netflow())
    assert frame["ts"].dtype == np.dtype("datetime64[ns]")
    assert frame["bytes"].tolist() == [100.0, 7.0]
    assert frame["dst_port"].tolist() == ["443", "443"]
    assert frame["is_anomaly"].tolist() == [False, True]
    assert "src_port" in frame.columns and "dst_ip" in frame.columns


def test_label_column_is_optional(tmp_path: Path) -> None:
    path = _write(tmp_path, [HEADER.rsplit(",", 1)[0], _row().rsplit(",", 1)[0]])
    frame = read_netflow(path, _netflow())
    assert "is_anomaly" not in frame.columns and len(frame) == 1


def test_missing_declared_column(tmp_path: Path) -> None:
    header = HEADER.replace(",packets", "")
    row = _row().replace(",2,0.5", ",0.5")
    path = _write(tmp_path, [header, row])
    with pytest.raises(DataError) as err:
        read_netflow(path, _netflow())
    assert err.value.column == "packets" and err.value.path == str(path)


def test_non_numeric_value_names_column_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path, [HEADER, _row(), _row(), _row(bytes_="12kB"), _row(bytes_="x")])
    with pytest.raises(DataError) as err:
        read_netflow(path, _netflow())
    assert (err.value.column, err.value.row) == ("bytes", 3)
    assert "12kB" in str(err.value) and str(path) in str(err.value)


def test_bad_timestamp_names_row(tmp_path: Path) -> None:
    path = _write(tmp_path, [HEADER, _row(), _row(ts="yesterday")])
    with pytest.raises(DataError) as err:
        read_netflow(path, _netflow())
    assert (err.value.column, err.value.row) == ("ts", 2)


@pytest.mark.parametrize("content", ["", HEADER + "\n", "\n\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_netflow(path, _netflow())
    assert err.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_netflow(tmp_path / "none.csv", _netflow())


def test_headerless_field_count_and_ragged_rows(tmp_path: Path) -> None:
    ds = NetflowDatasetConfig(
        name="t", header=False, columns=["a", "b", "kind"], numeric=["a", "b"], label="kind"
    )
    path = _write(tmp_path, ["1,2,normal", "3,4,attack"])
    frame = read_netflow(path, ds)
    assert frame["is_anomaly"].tolist() == [False, True]
    with pytest.raises(DataError, match="3 columns"):
        read_netflow(_write(tmp_path, ["1,2", "3,4"], "short.csv"), ds)
    with pytest.raises(DataError) as err:
        read_netflow(_write(tmp_path, ["1,2,normal", "3,4,normal", "5,6,7,8"], "ragged.csv"), ds)
    assert err.value.row == 3


def test_header_with_spaces_and_ragged_rows(tmp_path: Path) -> None:
    spaced = _write(tmp_path, [HEADER.replace(",", ", "), _row().replace(",", ", ")], "sp.csv")
    assert read_netflow(spaced, _netflow())["bytes"].tolist() == [100.0]
    for lines, row in [([HEADER, _row(), _row() + ",x"], 2), ([HEADER, _row() + ",x"], 1)]:
        with pytest.raises(DataError) as err:
            read_netflow(_write(tmp_path, lines, f"ragged{row}.csv"), _netflow())
        assert err.value.row == row


def test_flow_files_glob(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    for i in range(2):
        _write(tmp_path / "train", [HEADER, _row()], f"part{i}.csv")
    ds = _netflow()
    assert [p.name for p in netflow_files(ds, "train", tmp_path)] == ["part0.csv", "part1.csv"]
    assert len(read_netflow_split(ds, "train", tmp_path)) == 2
    with pytest.raises(DataError, match="no file matches"):
        netflow_files(ds, "test", tmp_path)


# --------------------------------------------------------------------------- aggregation
def test_aggregate_hand_computed_example() -> None:
    # Two hosts, two one-minute intervals; rows deliberately out of order.
    flows = pd.DataFrame(
        {
            "ts": pd.to_datetime(
                [
                    "2024-01-01 00:01:50",  # B, interval 1
                    "2024-01-01 00:00:10",  # A, interval 0
                    "2024-01-01 00:01:05",  # A, interval 1
                    "2024-01-01 00:00:30",  # B, interval 0
                    "2024-01-01 00:00:40",  # A, interval 0
                    "2024-01-01 00:01:20",  # B, interval 1
                ]
            ),
            "src_ip": ["10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"],
            "dst_ip": ["10.0.1.3", "10.0.1.1", "10.0.1.1", "10.0.1.1", "10.0.1.2", "10.0.1.3"],
            "dst_port": [443, 443, 22, 53, 443, 80],
            "bytes": [500, 100, 50, 80, 300, 1000],
            "packets": [5, 2, 1, 1, 4, 10],
            "tcp_flags": ["RA", "PA", "R", "-", "S", "SA"],
            "label": ["normal", "normal", "port_scan", "normal", "normal", "normal"],
        }
    )
    ds = _netflow()
    out = aggregate_netflow(flows, ds)
    expected = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01"] * 2),
            "entity": ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"],
            "flows": [2, 1, 1, 2],
            "bytes": [400.0, 50.0, 80.0, 1500.0],
            "packets": [6.0, 1.0, 1.0, 15.0],
            "distinct_dst": [2, 1, 1, 1],
            "distinct_dst_port": [1, 1, 1, 2],
            "failed_share": [0.5, 1.0, 0.0, 0.5],  # "S" and "R"; none; "RA" (not "SA")
            "bytes_out_per_flow": [200.0, 50.0, 80.0, 750.0],
            "is_anomaly": [False, True, False, False],
        }
    )
    assert list(out.columns) == list(expected.columns)
    for col in expected.columns:
        np.testing.assert_array_equal(out[col].to_numpy(), expected[col].to_numpy(), err_msg=col)


def test_aggregate_fills_missing_intervals_with_zeros() -> None:
    flows = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01 00:00:05", "2024-01-01 00:03:59"]),
            "src_ip": ["h", "h"],
            "dst_ip": ["d1", "d2"],
            "dst_port": ["1", "2"],
            "bytes": [10, 30],
            "packets": [1, 3],
            "tcp_flags": ["S", "PA"],
        }
    )
    out = aggregate_netflow(flows, _netflow())
    assert out["timestamp"].dt.minute.tolist() == [0, 1, 2, 3]
    assert out["flows"].tolist() == [1, 0, 0, 1]
    assert out["bytes"].tolist() == [10.0, 0.0, 0.0, 30.0]
    assert out["failed_share"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out["bytes_out_per_flow"].tolist() == [10.0, 0.0, 0.0, 30.0]
    assert "is_anomaly" not in out.columns


def test_aggregate_interval_and_feature_subset() -> None:
    flows = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01 00:00:05", "2024-01-01 00:04:00"]),
            "src_ip": ["h", "h"],
            "bytes": [10, 30],
        }
    )
    agg = AggregationConfig(interval="5min", features=["flows", "bytes"])
    out = aggregate_netflow(flows, _netflow(), agg)
    assert list(out.columns) == ["timestamp", "entity", "flows", "bytes"]
    assert out["flows"].tolist() == [2] and out["bytes"].tolist() == [40.0]
    with pytest.raises(DataError) as err:
        aggregate_netflow(flows, _netflow())
    assert err.value.column == "packets"


# --------------------------------------------------------------------------- a new data set
def test_second_dataset_from_yaml_alone(tmp_path: Path) -> None:
    flows, _ = generate_netflow(n_hosts=3, days=0.5, seed=3, attack_count=1, clean_fraction=0.5)
    renamed = flows.rename(
        columns={
            "ts": "time",
            "src_ip": "host",
            "dst_ip": "peer",
            "dst_port": "svc_port",
            "proto": "protocol",
            "bytes": "octets",
            "packets": "pkts",
            "duration": "secs",
            "tcp_flags": "flags",
            "label": "verdict",
        }
    ).drop(columns=["src_port"])
    renamed["time"] = renamed["time"].astype("int64") / 1e9  # epoch seconds
    renamed["verdict"] = renamed["verdict"].replace({"normal": "benign"})
    half = len(renamed) // 2
    train, test = renamed.iloc[:half].copy(), renamed.iloc[half:].copy()
    test.loc[test.index[:5], "protocol"] = "gre"  # a category only the test split has
    (tmp_path / "data").mkdir()
    train.to_parquet(tmp_path / "data" / "train.parquet")
    test.to_parquet(tmp_path / "data" / "test.parquet")
    (tmp_path / "mine.yaml").write_text(
        """
name: renamed_flows
format: parquet
train: data/train.parquet
test: data/test.parquet
timestamp: time
timestamp_unit: s
entity: [host]
numeric: [octets, pkts, secs]
categorical: [protocol, flags, svc_port]
log1p: auto
label: verdict
normal_values: [benign]
keep: [peer]
aggregate:
  interval: 5min
  entity: host
  bytes_col: octets
  packets_col: pkts
  dst_col: peer
  dst_port_col: svc_port
  flags_col: flags
"""
    )
    ds = load_netflow_dataset_config(tmp_path / "mine.yaml")
    tr = read_netflow_split(ds, "train", tmp_path)
    te = read_netflow_split(ds, "test", tmp_path)
    assert len(tr) + len(te) == len(flows)
    assert te["is_anomaly"].sum() == (flows["label"] != "normal").iloc[half:].sum()

    pipe = NetflowFeaturePipeline.from_dataset(ds).fit(tr[~tr["is_anomaly"]])
    assert "octets" in pipe.log1p_cols_
    x = pipe.transform(te)
    assert x.shape == (len(te), len(pipe.feature_names_)) and x.dtype == np.float32
    unseen = pipe.feature_names_.index(f"protocol={UNSEEN}")
    assert x[:5, unseen].tolist() == [1.0] * 5 and x[5:, unseen].sum() == 0

    series = aggregate_netflow(te, ds)
    assert set(series["entity"]) <= {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert series["flows"].sum() == len(te)
    assert (series["timestamp"].dt.minute % 5 == 0).all()


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.skipif(
    not NSL_KDD_DIR.is_dir(),
    reason=f"NSL-KDD files not present at {NSL_KDD_DIR} (shared/data/nsl_kdd beside the repo)",
)
def test_real_nsl_kdd() -> None:
    ds = load_netflow_dataset_config(CONFIGS / "nsl_kdd.yaml")
    train = read_netflow_split(ds, "train", NSL_KDD_DIR)
    test = read_netflow_split(ds, "test", NSL_KDD_DIR)
    assert len(train) == 125_973 and len(test) == 22_544
    assert "difficulty" not in train.columns
    assert train["is_anomaly"].dtype == bool
    # Published class balance: 67,343 normal in KDDTrain+, 9,711 in KDDTest+.
    assert int((~train["is_anomaly"]).sum()) == 67_343
    assert int((~test["is_anomaly"]).sum()) == 9_711
    assert (~train["is_anomaly"]).mean() == pytest.approx(0.5346, abs=1e-3)
    assert set(train["protocol_type"]) == {"tcp", "udp", "icmp"}

    pipe = NetflowFeaturePipeline.from_dataset(ds).fit(train[~train["is_anomaly"]])
    assert "num_outbound_cmds" in pipe.dropped_constant_
    assert "src_bytes" in pipe.log1p_cols_ and "serror_rate" not in pipe.log1p_cols_
    x = pipe.transform(test)
    assert x.shape == (22_544, len(pipe.feature_names_)) and np.isfinite(x).all()


# --------------------------------------------------------------------------- one labelled file
def _split_ds(tmp_path: Path, **split) -> NetflowDatasetConfig:
    text = (CONFIGS / "netflow.yaml").read_text()
    text = text.replace("train: train/*.csv\n", "").replace("test: test/*.csv\n", "")
    opts = ", ".join(f"{k}: {v}" for k, v in {"file": "all.csv", **split}.items())
    path = tmp_path / "split.yaml"
    path.write_text(text + f"split: {{{opts}}}\n")
    return load_netflow_dataset_config(path)


@pytest.fixture(scope="module")
def one_labelled_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_file")
    frame, _ = generate_netflow(n_hosts=2, days=0.1, seed=3, attack_count=1)
    frame.to_csv(root / "all.csv", index=False)
    return root


def test_split_of_one_labelled_file(one_labelled_file: Path, tmp_path: Path) -> None:
    ds = _split_ds(tmp_path, train_fraction=0.3, seed=7)
    full = read_netflow(one_labelled_file / "all.csv", ds)
    train = read_netflow_split(ds, "train", one_labelled_file)
    test = read_netflow_split(ds, "test", one_labelled_file)
    n_normal = int((~full["is_anomaly"]).sum())
    assert full["is_anomaly"].any()
    # train: only normal rows, the fraction of them; test: the other normal rows + all attacks
    assert not train["is_anomaly"].any() and len(train) == round(0.3 * n_normal)
    assert int(test["is_anomaly"].sum()) == int(full["is_anomaly"].sum())
    assert len(train) + len(test) == len(full)

    def keys(f: pd.DataFrame) -> set:
        return set(pd.util.hash_pandas_object(f, index=False).astype(str) + "_"
                   + f.groupby(list(f.columns), sort=False).cumcount().astype(str))

    assert keys(train).isdisjoint(keys(test)) and keys(train) | keys(test) == keys(full)
    # deterministic for a seed, another seed draws other rows
    pd.testing.assert_frame_equal(train, read_netflow_split(ds, "train", one_labelled_file))
    other = read_netflow_split(_split_ds(tmp_path, train_fraction=0.3, seed=8), "train",
                               one_labelled_file)
    assert len(other) == len(train) and keys(other) != keys(train)
    assert [p.name for p in netflow_files(ds, "test", one_labelled_file)] == ["all.csv"]


def test_split_description_errors(tmp_path: Path) -> None:
    base = (CONFIGS / "netflow.yaml").read_text()
    cases = [
        (base + "split: {file: all.csv}\n", "key 'split': not with 'train'"),
        (base.replace("train: train/*.csv\n", "").replace("test: test/*.csv\n", "")
         + "split: {file: all.csv, train_fraction: 1.5}\n", "key 'split.train_fraction'"),
        (base.replace("train: train/*.csv\n", "").replace("test: test/*.csv\n", "")
         + "split: {file: all.csv, fraction: 0.5}\n", "key 'split.fraction': unknown key"),
    ]
    for i, (text, match) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match) as err:
            load_netflow_dataset_config(path)
        assert str(path) in str(err.value)


def test_split_train_and_score_read_their_parts(one_labelled_file: Path, tmp_path: Path) -> None:
    from ae_anomaly.config import load_config
    from ae_anomaly.data.netflow import read_netflow_input

    ds_path = tmp_path / "split.yaml"
    _split_ds(tmp_path, train_fraction=0.5, seed=1)  # writes split.yaml
    data = str(one_labelled_file / "all.csv")
    cfg = load_config(None, [f"data.netflow={ds_path}", "data.netflow_mode=rows"])
    ds = load_netflow_dataset_config(ds_path)
    train, _ = read_netflow_input(cfg, [data], training=True)
    score, files = read_netflow_input(cfg, [data])
    pd.testing.assert_frame_equal(train, read_netflow_split(ds, "train", one_labelled_file))
    pd.testing.assert_frame_equal(score, read_netflow_split(ds, "test", one_labelled_file))
    assert files == [Path(data)]
    # unlabelled new traffic is scored whole
    unlabelled = tmp_path / "new.csv"
    pd.read_csv(data).drop(columns="label").head(20).to_csv(unlabelled, index=False)
    assert len(read_netflow_input(cfg, [str(unlabelled)])[0]) == 20
    with pytest.raises(ConfigError, match="netflow_mode=rows"):
        read_netflow_input(load_config(None, [f"data.netflow={ds_path}",
                                              "data.netflow_mode=aggregate"]), [data])


@pytest.mark.parametrize("yaml_values, labels", [
    ("[0]", ["0", "1", "0.0", "2"]),
    ("[0]", [0, 1, 0, 2]),
    ("[0.0]", [0.0, 1.0, 0.0, 2.0]),
    ('["0"]', [0, 1, 0, 2]),
    ("[false]", [False, True, False, True]),
    ("[False]", ["false", "true", "FALSE", "1"]),
])
def test_numeric_and_boolean_label_values(tmp_path: Path, yaml_values: str, labels: list) -> None:
    path = tmp_path / "ds.yaml"
    path.write_text("name: n\nnumeric: [x]\nlabel: y\nlog1p: []\n"
                    f"normal_values: {yaml_values}\n")
    ds = load_netflow_dataset_config(path)
    assert all(isinstance(v, str) for v in ds.normal_values)
    from ae_anomaly.data.netflow import label_is_anomaly

    flags = label_is_anomaly(pd.Series(labels), ds).tolist()
    assert flags == [False, True, False, True]
    # and through the reader: a CSV column of 0/1 and a Parquet column of ints
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": labels})
    frame.to_csv(tmp_path / "f.csv", index=False)
    assert read_netflow(tmp_path / "f.csv", ds)["is_anomaly"].tolist() == flags
