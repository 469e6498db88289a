"""A seeded generator of realistic multivariate server metrics with labelled anomalies.

Each entity (a server) has ``n_metrics`` metrics driven by two shared latent factors: a daily
load cycle with slow AR(1) drift, and a faster AR(1) component. Metrics load on the factors
with entity-specific weights, levels and scales, plus a small trend and measurement noise,
so metrics are correlated the way CPU, request rate and latency are.

Four kinds of anomaly are injected (only into the scoring period when one is asked for):

- ``spike``: 1-3 steps, 1-2 metrics jump by 4-6 of their standard deviations;
- ``level_shift``: 30-120 steps, 2 metrics offset by 1.5-2.5 standard deviations;
- ``variance_burst``: 30-90 steps, 2-3 metrics with 8-12 times the noise;
- ``correlation_break``: 120-240 steps, 2 metrics follow the load cycle six hours late,
  so each looks plausible alone but no longer moves with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ae_anomaly.config import SyntheticConfig

KINDS = ("spike", "level_shift", "variance_burst", "correlation_break")
METRIC_NAMES = (
    "cpu_util", "load_avg", "mem_used", "req_rate", "latency_p95", "net_in", "net_out",
    "disk_io", "gc_time", "error_rate", "queue_len", "threads",
)
START = pd.Timestamp("2026-01-05 00:00:00")


@dataclass
class SyntheticData:
    """Generated metrics with labels.

    Attributes:
        train: wide frame for training (no anomalies).
        score: wide frame of the following period, with injected anomalies.
        labels: 0/1 per row of ``score`` (1 inside an injected anomaly).
        anomalies: one row per injected anomaly: entity, kind, start_ts, end_ts, metrics.
    """

    train: pd.DataFrame
    score: pd.DataFrame
    labels: np.ndarray
    anomalies: pd.DataFrame


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    eps = rng.normal(0.0, sd * np.sqrt(1 - phi**2), n)
    return lfilter([1.0], [1.0, -phi], eps)


def metric_names(n: int) -> list[str]:
    """Readable metric names (cycled with a suffix past the built-in list)."""
    return [METRIC_NAMES[i % len(METRIC_NAMES)] + ("" if i < len(METRIC_NAMES)
            else f"_{i // len(METRIC_NAMES)}") for i in range(n)]


def generate_server_metrics(cfg: SyntheticConfig) -> SyntheticData:
    """Generate a training period and a following scoring period with injected anomalies.

    Args:
        cfg: sizes, frequency, anomaly count and seed.

    Returns:
        The train and score frames, score labels and the list of injected anomalies.
    """
    rng = np.random.default_rng(cfg.seed)
    step = pd.Timedelta(cfg.freq)
    per_day = int(pd.Timedelta("1D") / step)
    n_train = int(round(cfg.train_days * per_day))
    n_score = int(round(cfg.score_days * per_day))
    n = n_train + n_score
    names = metric_names(cfg.n_metrics)
    ts = START + step * np.arange(n)
    lag = per_day // 4  # six hours
    t = np.arange(-lag, n)
    phase = 2 * np.pi * t / per_day

    trains, scores, labels, rows = [], [], [], []
    for e in range(cfg.n_entities):
        entity = f"server-{e + 1:02d}"
        shift = rng.uniform(0, 2 * np.pi)
        daily = np.sin(phase + shift) + 0.3 * np.sin(2 * phase + shift)
        f1 = daily + _ar1(rng, len(t), 0.995, 0.3)
        f2 = _ar1(rng, len(t), 0.97, 0.6)
        w = np.column_stack([rng.uniform(0.6, 1.2, cfg.n_metrics),
                             rng.uniform(-0.6, 0.6, cfg.n_metrics)])
        level = rng.uniform(20, 80, cfg.n_metrics)
        scale = rng.uniform(5, 15, cfg.n_metrics)
        trend = rng.normal(0, 0.02, cfg.n_metrics)
        factors = np.column_stack([f1, f2])  # (lag + n, 2)
        signal = factors @ w.T  # (lag + n, C)
        noise_sd = 0.08 * scale
        noise = rng.normal(0, 1, (n, cfg.n_metrics)) * noise_sd
        base = level + scale * signal[lag:] + np.outer(t[lag:] / per_day, trend * scale)
        x = base + noise
        std = x[:n_train].std(axis=0)
        lab = np.zeros(n, dtype=np.int8)

        # Non-overlapping anomalies spread over the scoring period, kinds in turn.
        k = cfg.anomalies_per_entity
        if k:
            slot = n_score // k
            for i in range(k):
                kind = KINDS[(i + e) % len(KINDS)]
                dur = {"spike": rng.integers(1, 4), "level_shift": rng.integers(30, 121),
                       "variance_burst": rng.integers(30, 91),
                       "correlation_break": rng.integers(120, 241)}[kind]
                dur = int(min(dur, max(1, slot // 2)))
                s = n_train + i * slot + int(rng.integers(slot // 4, max(slot // 4 + 1,
                                                                          slot - dur)))
                span = slice(s, s + dur)
                nch = {"spike": rng.integers(1, 3), "level_shift": 2, "variance_burst":
                       rng.integers(2, 4), "correlation_break": 2}[kind]
                ch = np.sort(rng.choice(cfg.n_metrics, size=int(nch), replace=False))
                if kind == "spike":
                    x[span, ch] += rng.choice([-1, 1]) * rng.uniform(4, 6) * std[ch]
                elif kind == "level_shift":
                    x[span, ch] += rng.choice([-1, 1]) * rng.uniform(1.5, 2.5) * std[ch]
                elif kind == "variance_burst":
                    x[span, ch] += noise[span][:, ch] * rng.uniform(8, 12)
                else:
                    late = signal[s:s + dur][:, ch]  # the same metrics' signal, six hours late
                    x[span, ch] += scale[ch] * (late - signal[lag + s:lag + s + dur][:, ch])
                lab[span] = 1
                rows.append({"entity": entity, "kind": kind, "start_ts": ts[s],
                             "end_ts": ts[s + dur - 1], "start_idx": s - n_train,
                             "end_idx": s + dur - 1 - n_train,
                             "metrics": ",".join(names[c] for c in ch)})
        frame = pd.DataFrame(np.round(x, 4), columns=names)
        frame.insert(0, "entity", entity)
        frame.insert(0, "timestamp", ts)
        trains.append(frame.iloc[:n_train])
        scores.append(frame.iloc[n_train:])
        labels.append(lab[n_train:])
    anomalies = pd.DataFrame(rows, columns=["entity", "kind", "start_ts", "end_ts", "start_idx",
                                            "end_idx", "metrics"])
    return SyntheticData(
        train=pd.concat(trains, ignore_index=True),
        score=pd.concat(scores, ignore_index=True),
        labels=np.concatenate(labels),
        anomalies=anomalies,
    )
