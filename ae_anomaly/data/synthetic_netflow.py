"""Seeded NetFlow-style generator: diurnal normal traffic plus labelled injected attacks.

The flows have the columns ``configs/datasets/netflow.yaml`` describes: ``ts, src_ip, dst_ip,
src_port, dst_port, proto, bytes, packets, duration, tcp_flags, label``. Every flow starts at
one of ``n_hosts`` internal hosts (``10.0.0.1``...), so aggregating by ``src_ip`` gives one
series per host. Normal traffic is a per-minute Poisson process whose rate follows the hour
of day; each host has its own mix of services (web, DNS, NTP, SSH, database, file share,
ping) with log-normal bytes, packets and durations. Attacks:

- ``port_scan``: one host probes many distinct ports of one target within minutes, with tiny
  flows flagged ``S`` (SYN, no answer) or ``R`` (reset);
- ``dos``: a burst of hundreds of small SYN flows a minute to one destination;
- ``exfiltration``: a few very large outbound transfers to a never-seen external address;
- ``new_service``: the host suddenly answers on a new port (and maybe protocol), its flows
  leaving from that port to clients' ephemeral ports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ae_anomaly.config import AppConfig, state_home

log = logging.getLogger(__name__)

ATTACK_KINDS = ("port_scan", "dos", "exfiltration", "new_service")
COLUMNS = [
    "ts",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "proto",
    "bytes",
    "packets",
    "duration",
    "tcp_flags",
    "label",
]
NO_FLAGS = "-"  # non-TCP flows carry no TCP flags

# name, proto, dst_port, dst prefix, dst pool size, log-bytes mean, log-bytes sd,
# bytes per packet, log-duration mean, weight in the average host's mix
_SERVICES = [
    ("https", "tcp", 443, "203.0.113.", 60, np.log(20_000), 1.3, 900, np.log(2.0), 0.35),
    ("http", "tcp", 80, "198.51.100.", 40, np.log(8_000), 1.2, 800, np.log(1.0), 0.10),
    ("dns", "udp", 53, "10.0.1.", 2, np.log(120), 0.3, 110, np.log(0.01), 0.25),
    ("ntp", "udp", 123, "10.0.1.", 1, np.log(90), 0.05, 90, np.log(0.005), 0.03),
    ("ssh", "tcp", 22, "10.0.2.", 5, np.log(5_000), 1.5, 300, np.log(30.0), 0.07),
    ("db", "tcp", 5432, "10.0.3.", 2, np.log(3_000), 1.0, 500, np.log(0.5), 0.10),
    ("smb", "tcp", 445, "10.0.3.", 3, np.log(15_000), 1.2, 1000, np.log(1.5), 0.07),
    ("icmp", "icmp", 0, "10.0.2.", 5, np.log(84), 0.01, 84, np.log(0.001), 0.03),
]
_NORMAL_FLAGS = np.array(["PA", "FA", "SA", "R", "S"])
_NORMAL_FLAG_P = np.array([0.55, 0.30, 0.10, 0.03, 0.02])
_NEW_SERVICES = [(4444, "tcp"), (6667, "tcp"), (31337, "tcp"), (1900, "udp"), (8081, "tcp")]


def _ephemeral(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(32768, 61000, n)


def _frame(**cols: object) -> pd.DataFrame:
    return pd.DataFrame({c: cols[c] for c in COLUMNS if c in cols})


def _normal_traffic(
    rng: np.random.Generator, hosts: np.ndarray, start: pd.Timestamp, minutes: int
) -> pd.DataFrame:
    n_hosts = len(hosts)
    hour = (start.hour + start.minute / 60 + np.arange(minutes) / 60.0) % 24
    diurnal = 1.0 + 0.8 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # low at 3h, high at 15h
    base = rng.lognormal(np.log(1.4), 0.3, n_hosts)
    counts = rng.poisson(base[:, None] * diurnal[None, :])
    host_idx = np.repeat(np.repeat(np.arange(n_hosts), minutes), counts.ravel())
    minute_idx = np.repeat(np.tile(np.arange(minutes), n_hosts), counts.ravel())
    n = len(host_idx)

    svc_weight = np.array([s[9] for s in _SERVICES])
    mix = rng.dirichlet(svc_weight * 20.0, n_hosts)  # each host's own mix of services
    cum = np.cumsum(mix, axis=1)
    svc = (rng.random(n)[:, None] > cum[host_idx]).sum(axis=1)
    svc = np.minimum(svc, len(_SERVICES) - 1)

    table = pd.DataFrame(
        _SERVICES,
        columns=["name", "proto", "port", "prefix", "pool", "mu", "sd", "bpp", "mu_dur", "w"],
    )
    row = table.iloc[svc]
    pool = row["pool"].to_numpy()
    dst_idx = np.floor(pool * rng.random(n) ** 2).astype(np.int64) + 1  # favourites first
    dst_ip = row["prefix"].to_numpy(dtype=object) + dst_idx.astype(str).astype(object)
    nbytes = np.maximum(
        40, np.round(rng.lognormal(row["mu"].to_numpy(), row["sd"].to_numpy()))
    ).astype(np.int64)
    packets = np.maximum(
        1, np.round(nbytes / row["bpp"].to_numpy() * rng.lognormal(0, 0.2, n))
    ).astype(np.int64)
    duration = np.round(rng.lognormal(row["mu_dur"].to_numpy(), 1.0), 3)
    proto = row["proto"].to_numpy(dtype=object)
    flags = np.where(
        proto == "tcp", rng.choice(_NORMAL_FLAGS, n, p=_NORMAL_FLAG_P), NO_FLAGS
    ).astype(object)
    seconds = minute_idx * 60.0 + rng.random(n) * 60.0
    return _frame(
        ts=start + pd.to_timedelta(seconds, unit="s"),
        src_ip=hosts[host_idx],
        dst_ip=dst_ip,
        src_port=np.where(proto == "icmp", 0, _ephemeral(rng, n)),
        dst_port=row["port"].to_numpy(dtype=np.int64),
        proto=proto,
        bytes=nbytes,
        packets=packets,
        duration=duration,
        tcp_flags=flags,
        label="normal",
    )


def _attack(
    rng: np.random.Generator, kind: str, host: str, t0: pd.Timestamp
) -> tuple[pd.DataFrame, float]:
    """One attack's flows starting at ``t0``, and the longest span it may take (seconds)."""
    if kind == "port_scan":
        span = rng.uniform(2, 5) * 60
        n = int(rng.integers(300, 1000))
        packets = rng.integers(1, 3, n)
        cols = {
            "dst_ip": f"10.0.{int(rng.integers(4, 9))}.{int(rng.integers(1, 255))}",
            "src_port": np.full(n, _ephemeral(rng, 1)[0]),
            "dst_port": rng.choice(np.arange(1, 65536), n, replace=False),
            "proto": "tcp",
            "bytes": packets * rng.integers(40, 61, n),
            "packets": packets,
            "duration": np.round(rng.uniform(0, 0.01, n), 3),
            "tcp_flags": rng.choice(np.array(["S", "R"]), n, p=[0.6, 0.4]),
        }
    elif kind == "dos":
        span = rng.uniform(3, 10) * 60
        n = int(span / 60 * rng.uniform(150, 400))
        packets = rng.integers(1, 4, n)
        cols = {
            "dst_ip": f"203.0.113.{int(rng.integers(100, 200))}",
            "src_port": _ephemeral(rng, n),
            "dst_port": int(rng.choice([80, 443])),
            "proto": "tcp",
            "bytes": packets * rng.integers(40, 81, n),
            "packets": packets,
            "duration": np.round(rng.uniform(0, 0.05, n), 3),
            "tcp_flags": rng.choice(np.array(["S", "SA"]), n, p=[0.8, 0.2]),
        }
    elif kind == "exfiltration":
        span = rng.uniform(10, 40) * 60
        n = int(rng.integers(3, 9))
        nbytes = np.round(rng.lognormal(np.log(8e8), 0.5, n)).astype(np.int64)
        cols = {
            "dst_ip": f"185.220.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}",
            "src_port": _ephemeral(rng, n),
            "dst_port": int(rng.choice([443, 22])),
            "proto": "tcp",
            "bytes": nbytes,
            "packets": np.maximum(1, nbytes // 1400),
            "duration": np.round(rng.uniform(300, 1800, n), 3),
            "tcp_flags": rng.choice(np.array(["PA", "FA"]), n),
        }
    elif kind == "new_service":
        span = rng.uniform(30, 120) * 60
        n = int(span / 60 * rng.uniform(2, 6))
        port, proto = _NEW_SERVICES[int(rng.integers(len(_NEW_SERVICES)))]
        nbytes = np.round(rng.lognormal(np.log(50_000), 1.0, n)).astype(np.int64)
        tcp_flags = rng.choice(np.array(["PA", "FA"]), n) if proto == "tcp" else NO_FLAGS
        cols = {
            "dst_ip": "198.51.100." + rng.integers(100, 250, n).astype(str).astype(object),
            "src_port": port,
            "dst_port": _ephemeral(rng, n),
            "proto": proto,
            "bytes": nbytes,
            "packets": np.maximum(1, nbytes // 1200),
            "duration": np.round(rng.lognormal(np.log(5.0), 1.0, n), 3),
            "tcp_flags": tcp_flags,
        }
    else:
        raise ValueError(f"unknown attack kind '{kind}'; known: {', '.join(ATTACK_KINDS)}")
    offsets = np.sort(rng.uniform(0, span, n))
    offsets[0] = 0.0
    flows = _frame(ts=t0 + pd.to_timedelta(offsets, unit="s"), src_ip=host, label=kind, **cols)
    return flows, span


def generate_netflow(
    n_hosts: int = 8,
    days: float = 2.0,
    seed: int = 0,
    attacks: Sequence[str] = ATTACK_KINDS,
    attack_count: int = 2,
    *,
    start: str = "2024-01-01",
    clean_fraction: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate labelled NetFlow-style records.

    Args:
        n_hosts: internal hosts ``10.0.0.1`` ... ``10.0.0.N``, the flows' sources.
        days: length of the traffic in days.
        seed: random seed; the same arguments give the same frames.
        attacks: attack kinds to inject (see :data:`ATTACK_KINDS`).
        attack_count: attacks injected per kind, each on a random host at a random time.
        start: the first minute (naive UTC).
        clean_fraction: the leading share of the time span kept free of attacks, so it can
            serve as training data.

    Returns:
        ``(flows, attacks)``: the flows sorted by ``ts`` with columns :data:`COLUMNS`
        (``label`` is ``"normal"`` or the attack kind), and one row per injected attack with
        ``entity`` (the host), ``kind``, ``start`` and ``end`` (its first and last flow's
        ``ts``).

    Raises:
        ValueError: an unknown attack kind or a non-positive size.
    """
    unknown = [k for k in attacks if k not in ATTACK_KINDS]
    if unknown:
        raise ValueError(f"unknown attack kind '{unknown[0]}'; known: {', '.join(ATTACK_KINDS)}")
    if n_hosts < 1 or days <= 0 or attack_count < 0 or not 0 <= clean_fraction < 1:
        raise ValueError("need n_hosts >= 1, days > 0, attack_count >= 0, 0 <= clean_fraction < 1")
    rng = np.random.default_rng(seed)
    t_start = pd.Timestamp(start)
    minutes = max(1, int(round(days * 24 * 60)))
    total = minutes * 60.0
    hosts = np.array([f"10.0.0.{i + 1}" for i in range(n_hosts)], dtype=object)

    parts = [_normal_traffic(rng, hosts, t_start, minutes)]
    records = []
    for kind in attacks:
        for _ in range(attack_count):
            host = str(hosts[int(rng.integers(n_hosts))])
            lo = clean_fraction * total
            t0 = t_start + pd.Timedelta(seconds=float(rng.uniform(lo, lo + 0.85 * (total - lo))))
            flows, _ = _attack(rng, kind, host, t0)
            flows = flows[flows["ts"] < t_start + pd.Timedelta(seconds=total)]
            if flows.empty:
                continue
            parts.append(flows)
            records.append(
                {"entity": host, "kind": kind, "start": flows["ts"].min(), "end": flows["ts"].max()}
            )
    out = pd.concat(parts, ignore_index=True)
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    for col in ("src_port", "dst_port", "bytes", "packets"):
        out[col] = out[col].astype(np.int64)
    out["duration"] = out["duration"].astype(np.float64)
    out["ts"] = out["ts"].astype("datetime64[ns]")
    for col in ("src_ip", "dst_ip", "proto", "tcp_flags", "label"):
        out[col] = out[col].astype(str)
    table = pd.DataFrame(records, columns=["entity", "kind", "start", "end"])
    if not table.empty:
        table = table.sort_values(["start", "entity"], kind="stable").reset_index(drop=True)
    log.info(
        "generated %d flows for %d hosts over %.1f days with %d attacks",
        len(out),
        n_hosts,
        days,
        len(table),
    )
    return out, table


# --------------------------------------------------------------------------- the demo's files
ATTACKS_FILE = "injected_attacks.csv"
# the week of the server-metrics demo: its fresh period starts 2026-01-09, like this attack day
START = "2026-01-08"


@dataclass
class NetflowDemoData:
    """Where the flow demo's generated files are."""

    train: Path
    score: Path
    attacks: Path
    table: pd.DataFrame = field(repr=False)

    def overrides(self) -> list[str]:
        """Config overrides pointing training and scoring at these files."""
        return [f"data.train={self.train}", f"data.score={self.score}"]


def write_netflow_demo_data(cfg: AppConfig, folder: Path | None = None) -> NetflowDemoData:
    """Generate synthetic NetFlow and write the clean and the attack period as CSV files.

    Writes ``train_flows.csv`` (the first ``train_days``, no attacks), ``fresh_flows.csv``
    (the following ``score_days`` with attacks) and ``injected_attacks.csv`` (one row per
    attack: ``entity, kind, start, end``) into ``folder`` (default ``<home>/netflow_demo``).
    """
    syn = cfg.data.synthetic
    folder = folder or state_home() / "netflow_demo"
    folder.mkdir(parents=True, exist_ok=True)
    days = syn.train_days + syn.score_days
    flows, attacks = generate_netflow(
        n_hosts=syn.n_entities,
        days=days,
        seed=syn.seed,
        start=START,
        clean_fraction=syn.train_days / days,
    )
    split = pd.Timestamp(START) + pd.Timedelta(days=syn.train_days)
    data = NetflowDemoData(
        folder / "train_flows.csv", folder / "fresh_flows.csv", folder / ATTACKS_FILE, attacks
    )
    flows[flows["ts"] < split].to_csv(data.train, index=False)
    flows[flows["ts"] >= split].to_csv(data.score, index=False)
    attacks.to_csv(data.attacks, index=False)
    log.info(
        "flow demo: %d training and %d fresh flows, %d attacks, in %s",
        int((flows["ts"] < split).sum()),
        int((flows["ts"] >= split).sum()),
        len(attacks),
        folder,
    )
    return data
