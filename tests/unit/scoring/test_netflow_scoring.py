"""Flows into the anomaly table: per-host series (conv_ae) and per-flow rows (dense_ae)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from ae_anomaly import pipeline
from ae_anomaly.config import AppConfig, load_config
from ae_anomaly.data.netflow import read_netflow_input
from ae_anomaly.data.synthetic_netflow import generate_netflow
from ae_anomaly.detectors import AutoencoderDetector, RowAutoencoder
from ae_anomaly.errors import ConfigError, DataError
from ae_anomaly.evaluation.metrics import event_overlap
from ae_anomaly.records import ModelRef
from ae_anomaly.scoring.job import to_records
from ae_anomaly.sinks import SqlSink


def attack_recall(events, attacks: pd.DataFrame, slack: pd.Timedelta) -> dict[str, float]:
    """Share of the attacks of each kind that an event of the same host overlaps."""
    frame = pd.DataFrame({"entity": [e.entity for e in events],
                          "start_ts": [e.start_ts for e in events],
                          "end_ts": [e.end_ts for e in events]})
    return event_overlap(frame, attacks, slack)["recall_by_kind"]


def fit_netflow_detector(cfg: AppConfig, frame: pd.DataFrame):
    """The training step every flow-mode test uses: the pipeline's own."""
    return pipeline.fit_detector(cfg, frame)


def load_netflow_training_frame(cfg: AppConfig) -> pd.DataFrame:
    return pipeline.load_training_frame(cfg)


def score_netflow_inputs(cfg: AppConfig, det, model: ModelRef, paths=None) -> SimpleNamespace:
    """The pipeline's scoring step, with the records the sink would get."""
    res = pipeline.score_inputs(cfg, det, paths, model)
    return SimpleNamespace(events=res.events, records=to_records(res.events, det, model),
                           n_scored=sum(res.steps.values()))


def write_netflow_events(cfg: AppConfig, result: SimpleNamespace) -> int:
    return SqlSink(cfg.sink.url, cfg.sink.table).write(result.records)

REPO = Path(__file__).resolve().parents[3]
NETFLOW = REPO / "configs" / "datasets" / "netflow.yaml"
DEMO = REPO / "configs" / "netflow_demo.yaml"
AGG_FEATURES = {
    "log1p_flows",
    "log1p_bytes",
    "log1p_packets",
    "log1p_distinct_dst",
    "log1p_distinct_dst_port",
    "log1p_failed_flows",
    "log1p_bytes_out_per_flow",
}
MODEL = ModelRef("flows-test", "1", "run-1")

# A small, fast conv_ae on per-host 1-minute series.
AGGREGATE = [
    "window.length=16",
    "window.train_stride=2",
    "model.channels=[8, 8]",
    "model.latent_dim=4",
    "training.epochs=5",
    "training.batch_size=64",
    "training.num_threads=1",
    "training.progress=false",
    "calibration.alpha=0.0005",
    "calibration.calibration_fraction=0.4",
]
# A small dense_ae on flow rows.
ROWS = [
    "data.netflow_mode=rows",
    "model.name=dense_ae",
    "model.hidden=[16]",
    "model.latent_dim=4",
    "training.epochs=2",
    "training.num_threads=1",
    "training.progress=false",
    "calibration.alpha=0.01",
]


def _split(
    tmp_path: Path,
    flows: pd.DataFrame,
    clean_until: pd.Timestamp,
) -> tuple[Path, Path]:
    train, score = tmp_path / "train.csv", tmp_path / "score.csv"
    flows[flows["ts"] < clean_until].to_csv(train, index=False)
    flows[flows["ts"] >= clean_until].to_csv(score, index=False)
    return train, score


def _cfg(tmp_path: Path, dataset: Path, train: Path, score: Path, extra: list[str]) -> AppConfig:
    base = None if "data.netflow_mode=rows" in extra else DEMO  # the demo's model is a conv_ae
    return load_config(
        base,
        [
            f"data.netflow={dataset}",
            f"data.train={train}",
            f"data.score={score}",
            f"sink.url=sqlite:///{tmp_path / 'anomalies.db'}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def scans_and_dos(tmp_path_factory: pytest.TempPathFactory):
    """Four hosts, a clean day, then a day with four port scans and four DoS bursts."""
    tmp = tmp_path_factory.mktemp("attacks")
    flows, attacks = generate_netflow(
        n_hosts=4,
        days=2.0,
        seed=11,
        attacks=("port_scan", "dos"),
        attack_count=4,
        clean_fraction=0.5,
    )
    train, score = _split(tmp, flows, pd.Timestamp("2024-01-02"))
    cfg = _cfg(tmp, NETFLOW, train, score, AGGREGATE)
    det = fit_netflow_detector(cfg, load_netflow_training_frame(cfg))
    return cfg, det, attacks


def test_port_scans_and_dos_bursts_are_found_per_host(scans_and_dos) -> None:
    cfg, det, attacks = scans_and_dos
    assert isinstance(det, AutoencoderDetector)
    assert set(det.feature_names_) == AGG_FEATURES
    result = score_netflow_inputs(cfg, det, MODEL)
    recall = attack_recall(result.events, attacks, pd.Timedelta("1min"))
    assert recall["port_scan"] >= 0.8, recall
    assert recall["dos"] >= 0.8, recall
    # About alpha * steps false points are expected; here the threshold is the largest of
    # ~2300 held-out normal scores, so a few.
    false = [
        ev
        for ev in result.events
        if not any(attack_recall([ev], attacks, pd.Timedelta("1min")).values())
    ]
    assert len(false) <= 5, [(ev.entity, ev.start_ts) for ev in false]
    hosts = set(attacks["entity"])
    for rec in result.records:
        assert rec.entity.startswith("10.0.0.")
        assert rec.top_channels and set(rec.top_channels) <= AGG_FEATURES
    assert {r.entity for r in result.records} & hosts


def test_aggregate_events_go_to_the_anomaly_table_idempotently(scans_and_dos) -> None:
    cfg, det, _ = scans_and_dos
    result = score_netflow_inputs(cfg, det, MODEL)
    assert write_netflow_events(cfg, result) == len(result.records) > 0
    again = score_netflow_inputs(cfg, det, MODEL)
    assert write_netflow_events(cfg, again) == 0
    table = SqlSink(cfg.sink.url, cfg.sink.table).read()
    assert len(table) == len(result.records)
    assert set(table["entity"]) <= {f"10.0.0.{i}" for i in range(1, 5)}


def test_rows_mode_writes_one_event_per_flagged_flow(tmp_path: Path) -> None:
    flows, _ = generate_netflow(
        n_hosts=3, days=1.0, seed=5, attacks=("exfiltration",), attack_count=2
    )
    train, score = _split(tmp_path, flows, pd.Timestamp("2024-01-01 12:00"))
    cfg = _cfg(tmp_path, NETFLOW, train, score, ROWS)
    det = fit_netflow_detector(cfg, load_netflow_training_frame(cfg))
    assert isinstance(det, RowAutoencoder)
    result = score_netflow_inputs(cfg, det, MODEL)
    assert result.n_scored == len(pd.read_csv(score))
    exfil = flows[(flows["label"] == "exfiltration") & (flows["ts"] >= "2024-01-01 12:00")]
    flagged_times = {pd.Timestamp(r.start_ts) for r in result.records}
    assert set(exfil["ts"].dt.floor("us")) <= flagged_times
    ids = [r.event_id for r in result.records]
    assert len(set(ids)) == len(ids)
    for rec in result.records:
        assert rec.entity.startswith("10.0.0.") and rec.n_points == 1
        assert rec.start_ts == rec.end_ts == rec.peak_ts
        assert set(rec.top_channels) <= set(det.feature_names_)
    assert write_netflow_events(cfg, result) == len(result.records)
    assert write_netflow_events(cfg, score_netflow_inputs(cfg, det, MODEL)) == 0


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def rows_model(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rows")
    flows, _ = generate_netflow(n_hosts=2, days=0.25, seed=2, attacks=())
    path = tmp / "train.csv"
    flows.to_csv(path, index=False)
    cfg = _cfg(tmp, NETFLOW, path, path, ROWS)
    return cfg, fit_netflow_detector(cfg, load_netflow_training_frame(cfg)), flows


def _score_file(cfg: AppConfig, det, tmp_path: Path, text: str):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return score_netflow_inputs(cfg, det, MODEL, paths=[str(path)])


HEADER = "ts,src_ip,dst_ip,src_port,dst_port,proto,bytes,packets,duration,tcp_flags"
ROW = "2024-01-01 00:00:01,10.0.0.1,10.0.1.1,40000,53,udp,120,1,0.01,-"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "file is empty"),
        (
            HEADER.replace(",duration", "") + "\n" + ROW.replace(",0.01", "") + "\n",
            "column 'duration'.*declared column is not in the file",
        ),
        (
            HEADER + "\n" + ROW + "\n" + ROW.replace(",120,", ",lots,") + "\n",
            "column 'bytes', row 2: value 'lots' is not a number",
        ),
        (HEADER + "\n", "no data rows"),
    ],
)
@pytest.mark.parametrize("mode", ["rows", "aggregate"])
def test_bad_flow_input_is_a_data_error(
    rows_model, scans_and_dos, tmp_path: Path, text: str, match: str, mode: str
) -> None:
    cfg, det = (rows_model[0], rows_model[1]) if mode == "rows" else scans_and_dos[:2]
    with pytest.raises(DataError, match=match):
        _score_file(cfg, det, tmp_path, text)


def test_unknown_protocol_goes_to_the_unseen_bucket(rows_model, tmp_path: Path) -> None:
    cfg, det, _ = rows_model
    rows = [ROW.replace(",udp,", f",{p},") for p in ("udp", "gre", "QUIC", "")]
    result = _score_file(cfg, det, tmp_path, HEADER + "\n" + "\n".join(rows) + "\n")
    assert result.n_scored == 4


def test_missing_flow_description_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(DEMO, ["data.netflow=null"])
    with pytest.raises(ConfigError, match="data.netflow is not set"):
        read_netflow_input(cfg, [str(tmp_path)])
    cfg = load_config(DEMO, [f"data.netflow={tmp_path / 'nope.yaml'}"])
    with pytest.raises(ConfigError, match="not found"):
        load_netflow_training_frame(cfg)
    with pytest.raises(ConfigError, match="netflow_mode"):
        load_config(DEMO, ["data.netflow_mode=hosts"])


# --------------------------------------------------------------------------- second data set
def _renamed_dataset(tmp_path: Path) -> tuple[Path, Path, Path, pd.DataFrame]:
    """The generator's flows reshaped: other column names, epoch seconds, Parquet, a label
    called 'class' with 'benign' as normal, an extra column, and protocols never seen in
    training at scoring time."""
    flows, attacks = generate_netflow(
        n_hosts=3, days=1.0, seed=8, attacks=("port_scan", "dos"), attack_count=2
    )
    out = pd.DataFrame(
        {
            "when": flows["ts"].astype("int64") / 1e9,
            "host": flows["src_ip"],
            "peer": flows["dst_ip"],
            "sport": flows["src_port"],
            "dport": flows["dst_port"],
            "protocol": flows["proto"],
            "octets": flows["bytes"],
            "pkts": flows["packets"],
            "secs": flows["duration"],
            "flags": flows["tcp_flags"],
            "class": flows["label"].replace("normal", "benign"),
            "sensor": "edge-1",
        }
    )
    split = pd.Timestamp("2024-01-01 12:00").value / 1e9
    train, score = tmp_path / "train.parquet", tmp_path / "score.parquet"
    out[out["when"] < split].to_parquet(train)
    fresh = out[out["when"] >= split].copy()
    fresh.loc[fresh.index[::50], "protocol"] = "gre"
    fresh.loc[fresh.index[1::50], "flags"] = "URG"
    fresh.to_parquet(score)
    desc = {
        "name": "renamed_flows",
        "format": "parquet",
        "timestamp": "when",
        "timestamp_unit": "s",
        "entity": ["host"],
        "numeric": ["octets", "pkts", "secs"],
        "categorical": ["protocol", "flags", "dport"],
        "log1p": "auto",
        "keep": ["peer"],
        "label": "class",
        "normal_values": ["benign"],
        "drop": ["sensor"],
        "aggregate": {
            "interval": "1min",
            "entity": "host",
            "bytes_col": "octets",
            "packets_col": "pkts",
            "dst_col": "peer",
            "dst_port_col": "dport",
            "flags_col": "flags",
        },
    }
    dataset = tmp_path / "renamed.yaml"
    dataset.write_text(yaml.safe_dump(desc))
    return dataset, train, score, attacks


@pytest.mark.parametrize("mode", ["aggregate", "rows"])
def test_a_differently_shaped_data_set_works_from_yaml_alone(tmp_path: Path, mode: str) -> None:
    dataset, train, score, attacks = _renamed_dataset(tmp_path)
    cfg = _cfg(tmp_path, dataset, train, score, AGGREGATE if mode == "aggregate" else ROWS)
    det = fit_netflow_detector(cfg, load_netflow_training_frame(cfg))
    result = score_netflow_inputs(cfg, det, MODEL)
    assert result.records
    assert {r.entity for r in result.records} <= {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert write_netflow_events(cfg, result) == len(result.records)
    if mode == "aggregate":
        recall = attack_recall(result.events, attacks, pd.Timedelta("1min"))
        assert min(recall.values()) >= 0.5, recall
    else:
        names = {n for r in result.records for n in r.top_channels}
        assert names <= set(det.feature_names_)
        assert any(n.startswith(("dport=", "protocol=", "flags=")) for n in det.feature_names_)
