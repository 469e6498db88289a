"""The seeded NetFlow generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ae_anomaly.data.netflow import aggregate_netflow, load_netflow_dataset_config, read_netflow
from ae_anomaly.data.synthetic_netflow import ATTACK_KINDS, COLUMNS, generate_netflow

NETFLOW_YAML = Path(__file__).resolve().parents[3] / "configs" / "datasets" / "netflow.yaml"


@pytest.fixture(scope="module")
def generated() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_netflow(seed=0)


def test_shape_columns_and_determinism(generated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    flows, attacks = generated
    assert list(flows.columns) == COLUMNS
    assert 10_000 < len(flows) < 100_000
    assert flows["ts"].dtype == np.dtype("datetime64[ns]") and flows["ts"].is_monotonic_increasing
    assert set(flows["src_ip"]) == {f"10.0.0.{i}" for i in range(1, 9)}
    assert set(flows["proto"]) == {"tcp", "udp", "icmp"}
    assert (flows["bytes"] > 0).all() and (flows["packets"] >= 1).all()
    assert flows["bytes"].max() > 1000 * flows["bytes"].median()  # heavy tail
    again, again_attacks = generate_netflow(seed=0)
    pd.testing.assert_frame_equal(flows, again)
    pd.testing.assert_frame_equal(attacks, again_attacks)
    other, _ = generate_netflow(seed=1)
    assert len(other) != len(flows) or not other["bytes"].equals(flows["bytes"])


def test_attack_table_matches_labels(generated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    flows, attacks = generated
    assert list(attacks.columns) == ["entity", "kind", "start", "end"]
    assert attacks["kind"].value_counts().to_dict() == dict.fromkeys(ATTACK_KINDS, 2)
    assert set(flows["label"]) == {"normal", *ATTACK_KINDS}
    for row in attacks.itertuples():
        mine = flows[(flows["label"] == row.kind) & (flows["src_ip"] == row.entity)]
        inside = mine[(mine["ts"] >= row.start) & (mine["ts"] <= row.end)]
        assert len(inside) > 0
    # The first half is attack-free (training data).
    half = flows["ts"].min() + (flows["ts"].max() - flows["ts"].min()) / 2
    assert (flows.loc[flows["ts"] < half, "label"] == "normal").all()
    assert (attacks["start"] >= pd.Timestamp("2024-01-02")).all()


def test_attacks_look_like_their_kind(generated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    flows, _ = generated
    normal = flows[flows["label"] == "normal"]
    scan = flows[flows["label"] == "port_scan"]
    assert scan["dst_port"].nunique() > 200 and set(scan["tcp_flags"]) <= {"S", "R"}
    assert scan["bytes"].max() <= 120
    dos = flows[flows["label"] == "dos"]
    per_min = dos.groupby([dos["src_ip"], dos["ts"].dt.floor("min")]).size()
    assert (
        per_min.median()
        > 50 * normal.groupby([normal["src_ip"], normal["ts"].dt.floor("min")]).size().median()
    )
    exfil = flows[flows["label"] == "exfiltration"]
    assert 0 < len(exfil) <= 16 and exfil["bytes"].min() > normal["bytes"].quantile(0.999)
    assert not set(exfil["dst_ip"]) & set(normal["dst_ip"])
    new = flows[flows["label"] == "new_service"]
    assert not set(new["src_port"]) & set(normal["src_port"])


def test_diurnal_rate(generated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    flows, _ = generated
    normal = flows[flows["label"] == "normal"]
    by_hour = normal.groupby(normal["ts"].dt.hour).size()
    assert by_hour.loc[13:16].mean() > 3 * by_hour.loc[1:4].mean()


def test_options_and_errors() -> None:
    flows, attacks = generate_netflow(n_hosts=2, days=0.25, seed=4, attacks=("dos",),
                                      attack_count=3)
    assert set(flows["label"]) == {"normal", "dos"} and len(attacks) == 3
    clean, none = generate_netflow(n_hosts=1, days=0.1, attacks=(), attack_count=2)
    assert none.empty and (clean["label"] == "normal").all()
    with pytest.raises(ValueError, match="unknown attack kind"):
        generate_netflow(attacks=("meteor",))


def test_written_flows_read_back_with_netflow_yaml(tmp_path: Path) -> None:
    flows, _ = generate_netflow(n_hosts=3, days=0.5, seed=2, attack_count=1)
    path = tmp_path / "flows.csv"
    flows.to_csv(path, index=False)
    ds = load_netflow_dataset_config(NETFLOW_YAML)
    frame = read_netflow(path, ds)
    assert len(frame) == len(flows)
    assert frame["is_anomaly"].sum() == (flows["label"] != "normal").sum()
    series = aggregate_netflow(frame, ds)
    assert series["flows"].sum() == len(flows) and series["is_anomaly"].any()
    assert series.groupby("entity")["timestamp"].diff().dropna().eq(pd.Timedelta("1min")).all()
